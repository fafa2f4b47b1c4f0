//! Reading pending rows on MariaDB / MySQL without skipping a late committer.
//!
//! As on PostgreSQL, the reader reads `id > cursor` and remembers every id missing
//! between two rows read as a *gap*, looked up again in the same statement as the new rows
//! (one consistent read: a late row is never read after a later row of its aggregate).
//! InnoDB allocates an `AUTO_INCREMENT` value when a row is inserted, not when its
//! transaction commits, so a transaction that inserted a lower id may commit after higher
//! ids were read. There is no snapshot horizon like PostgreSQL's `xmin` to ask; instead,
//! once a gap has been open for `poller.gap_grace_ms`, the reader notes which InnoDB
//! transactions that have written rows are running (`INNODB_TRX`, [`sql::running_writers`]).
//!
//! Why that cannot skip a row: the counter hands out values in increasing order, so the
//! transaction holding a missing id inserted it before the higher id that revealed the gap
//! was inserted — before the gap was seen. At the moment the reader notes the running
//! writers, that transaction has either ended (committed: its row is visible to every later
//! read; rolled back: there is no row) or is running with at least that row modified, and
//! is noted. Read-write transaction ids are never reused, so when none of the noted ids
//! runs any more, every transaction that could fill the gap has ended, and one more
//! look-up settles it. `INNODB_TRX` is a copy refreshed at most every 0.1 s: it may show a
//! transaction that has just ended (the gap waits a little longer) or miss one that began
//! in the last 0.1 s — which cannot hold a gap's id, since the gap is at least the grace
//! period old (at least 0.2 s here) when the writers are noted. A transaction leaves
//! `INNODB_TRX` only after its commit is visible to new reads. Ids the application sets
//! itself are outside this argument (never set `id`); `dead-letters replay` puts rows back
//! below the cursor on purpose and asks for a rescan.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::sql;
use crate::store::gaps::GapSource;
use crate::store::{OutboxRow, StoreError};

/// The shortest grace before the running writers are noted: more than the 0.1 s for
/// which `INNODB_TRX` may be stale.
pub(super) const MIN_GRACE: Duration = Duration::from_millis(200);

/// MariaDB's / MySQL's rows and running writers.
pub(super) struct TrxGaps(pub(super) sqlx::MySqlPool);

impl GapSource for TrxGaps {
    /// The ids of the read-write transactions running now.
    type Now = Arc<[u64]>;
    /// Those running when the gap's grace period ended.
    type Horizon = Arc<[u64]>;

    fn now(&self) -> BoxFuture<'_, Result<Arc<[u64]>, StoreError>> {
        Box::pin(async move { Ok(sql::running_writers(&self.0).await?.into()) })
    }

    fn note(now: &Arc<[u64]>) -> Arc<[u64]> {
        now.clone()
    }

    fn passed(now: &Arc<[u64]>, noted: &Arc<[u64]>) -> bool {
        noted.iter().all(|id| !now.contains(id))
    }

    fn fetch<'a>(
        &'a self,
        after: i64,
        ranges: &'a [(i64, i64)],
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<OutboxRow>, sqlx::Error>> {
        Box::pin(sql::fetch_after_and_in_ranges(
            &self.0, after, ranges, limit,
        ))
    }
}
