//! Supervisor: the root of the relay.
//!
//! It competes for the lease (standing by while another instance holds it), and while it
//! holds the lease runs the pipeline — poller, `relay.partitions` publishers, acker, retry
//! and cleanup — renewing the lease as [`Lease`] says (every 250 ms by default) and
//! letting the pipeline publish only within the window each renewal gives.
//!
//! Restarts. A crashed child is restarted after an exponential back-off
//! (`supervisor.initial_backoff_ms`, doubling, capped at `supervisor.max_backoff_ms`):
//! - a publisher alone — the poller is given the new reference and re-sends the rows the
//!   crashed one held;
//! - the cleanup actor alone — nothing depends on it;
//! - the poller, the acker or the retry actor together with every actor holding a
//!   reference to them (the whole pipeline but cleanup), rebuilt from the table.
//!
//! More than `supervisor.max_restarts` crashes within `supervisor.restart_window_secs`
//! stop the relay with [`RelayExit::RestartBudgetExhausted`]: the process exits non-zero and
//! systemd or Kubernetes restarts it. A lost lease stops the pipeline and goes back to
//! standing by. `Shutdown` stops claiming, waits for in-flight sends up to
//! `relay.shutdown_timeout_ms`, marks what was acknowledged and releases the lease.

mod sink_watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{error, info, warn};

use super::acker::{Acker, AckerArgs};
use super::cleanup::{self, Cleanup, CleanupArgs};
use super::lease::{Lease, Renewal, Take};
use super::messages::{
    AckerMsg, CleanupMsg, Hooks, PollerMsg, PublisherMsg, RelayExit, RetryMsg, Scope,
    ShutdownReport, SupervisorInfo, SupervisorMsg, Wiring,
};
use super::poller::{self, Poller, PollerArgs};
use super::publisher::{Publisher, PublisherArgs};
use super::retry::{self, Retry, RetryArgs};
use super::{Context, Flow, names};
use crate::config::Config;
use crate::health::{Health, LeaseState};
use crate::ratelimit::RateLimits;
use crate::sink::{self, Sink};
use crate::store::{LockCheck, Store, is_missing_schema};

/// One pipeline incarnation as the supervisor keeps it: what it handed every actor.
#[derive(Clone)]
struct Incarnation {
    ctx: Arc<Context>,
    flow: Arc<Flow>,
}

/// The supervisor behaviour.
pub struct Supervisor;

/// How often a standby asks the broker whether it answers.
const STANDBY_PROBE_EVERY: Duration = Duration::from_secs(5);

/// Start-up arguments.
pub struct SupervisorArgs {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Builds the sink (again after a fatal client error).
    pub sinks: sink::SinkFactory,
    /// Readiness facts.
    pub health: Arc<Health>,
    /// Embedding callbacks.
    pub hooks: Hooks,
    /// This instance's name in the lease table.
    pub owner: String,
    /// Suffix for actor names, unique per relay in the process.
    pub tag: String,
    /// Where the reason for stopping is left.
    pub exit: Arc<Mutex<Option<RelayExit>>>,
}

#[derive(Default)]
struct Refs {
    poller: Option<ActorRef<PollerMsg>>,
    publishers: Vec<Option<ActorRef<PublisherMsg>>>,
    acker: Option<ActorRef<AckerMsg>>,
    retry: Option<ActorRef<RetryMsg>>,
    cleanup: Option<ActorRef<CleanupMsg>>,
}

/// What the supervisor owns.
pub struct SupervisorState {
    args: SupervisorArgs,
    sink: Option<Arc<dyn Sink>>,
    /// The running incarnation: its context and its counters.
    incarnation: Option<Incarnation>,
    lease: Lease,
    /// Until when the pipeline may publish (see [`Lease::window`]).
    lease_deadline: Option<Instant>,
    refs: Refs,
    children: HashMap<ActorId, Scope>,
    expected_exits: HashSet<ActorId>,
    crashes: VecDeque<Instant>,
    restarts: u64,
    generations: Vec<u64>,
    standby_logged: bool,
    /// "run `outboxd migrate`" was said (once per outage of the schema).
    schema_missing_logged: bool,
    /// When a standby last asked the broker.
    standby_probed_at: Option<Instant>,
    shutting_down: bool,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let lease = Lease::new(
            args.owner.clone(),
            Duration::from_millis(args.config.relay.lease_ttl_ms),
        );
        myself.send_interval(lease.renew_every(), || SupervisorMsg::RenewLease);
        // Only Kafka's stall timeout is configurable; the others never wedge (see
        // `Sink::stall_timeout`), and the check is then a no-op.
        let stall = Duration::from_millis(args.config.kafka.stall_timeout_ms);
        myself.send_interval((stall / 4).max(Duration::from_millis(250)), || {
            SupervisorMsg::CheckProducer
        });
        myself.send_message(SupervisorMsg::AcquireLease)?;
        // Series that exist before anything happens, so dashboards and alerts see zeros.
        for scope in [Scope::Pipeline, Scope::Publisher(0), Scope::Cleanup] {
            metrics::counter!("outboxd_actor_restarts_total", "actor" => scope_label(scope))
                .increment(0);
        }
        for counter in [
            "outboxd_lease_acquisitions_total",
            "outboxd_late_rows_total",
            "outboxd_cleanup_deleted_total",
        ] {
            metrics::counter!(counter).increment(0);
        }
        metrics::gauge!("outboxd_restart_budget")
            .set(f64::from(args.config.supervisor.max_restarts));
        args.health.publish_gauges();
        metrics::gauge!("outboxd_destinations_blocked").set(0.0);
        metrics::gauge!("outboxd_oldest_pending_age_seconds").set(0.0);
        let partitions = args.config.relay.partitions as usize;
        Ok(SupervisorState {
            args,
            sink: None,
            incarnation: None,
            lease,
            lease_deadline: None,
            refs: Refs::default(),
            children: HashMap::new(),
            expected_exits: HashSet::new(),
            crashes: VecDeque::new(),
            restarts: 0,
            generations: vec![0; partitions],
            standby_logged: false,
            schema_missing_logged: false,
            standby_probed_at: None,
            shutting_down: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        st.args.health.set_lease(LeaseState::None);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::AcquireLease => st.acquire(&myself).await,
            SupervisorMsg::RenewLease => st.renew(&myself).await,
            SupervisorMsg::Restart(scope) => st.restart(&myself, scope).await,
            SupervisorMsg::LeaseLost(why) => {
                if st.incarnation.is_some() {
                    warn!(%why, "Lease lost; stopping the pipeline and standing by.");
                    st.lose_lease(&myself).await;
                }
            }
            SupervisorMsg::ProducerFatal(why) => {
                if st.incarnation.is_some() {
                    error!(%why, "Fatal sink error; restarting the pipeline with a new client.");
                    st.sink = None;
                    st.crashed(&myself, Scope::Pipeline, why).await;
                }
            }
            SupervisorMsg::Shutdown(reply) => {
                let report = st.shutdown().await;
                *st.args.exit.lock().expect("exit lock") = Some(RelayExit::Stopped);
                let _ = reply.send(report);
                myself.stop(None);
            }
            SupervisorMsg::Info(reply) => {
                let _ = reply.send(SupervisorInfo {
                    active: st.incarnation.is_some(),
                    epoch: st.lease.fence.as_ref().map(|f| f.epoch),
                    restarts: st.restarts,
                });
            }
            SupervisorMsg::Poller(reply) => {
                let _ = reply.send(st.refs.poller.clone());
            }
            SupervisorMsg::CheckProducer => st.check_producer(&myself).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if st.expected_exits.remove(&id) {
            return Ok(());
        }
        if let Some(scope) = st.children.remove(&id) {
            let name = cell.get_name().unwrap_or_default();
            warn!(actor = %name, %why, "Actor crashed.");
            metrics::counter!("outboxd_actor_restarts_total", "actor" => scope_label(scope))
                .increment(1);
            st.crashed(&myself, scope, why).await;
        }
        Ok(())
    }
}

fn scope_label(scope: Scope) -> &'static str {
    match scope {
        Scope::Pipeline => "pipeline",
        Scope::Publisher(_) => "publisher",
        Scope::Cleanup => "cleanup",
    }
}

impl SupervisorState {
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.args.config.relay.lease_ttl_ms)
    }

    fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.args.tag)
    }

    async fn acquire(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if self.shutting_down || self.incarnation.is_some() {
            return;
        }
        match self.lease.acquire(&*self.args.store).await {
            Ok(Take::Taken(epoch, deadline)) => {
                self.args.health.set_db_up(true);
                self.schema_missing_logged = false;
                info!(owner = %self.args.owner, epoch, "Lease acquired; starting the pipeline.");
                metrics::counter!("outboxd_lease_acquisitions_total").increment(1);
                self.standby_logged = false;
                self.lease_deadline = Some(deadline);
                self.args.health.set_lease(LeaseState::Active);
                if let Err(e) = self.start_pipeline(myself).await {
                    error!(error = %e, "Cannot start the pipeline; retrying.");
                    self.stop_pipeline().await;
                    myself.send_after(Duration::from_secs(1), || SupervisorMsg::AcquireLease);
                }
            }
            Ok(Take::Standby(retry_in)) => {
                self.args.health.set_db_up(true);
                self.schema_missing_logged = false;
                self.args.health.set_lease(LeaseState::Standby);
                if !self.standby_logged {
                    info!("Another instance holds the lease; standing by.");
                    self.standby_logged = true;
                }
                self.probe_on_standby().await;
                myself.send_after(retry_in, || SupervisorMsg::AcquireLease);
            }
            Err(LockCheck::Db(e)) => {
                self.args.health.set_db_up(false);
                if is_missing_schema(&e) {
                    if !self.schema_missing_logged {
                        error!("The outbox tables do not exist: run `outboxd migrate` first.");
                        self.schema_missing_logged = true;
                    }
                } else {
                    warn!(error = %e, "Cannot reach the database to take the lease; retrying.");
                }
                myself.send_after(Duration::from_secs(1), || SupervisorMsg::AcquireLease);
            }
            Err(e @ LockCheck::NotSession) => self.refuse(myself, e.to_string()).await,
        }
    }

    /// Stops the relay: its set-up cannot keep the guarantees.
    async fn refuse(&mut self, myself: &ActorRef<SupervisorMsg>, why: String) {
        error!(%why, "Stopping the relay.");
        *self.args.exit.lock().expect("exit lock") = Some(RelayExit::Misconfigured(why.clone()));
        self.stop_pipeline().await;
        let _ = self.lease.release(&*self.args.store).await;
        myself.stop(Some(why));
    }

    async fn renew(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Some(incarnation) = self.incarnation.clone() else {
            return;
        };
        match self.lease.renew(&*self.args.store).await {
            Ok(Renewal::Renewed(deadline)) => {
                self.lease_deadline = Some(deadline);
                incarnation.flow.extend_lease(deadline);
            }
            Ok(Renewal::TakenOver) => {
                warn!("Lease taken over by another instance; standing by.");
                self.lose_lease(myself).await;
            }
            Ok(Renewal::Failed(e)) => {
                warn!(error = %e, "Cannot renew the lease; retrying.");
                if self.lease_deadline.is_none_or(|d| Instant::now() >= d) {
                    warn!("Lease expired without renewal; stopping the pipeline.");
                    self.lose_lease(myself).await;
                }
            }
            Err(e) => self.refuse(myself, e.to_string()).await,
        }
    }

    async fn lose_lease(&mut self, myself: &ActorRef<SupervisorMsg>) {
        self.stop_pipeline().await;
        self.lease.forget();
        self.lease_deadline = None;
        self.args.health.set_lease(LeaseState::Standby);
        myself.send_after(self.ttl() / 3, || SupervisorMsg::AcquireLease);
    }

    async fn start_pipeline(&mut self, myself: &ActorRef<SupervisorMsg>) -> anyhow::Result<()> {
        let fence = self.lease.fence.clone().expect("lease held");
        let sink = match &self.sink {
            Some(s) => s.clone(),
            None => {
                let s = (self.args.sinks)(&self.args.config, self.args.health.clone()).await?;
                self.sink = Some(s.clone());
                s
            }
        };
        let config = &self.args.config;
        let ctx = Arc::new(Context {
            store: self.args.store.clone(),
            sink,
            health: self.args.health.clone(),
            fence,
            limits: RateLimits::new(&config.rate_limit),
            hooks: self.args.hooks.clone(),
            supervisor: myself.clone(),
        });
        let flow = Arc::new(Flow::new(self.args.health.clone()));
        if let Some(d) = self.lease_deadline {
            flow.extend_lease(d);
        }
        self.incarnation = Some(Incarnation {
            ctx: ctx.clone(),
            flow: flow.clone(),
        });
        let cell = myself.get_cell();

        let (poller, _) = Actor::spawn_linked(
            Some(self.name(names::POLLER)),
            Poller,
            PollerArgs {
                ctx: ctx.clone(),
                flow: flow.clone(),
                settings: poller::Settings::of(config),
            },
            cell.clone(),
        )
        .await?;
        self.children.insert(poller.get_id(), Scope::Pipeline);
        self.refs.poller = Some(poller.clone());

        let (acker, _) = Actor::spawn_linked(
            Some(self.name(names::ACKER)),
            Acker,
            AckerArgs {
                ctx: ctx.clone(),
                flow: flow.clone(),
                on_publish: config.relay.on_publish,
                poller: poller.clone(),
            },
            cell.clone(),
        )
        .await?;
        self.children.insert(acker.get_id(), Scope::Pipeline);
        self.refs.acker = Some(acker.clone());

        let (retry, _) = Actor::spawn_linked(
            Some(self.name(names::RETRY)),
            Retry,
            RetryArgs {
                ctx: ctx.clone(),
                flow: flow.clone(),
                settings: retry::Settings::of(config),
                poller: poller.clone(),
            },
            cell.clone(),
        )
        .await?;
        self.children.insert(retry.get_id(), Scope::Pipeline);
        self.refs.retry = Some(retry.clone());

        let partitions = config.relay.partitions as usize;
        self.refs.publishers = vec![None; partitions];
        let mut publishers = Vec::with_capacity(partitions);
        for i in 0..partitions {
            let p = self.spawn_publisher(myself, i).await?;
            publishers.push(p);
        }

        if self.refs.cleanup.is_none() {
            self.spawn_cleanup(myself).await?;
        }

        poller.send_message(PollerMsg::Wire(Wiring {
            publishers,
            acker,
            retry,
        }))?;
        Ok(())
    }

    async fn spawn_publisher(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        partition: usize,
    ) -> anyhow::Result<ActorRef<PublisherMsg>> {
        let Incarnation { ctx, flow } = self.incarnation.clone().expect("pipeline running");
        let poller = self.refs.poller.clone().expect("poller running");
        let (p, _) = Actor::spawn_linked(
            Some(format!(
                "{}-{partition}-{}",
                names::PUBLISHER,
                self.args.tag
            )),
            Publisher,
            PublisherArgs {
                partition,
                generation: self.generations[partition],
                ctx,
                flow,
                poller,
            },
            myself.get_cell(),
        )
        .await?;
        self.children
            .insert(p.get_id(), Scope::Publisher(partition));
        self.refs.publishers[partition] = Some(p.clone());
        Ok(p)
    }

    async fn spawn_cleanup(&mut self, myself: &ActorRef<SupervisorMsg>) -> anyhow::Result<()> {
        let ctx = self.incarnation.clone().expect("pipeline running").ctx;
        let (c, _) = Actor::spawn_linked(
            Some(self.name(names::CLEANUP)),
            Cleanup,
            CleanupArgs {
                ctx,
                settings: cleanup::Settings::of(&self.args.config),
            },
            myself.get_cell(),
        )
        .await?;
        self.children.insert(c.get_id(), Scope::Cleanup);
        self.refs.cleanup = Some(c);
        Ok(())
    }

    /// Stops every child and waits for them (the acker writes what it holds on the way).
    async fn stop_pipeline(&mut self) {
        let refs = std::mem::take(&mut self.refs);
        let mut cells = Vec::new();
        if let Some(p) = refs.poller {
            cells.push(p.get_cell());
        }
        for p in refs.publishers.into_iter().flatten() {
            cells.push(p.get_cell());
        }
        if let Some(r) = refs.retry {
            cells.push(r.get_cell());
        }
        if let Some(c) = refs.cleanup {
            cells.push(c.get_cell());
        }
        // The acker last: what the others reported to it is written before it goes.
        if let Some(a) = refs.acker {
            cells.push(a.get_cell());
        }
        for cell in cells {
            self.children.remove(&cell.get_id());
            if cell.get_status() == ractor::ActorStatus::Stopped {
                continue;
            }
            self.expected_exits.insert(cell.get_id());
            let _ = cell
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        self.incarnation = None;
    }

    /// A child crashed: restart it (and what depends on it) after back-off, or give up.
    async fn crashed(&mut self, myself: &ActorRef<SupervisorMsg>, scope: Scope, why: String) {
        let now = Instant::now();
        let window = Duration::from_secs(self.args.config.supervisor.restart_window_secs);
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.crashes.pop_front();
        }
        let budget = self.args.config.supervisor.max_restarts as usize;
        if self.crashes.len() > budget {
            let reason = format!(
                "{} crashes within {}s (supervisor.max_restarts = {budget}); last: {why}",
                self.crashes.len(),
                window.as_secs()
            );
            error!(%reason, "Restart budget exhausted; stopping the relay.");
            *self.args.exit.lock().expect("exit lock") =
                Some(RelayExit::RestartBudgetExhausted(reason.clone()));
            self.stop_pipeline().await;
            let _ = self.lease.release(&*self.args.store).await;
            myself.stop(Some(reason));
            return;
        }
        self.restarts += 1;
        let cfg = &self.args.config.supervisor;
        let delay = super::exponential(
            Duration::from_millis(cfg.initial_backoff_ms),
            Duration::from_millis(cfg.max_backoff_ms),
            self.crashes.len() as u32,
        );
        info!(
            ?scope,
            delay_ms = delay.as_millis() as u64,
            "Restarting after back-off."
        );
        match scope {
            Scope::Publisher(i) => {
                if let Some(slot) = self.refs.publishers.get_mut(i) {
                    *slot = None;
                }
            }
            Scope::Cleanup => self.refs.cleanup = None,
            Scope::Pipeline => {
                // Everything holding a reference to the crashed actor goes too; cleanup,
                // which holds none, keeps running.
                let cleanup = self.refs.cleanup.take();
                let cleanup_id = cleanup.as_ref().map(|c| c.get_id());
                let scope_of_cleanup = cleanup_id.and_then(|id| self.children.remove(&id));
                self.stop_pipeline().await;
                self.refs.cleanup = cleanup;
                if let (Some(id), Some(s)) = (cleanup_id, scope_of_cleanup) {
                    self.children.insert(id, s);
                }
            }
        }
        myself.send_after(delay, move || SupervisorMsg::Restart(scope));
    }

    async fn restart(&mut self, myself: &ActorRef<SupervisorMsg>, scope: Scope) {
        if self.shutting_down || self.lease.fence.is_none() {
            return;
        }
        let result = match scope {
            Scope::Publisher(i) => {
                if self.incarnation.is_none() || self.refs.poller.is_none() {
                    return;
                }
                self.generations[i] += 1;
                match self.spawn_publisher(myself, i).await {
                    Ok(p) => {
                        let poller = self.refs.poller.clone().expect("poller running");
                        poller
                            .send_message(PollerMsg::PublisherRestarted {
                                partition: i,
                                generation: self.generations[i],
                                publisher: p,
                            })
                            .map_err(|e| anyhow::anyhow!("{e}"))
                    }
                    Err(e) => Err(e),
                }
            }
            Scope::Cleanup => {
                if self.incarnation.is_none() {
                    return;
                }
                self.spawn_cleanup(myself).await
            }
            Scope::Pipeline => {
                if self.incarnation.is_some() && self.refs.poller.is_some() {
                    return;
                }
                self.start_pipeline(myself).await
            }
        };
        if let Err(e) = result {
            warn!(?scope, error = %e, "Restart failed; trying again.");
            self.crashed(myself, Scope::Pipeline, e.to_string()).await;
        }
    }

    async fn shutdown(&mut self) -> ShutdownReport {
        self.shutting_down = true;
        let mut report = ShutdownReport {
            marked_all: true,
            ..Default::default()
        };
        let deadline =
            Instant::now() + Duration::from_millis(self.args.config.relay.shutdown_timeout_ms);
        if let Some(poller) = self.refs.poller.clone() {
            let _ = ractor::call_t!(poller, PollerMsg::StopClaiming, 5_000);
            loop {
                let left = ractor::call_t!(poller, PollerMsg::InFlight, 5_000).unwrap_or(0);
                report.abandoned_in_flight = left;
                if left == 0 || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if report.abandoned_in_flight > 0 {
                warn!(
                    rows = report.abandoned_in_flight,
                    "Shutdown deadline reached with rows in flight; they stay pending and go out on the next run."
                );
            }
        }
        if let Some(acker) = self.refs.acker.clone() {
            report.marked_all = ractor::call_t!(acker, AckerMsg::Flush, 10_000).unwrap_or(false);
        }
        self.stop_pipeline().await;
        if let Err(e) = self.lease.release(&*self.args.store).await {
            warn!(error = %e, "Could not release the lease; it expires on its own.");
        }
        if let Some(sink) = &self.sink {
            let left = deadline.saturating_duration_since(Instant::now());
            sink.flush(left.max(Duration::from_millis(100))).await;
        }
        info!(
            abandoned_in_flight = report.abandoned_in_flight,
            marked_all = report.marked_all,
            "Relay stopped."
        );
        report
    }
}
