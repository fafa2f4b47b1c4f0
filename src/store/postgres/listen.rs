//! Wake-ups from PostgreSQL: the insert trigger's NOTIFY.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tracing::debug;

use crate::outbox::{NOTIFY_CHANNEL, NOTIFY_RESCAN};
use crate::store::{WakeFn, Wakeup};

/// Listens on [`NOTIFY_CHANNEL`] and calls `wake`; reconnects on its own, and after a
/// reconnect wakes once, since notifications sent meanwhile are lost. Ends when `wake`
/// returns false.
pub(super) async fn listen(pool: sqlx::PgPool, wake: WakeFn) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "LISTEN connection failed; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            debug!(error = %e, "LISTEN failed; retrying.");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if !wake(Wakeup::Rows) {
            return;
        }
        loop {
            let alive = match listener.try_recv().await {
                Ok(Some(n)) if n.payload() == NOTIFY_RESCAN => wake(Wakeup::Rescan),
                Ok(Some(_)) => wake(Wakeup::Rows),
                // The connection was lost and re-established: notifications may be lost.
                Ok(None) => wake(Wakeup::Rows),
                Err(e) => {
                    debug!(error = %e, "LISTEN connection broke; reconnecting.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            };
            if !alive {
                return;
            }
        }
    }
}
