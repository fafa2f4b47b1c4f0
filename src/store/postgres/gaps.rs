//! The gap tracker: id ranges below the reader's cursor where no row has been seen yet.
//! A transaction that took an id and has not committed leaves such a gap; its row may
//! still appear (a late commit). The reader re-reads the gaps with every read and, once a
//! gap has been open past `poller.gap_grace_ms`, asks PostgreSQL for a snapshot: when
//! `xmin` passes the `xmax` noted then, every transaction that could fill it has ended and
//! the gap is dropped. Pure bookkeeping, no I/O.

use std::time::{Duration, Instant};

/// An id range nobody has seen a row for yet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Gap {
    lo: i64,
    hi: i64,
    seen: Instant,
    /// The snapshot `xmax` noted after the grace period: once `xmin` passes it, every
    /// transaction that could fill the gap has ended.
    horizon: Option<i64>,
    /// `xmin` passed the horizon: one more look-up and the gap is settled.
    closing: bool,
}

/// The gaps below the cursor, by range.
#[derive(Debug, Default)]
pub(crate) struct Gaps(Vec<Gap>);

impl Gaps {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Remembers the ids strictly between `prev` and `next`.
    pub(super) fn record_between(&mut self, prev: i64, next: i64, now: Instant) {
        if next > prev + 1 {
            self.0.push(Gap {
                lo: prev + 1,
                hi: next - 1,
                seen: now,
                horizon: None,
                closing: false,
            });
        }
    }

    /// A row with this id was found: the gap around it splits.
    pub(super) fn remove_id(&mut self, id: i64) {
        if let Some(i) = self.0.iter().position(|g| g.lo <= id && id <= g.hi) {
            let g = self.0.swap_remove(i);
            if g.lo < id {
                self.0.push(Gap {
                    hi: id - 1,
                    ..g.clone()
                });
            }
            if id < g.hi {
                self.0.push(Gap { lo: id + 1, ..g });
            }
        }
    }

    pub(super) fn ranges(&self) -> Vec<(i64, i64)> {
        self.0.iter().map(|g| (g.lo, g.hi)).collect()
    }

    pub(super) fn needs_snapshot(&self, now: Instant, grace: Duration) -> bool {
        self.0
            .iter()
            .any(|g| g.horizon.is_some() || now.duration_since(g.seen) >= grace)
    }

    pub(super) fn apply_snapshot(&mut self, xmin: i64, xmax: i64, now: Instant, grace: Duration) {
        for g in &mut self.0 {
            match g.horizon {
                Some(h) if xmin >= h => g.closing = true,
                None if now.duration_since(g.seen) >= grace => g.horizon = Some(xmax),
                _ => {}
            }
        }
    }

    pub(super) fn drop_closing(&mut self) -> usize {
        let before = self.0.len();
        self.0.retain(|g| !g.closing);
        before - self.0.len()
    }

    pub(super) fn contains(&self, id: i64) -> bool {
        self.0.iter().any(|g| g.lo <= id && id <= g.hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_split_when_late_rows_appear() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.record_between(10, 11, t);
        assert!(g.is_empty(), "adjacent ids leave no gap");
        g.record_between(11, 20, t);
        assert_eq!(g.ranges(), vec![(12, 19)]);
        g.remove_id(15);
        let mut r = g.ranges();
        r.sort();
        assert_eq!(r, vec![(12, 14), (16, 19)]);
        g.remove_id(12);
        g.remove_id(19);
        let mut r = g.ranges();
        r.sort();
        assert_eq!(r, vec![(13, 14), (16, 18)]);
        assert!(g.contains(13) && !g.contains(15));
    }

    #[test]
    fn a_gap_closes_only_after_xmin_passes_the_horizon_noted_after_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_millis(100);
        let mut g = Gaps::default();
        g.record_between(1, 5, t0);
        assert!(!g.needs_snapshot(t0, grace), "within grace nothing to ask");
        let t1 = t0 + grace;
        assert!(g.needs_snapshot(t1, grace));
        g.apply_snapshot(90, 100, t1, grace);
        assert_eq!(g.0[0].horizon, Some(100));
        assert!(!g.0[0].closing);
        g.apply_snapshot(99, 120, t1, grace);
        assert!(
            !g.0[0].closing,
            "a transaction below the horizon may still run"
        );
        assert_eq!(g.drop_closing(), 0);
        g.apply_snapshot(100, 130, t1, grace);
        assert!(g.0[0].closing);
        assert_eq!(g.drop_closing(), 1);
        assert!(g.is_empty());
    }
}
