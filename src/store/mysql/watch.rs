//! Wake-ups without NOTIFY: MariaDB and MySQL cannot tell a client that rows were written,
//! so the watcher asks, every `poller.watch_ms` while the poller wants row wake-ups, for
//! the highest id in the outbox and the latest replay or discard of a dead letter — one
//! statement read off the end of two indexes ([`sql::watch_marks`]). A new highest id
//! wakes the poller ([`Wakeup::Rows`]), a new replay or discard asks for a rescan. Under
//! load the poller reads on its own cadence and says it wants no row wake-ups; the
//! watcher then looks only for rescans, once a second. Rows that commit late, below the
//! highest id, are found by the poller's own reads (`poller.interval_ms` at the latest).

use std::time::Duration;

use tracing::debug;

use super::sql;
use crate::store::{RowWakeups, WakeFn, Wakeup};

/// How often rescans are looked for while the poller wants no row wake-ups.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Polls until `wake` returns false or the poller is gone.
pub(super) async fn watch(
    pool: sqlx::MySqlPool,
    every: Duration,
    wake: WakeFn,
    mut wanted: RowWakeups,
) {
    let mut last: Option<(Option<i64>, Option<String>)> = None;
    let mut failed = false;
    loop {
        let want = *wanted.borrow_and_update();
        match sql::watch_marks(&pool).await {
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
