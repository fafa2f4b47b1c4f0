//! Reading pending rows on PostgreSQL without skipping a late committer.
//!
//! The reader reads `id > cursor` (oldest first). An identity value is taken when a row is
//! inserted, not when its transaction commits, so a transaction that took a lower id may
//! commit after higher ids were read. Every id missing between two rows read is therefore
//! remembered as a *gap* (`store/gaps.rs`) and looked up again, in the same statement as the new
//! rows (one snapshot: a late row is never read after a later row of its aggregate). A gap
//! is forgotten only when no transaction that could still fill it can be running: after
//! `poller.gap_grace_ms` the reader notes the snapshot's `xmax`, and once the snapshot
//! `xmin` has passed it, one last look-up settles the gap (the row committed, or it never
//! will: rolled back). The poller's periodic rescan is a second safety net.

use futures::future::BoxFuture;

use std::sync::Arc;

use super::primary::Primary;
use super::sql;
use crate::store::gaps::GapSource;
use crate::store::{OutboxRow, StoreError};

/// PostgreSQL's rows and snapshot horizon (a failure that may mean a failover starts the
/// search for the primary).
pub(super) struct PgGaps(pub(super) sqlx::PgPool, pub(super) Arc<Primary>);

impl GapSource for PgGaps {
    /// The snapshot's `(xmin, xmax)`.
    type Now = (i64, i64);
    /// `xmax` when the gap's grace period ended.
    type Horizon = i64;

    fn now(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(async move {
            sql::snapshot_bounds(&self.0).await.map_err(|e| {
                self.1.saw(&e);
                StoreError::Db(e)
            })
        })
    }

    fn note(&(_, xmax): &(i64, i64)) -> i64 {
        xmax
    }

    fn passed(&(xmin, _): &(i64, i64), noted: &i64) -> bool {
        xmin >= *noted
    }

    fn fetch<'a>(
        &'a self,
        after: i64,
        ranges: &'a [(i64, i64)],
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<OutboxRow>, sqlx::Error>> {
        Box::pin(async move {
            let rows = sql::fetch_after_and_in_ranges(&self.0, after, ranges, limit).await;
            if let Err(e) = &rows {
                self.1.saw(e);
            }
            rows
        })
    }
}
