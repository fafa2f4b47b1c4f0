//! The relay's actors (ractor on tokio), one per file:
//!
//! - [`supervisor`] — holds the lease, starts the others, restarts crashed ones with
//!   back-off, stops the relay past a restart budget, drives graceful shutdown;
//! - [`poller`] — reads pending rows (NOTIFY-woken), keeps per-aggregate order, hands rows
//!   to publishers, applies back-pressure and rate limits;
//! - [`publisher`] — `relay.partitions` of them; hand rows to the sink (Kafka, Redis
//!   Streams, NATS JetStream: [`crate::sink`]) in pipelined batches;
//! - [`acker`] — marks acknowledged rows published (delete or mark), in batches;
//! - [`retry`] — classifies failures: back-off and retry, or dead-letter;
//! - [`cleanup`] — deletes old published rows and resolved dead letters.

pub mod acker;
pub mod cleanup;
pub mod lease;
pub mod messages;
pub mod poller;
pub mod publisher;
pub mod retry;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;

use crate::config::Config;
use crate::health::Health;
use crate::ratelimit::RateLimits;
use crate::sink::Sink;
use crate::store::{Fence, Store};

use messages::{Completion, PollerMsg, SupervisorMsg};

pub use crate::store::Row;
pub use messages::{Delivered, DeliveredHook, Hooks, ReadHook, ReadTimes};

/// Actor names (suffixed with the relay's instance tag, so several relays can share a
/// process in tests).
pub mod names {
    /// The supervisor.
    pub const SUPERVISOR: &str = "outboxd-supervisor";
    /// The poller.
    pub const POLLER: &str = "outboxd-poller";
    /// Publisher `i` is `outboxd-publisher-{i}`.
    pub const PUBLISHER: &str = "outboxd-publisher";
    /// The acker.
    pub const ACKER: &str = "outboxd-acker";
    /// The retry / dead-letter actor.
    pub const RETRY: &str = "outboxd-retry";
    /// The cleanup actor.
    pub const CLEANUP: &str = "outboxd-cleanup";
}

/// What every actor of one pipeline incarnation shares. Rebuilt when the lease or the
/// sink changes.
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Where rows are published.
    pub sink: Arc<dyn Sink>,
    /// Readiness facts.
    pub health: Arc<Health>,
    /// The lease every write is checked against.
    pub fence: Fence,
    /// Publish rate limits.
    pub limits: RateLimits,
    /// Embedding callbacks.
    pub hooks: Hooks,
    /// The supervisor, told about lost leases and fatal sink errors.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Time base for the atomics below.
    pub epoch: Instant,
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
    /// The poller waits for the acker to free room (see [`Shared::want_room`]).
    room_wanted: AtomicBool,
    /// Publishers' batch outcomes not yet taken by the poller.
    reports: Mutex<Vec<Completion>>,
    /// A `Reports` message is on its way to the poller.
    reports_signalled: AtomicBool,
}

impl Shared {
    /// Builds the shared context of one pipeline incarnation.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        sink: Arc<dyn Sink>,
        health: Arc<Health>,
        fence: Fence,
        hooks: Hooks,
        supervisor: ActorRef<SupervisorMsg>,
    ) -> Self {
        let limits = RateLimits::new(&config.rate_limit);
        let epoch = Instant::now();
        Self {
            config,
            store,
            sink,
            health,
            fence,
            limits,
            hooks,
            supervisor,
            epoch,
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

    /// The relay's partition count.
    pub fn partitions(&self) -> usize {
        self.config.relay.partitions as usize
    }
}

/// The publisher partition of an aggregate: FNV-1a of the id, modulo the partition count.
/// Stable across restarts and versions (the `status` command computes the same).
pub fn partition_of(aggregate_id: &str, partitions: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in aggregate_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as usize
}

/// Exponential back-off: `initial × 2^(n-1)`, capped at `max` (n ≥ 1).
pub fn exponential(initial: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u64 << n.saturating_sub(1).min(30);
    initial
        .saturating_mul(factor.min(u32::MAX as u64) as u32)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_spread() {
        assert_eq!(partition_of("o-42", 8), partition_of("o-42", 8));
        // Fixed values: changing the hash would reorder rows across an upgrade.
        assert_eq!(partition_of("", 8), (0xcbf2_9ce4_8422_2325u64 % 8) as usize);
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[partition_of(&format!("agg-{i}"), 8)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(60);
        assert_eq!(exponential(i, m, 1), Duration::from_millis(100));
        assert_eq!(exponential(i, m, 2), Duration::from_millis(200));
        assert_eq!(exponential(i, m, 5), Duration::from_millis(1600));
        assert_eq!(exponential(i, m, 12), m);
        assert_eq!(exponential(i, m, 200), m);
    }
}
