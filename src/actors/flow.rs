//! The coordination counters of one pipeline incarnation: what the actors tell each other
//! through shared numbers rather than messages, because they are read on every row — the
//! lease's validity (supervisor → poller), deliveries and timeouts (publishers → retry,
//! supervisor), rows in flight and unmarked (poller ↔ acker: `relay.max_in_flight`), and
//! the publishers' batch outcomes folded into one wake-up of the poller.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::messages::{Completion, PollerMsg};
use crate::health::Health;

/// One incarnation's counters; every field is an atomic or a lock, shared by `Arc`.
pub struct Flow {
    /// Readiness facts (a delivery means the broker is up).
    health: Arc<Health>,
    /// Time base for the atomics below.
    epoch: Instant,
    /// Until when (ms after `epoch`) the lease is known to be ours.
    lease_valid_until_ms: AtomicU64,
    /// When (ms after `epoch`) the broker last acknowledged anything.
    last_delivery_ms: AtomicU64,
    /// When (ms after `epoch`) a send last timed out.
    last_timeout_ms: AtomicU64,
    /// Rows with the sink now (set by the poller).
    in_flight: AtomicUsize,
    /// Rows acknowledged by the broker and not yet marked by the acker.
    unmarked: AtomicUsize,
    /// The poller waits for the acker to free room (see [`Flow::want_room`]).
    room_wanted: AtomicBool,
    /// Publishers' batch outcomes not yet taken by the poller.
    reports: Mutex<Vec<Completion>>,
    /// A `Reports` message is on its way to the poller.
    reports_signalled: AtomicBool,
}

impl Flow {
    /// Fresh counters: no lease yet, nothing delivered, nothing in flight.
    pub fn new(health: Arc<Health>) -> Self {
        Self {
            health,
            epoch: Instant::now(),
            lease_valid_until_ms: AtomicU64::new(0),
            last_delivery_ms: AtomicU64::new(0),
            last_timeout_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            unmarked: AtomicUsize::new(0),
            room_wanted: AtomicBool::new(false),
            reports: Mutex::new(Vec::new()),
            reports_signalled: AtomicBool::new(false),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Records that the lease is ours until `until`.
    pub fn extend_lease(&self, until: Instant) {
        self.lease_valid_until_ms
            .store(self.ms(until), Ordering::Release);
    }

    /// Whether the lease is known to be ours now (monotonic clock: a process paused longer
    /// than the lease finds it expired and does not publish).
    pub fn lease_valid(&self) -> bool {
        self.ms(Instant::now()) < self.lease_valid_until_ms.load(Ordering::Acquire)
    }

    /// Records a successful delivery.
    pub fn note_delivery(&self, at: Instant) {
        self.last_delivery_ms
            .fetch_max(self.ms(at) + 1, Ordering::Relaxed);
        let _ = self.health.set_broker_up(true);
    }

    /// Whether anything was delivered after `since`: if so, a failure of a row sent at
    /// `since` is the row's own; if not, the broker was out for everyone.
    pub fn delivered_since(&self, since: Instant) -> bool {
        self.last_delivery_ms.load(Ordering::Relaxed) > self.ms(since) + 1
    }

    /// Records that a send timed out.
    pub fn note_timeout(&self, at: Instant) {
        self.last_timeout_ms
            .fetch_max(self.ms(at) + 1, Ordering::Relaxed);
    }

    /// Records how many rows are with the sink.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// How long the sink has had work (rows in flight, or sends timing out) without
    /// acknowledging anything; `None` when it is not waiting on anything.
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        let delivered = self.last_delivery_ms.load(Ordering::Relaxed);
        let timed_out = self.last_timeout_ms.load(Ordering::Relaxed);
        let waiting = self.in_flight.load(Ordering::Relaxed) > 0 || timed_out > delivered;
        waiting.then(|| Duration::from_millis(self.ms(now).saturating_sub(delivered)))
    }

    /// Rows handed to the acker (acknowledged, to be marked).
    pub fn add_unmarked(&self, n: usize) {
        self.unmarked.fetch_add(n, Ordering::AcqRel);
    }

    /// Rows the acker marked, or gave up to another instance.
    pub fn remove_unmarked(&self, n: usize) {
        let _ = self
            .unmarked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Rows acknowledged and not yet marked: they count against `relay.max_in_flight`.
    pub fn unmarked(&self) -> usize {
        self.unmarked.load(Ordering::Acquire)
    }

    /// The poller has rows to read but no room while marks are outstanding: the acker
    /// wakes it after its next write.
    pub fn want_room(&self) {
        if self.unmarked() > 0 {
            self.room_wanted.store(true, Ordering::Release);
        }
    }

    /// Whether the poller waits for room now.
    pub fn room_wanted(&self) -> bool {
        self.room_wanted.load(Ordering::Acquire)
    }

    /// Whether the poller asked to be woken (and the request is taken).
    pub fn take_room_wanted(&self) -> bool {
        self.room_wanted.swap(false, Ordering::AcqRel)
    }

    /// A publisher's batch is complete: its outcome waits for the poller, which is woken
    /// only if no wake-up is on its way already — outcomes that arrive while the poller is
    /// busy are taken together.
    pub fn report(&self, completion: Completion, poller: &ActorRef<PollerMsg>) {
        self.reports.lock().expect("reports").push(completion);
        if !self.reports_signalled.swap(true, Ordering::AcqRel) {
            let _ = poller.send_message(PollerMsg::Reports);
        }
    }

    /// Every outcome reported so far (the poller, on `Reports`).
    pub fn take_reports(&self) -> Vec<Completion> {
        // Cleared first: an outcome pushed after the take below signals again.
        self.reports_signalled.store(false, Ordering::Release);
        std::mem::take(&mut *self.reports.lock().expect("reports"))
    }
}
