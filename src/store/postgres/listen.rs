//! Wake-ups from PostgreSQL: the insert trigger's NOTIFY, and rescan requests.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tracing::debug;

use super::primary::Primary;
use crate::outbox::{NOTIFY_CHANNEL, NOTIFY_RESCAN, NOTIFY_RESCAN_CHANNEL};
use crate::store::{RowWakeups, WakeFn, Wakeup};

/// Listens on [`NOTIFY_RESCAN_CHANNEL`], and on [`NOTIFY_CHANNEL`] while the poller wants
/// row wake-ups (`UNLISTEN` while it does not: under load it reads on its own cadence, and
/// every commit would otherwise signal the listening backend and send a message that wakes
/// the relay). Calls `wake`; reconnects on its own, and after a reconnect or a renewed
/// LISTEN wakes once, since notifications sent meanwhile are lost. When the pools are
/// pointed at a new primary it asks for a rescan: rows committed there below the reader's
/// cursor (ids the old primary handed out again, after an asynchronous failover) are read
/// too. A broken connection starts the search for the primary. Ends when `wake` returns
/// false or the poller is gone.
pub(super) async fn listen(
    pool: sqlx::PgPool,
    primary: Arc<Primary>,
    wake: WakeFn,
    mut wanted: RowWakeups,
) {
    let mut generation = primary.generation();
    loop {
        let mut listener = match connect(&pool).await {
            Ok(l) => l,
            Err(e) => {
                primary.saw(&e);
                debug!(error = %e, "LISTEN connection failed; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut listening = false;
        loop {
            let want = *wanted.borrow_and_update();
            if want != listening {
                let switched = if want {
                    listener.listen(NOTIFY_CHANNEL).await
                } else {
                    listener.unlisten(NOTIFY_CHANNEL).await
                };
                if let Err(e) = switched {
                    debug!(error = %e, "LISTEN / UNLISTEN failed; reconnecting.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                listening = want;
                // Rows committed before LISTEN took effect sent no notification to us.
                if listening && !wake(Wakeup::Rows) {
                    return;
                }
            }
            // `try_recv` is cancel-safe: a message is taken from the connection's buffer
            // only once it is complete.
            let received = tokio::select! {
                received = listener.try_recv() => received,
                switched = generation.changed() => {
                    if switched.is_ok() && !wake(Wakeup::Rescan) {
                        return;
                    }
                    continue;
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let alive = match received {
                Ok(Some(n)) if n.payload() == NOTIFY_RESCAN => wake(Wakeup::Rescan),
                Ok(Some(_)) if !listening => true, // sent before UNLISTEN took effect
                Ok(Some(_)) => wake(Wakeup::Rows),
                // The connection was lost and re-established: notifications may be lost.
                Ok(None) => wake(Wakeup::Rows),
                Err(e) => {
                    primary.saw(&e);
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

/// A listener on the rescan channel.
async fn connect(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_RESCAN_CHANNEL).await?;
    Ok(listener)
}
