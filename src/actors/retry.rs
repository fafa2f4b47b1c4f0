//! Retry / dead-letter: owns the story of a row that could not be published — what
//! happens to it, when, and to its aggregate.
//!
//! In: `Failed { row, failure, sent_at }` from the poller (the row's aggregate sends
//! nothing until the row comes back).
//! I decide: retry after an exponential back-off with jitter (transient and destination
//! failures), or dead-letter (permanent failures, `retry.max_attempts` reached, a missing
//! destination with `sink.missing_destination = "dead_letter"`); and whether a
//! dead-lettered row holds its aggregate (`relay.dead_letter_policy`).
//! Out to the poller: `RetryDue { row }` once the back-off is over (I keep the timer), or
//! `DeadLettered { row, hold }` — the row was moved to `outbox_dead_letter` with its
//! reason (and copied to `dead_letter.topic` when set).
//! A transient failure counts as an attempt only when the broker acknowledged other rows
//! since this one was sent: an outage that fails everyone does not use up attempts, so a
//! long broker outage delays rows but never dead-letters them.
//! Failure: database errors are retried (the decision is re-sent to self after a pause);
//! a fenced write tells the supervisor the lease is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::RngExt;
use tracing::{debug, info, warn};

use super::messages::{PollerMsg, RetryMsg, SupervisorMsg};
use super::{Context, Flow};
use crate::config::{Config, DeadLetterPolicy, MissingDestination, RetryConfig};
use crate::sink::{FailureKind, PublishFailure};
use crate::store::Row;
use crate::store::StoreError;

/// The retry / dead-letter behaviour.
pub struct Retry;

/// What the retry actor is told at spawn: the configuration of the failure story.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[retry]`: attempts and back-off.
    pub retry: RetryConfig,
    /// `sink.missing_destination`: hold rows for a missing destination, or dead-letter them.
    pub missing_destination: MissingDestination,
    /// `relay.dead_letter_policy`: whether a dead letter holds its aggregate.
    pub dead_letter_policy: DeadLetterPolicy,
    /// `dead_letter.topic`: where a copy of each dead letter goes (empty: nowhere).
    pub dead_letter_topic: String,
}

impl Settings {
    /// The retry actor's part of the configuration.
    pub fn of(config: &Config) -> Self {
        Self {
            retry: config.retry.clone(),
            missing_destination: config.sink.missing_destination,
            dead_letter_policy: config.relay.dead_letter_policy,
            dead_letter_topic: config.dead_letter.topic.clone(),
        }
    }
}

/// Start-up arguments.
pub struct RetryArgs {
    /// The incarnation's ports.
    pub ctx: Arc<Context>,
    /// Deliveries and timeouts: whether a failure was the row's own.
    pub flow: Arc<Flow>,
    /// Its settings.
    pub settings: Settings,
    /// Where decisions go.
    pub poller: ActorRef<PollerMsg>,
}

/// What the retry actor owns.
pub struct RetryState {
    args: RetryArgs,
    db_failures: u32,
}

/// The decision for one failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Try again after this long, with this many attempts recorded.
    Retry {
        /// Attempts so far.
        attempts: i32,
        /// Back-off before the next attempt.
        after: Duration,
    },
    /// Give up: dead-letter with this reason.
    DeadLetter {
        /// Attempts so far.
        attempts: i32,
        /// Why.
        reason: String,
    },
}

/// Back-off with "equal jitter": half the exponential delay, plus a random part of the
/// other half, so that rows failed together do not retry together.
pub fn backoff(cfg: &RetryConfig, attempts: u32, jitter: f64) -> Duration {
    let cap = super::exponential(
        Duration::from_millis(cfg.initial_backoff_ms),
        Duration::from_millis(cfg.max_backoff_ms),
        attempts.max(1),
    );
    cap / 2 + cap.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Decides what to do with a failed row. `counted` says whether this failure uses up an
/// attempt (see the module documentation).
pub fn decide(
    cfg: &RetryConfig,
    attempts_before: i32,
    tries_before: u32,
    failure: &PublishFailure,
    counted: bool,
    jitter: f64,
) -> Decision {
    match failure.kind {
        FailureKind::Permanent => Decision::DeadLetter {
            attempts: attempts_before + 1,
            reason: failure.message.clone(),
        },
        // The destination cannot take anything now: hold the row without using up its
        // attempts, however long the operator takes.
        FailureKind::Destination => Decision::Retry {
            attempts: attempts_before,
            after: backoff(cfg, tries_before + 1, jitter),
        },
        FailureKind::Transient | FailureKind::Fatal => {
            let attempts =
                attempts_before + i32::from(counted && failure.kind == FailureKind::Transient);
            if attempts >= cfg.max_attempts as i32 {
                Decision::DeadLetter {
                    attempts,
                    reason: format!(
                        "gave up after {attempts} attempts; last error ({}): {}",
                        failure.class, failure.message
                    ),
                }
            } else {
                Decision::Retry {
                    attempts,
                    after: backoff(cfg, tries_before + 1, jitter),
                }
            }
        }
    }
}

impl Actor for Retry {
    type Msg = RetryMsg;
    type State = RetryState;
    type Arguments = RetryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RetryArgs,
    ) -> Result<RetryState, ActorProcessingErr> {
        Ok(RetryState {
            args,
            db_failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: RetryMsg,
        state: &mut RetryState,
    ) -> Result<(), ActorProcessingErr> {
        let RetryMsg::Failed {
            row,
            failure,
            sent_at,
        } = msg;
        let ctx = state.args.ctx.clone();
        let settings = &state.args.settings;
        if failure.kind == FailureKind::Fatal {
            let _ = ctx
                .supervisor
                .send_message(SupervisorMsg::ProducerFatal(failure.message.clone()));
        }
        if failure.class == "timeout" {
            state.args.flow.note_timeout(Instant::now());
        }
        let counted = state.args.flow.delivered_since(sent_at);
        let jitter: f64 = rand::rng().random();
        let decision = if failure.is_missing_destination()
            && settings.missing_destination == MissingDestination::DeadLetter
        {
            Decision::DeadLetter {
                attempts: row.attempts + 1,
                reason: failure.message.clone(),
            }
        } else {
            decide(
                &settings.retry,
                row.attempts,
                row.tries,
                &failure,
                counted,
                jitter,
            )
        };
        let sink = ctx.sink.kind().name();
        metrics::counter!("outboxd_publish_failures_total", "sink" => sink, "class" => failure.class)
            .increment(1);
        if failure.kind == FailureKind::Destination
            && matches!(decision, Decision::Retry { .. })
            && ctx
                .health
                .set_destination_problem(&row.topic, failure.class, &failure.message)
        {
            warn!(
                destination = %row.topic,
                class = failure.class,
                error = %failure.message,
                "The destination refuses every row; they are held (not dead-lettered) until it is fixed."
            );
        }
        let outcome = match &decision {
            Decision::Retry { attempts, after } => ctx
                .store
                .record_failure(
                    &ctx.fence,
                    row.id,
                    *attempts,
                    *after,
                    &format!("{}: {}", failure.class, failure.message),
                )
                .await
                .map(|()| true),
            Decision::DeadLetter { attempts, reason } => {
                ctx.store
                    .dead_letter(&ctx.fence, row.id, *attempts, reason, failure.class)
                    .await
            }
        };
        match outcome {
            Ok(changed) => {
                state.db_failures = 0;
                ctx.health.set_db_up(true);
                match decision {
                    Decision::Retry { attempts, after } => {
                        // A failure of the row's own is worth a line; one that every row
                        // in flight shares (the broker is away) is not, per row: the
                        // producer and the readiness probe say so once.
                        if counted && failure.kind == FailureKind::Transient {
                            info!(
                                aggregate = %row.aggregate_id,
                                id = row.id,
                                class = failure.class,
                                attempts,
                                retry_in_ms = after.as_millis() as u64,
                                error = %failure.message,
                                "Publish failed; will retry."
                            );
                        } else {
                            debug!(
                                aggregate = %row.aggregate_id,
                                id = row.id,
                                class = failure.class,
                                retry_in_ms = after.as_millis() as u64,
                                error = %failure.message,
                                "Publish failed with the broker away; will retry."
                            );
                        }
                        let mut next = (*row).clone();
                        next.attempts = attempts;
                        next.tries += 1;
                        // The back-off is this actor's to keep: the row goes back to the
                        // poller when it is over.
                        let row = Arc::new(next);
                        state
                            .args
                            .poller
                            .send_after(after, move || PollerMsg::RetryDue { row });
                    }
                    Decision::DeadLetter { attempts, reason } => {
                        if changed {
                            warn!(
                                aggregate = %row.aggregate_id,
                                id = row.id,
                                class = failure.class,
                                attempts,
                                %reason,
                                "Dead-lettered a row."
                            );
                            metrics::counter!("outboxd_dead_letters_total", "sink" => sink, "class" => failure.class)
                                .increment(1);
                            copy_to_dlq(&ctx, settings, &row, failure.class, &reason);
                        }
                        let hold = settings.dead_letter_policy == DeadLetterPolicy::Hold;
                        let _ = state
                            .args
                            .poller
                            .send_message(PollerMsg::DeadLettered { row, hold });
                    }
                }
            }
            Err(StoreError::Fenced(lease)) => {
                warn!(%lease, "Lease lost while recording a failure.");
                let _ = ctx
                    .supervisor
                    .send_message(SupervisorMsg::LeaseLost("retry write was fenced".into()));
            }
            Err(StoreError::Db(e)) => {
                state.db_failures += 1;
                ctx.health.set_db_up(false);
                let pause = super::exponential(
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                    state.db_failures,
                );
                warn!(error = %e, "Cannot record a publish failure; will try again.");
                myself.send_after(pause, move || RetryMsg::Failed {
                    row,
                    failure,
                    sent_at,
                });
            }
        }
        Ok(())
    }
}

/// Best effort: a copy of the dead letter on `dead_letter.topic` (a topic, stream or
/// subject of the same sink). The table is the record; this is a notification.
fn copy_to_dlq(ctx: &Context, settings: &Settings, row: &Row, class: &str, reason: &str) {
    let topic = &settings.dead_letter_topic;
    if !topic.is_empty() {
        ctx.sink.copy_dead_letter(row, topic, class, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: FailureKind) -> PublishFailure {
        PublishFailure {
            kind,
            class: "x",
            message: "boom".into(),
        }
    }

    #[test]
    fn permanent_failure_dead_letters_at_once() {
        let d = decide(
            &RetryConfig::default(),
            0,
            0,
            &failure(FailureKind::Permanent),
            true,
            0.5,
        );
        assert_eq!(
            d,
            Decision::DeadLetter {
                attempts: 1,
                reason: "boom".into()
            }
        );
    }

    #[test]
    fn transient_failure_retries_until_max_attempts_then_dead_letters() {
        let cfg = RetryConfig {
            max_attempts: 3,
            ..Default::default()
        };
        let f = failure(FailureKind::Transient);
        assert!(matches!(
            decide(&cfg, 0, 0, &f, true, 0.0),
            Decision::Retry { attempts: 1, .. }
        ));
        assert!(matches!(
            decide(&cfg, 1, 1, &f, true, 0.0),
            Decision::Retry { attempts: 2, .. }
        ));
        match decide(&cfg, 2, 2, &f, true, 0.0) {
            Decision::DeadLetter { attempts, reason } => {
                assert_eq!(attempts, 3);
                assert!(reason.contains("gave up after 3 attempts"), "{reason}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn outage_wide_failures_do_not_use_up_attempts() {
        let cfg = RetryConfig {
            max_attempts: 1,
            ..Default::default()
        };
        let d = decide(&cfg, 0, 5, &failure(FailureKind::Transient), false, 0.0);
        // Not counted, yet the back-off keeps growing with the tries.
        assert_eq!(
            d,
            Decision::Retry {
                attempts: 0,
                after: Duration::from_millis(1600)
            }
        );
    }

    #[test]
    fn back_off_grows_with_jitter_inside_the_cap() {
        let cfg = RetryConfig::default();
        assert_eq!(backoff(&cfg, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&cfg, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&cfg, 4, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(&cfg, 30, 1.0), Duration::from_secs(60));
        assert!(backoff(&cfg, 30, 0.0) >= Duration::from_secs(30));
    }
}
