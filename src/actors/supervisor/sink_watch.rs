//! The supervisor's watch on the sink: a standby asks the broker whether it answers (so
//! that readiness says whether it could take over), and an active relay looks for a
//! wedged client (rows in flight, nothing acknowledged, yet the broker answers) and
//! replaces it.

use std::time::{Duration, Instant};

use ractor::ActorRef;
use tracing::warn;

use super::{STANDBY_PROBE_EVERY, SupervisorState};
use crate::actors::messages::{Scope, SupervisorMsg};

impl SupervisorState {
    /// A standby publishes nothing, so nothing else would tell whether it could: it asks
    /// the broker itself (every [`STANDBY_PROBE_EVERY`], in the background), and readiness
    /// says what it found — a standby that cannot reach the broker is not ready to take over.
    pub(super) async fn probe_on_standby(&mut self) {
        if self
            .standby_probed_at
            .is_some_and(|t| t.elapsed() < STANDBY_PROBE_EVERY)
        {
            return;
        }
        self.standby_probed_at = Some(Instant::now());
        let health = self.args.health.clone();
        let sink = match &self.sink {
            Some(s) => s.clone(),
            None => match (self.args.sinks)(&self.args.config, health.clone()).await {
                Ok(s) => {
                    self.sink = Some(s.clone());
                    s
                }
                Err(e) => {
                    health.set_broker_up(false);
                    if health.set_broker_problem(Some(("sink", format!("{e:#}")))) {
                        warn!(error = %format!("{e:#}"), "Standing by without a usable sink.");
                    }
                    return;
                }
            },
        };
        tokio::spawn(async move {
            match sink.probe(Duration::from_secs(2)).await {
                Ok(_) => {
                    health.set_broker_up(true);
                }
                Err(why) => {
                    health.set_broker_up(false);
                    if health.set_broker_problem(Some(("unreachable", why.clone()))) {
                        warn!(problem = %why, "Standing by; the broker cannot be reached.");
                    }
                }
            }
        });
    }

    /// Replaces the producer when it has rows, acknowledges nothing, and yet the broker
    /// answers metadata requests: its idempotence state is stuck (a broker that lost it and
    /// keeps fencing the bumped epoch). A fresh producer gets a fresh producer id; the
    /// pipeline restarts from the table (not counted as a crash). During a real outage
    /// the broker does not answer, and nothing is replaced.
    pub(super) async fn check_producer(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let (Some(incarnation), Some(sink)) = (self.incarnation.clone(), self.sink.clone()) else {
            return;
        };
        let Some(stall) = sink.stall_timeout() else {
            return;
        };
        let Some(stalled) = incarnation.flow.stalled_for(Instant::now()) else {
            return;
        };
        if stalled < stall {
            return;
        }
        let answered = sink.probe(Duration::from_secs(2)).await.is_ok();
        if !answered {
            let _ = incarnation.ctx.health.set_broker_up(false);
            return;
        }
        warn!(
            stalled_ms = stalled.as_millis() as u64,
            "Producer acknowledged nothing while the broker answers; replacing it."
        );
        metrics::counter!("outboxd_producer_replacements_total").increment(1);
        sink.discard();
        self.sink = None;
        self.stop_pipeline().await;
        if let Err(e) = self.start_pipeline(myself).await {
            self.crashed(myself, Scope::Pipeline, e.to_string()).await;
        }
    }
}
