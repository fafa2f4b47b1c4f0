//! Wake-ups without NOTIFY: MariaDB and MySQL cannot tell a client that rows were written,
//! so the watcher asks, every `poller.watch_ms` while the poller wants row wake-ups, for
//! the highest id in the outbox and the latest replay or discard of a dead letter — one
//! statement read off the end of two indexes ([`sql::watch_marks`]). A new highest id
//! wakes the poller ([`Wakeup::Rows`]), a new replay or discard asks for a rescan. Under
//! load the poller reads on its own cadence and says it wants no row wake-ups; the
//! watcher then looks only for rescans, once a second. Rows that commit late, below the
//! highest id, are found by the poller's own reads (`poller.interval_ms` at the latest).
//!
//! The watcher keeps one connection of the pool for itself: a statement through the pool
//! costs sqlx two pings besides the statement (one when the connection is taken, one when
//! it is given back), three round trips per look instead of one. A look that fails or
//! takes longer than [`LOOK_TIMEOUT`] (a connection cut without a reset) closes that
//! connection; the next look takes a fresh one.

use std::time::Duration;

use sqlx::MySql;
use sqlx::pool::PoolConnection;
use tracing::debug;

use super::sql;
use crate::store::{RowWakeups, WakeFn, Wakeup};

/// How often rescans are looked for while the poller wants no row wake-ups.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// How long one look may take before its connection is given up.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Polls until `wake` returns false or the poller is gone.
pub(super) async fn watch(
    pool: sqlx::MySqlPool,
    every: Duration,
    wake: WakeFn,
    mut wanted: RowWakeups,
) {
    let mut last: Option<(Option<i64>, Option<String>)> = None;
    let mut failed = false;
    let mut conn: Option<PoolConnection<MySql>> = None;
    loop {
        let want = *wanted.borrow_and_update();
        let look = async {
            match conn.as_mut() {
                Some(c) => sql::watch_marks(c).await,
                None => {
                    let c = pool.acquire().await?;
                    sql::watch_marks(conn.insert(c)).await
                }
            }
        };
        let marks = match tokio::time::timeout(LOOK_TIMEOUT, look).await {
            Ok(marks) => marks.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer in {LOOK_TIMEOUT:?}")),
        };
        match marks {
            Ok((max_id, resolved)) => {
                let alive = match &last {
                    // The first look, or the first after a failure: rows may have come
                    // meanwhile.
                    None => !failed || wake(Wakeup::Rows),
                    Some((id, res)) => {
                        let mut alive = true;
                        if *res != resolved {
                            alive = wake(Wakeup::Rescan);
                        }
                        if alive && want && *id != max_id {
                            alive = wake(Wakeup::Rows);
                        }
                        alive
                    }
                };
                if !alive {
                    return;
                }
                last = Some((max_id, resolved));
                failed = false;
            }
            Err(e) => {
                debug!(error = %e, "Looking for new outbox rows failed; retrying.");
                // A fresh connection next time: this one may be broken, so it is closed
                // rather than pinged back into the pool.
                if let Some(mut c) = conn.take() {
                    c.close_on_drop();
                }
                last = None;
                failed = true;
            }
        }
        let pause = if want { every } else { RESCAN_EVERY };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = wanted.changed() => {
                if changed.is_err() {
                    return;
                }
                // Wanted again: rows may have been written while nobody looked.
                if *wanted.borrow() && !wake(Wakeup::Rows) {
                    return;
                }
            }
        }
    }
}
