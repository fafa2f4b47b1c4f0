//! The gap tracker: id ranges below the reader's cursor where no row has been seen yet.
//! A transaction that took an id and has not committed leaves such a gap; its row may
//! still appear (a late commit). The reader re-reads the gaps with every read and, once a
//! gap has been open past `poller.gap_grace_ms`, notes a *horizon* from the database: what
//! it needs to tell later that every transaction running then has ended (PostgreSQL: the
//! snapshot's `xmax`, passed once `xmin` reaches it; MariaDB/MySQL: the ids of the InnoDB
//! transactions running then, passed once none of them runs). Every transaction that could
//! fill the gap took its id before the gap was seen, so it was running when the horizon was
//! noted; once the horizon has passed, one more look-up settles the gap (the row committed,
//! or it never will) and it is dropped. Pure bookkeeping, no I/O.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tracing::debug;

use crate::store::{OutboxRow, PendingReader, ReadBatch, StoreError};

/// What a database tells the gap reader: its rows, and its running transactions.
pub(super) trait GapSource: Send + 'static {
    /// What the database says about running transactions now.
    type Now: Send;
    /// What a gap notes after its grace period, to tell later that every transaction
    /// running then has ended.
    type Horizon: Clone + Send;
    /// Asks the database about its running transactions.
    fn now(&self) -> BoxFuture<'_, Result<Self::Now, StoreError>>;
    /// The horizon to note now.
    fn note(now: &Self::Now) -> Self::Horizon;
    /// Whether every transaction running when `noted` was taken has ended by `now`.
    fn passed(now: &Self::Now, noted: &Self::Horizon) -> bool;
    /// The `limit` oldest pending rows with `id > after` or in one of the ranges, in one
    /// consistent read.
    fn fetch<'a>(
        &'a self,
        after: i64,
        ranges: &'a [(i64, i64)],
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<OutboxRow>, sqlx::Error>>;
}

/// The reader of one poller incarnation on a database: a cursor, and the gaps below it
/// read again with every read until their horizon has passed (the databases' readers
/// explain why that cannot skip a row).
pub(super) struct GapReader<S: GapSource> {
    source: S,
    grace: Duration,
    cursor: i64,
    gaps: Gaps<S::Horizon>,
}

impl<S: GapSource> GapReader<S> {
    /// A reader starting before every row; `grace` is `poller.gap_grace_ms`.
    pub(super) fn new(source: S, grace: Duration) -> Self {
        Self {
            source,
            grace,
            cursor: 0,
            gaps: Gaps::default(),
        }
    }

    async fn read_batch(&mut self, limit: i64) -> Result<ReadBatch, StoreError> {
        let now = Instant::now();
        if !self.gaps.is_empty() && self.gaps.needs_snapshot(now, self.grace) {
            let db_now = self.source.now().await?;
            self.gaps.apply_snapshot(
                &S::note(&db_now),
                |h| S::passed(&db_now, h),
                now,
                self.grace,
            );
        }
        let started = Instant::now();
        let ranges = self.gaps.ranges();
        let rows = self.source.fetch(self.cursor, &ranges, limit).await?;
        let full = rows.len() as i64 == limit;
        let cursor_before = self.cursor;
        let (cursor, late) = self.gaps.absorb(&rows, cursor_before, full, now);
        if late > 0 {
            debug!(rows = late, "Found late-committed rows in id gaps.");
        }
        self.cursor = cursor;
        Ok(ReadBatch {
            rows,
            cursor_before,
            full,
            started,
        })
    }
}

impl<S: GapSource> PendingReader for GapReader<S> {
    fn read(&mut self, limit: i64) -> BoxFuture<'_, Result<ReadBatch, StoreError>> {
        Box::pin(self.read_batch(limit))
    }

    fn cursor(&self) -> i64 {
        self.cursor
    }

    fn found(&mut self, id: i64) -> bool {
        let was = self.gaps.contains(id);
        self.gaps.remove_id(id);
        was
    }
}

/// An id range nobody has seen a row for yet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Gap<H> {
    lo: i64,
    hi: i64,
    seen: Instant,
    /// The horizon noted after the grace period: once it has passed, every transaction
    /// that could fill the gap has ended.
    horizon: Option<H>,
    /// The horizon has passed: one more look-up and the gap is settled.
    closing: bool,
}

/// The gaps below the cursor, by range; `H` is the store's horizon.
#[derive(Debug)]
pub(crate) struct Gaps<H>(Vec<Gap<H>>);

impl<H> Default for Gaps<H> {
    fn default() -> Self {
        Gaps(Vec::new())
    }
}

impl<H: Clone> Gaps<H> {
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

    /// Applies what the database says now: gaps past the grace period without a horizon
    /// get `noted`; gaps whose horizon has `passed` start closing.
    pub(super) fn apply_snapshot(
        &mut self,
        noted: &H,
        passed: impl Fn(&H) -> bool,
        now: Instant,
        grace: Duration,
    ) {
        for g in &mut self.0 {
            match &g.horizon {
                Some(h) if passed(h) => g.closing = true,
                None if now.duration_since(g.seen) >= grace => g.horizon = Some(noted.clone()),
                _ => {}
            }
        }
    }

    pub(super) fn drop_closing(&mut self) -> usize {
        let before = self.0.len();
        self.0.retain(|g| !g.closing);
        before - self.0.len()
    }

    /// Takes in one read's rows (oldest first; those at or below `cursor_before` came from
    /// gaps): records the new gaps, forgets the filled ids, and drops the closing gaps when
    /// the read returned every gap row (the limit did not cut the gap rows themselves).
    /// Returns the new cursor and how many rows were late.
    fn absorb(
        &mut self,
        rows: &[OutboxRow],
        cursor_before: i64,
        full: bool,
        now: Instant,
    ) -> (i64, usize) {
        let mut prev = cursor_before;
        let mut late = 0;
        for row in rows {
            if row.id > cursor_before {
                self.record_between(prev, row.id, now);
                prev = row.id;
            } else {
                late += 1;
                self.remove_id(row.id);
            }
        }
        if !full || prev > cursor_before {
            self.drop_closing();
        }
        (prev, late)
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
        let mut g = Gaps::<i64>::default();
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
        let mut g = Gaps::<i64>::default();
        // PostgreSQL's horizon: xmax noted, passed once xmin reaches it.
        let snapshot = |g: &mut Gaps<i64>, xmin: i64, xmax: i64, t| {
            g.apply_snapshot(&xmax, |h| xmin >= *h, t, grace)
        };
        g.record_between(1, 5, t0);
        assert!(!g.needs_snapshot(t0, grace), "within grace nothing to ask");
        let t1 = t0 + grace;
        assert!(g.needs_snapshot(t1, grace));
        snapshot(&mut g, 90, 100, t1);
        assert_eq!(g.0[0].horizon, Some(100));
        assert!(!g.0[0].closing);
        snapshot(&mut g, 99, 120, t1);
        assert!(
            !g.0[0].closing,
            "a transaction below the horizon may still run"
        );
        assert_eq!(g.drop_closing(), 0);
        snapshot(&mut g, 100, 130, t1);
        assert!(g.0[0].closing);
        assert_eq!(g.drop_closing(), 1);
        assert!(g.is_empty());
    }
}
