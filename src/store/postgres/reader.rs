//! Reading pending rows on PostgreSQL without skipping a late committer.
//!
//! The reader reads `id > cursor` (oldest first). An identity value is taken when a row is
//! inserted, not when its transaction commits, so a transaction that took a lower id may
//! commit after higher ids were read. Every id missing between two rows read is therefore
//! remembered as a *gap* ([`Gaps`]) and looked up again, in the same statement as the new
//! rows (one snapshot: a late row is never read after a later row of its aggregate). A gap
//! is forgotten only when no transaction that could still fill it can be running: after
//! `poller.gap_grace_ms` the reader notes the snapshot's `xmax`, and once the snapshot
//! `xmin` has passed it, one last look-up settles the gap (the row committed, or it never
//! will: rolled back). The poller's periodic rescan is a second safety net.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tracing::debug;

use super::gaps::Gaps;
use super::sql;
use crate::store::{PendingReader, ReadBatch, StoreError};

/// The cursor and the gaps of one poller incarnation.
pub(super) struct GapReader {
    pub(super) pool: sqlx::PgPool,
    pub(super) grace: Duration,
    pub(super) cursor: i64,
    pub(super) gaps: Gaps,
}

impl GapReader {
    async fn read_batch(&mut self, limit: i64) -> Result<ReadBatch, StoreError> {
        let now = Instant::now();
        if !self.gaps.is_empty() && self.gaps.needs_snapshot(now, self.grace) {
            let (xmin, xmax) = sql::snapshot_bounds(&self.pool).await?;
            self.gaps.apply_snapshot(xmin, xmax, now, self.grace);
        }
        let started = Instant::now();
        let rows =
            sql::fetch_after_and_in_ranges(&self.pool, self.cursor, &self.gaps.ranges(), limit)
                .await?;
        let full = rows.len() as i64 == limit;
        let cursor_before = self.cursor;
        let mut prev = cursor_before;
        let mut late = 0;
        for row in &rows {
            if row.id > cursor_before {
                self.gaps.record_between(prev, row.id, now);
                prev = row.id;
            } else {
                late += 1;
                self.gaps.remove_id(row.id);
            }
        }
        // Every gap row was returned unless the limit cut the gap rows themselves (then no
        // row above the old cursor came back): only then may closing gaps go.
        if !full || prev > cursor_before {
            self.gaps.drop_closing();
        }
        if late > 0 {
            debug!(rows = late, "Found late-committed rows in id gaps.");
        }
        self.cursor = prev;
        Ok(ReadBatch {
            rows,
            cursor_before,
            full,
            started,
        })
    }
}

impl PendingReader for GapReader {
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
