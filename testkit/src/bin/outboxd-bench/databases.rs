//! PostgreSQL and MariaDB side by side: the same workloads on each database, outboxd and the
//! naive relay (`outboxd-naive`, the yardstick) each its own process, taking turns on a
//! fresh database and a fresh broker:
//!
//! - **drain** — a pre-filled backlog (500-byte JSON payloads over 10,000 aggregates, written
//!   server-side) emptied by the relay; ends when the relay's own counter says every row was
//!   acknowledged (outboxd: `outboxd_rows_marked_total`; the naive relay: its report);
//! - **single** — single-event transactions at the offered rates from this process's own
//!   writer, the same on both databases (four connections, each event one autocommit
//!   `INSERT` of a ~300-byte JSON payload over 1,000 aggregates, Poisson arrivals);
//!   insert → acknowledgement latency as each relay sees it (`created_at` → the broker's
//!   acknowledgement), whole-process CPU of the relay and of the database server;
//! - **idle** — no writes at all: the database server's CPU without a relay (the baseline),
//!   then with each relay running, and the statements it sends per second. On MariaDB
//!   outboxd has no NOTIFY and polls (`poller.watch_ms`, 10 ms by default); this is what
//!   that costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::single::{Counters, RelayUnderTest, WRITERS, Which, epoch_us};
use crate::world::{admin_url, bar, say};
use testkit::broker::LocalBroker;
use testkit::cpu::{CpuTicks, CpuUse, ProcCpu, proc_cpu_secs};

/// Aggregates the single-event writers spread their events over.
const WRITER_AGGREGATES: u64 = 1_000;
/// Topic partitions.
const PARTITIONS: i32 = 2;

/// The database server, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// The local PostgreSQL (`DATABASE_URL`).
    Postgres,
    /// The local MariaDB (`OUTBOXD_BENCH_MARIADB_URL`, or setup's test user).
    Mariadb,
}

impl Database {
    /// From `--databases`.
    pub fn parse(s: &str) -> anyhow::Result<Database> {
        match s {
            "postgres" => Ok(Database::Postgres),
            "mariadb" => Ok(Database::Mariadb),
            other => anyhow::bail!("unknown database {other:?} (postgres, mariadb)"),
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Database::Postgres => "PostgreSQL",
            Database::Mariadb => "MariaDB",
        }
    }

    /// Its processes' kind in [`CpuUse`].
    fn cpu_kind(self) -> &'static str {
        self.name()
    }

    fn admin_url(self) -> String {
        match self {
            Database::Postgres => admin_url(),
            Database::Mariadb => std::env::var("OUTBOXD_BENCH_MARIADB_URL")
                .unwrap_or_else(|_| testkit::demo::LOCAL_MARIADB.to_string()),
        }
    }
}

/// A pool on either database.
enum Pool {
    Pg(sqlx::PgPool),
    My(sqlx::MySqlPool),
}

impl Pool {
    async fn connect(db: Database, url: &str, connections: u32) -> anyhow::Result<Pool> {
        Ok(match db {
            Database::Postgres => Pool::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(connections)
                    .connect(url)
                    .await?,
            ),
            Database::Mariadb => Pool::My(testkit::backlog::connect_mysql(url, connections).await?),
        })
    }

    /// A connection of the pool, held: a statement through the pool costs sqlx a ping when
    /// the connection is taken and another when it is given back, which a writer should
    /// not add to the database's work.
    async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        Ok(match self {
            Pool::Pg(p) => Conn::Pg(p.acquire().await?),
            Pool::My(p) => Conn::My(p.acquire().await?),
        })
    }

    /// Rows not yet published (the naive relay deletes what it sent, so every row it left
    /// is pending).
    async fn pending(&self) -> anyhow::Result<i64> {
        const SQL: &str = "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL";
        Ok(match self {
            Pool::Pg(p) => sqlx::query_scalar(SQL).fetch_one(p).await?,
            Pool::My(p) => sqlx::query_scalar(SQL).fetch_one(p).await?,
        })
    }

    async fn prefill(&self, rows: u64, topic: &str) -> anyhow::Result<()> {
        let b = bar(rows, "prefill backlog");
        let progress = |done| b.set_position(done);
        match self {
            Pool::Pg(p) => testkit::backlog::prefill(p, rows, topic, progress).await?,
            Pool::My(p) => testkit::backlog::prefill_mysql(p, rows, topic, progress).await?,
        }
        b.finish_and_clear();
        Ok(())
    }

    async fn close(self) {
        match self {
            Pool::Pg(p) => p.close().await,
            Pool::My(p) => p.close().await,
        }
    }

    /// The server's version and durability settings, for the report.
    async fn describe(&self) -> String {
        match self {
            Pool::Pg(p) => crate::world::describe_postgres(p).await,
            Pool::My(p) => {
                let v = outboxd::db::mysql_version(p).await.unwrap_or_default();
                let flush: String =
                    sqlx::query_scalar("SELECT CAST(@@innodb_flush_log_at_trx_commit AS CHAR)")
                        .fetch_one(p)
                        .await
                        .unwrap_or_default();
                let binlog: String = sqlx::query_scalar("SELECT CAST(@@log_bin AS CHAR)")
                    .fetch_one(p)
                    .await
                    .unwrap_or_default();
                format!("MariaDB {v}; innodb_flush_log_at_trx_commit={flush}; log_bin={binlog}")
            }
        }
    }
}

/// A connection of either database.
enum Conn {
    Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
    My(sqlx::pool::PoolConnection<sqlx::MySql>),
}

impl Conn {
    /// One event as its own autocommit transaction; `t` (µs since the epoch) in the payload.
    async fn insert_one(&mut self, aggregate: &str, t: i64) -> Result<(), sqlx::Error> {
        match self {
            Conn::Pg(c) => sqlx::query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
                 VALUES ('bench', $1, 'bench.event', 'bench', \
                 jsonb_build_object('t', $2::int8, 'pad', repeat('x', 280)))",
            )
            .bind(aggregate)
            .bind(t)
            .execute(&mut **c)
            .await
            .map(drop),
            Conn::My(c) => sqlx::query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
                 VALUES ('bench', ?, 'bench.event', 'bench', \
                 JSON_OBJECT('t', ?, 'pad', REPEAT('x', 280)))",
            )
            .bind(aggregate)
            .bind(t)
            .execute(&mut **c)
            .await
            .map(drop),
        }
    }
}

/// A fresh database on one server and a fresh broker with the topic.
struct DbWorld {
    url: String,
    pool: Pool,
    broker: LocalBroker,
    brokers: String,
    topic: String,
}

impl DbWorld {
    async fn new(db: Database) -> anyhow::Result<DbWorld> {
        let url = testkit::backlog::fresh_database(&db.admin_url(), "outboxd_bench").await?;
        let pool = Pool::connect(db, &url, 2).await?;
        let (broker, addr, topic) = crate::world::fresh_broker(PARTITIONS).await?;
        Ok(DbWorld {
            url,
            pool,
            broker,
            brokers: addr,
            topic,
        })
    }

    fn relay(&self, which: Which) -> anyhow::Result<RelayUnderTest> {
        RelayUnderTest::start(which, &self.url, &self.brokers, None)
    }

    async fn close(mut self) {
        self.pool.close().await;
        self.broker.stop();
    }
}

/// What a measurement was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// A pre-filled backlog emptied.
    Drain,
    /// Single-event transactions at an offered rate.
    Single,
}

/// One relay, one database, one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbRun {
    /// The database server.
    pub database: Database,
    /// The relay.
    pub relay: Which,
    /// The workload.
    pub workload: Workload,
    /// Single: offered transactions (= events) per second; drain: 0.
    pub offered: u32,
    /// Events in the measurement (drain: the backlog; single: committed in the window).
    pub events: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Events per second (drain: acknowledged; single: the writers' commits).
    pub events_per_sec: f64,
    /// The relay process's CPU per event, µs.
    pub relay_cpu_us_per_event: f64,
    /// The database server's CPU per event (every process of it, the writers' sessions
    /// included), µs.
    pub db_cpu_us_per_event: f64,
    /// Statements the relay sent per 1,000 events.
    pub statements_per_1000: f64,
    /// Insert → acknowledgement as the relay saw it, median, ms.
    pub ack_p50_ms: f64,
    /// Its p99, ms.
    pub ack_p99_ms: f64,
    /// Share acknowledged within 5 ms of the insert.
    pub ack_within_5ms: f64,
    /// Single: rows pending when the window closed.
    pub backlog_end: i64,
    /// Single: committed events the relay had not acknowledged a minute after the writers
    /// stopped.
    pub unacknowledged: u64,
    /// Where the machine's CPU went.
    pub cpu: Option<CpuUse>,
}

/// A database server with no writes: without a relay (`relay` None), or with one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleRun {
    /// The database server.
    pub database: Database,
    /// The relay, None for the baseline.
    pub relay: Option<Which>,
    /// Seconds measured.
    pub seconds: f64,
    /// The relay's CPU, cores.
    pub relay_cores: f64,
    /// The database server's CPU, cores.
    pub db_cores: f64,
    /// Statements the relay sent per second.
    pub statements_per_sec: f64,
}

/// The phase's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Databases {
    /// Each server's version and durability settings.
    pub servers: Vec<String>,
    /// Rows of each drain.
    pub rows: u64,
    /// Drains and single-event runs.
    pub runs: Vec<DbRun>,
    /// Idle measurements.
    pub idle: Vec<IdleRun>,
}

/// The phase: for each run, each database: the drain by each relay, single events at each
/// rate by each relay, and idle — relays taking turns, in the other order every other run.
pub async fn measure(
    dbs: &[Database],
    runs: u32,
    rows: u64,
    rates: &[u32],
    seconds: u64,
    idle_seconds: u64,
) -> anyhow::Result<Databases> {
    let mut out = Databases {
        rows,
        ..Databases::default()
    };
    for &db in dbs {
        let w = DbWorld::new(db).await?;
        out.servers.push(w.pool.describe().await);
        w.close().await;
    }
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Which::Naive, Which::Outboxd]
        } else {
            [Which::Outboxd, Which::Naive]
        };
        for &db in dbs {
            for which in order {
                let d = drain(db, which, rows).await?;
                say(format!(
                    "{} drain by {}: {:.0} events/s, relay {:.2} µs/event, {} {:.2} µs/event, {:.1} statements/1,000",
                    db.name(),
                    which.name(),
                    d.events_per_sec,
                    d.relay_cpu_us_per_event,
                    db.name(),
                    d.db_cpu_us_per_event,
                    d.statements_per_1000
                ));
                out.runs.push(d);
            }
            for &rate in rates {
                for which in order {
                    let s = single(db, which, rate, seconds).await?;
                    say(format!(
                        "{} single {rate}/s by {}: written {:.0}/s, relay {:.1} µs/event, {} {:.1} µs/event, {:.0} statements/1,000, acknowledged p50 {:.1} ms, p99 {:.1} ms, backlog {}{}",
                        db.name(),
                        which.name(),
                        s.events_per_sec,
                        s.relay_cpu_us_per_event,
                        db.name(),
                        s.db_cpu_us_per_event,
                        s.statements_per_1000,
                        s.ack_p50_ms,
                        s.ack_p99_ms,
                        s.backlog_end,
                        if s.unacknowledged > 0 {
                            format!(", {} NOT ACKNOWLEDGED", s.unacknowledged)
                        } else {
                            String::new()
                        }
                    ));
                    out.runs.push(s);
                }
            }
            out.idle.extend(idle(db, order, idle_seconds).await?);
        }
    }
    Ok(out)
}

/// The relay's counters once they reach `events` acknowledged, or after `limit`.
async fn wait_acknowledged(
    relay: &RelayUnderTest,
    events: u64,
    limit: Duration,
    mut progress: impl FnMut(u64),
) -> Counters {
    let t = Instant::now();
    loop {
        let c = relay.counters().await;
        progress(c.acknowledged as u64);
        if c.acknowledged as u64 >= events || t.elapsed() > limit {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn drain(db: Database, which: Which, rows: u64) -> anyhow::Result<DbRun> {
    let w = DbWorld::new(db).await?;
    w.pool.prefill(rows, &w.topic).await?;
    let b = bar(rows, &format!("{} drain by {}", db.name(), which.name()));
    let procs = ProcCpu::now();
    let ticks = CpuTicks::now();
    let t = Instant::now();
    let relay = w.relay(which)?;
    let c = wait_acknowledged(&relay, rows, Duration::from_secs(1_800), |n| {
        b.set_position(n)
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    let cpu_use = procs.used_since();
    ticks.note(format!("{} drain by {}", db.name(), which.name()));
    let relay_cpu = proc_cpu_secs(relay.pid());
    b.finish_and_clear();
    relay.stop();
    w.close().await;
    let done = c.acknowledged as u64;
    if done < rows {
        anyhow::bail!(
            "{} drain by {}: {done} of {rows} rows acknowledged in 30 minutes",
            db.name(),
            which.name()
        );
    }
    let per_event_us = |cpu_secs: f64| cpu_secs * 1e6 / done as f64;
    let db_cores = cpu_use.cores.get(db.cpu_kind()).copied().unwrap_or(0.0);
    Ok(DbRun {
        database: db,
        relay: which,
        workload: Workload::Drain,
        offered: 0,
        events: done,
        seconds: secs,
        events_per_sec: done as f64 / secs,
        relay_cpu_us_per_event: per_event_us(relay_cpu),
        db_cpu_us_per_event: per_event_us(db_cores * secs),
        statements_per_1000: c.statements * 1000.0 / done as f64,
        ack_p50_ms: c.ack.quantile(0.5).unwrap_or(0.0) * 1000.0,
        ack_p99_ms: c.ack.quantile(0.99).unwrap_or(0.0) * 1000.0,
        ack_within_5ms: c.ack.share_within(0.005),
        backlog_end: 0,
        unacknowledged: 0,
        cpu: Some(cpu_use),
    })
}

/// The writers: `WRITERS` connections (each held by its writer), each a Poisson stream of `rate / WRITERS` events/s
/// (together a Poisson stream of `rate`), each event one autocommit `INSERT`. A writer that
/// falls behind its schedule writes at once until it catches up, as `pgbench --rate` does.
struct Writers {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), sqlx::Error>>>,
}

impl Writers {
    fn start(pool: &Arc<Pool>, rate: u32) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let mean = Duration::from_secs_f64(WRITERS as f64 / rate.max(1) as f64);
        let tasks = (0..WRITERS)
            .map(|_| {
                let (pool, stop, committed) = (pool.clone(), stop.clone(), committed.clone());
                tokio::spawn(async move {
                    let mut conn = pool.acquire().await?;
                    let mut next = tokio::time::Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        // Exponential inter-arrival times.
                        let u: f64 = rand::rng().random();
                        next += mean.mul_f64(-(1.0 - u).ln());
                        tokio::time::sleep_until(next).await;
                        let a = rand::rng().random_range(0..WRITER_AGGREGATES);
                        conn.insert_one(&format!("agg-{a}"), epoch_us()).await?;
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        Writers {
            stop,
            committed,
            tasks,
        }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Stops them; an error a writer met is the run's error.
    async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let committed = self.committed.clone();
        for t in self.tasks {
            t.await??;
        }
        Ok(committed.load(Ordering::Relaxed))
    }

    /// A writer that already stopped on an error.
    fn failed(&self) -> bool {
        self.tasks.iter().any(|t| t.is_finished())
    }
}

async fn single(db: Database, which: Which, rate: u32, seconds: u64) -> anyhow::Result<DbRun> {
    let w = DbWorld::new(db).await?;
    let relay = w.relay(which)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pool = Arc::new(Pool::connect(db, &w.url, WRITERS as u32).await?);
    let writers = Writers::start(&pool, rate);
    let label = format!("{} single {rate}/s {}", db.name(), which.name());
    let b = bar(seconds, &label);
    tokio::time::sleep(Duration::from_secs(5)).await;
    if writers.failed() {
        writers.stop().await?;
        anyhow::bail!("{label}: the writers stopped");
    }

    let window_start = Instant::now();
    let ticks = CpuTicks::now();
    let procs = ProcCpu::now();
    let relay_cpu0 = proc_cpu_secs(relay.pid());
    let c0 = relay.counters().await;
    let written0 = writers.committed();
    for s in 0..seconds {
        b.set_position(s);
        tokio::time::sleep_until((window_start + Duration::from_secs(s + 1)).into()).await;
    }
    let secs = window_start.elapsed().as_secs_f64();
    let written1 = writers.committed();
    let relay_cpu1 = proc_cpu_secs(relay.pid());
    let c1 = relay.counters().await;
    let cpu_use = procs.used_since();
    ticks.note(label.clone());
    let backlog_end = w.pool.pending().await?;
    let total = writers.stop().await?;
    b.finish_and_clear();

    let last = wait_acknowledged(&relay, total, Duration::from_secs(60), |_| {}).await;
    relay.stop();
    if let Ok(p) = Arc::try_unwrap(pool) {
        p.close().await;
    }
    w.close().await;

    let events = (written1 - written0).max(1);
    let per_event_us = |cpu_secs: f64| cpu_secs * 1e6 / events as f64;
    let acks = c1.ack.since(&c0.ack);
    let db_cores = cpu_use.cores.get(db.cpu_kind()).copied().unwrap_or(0.0);
    Ok(DbRun {
        database: db,
        relay: which,
        workload: Workload::Single,
        offered: rate,
        events,
        seconds: secs,
        events_per_sec: events as f64 / secs,
        relay_cpu_us_per_event: per_event_us(relay_cpu1 - relay_cpu0),
        db_cpu_us_per_event: per_event_us(db_cores * secs),
        statements_per_1000: (c1.statements - c0.statements) * 1000.0 / events as f64,
        ack_p50_ms: acks.quantile(0.5).unwrap_or(0.0) * 1000.0,
        ack_p99_ms: acks.quantile(0.99).unwrap_or(0.0) * 1000.0,
        ack_within_5ms: acks.share_within(0.005),
        backlog_end,
        unacknowledged: total.saturating_sub(last.acknowledged as u64),
        cpu: Some(cpu_use),
    })
}

/// The server with no writes: `seconds / 3` (at least 10 s) without a relay, then `seconds`
/// with each relay (after 3 s to settle).
async fn idle(db: Database, order: [Which; 2], seconds: u64) -> anyhow::Result<Vec<IdleRun>> {
    let w = DbWorld::new(db).await?;
    let mut out = Vec::new();
    let base = Duration::from_secs((seconds / 3).max(10));
    let b = bar(base.as_secs(), &format!("{} idle, no relay", db.name()));
    let procs = ProcCpu::now();
    tokio::time::sleep(base).await;
    let cpu = procs.used_since();
    b.finish_and_clear();
    let db_cores = |c: &CpuUse| c.cores.get(db.cpu_kind()).copied().unwrap_or(0.0);
    out.push(IdleRun {
        database: db,
        relay: None,
        seconds: base.as_secs_f64(),
        relay_cores: 0.0,
        db_cores: db_cores(&cpu),
        statements_per_sec: 0.0,
    });
    for which in order {
        let relay = w.relay(which)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let b = bar(seconds, &format!("{} idle, {}", db.name(), which.name()));
        let t = Instant::now();
        let procs = ProcCpu::now();
        let relay0 = proc_cpu_secs(relay.pid());
        let c0 = relay.counters().await;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let secs = t.elapsed().as_secs_f64();
        let cpu = procs.used_since();
        let relay1 = proc_cpu_secs(relay.pid());
        let c1 = relay.counters().await;
        b.finish_and_clear();
        relay.stop();
        let r = IdleRun {
            database: db,
            relay: Some(which),
            seconds: secs,
            relay_cores: (relay1 - relay0) / secs,
            db_cores: db_cores(&cpu),
            statements_per_sec: (c1.statements - c0.statements) / secs,
        };
        say(format!(
            "{} idle with {}: relay {:.2} % of a core, {} {:.2} % (baseline {:.2} %), {:.0} statements/s",
            db.name(),
            which.name(),
            r.relay_cores * 100.0,
            db.name(),
            r.db_cores * 100.0,
            out[0].db_cores * 100.0,
            r.statements_per_sec
        ));
        out.push(r);
    }
    w.close().await;
    Ok(out)
}

/// The side-by-side tables: per database and workload, each relay's medians over the runs,
/// outboxd's ratio to the naive relay in brackets; then idle.
pub fn table(d: &Databases) -> String {
    if d.runs.is_empty() && d.idle.is_empty() {
        return String::new();
    }
    let med = |v: Vec<f64>| crate::stats::Stat::of(v).median;
    let mut s = format!(
        "\nPostgreSQL and MariaDB side by side (each relay its own process, whole-process CPU; \
         drain: {} pre-filled rows of 500 bytes over 10,000 aggregates; single: this \
         benchmark's writer, {WRITERS} connections, one autocommit INSERT per event, 1,000 \
         aggregates, ~300-byte payloads, Poisson arrivals; {PARTITIONS} topic partitions); \
         medians over the runs, outboxd's ratio to the naive relay in brackets. Servers: {}.\n\n\
         | database | workload | relay | runs | events/s | relay CPU µs/event | database CPU \
         µs/event | statements /1,000 | acked p50 ms | acked within 5 ms | acked p99 ms | \
         backlog at end | not acknowledged |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        d.rows,
        d.servers.join("; ")
    );
    let mut keys: Vec<(Database, u32)> = d.runs.iter().map(|r| (r.database, r.offered)).collect();
    keys.sort_unstable();
    keys.dedup();
    for (db, offered) in keys {
        let of = |which: Which| -> Vec<&DbRun> {
            d.runs
                .iter()
                .filter(|r| r.database == db && r.offered == offered && r.relay == which)
                .collect()
        };
        let (naive, ours) = (of(Which::Naive), of(Which::Outboxd));
        let workload = if offered == 0 {
            "drain".to_string()
        } else {
            format!("single {offered}/s")
        };
        for (which, these) in [(Which::Naive, &naive), (Which::Outboxd, &ours)] {
            if these.is_empty() {
                continue;
            }
            let m = |f: fn(&DbRun) -> f64| med(these.iter().map(|r| f(r)).collect());
            let base = |f: fn(&DbRun) -> f64| {
                (which == Which::Outboxd && !naive.is_empty())
                    .then(|| med(naive.iter().map(|r| f(r)).collect()))
            };
            let cell =
                |f: fn(&DbRun) -> f64, digits| crate::stats::with_ratio(m(f), base(f), digits);
            // A drain's rows were written before the relay started: their latency says how
            // long they waited, not how fast the relay is.
            let latency = |f: fn(&DbRun) -> f64| {
                if offered == 0 {
                    "—".to_string()
                } else {
                    cell(f, 1)
                }
            };
            let within_5ms = if offered == 0 {
                "—".to_string()
            } else {
                format!("{:.0} %", m(|r| r.ack_within_5ms) * 100.0)
            };
            s.push_str(&format!(
                "| {} | {workload} | {} | {} | {} | {} | {} | {} | {} | {within_5ms} | {} | {:.0} | {:.0} |\n",
                db.name(),
                which.name(),
                these.len(),
                cell(|r| r.events_per_sec, 0),
                cell(|r| r.relay_cpu_us_per_event, 1),
                cell(|r| r.db_cpu_us_per_event, 1),
                cell(|r| r.statements_per_1000, 1),
                latency(|r| r.ack_p50_ms),
                latency(|r| r.ack_p99_ms),
                m(|r| r.backlog_end as f64),
                m(|r| r.unacknowledged as f64),
            ));
        }
    }
    if !d.idle.is_empty() {
        s.push_str(
            "\nIdle (no writes): the relay's CPU, the database server's CPU with the relay \
             running and without one (the baseline, measured just before on the same fresh \
             database), and the statements the relay sends; medians over the runs:\n\n\
             | database | relay | runs | relay CPU, % of a core | database CPU, % of a core | \
             database CPU above the baseline, % of a core | statements/s |\n\
             |---|---|---|---|---|---|---|\n",
        );
        let mut dbs: Vec<Database> = d.idle.iter().map(|r| r.database).collect();
        dbs.sort_unstable();
        dbs.dedup();
        for db in dbs {
            let base = med(d
                .idle
                .iter()
                .filter(|r| r.database == db && r.relay.is_none())
                .map(|r| r.db_cores)
                .collect());
            for which in [None, Some(Which::Naive), Some(Which::Outboxd)] {
                let these: Vec<&IdleRun> = d
                    .idle
                    .iter()
                    .filter(|r| r.database == db && r.relay == which)
                    .collect();
                if these.is_empty() {
                    continue;
                }
                let m = |f: fn(&IdleRun) -> f64| med(these.iter().map(|r| f(r)).collect());
                let pct = |v: f64| format!("{:.2}", v * 100.0);
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
                    db.name(),
                    which.map_or("none (baseline)", Which::name),
                    these.len(),
                    pct(m(|r| r.relay_cores)),
                    pct(m(|r| r.db_cores)),
                    if which.is_some() {
                        pct(m(|r| r.db_cores) - base)
                    } else {
                        "—".into()
                    },
                    m(|r| r.statements_per_sec),
                ));
            }
        }
    }
    s
}
