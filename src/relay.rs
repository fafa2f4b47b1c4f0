//! Running the relay in-process: what `outboxd run` does, and what the demo, the benchmark
//! and the tests embed.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorRef};

use crate::actors::messages::{
    PollerMsg, PollerStats, RelayExit, ShutdownReport, SupervisorInfo, SupervisorMsg,
};
use crate::actors::supervisor::{Supervisor, SupervisorArgs};
use crate::actors::{Hooks, names};
use crate::config::Config;
use crate::db::Backend;
use crate::health::Health;
use crate::sink::{self, SinkFactory};
use crate::store::Store;
use crate::store::mysql::MySqlStore;
use crate::store::postgres::PgStore;

/// Options beyond the configuration.
#[derive(Clone, Default)]
pub struct RelayOptions {
    /// Embedding callbacks (the benchmark's timing hooks).
    #[doc(hidden)]
    pub hooks: Hooks,
    /// A sink of the embedder's own instead of the configured one.
    pub sink: Option<SinkFactory>,
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("hooks", &self.hooks)
            .field("sink", &self.sink.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// A running relay.
pub struct Relay {
    supervisor: ActorRef<SupervisorMsg>,
    handle: Option<tokio::task::JoinHandle<()>>,
    exit: Arc<Mutex<Option<RelayExit>>>,
    health: Arc<Health>,
    owner: String,
}

impl Relay {
    /// Starts the supervisor; it takes the lease (or stands by) and runs the pipeline.
    /// The database need not be reachable yet: the relay keeps trying and says so.
    pub async fn start(config: Config, options: RelayOptions) -> anyhow::Result<Relay> {
        let store: Arc<dyn Store> = match crate::db::backend(&config.database) {
            Backend::Postgres => Arc::new(PgStore::connect_lazy(&config)?),
            Backend::MySql => Arc::new(MySqlStore::connect_lazy(&config)?),
        };
        Self::start_with_store(config, store, options).await
    }

    /// Starts the relay on a store of the caller's (the in-memory store of the pipeline's
    /// tests).
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
        options: RelayOptions,
    ) -> anyhow::Result<Relay> {
        let config = Arc::new(config);
        let health = Arc::new(Health::default());
        store.report_to(health.clone());
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        // Stable across restarts: a restarted process reclaims its own lease at once.
        let owner = if config.relay.instance_id.is_empty() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "outboxd".into())
        } else {
            config.relay.instance_id.clone()
        };
        let exit = Arc::new(Mutex::new(None));
        let (supervisor, handle) = Actor::spawn(
            Some(format!("{}-{tag}", names::SUPERVISOR)),
            Supervisor,
            SupervisorArgs {
                config,
                store,
                sinks: options.sink.unwrap_or_else(sink::configured),
                health: health.clone(),
                hooks: options.hooks,
                owner: owner.clone(),
                tag,
                exit: exit.clone(),
            },
        )
        .await?;
        Ok(Relay {
            supervisor,
            handle: Some(handle),
            exit,
            health,
            owner,
        })
    }

    /// This instance's name in the lease table.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Readiness facts.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The supervisor, for tests.
    #[doc(hidden)]
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// The supervisor's state.
    #[doc(hidden)]
    pub async fn info(&self) -> anyhow::Result<SupervisorInfo> {
        Ok(ractor::call_t!(
            self.supervisor,
            SupervisorMsg::Info,
            5_000
        )?)
    }

    /// Runs one read cycle now, if the pipeline runs; returns the rows loaded.
    #[doc(hidden)]
    pub async fn poll_now(&self) -> anyhow::Result<usize> {
        let poller: Option<ActorRef<PollerMsg>> =
            ractor::call_t!(self.supervisor, SupervisorMsg::Poller, 5_000)?;
        match poller {
            Some(p) => Ok(ractor::call_t!(p, PollerMsg::PollNow, 30_000)?),
            None => Ok(0),
        }
    }

    /// What the poller holds now, if the pipeline runs.
    #[doc(hidden)]
    pub async fn poller_stats(&self) -> anyhow::Result<Option<PollerStats>> {
        let poller: Option<ActorRef<PollerMsg>> =
            ractor::call_t!(self.supervisor, SupervisorMsg::Poller, 5_000)?;
        match poller {
            Some(p) => Ok(Some(ractor::call_t!(p, PollerMsg::Stats, 5_000)?)),
            None => Ok(None),
        }
    }

    /// Graceful shutdown: stop claiming, finish in-flight sends within
    /// `relay.shutdown_timeout_ms`, mark what was acknowledged, release the lease.
    pub async fn shutdown(mut self) -> anyhow::Result<ShutdownReport> {
        let timeout = 60_000;
        let report = ractor::call_t!(self.supervisor, SupervisorMsg::Shutdown, timeout)?;
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        Ok(report)
    }

    /// Waits until the relay stops by itself (restart budget exhausted) and says why.
    pub async fn wait(&mut self) -> RelayExit {
        if let Some(h) = self.handle.as_mut() {
            let _ = h.await;
            self.handle = None;
        }
        self.exit
            .lock()
            .expect("exit lock")
            .clone()
            .unwrap_or(RelayExit::Stopped)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.supervisor.stop(None);
        }
    }
}
