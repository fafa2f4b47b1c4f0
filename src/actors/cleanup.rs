//! Cleanup: every `cleanup.interval_secs`, deletes rows published more than
//! `cleanup.published_retention_secs` ago (with `relay.on_publish = "mark"`) and dead
//! letters resolved more than `cleanup.dead_letter_retention_secs` ago. Open dead letters
//! are never deleted: that would lose the event.
//!
//! Deletes go in statements of at most `cleanup.batch_size` rows, each its own short
//! transaction, so no lock is held for long. Every 10 s it also measures the backlog
//! (pending rows, counted up to [`BACKLOG_CAP`]) and the open dead letters for the gauges
//! `outboxd_backlog_rows` and `outboxd_dead_letters_open`.
//! Failure: an error is logged and the next run tries again; nothing depends on this actor.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use super::Context;
use super::messages::{CleanupMsg, CleanupReport};
use crate::config::{CleanupConfig, Config, OnPublish};
use crate::store::StoreError;

/// The cleanup behaviour.
pub struct Cleanup;

/// Pending rows counted for `outboxd_backlog_rows`: past this many the gauge says this
/// many (a count of millions would walk millions of index entries every 10 s).
pub const BACKLOG_CAP: i64 = 100_000;

/// What the cleanup actor is told at spawn: its section, and whether published rows stay.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[cleanup]`.
    pub cleanup: CleanupConfig,
    /// `relay.on_publish`: published rows are only deleted here when they are marked.
    pub on_publish: OnPublish,
}

impl Settings {
    /// The cleanup actor's part of the configuration.
    pub fn of(config: &Config) -> Self {
        Self {
            cleanup: config.cleanup.clone(),
            on_publish: config.relay.on_publish,
        }
    }
}

/// The cleanup actor's spawn arguments and state.
pub struct CleanupArgs {
    /// The incarnation's ports.
    pub ctx: Arc<Context>,
    /// Its settings.
    pub settings: Settings,
}

impl Actor for Cleanup {
    type Msg = CleanupMsg;
    type State = CleanupArgs;
    type Arguments = CleanupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CleanupArgs,
    ) -> Result<CleanupArgs, ActorProcessingErr> {
        let every = Duration::from_secs(args.settings.cleanup.interval_secs);
        myself.send_interval(every, || CleanupMsg::Tick);
        myself.send_interval(Duration::from_secs(10), || CleanupMsg::Measure);
        let _ = myself.send_message(CleanupMsg::Measure);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: CleanupMsg,
        st: &mut CleanupArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let CleanupMsg::Measure = msg {
            match st.ctx.store.backlog(BACKLOG_CAP).await {
                Ok((pending, open_dead_letters)) => {
                    metrics::gauge!("outboxd_backlog_rows").set(pending as f64);
                    metrics::gauge!("outboxd_dead_letters_open").set(open_dead_letters as f64);
                }
                // The database being down is reported by readiness and the other actors.
                Err(e) => debug!(error = %e, "Cannot measure the backlog."),
            }
            return Ok(());
        }
        let report = run(&st.ctx, &st.settings).await;
        match report {
            Ok(r) => {
                if r.published + r.dead_letters > 0 {
                    info!(
                        published = r.published,
                        dead_letters = r.dead_letters,
                        "Cleaned up."
                    );
                }
                if let CleanupMsg::RunNow(reply) = msg {
                    let _ = reply.send(r);
                }
            }
            Err(e) => warn!(error = %e, "Cleanup failed; next run will try again."),
        }
        Ok(())
    }
}

async fn run(ctx: &Context, settings: &Settings) -> Result<CleanupReport, StoreError> {
    let cfg = &settings.cleanup;
    let limit = i64::from(cfg.batch_size);
    let mut report = CleanupReport::default();
    if settings.on_publish == OnPublish::Mark {
        loop {
            let n = ctx
                .store
                .delete_published(
                    &ctx.fence,
                    Duration::from_secs(cfg.published_retention_secs),
                    limit,
                )
                .await?;
            report.published += n;
            if (n as i64) < limit {
                break;
            }
        }
    }
    loop {
        let n = ctx
            .store
            .delete_resolved_dead_letters(
                &ctx.fence,
                Duration::from_secs(cfg.dead_letter_retention_secs),
                limit,
            )
            .await?;
        report.dead_letters += n;
        if (n as i64) < limit {
            break;
        }
    }
    metrics::counter!("outboxd_cleanup_deleted_total")
        .increment(report.published + report.dead_letters);
    Ok(report)
}
