//! Following the PostgreSQL primary among the URL's hosts (`postgres://u@h1,h2/db`).
//!
//! - **Choosing.** The pools connect to one host at a time: the first of the URL's hosts
//!   that takes read-write sessions (`pg_is_in_recovery()` false, `transaction_read_only`
//!   off), as libpq's `target_session_attrs=read-write` chooses.
//! - **Refusing.** Every new connection is checked the same way as it is opened
//!   ([`Primary::pool_options`]), whatever the host count: a standby, or a demoted primary
//!   that came back as one, never gets a session, and the search starts. A connection opened
//!   before the pools were pointed elsewhere is closed instead of being handed out.
//! - **Searching.** A failure that may mean the primary is gone — the connection lost or
//!   refused, `57P01` admin shutdown, `25006` read-only — starts a search ([`Primary::saw`]):
//!   the current host first (a hiccup keeps it), then the others in order, every
//!   [`SEARCH_EVERY`] until one is found; meanwhile `/readyz` says what each host answered.
//! - **Split brain.** A primary whose timeline is behind the highest one seen is a former
//!   primary that came back without being rejoined: it is not used, even if it comes first.
//!   (Where the server does not tell this user its WAL position, as some managed services
//!   do not, the timeline is unknown and this guard is off.)
//! - **After a switch** the pools open their next connections on the new primary (the
//!   LISTEN connection and the instance-name lock follow through the pool), and the
//!   generation ([`Primary::generation`]) moves on, which asks the poller for a rescan.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::db::pg_hosts::{Role, role};
use crate::health::Health;

/// How often a search looks at every host again while none is the primary.
pub const SEARCH_EVERY: Duration = Duration::from_millis(250);

/// A pool to point at the primary, and how its options differ from the host's.
struct Pointed {
    pool: sqlx::PgPool,
    adjust: fn(PgConnectOptions) -> PgConnectOptions,
}

/// The hosts, which one the pools use, and the search.
pub struct Primary {
    hosts: Vec<(String, PgConnectOptions)>,
    current: AtomicUsize,
    /// When the pools were last pointed at another host.
    switched: Mutex<Instant>,
    /// The highest timeline seen on a primary.
    timeline: AtomicU32,
    probe_timeout: Duration,
    search: Notify,
    searching: OnceLock<()>,
    generation: watch::Sender<u64>,
    pools: Mutex<Vec<Pointed>>,
    health: OnceLock<Arc<Health>>,
}

impl Primary {
    /// The URL's hosts, in order (at least one); `probe_timeout` bounds each probe.
    pub fn new(hosts: Vec<(String, PgConnectOptions)>, probe_timeout: Duration) -> Arc<Self> {
        assert!(
            !hosts.is_empty(),
            "a PostgreSQL URL names at least one host"
        );
        Arc::new(Self {
            hosts,
            current: AtomicUsize::new(0),
            switched: Mutex::new(Instant::now()),
            timeline: AtomicU32::new(0),
            probe_timeout,
            search: Notify::new(),
            searching: OnceLock::new(),
            generation: watch::Sender::new(0),
            pools: Mutex::new(Vec::new()),
            health: OnceLock::new(),
        })
    }

    /// The host the pools use now.
    pub fn current(&self) -> &str {
        &self.hosts[self.current.load(Ordering::Acquire)].0
    }

    /// Options for a pool that connects only to a primary (one statement per new
    /// connection) and, with several hosts, drops connections opened before a switch (a
    /// check per acquire, without I/O; with one host nothing is added there); `max`
    /// connections, waiting `acquire` for one.
    pub fn pool_options(self: &Arc<Self>, max: u32, acquire: Duration) -> PgPoolOptions {
        let checked = self.clone();
        let options = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire)
            .after_connect(move |conn, _| {
                let primary = checked.clone();
                Box::pin(async move {
                    if let Role::Standby(why) = role(conn).await? {
                        primary.start_search();
                        return Err(sqlx::Error::Configuration(
                            format!(
                                "{} {why}; outboxd needs the read-write primary",
                                primary.current()
                            )
                            .into(),
                        ));
                    }
                    Ok(())
                })
            });
        if self.hosts.len() < 2 {
            return options;
        }
        let fresh = self.clone();
        options.before_acquire(move |_, meta| {
            let opened_before_switch =
                meta.age > fresh.switched.lock().expect("switched").elapsed();
            Box::pin(async move { Ok(!opened_before_switch) })
        })
    }

    /// A pool to point at the primary with the others; `adjust` adds its own options.
    pub fn follow(&self, pool: sqlx::PgPool, adjust: fn(PgConnectOptions) -> PgConnectOptions) {
        self.pools
            .lock()
            .expect("pools")
            .push(Pointed { pool, adjust });
    }

    /// Options for the current host, as `adjust` changes them.
    pub fn options(&self, adjust: fn(PgConnectOptions) -> PgConnectOptions) -> PgConnectOptions {
        adjust(self.hosts[self.current.load(Ordering::Acquire)].1.clone())
    }

    /// Where `/readyz` says what a search finds.
    pub fn report_to(&self, health: Arc<Health>) {
        let _ = self.health.set(health);
    }

    /// Moves on each time the pools are pointed at another host.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Looks at `e`: a failure that may mean the primary is gone starts a search.
    pub fn saw(self: &Arc<Self>, e: &sqlx::Error) {
        if may_be_failover(e) {
            self.start_search();
        }
    }

    /// Starts a search (one runs at a time; with a single host there is nothing to
    /// choose).
    pub fn start_search(self: &Arc<Self>) {
        if self.hosts.len() < 2 {
            return;
        }
        if self.searching.set(()).is_ok()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(self.clone().searches());
        }
        self.search.notify_one();
    }

    async fn searches(self: Arc<Self>) {
        loop {
            self.search.notified().await;
            let mut said = String::new();
            loop {
                match self.find().await {
                    Ok(i) => {
                        self.point_at(i);
                        if let Some(h) = self.health.get() {
                            h.set_db_problem(None);
                        }
                        break;
                    }
                    Err(why) => {
                        if why != said {
                            warn!(hosts = %why, "No PostgreSQL primary among the hosts yet; looking again.");
                            said = why.clone();
                        }
                        if let Some(h) = self.health.get() {
                            h.set_db_problem(Some(format!("looking for the primary — {why}")));
                        }
                        tokio::time::sleep(SEARCH_EVERY).await;
                    }
                }
            }
        }
    }

    /// The host to use: the current one while it is still the primary, else the first
    /// primary in the URL's order (never one behind the highest timeline seen); or what
    /// each host answered.
    async fn find(&self) -> Result<usize, String> {
        let current = self.current.load(Ordering::Acquire);
        let order = std::iter::once(current).chain((0..self.hosts.len()).filter(|&i| i != current));
        let seen = self.timeline.load(Ordering::Acquire);
        let (i, timeline) =
            crate::db::find_primary(&self.hosts, order, self.probe_timeout, seen).await?;
        self.timeline.fetch_max(timeline, Ordering::AcqRel);
        Ok(i)
    }

    fn point_at(&self, i: usize) {
        let was = self.current.swap(i, Ordering::AcqRel);
        if was == i {
            return;
        }
        *self.switched.lock().expect("switched") = Instant::now();
        for p in self.pools.lock().expect("pools").iter() {
            p.pool
                .set_connect_options((p.adjust)(self.hosts[i].1.clone()));
        }
        self.generation.send_modify(|g| *g += 1);
        info!(
            primary = %self.hosts[i].0,
            was = %self.hosts[was].0,
            timeline = self.timeline.load(Ordering::Acquire),
            "PostgreSQL primary changed; connecting there."
        );
    }
}

/// Whether a failure may mean the primary is gone or no longer takes writes.
fn may_be_failover(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // read-only transaction, admin / crash shutdown, cannot connect now,
            // connection exceptions.
            c == "25006" || c == "57P01" || c == "57P02" || c == "57P03" || c.starts_with("08")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn failures_that_may_mean_a_failover_start_a_search() {
        use super::may_be_failover;
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(may_be_failover(&io));
        assert!(may_be_failover(&sqlx::Error::PoolTimedOut));
        assert!(!may_be_failover(&sqlx::Error::RowNotFound));
        assert!(!may_be_failover(&sqlx::Error::Configuration("x".into())));
    }
}
