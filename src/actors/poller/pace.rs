//! When the poller reads, and whether it wants the store's row wake-ups.
//!
//! - A read after a quiet spell (the last read found nothing) goes at once: a lone event
//!   is not kept waiting.
//! - After a read that found rows, the next one waits a *gathering window* after it, so
//!   that the events committed meanwhile share one read, one dispatch, one produce request
//!   per partition and one delete. The window grows with the square of the arrival rate
//!   up to `poller.gather_ms`, reached at `poller.gather_full_rate` events/s (by default
//!   10 ms at 2,000/s: 2.5 ms at 1,000/s, 0.6 ms at 500/s). At low rates an event hardly
//!   waits (the relay's work per event is small beside what the machine has to spare); as
//!   the rate rises, reads and produce requests per second fall and their work is shared
//!   by more events, when the relay competes with the application for the machine.
//! - Group commit, if asked for (`poller.coalesce_ms`, 0 by default): while rows of the
//!   latest dispatch are with the broker, a read also waits for their acknowledgement, at
//!   most that long after the dispatch.
//! - A backlog (the last read was cut by the batch size) is read on at once.
//! - When the window is at least [`PACED_GATHER`] and [`PACE_AFTER`] reads in a row found
//!   rows, the poller reads on this cadence on its own and turns row wake-ups off
//!   (PostgreSQL: `UNLISTEN`; a NOTIFY per commit would wake the relay and a database
//!   backend for nothing); when [`RESUME_AFTER`] reads in a row found nothing, or the rate
//!   fell, it turns them on again, and the store wakes it once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::ActorRef;

use crate::actors::messages::PollerMsg;

/// Reads in a row that found rows before the poller paces itself.
pub const PACE_AFTER: u32 = 3;
/// Reads in a row that found nothing before it wants wake-ups again.
pub const RESUME_AFTER: u32 = 2;
/// The gathering window below which the poller does not pace itself (at lower rates a
/// NOTIFY per event costs little, and reads would often find nothing).
pub const PACED_GATHER: Duration = Duration::from_millis(1);
/// How long the arrival rate is counted over.
pub const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The poller's read timing.
#[derive(Debug)]
pub struct Pace {
    /// The longest gathering window.
    gather_max: Duration,
    /// The arrival rate, events/s, at which the window reaches `gather_max`.
    full_rate: f64,
    /// The current gathering window.
    gather: Duration,
    coalesce: Duration,
    /// Rows found since `window_start`, for the arrival rate.
    window_rows: usize,
    window_start: Instant,
    last_read: Option<Instant>,
    last_found: bool,
    found_streak: u32,
    empty_streak: u32,
    paced: bool,
}

/// The latest dispatch round, as far as read timing cares.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Rows of it still with the broker.
    pub pending: usize,
    /// When it was dispatched.
    pub started: Instant,
}

impl Pace {
    /// `poller.gather_ms`, `poller.gather_full_rate` and `poller.coalesce_ms`.
    pub fn new(gather_max: Duration, full_rate: u32, coalesce: Duration) -> Self {
        Self {
            gather_max,
            full_rate: f64::from(full_rate.max(1)),
            gather: Duration::ZERO,
            coalesce,
            window_rows: 0,
            window_start: Instant::now(),
            last_read: None,
            last_found: false,
            found_streak: 0,
            empty_streak: 0,
            paced: false,
        }
    }

    /// Whether the poller reads on its own cadence (and wants no row wake-ups).
    pub fn paced(&self) -> bool {
        self.paced
    }

    /// The earliest moment a read may go, backlogs aside.
    pub fn read_at(&self, round: Round) -> Option<Instant> {
        let gather = if self.paced {
            self.gather.max(PACED_GATHER)
        } else {
            self.gather
        };
        let gathered = self
            .last_read
            .filter(|_| self.last_found || self.paced)
            .map(|t| t + gather);
        let acked = (round.pending > 0).then(|| round.started + self.coalesce);
        gathered.max(acked)
    }

    /// Whether a wanted read may go at `now`; `more`: the last read was cut by the batch
    /// size.
    pub fn may_read(&self, now: Instant, more: bool, round: Round) -> bool {
        more || self.read_at(round).is_none_or(|t| now >= t)
    }

    /// A read at `now` found `found` rows. Returns `Some(wanted)` when row wake-ups should
    /// be switched on (`true`) or off.
    pub fn read(&mut self, now: Instant, found: usize) -> Option<bool> {
        self.estimate_rate(now, found);
        self.last_read = Some(now);
        self.last_found = found > 0;
        if found > 0 {
            self.found_streak = self.found_streak.saturating_add(1);
            self.empty_streak = 0;
        } else {
            self.empty_streak = self.empty_streak.saturating_add(1);
            self.found_streak = 0;
        }
        let busy = self.gather >= PACED_GATHER;
        if !self.paced && busy && self.found_streak >= PACE_AFTER {
            self.paced = true;
            return Some(false);
        }
        if self.paced && (!busy || self.empty_streak >= RESUME_AFTER) {
            self.paced = false;
            return Some(true);
        }
        None
    }

    /// The current gathering window.
    pub fn gather(&self) -> Duration {
        self.gather
    }

    /// Rows found per second over windows of [`RATE_WINDOW`] set the gathering window.
    fn estimate_rate(&mut self, now: Instant, found: usize) {
        self.window_rows += found;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < RATE_WINDOW {
            return;
        }
        let share = self.window_rows as f64 / elapsed.as_secs_f64() / self.full_rate;
        self.gather = self.gather_max.mul_f64((share * share).min(1.0));
        self.window_rows = 0;
        self.window_start = now;
    }
}

/// The poller's side: reads wanted and scheduled.
impl super::PollerState {
    /// A read is wanted (a wake-up, or the poller's own cadence): it goes now if
    /// [`Pace`] allows, or when it does. Wake-ups meanwhile join it.
    pub(super) async fn want_read(&mut self, myself: &ActorRef<PollerMsg>) {
        let round = self.latest_round();
        if self.pace.may_read(Instant::now(), self.more, round) {
            self.read_wanted = false;
            // NOTIFYs from here on wake the poller again.
            self.wake_flag.store(false, Ordering::Release);
            self.cycle(myself).await;
            return;
        }
        // The listener's flag stays set: it sends no more wake-ups until this read.
        self.read_wanted = true;
        if let Some(at) = self.pace.read_at(round) {
            self.read_due(myself, at);
        }
    }

    pub(super) fn latest_round(&self) -> Round {
        Round {
            pending: self.round_pending,
            started: self.round_started,
        }
    }

    /// Schedules a `ReadDue` for `at`, unless one comes earlier.
    pub(super) fn read_due(&mut self, myself: &ActorRef<PollerMsg>, at: Instant) {
        if self.read_due_at.is_some_and(|t| t <= at) {
            return;
        }
        self.read_due_at = Some(at);
        let after = at.saturating_duration_since(Instant::now());
        myself.send_after(after, || PollerMsg::ReadDue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn idle(at: Instant) -> Round {
        Round {
            pending: 0,
            started: at,
        }
    }

    /// A pace (10 ms from 2,000/s on) that has seen `per_second` rows/s for a
    /// rate window; returns it and the time of its last read.
    fn at_rate(per_second: usize) -> (Pace, Instant) {
        let mut pace = Pace::new(10 * MS, 2_000, 5 * MS);
        let t = pace.window_start + RATE_WINDOW;
        pace.read(t, per_second / 10);
        (pace, t)
    }

    #[test]
    fn a_lone_event_is_read_at_once() {
        let t0 = Instant::now();
        let mut pace = Pace::new(10 * MS, 2_000, 5 * MS);
        assert!(pace.may_read(t0, false, idle(t0)));
        assert_eq!(pace.read(t0, 0), None);
        assert!(pace.may_read(t0 + MS, false, idle(t0)));
        // At a low rate an event found hardly holds the next read back (100/s: 25 µs).
        let (mut pace, t) = at_rate(100);
        pace.read(t + MS, 1);
        assert_eq!(pace.read_at(idle(t)), Some(t + MS + MS / 40));
    }

    #[test]
    fn the_gathering_window_grows_with_the_rate_up_to_its_cap() {
        assert_eq!(at_rate(500).0.gather(), MS * 5 / 8);
        assert_eq!(at_rate(1_000).0.gather(), MS * 5 / 2);
        assert_eq!(at_rate(2_000).0.gather(), 10 * MS);
        assert_eq!(at_rate(9_000).0.gather(), 10 * MS);
        let (pace, t) = at_rate(1_600);
        assert_eq!(pace.gather(), 6400 * MS / 1000);
        assert!(!pace.may_read(t + 6 * MS, false, idle(t)));
        assert_eq!(pace.read_at(idle(t)), Some(t + 6400 * MS / 1000));
        assert!(pace.may_read(t + 7 * MS, false, idle(t)));
        // A backlog is read on at once.
        assert!(pace.may_read(t + MS, true, idle(t)));
    }

    #[test]
    fn a_read_waits_for_the_rounds_acknowledgement_at_most_coalesce() {
        let (pace, t) = at_rate(500);
        let round = Round {
            pending: 4,
            started: t + MS,
        };
        assert!(!pace.may_read(t + 5 * MS, false, round));
        assert_eq!(pace.read_at(round), Some(t + 6 * MS));
        assert!(pace.may_read(t + 5 * MS, false, idle(t + MS)));
    }

    #[test]
    fn wake_ups_go_off_under_load_and_come_back_when_reads_find_nothing() {
        let (mut pace, t) = at_rate(2_000);
        assert!(!pace.paced());
        assert_eq!(pace.read(t + 8 * MS, 16), None);
        assert_eq!(pace.read(t + 16 * MS, 16), Some(false));
        assert!(pace.paced());
        assert_eq!(pace.read(t + 24 * MS, 15), None);
        // One empty read keeps the pace, and the next read still waits.
        assert_eq!(pace.read(t + 32 * MS, 0), None);
        assert!(!pace.may_read(t + 33 * MS, false, idle(t)));
        assert_eq!(pace.read(t + 40 * MS, 0), Some(true));
        assert!(!pace.paced());
        assert!(pace.may_read(t + 41 * MS, false, idle(t)));
    }

    #[test]
    fn at_low_rates_or_without_gathering_the_poller_never_paces_itself() {
        let (mut pace, t) = at_rate(100);
        for i in 1..10 {
            assert_eq!(pace.read(t + i * 10 * MS, 1), None);
        }
        let mut pace = Pace::new(Duration::ZERO, 2_000, 5 * MS);
        let t0 = pace.window_start;
        for i in 1..30 {
            assert_eq!(pace.read(t0 + i * 10 * MS, 20), None);
            assert!(pace.may_read(t0 + i * 10 * MS, false, idle(t0)));
        }
    }
}
