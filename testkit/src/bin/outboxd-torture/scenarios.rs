//! The fault scenarios. Each builds its own world, runs steady load with faults injected,
//! drains, and checks the ledger: lost, reordered, duplicated, unexpected; and for poison
//! rows, the dead-letter table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::RngExt;
use serde::Serialize;
use testkit::chaos::Mode;

use outboxd::sink::SinkKind;

use crate::db::Database;
use crate::env::{Env, Generator, RelayProc};

/// Scenario sizes, and the database the scenarios run on.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// `short` or `long`.
    pub name: &'static str,
    /// The database of this run's scenarios.
    #[serde(skip)]
    pub database: Database,
    /// Offered load, events/s.
    pub rate: u32,
    /// Aggregates the load is spread over.
    pub aggregates: u32,
    /// kill -9 cycles.
    pub kill_cycles: u32,
    /// Broker restarts.
    pub broker_restarts: u32,
    /// PostgreSQL restarts.
    pub pg_restarts: u32,
    /// Rounds of network cuts (each: broker refuse, PG refuse, broker blackhole, PG blackhole).
    pub netcut_rounds: u32,
    /// How long the xmin horizon is held back.
    pub bloat_hold: Duration,
    /// Length of the bloat scenario's before/after phases.
    pub bloat_phase: Duration,
    /// Rows in each bloat burst.
    pub bloat_burst: u32,
    /// Late-committing transactions.
    pub late_txns: u32,
    /// Rounds of poison rows (every kind each round).
    pub poison_rounds: u32,
    /// SIGTERM cycles.
    pub sigterm_cycles: u32,
    /// SIGSTOP cycles.
    pub sigstop_cycles: u32,
    /// SIGSTOP length (longer than every relay timeout).
    pub sigstop: Duration,
    /// Times the sink server is paused (SIGSTOP).
    pub sink_pauses: u32,
    /// How long it stays paused (longer than the Redis and NATS send timeouts).
    pub sink_pause: Duration,
}

impl Profile {
    /// A few minutes in all, for CI.
    pub fn short() -> Profile {
        Profile {
            name: "short",
            database: Database::Postgres,
            rate: 400,
            aggregates: 200,
            kill_cycles: 5,
            broker_restarts: 1,
            pg_restarts: 1,
            netcut_rounds: 1,
            bloat_hold: Duration::from_secs(20),
            bloat_phase: Duration::from_secs(10),
            bloat_burst: 10_000,
            late_txns: 6,
            poison_rounds: 1,
            sigterm_cycles: 2,
            sigstop_cycles: 1,
            sigstop: Duration::from_secs(12),
            sink_pauses: 2,
            sink_pause: Duration::from_secs(6),
        }
    }

    /// Every scenario, more cycles.
    pub fn long() -> Profile {
        Profile {
            name: "long",
            database: Database::Postgres,
            rate: 1_000,
            aggregates: 1_000,
            kill_cycles: 25,
            broker_restarts: 4,
            pg_restarts: 3,
            netcut_rounds: 4,
            bloat_hold: Duration::from_secs(180),
            bloat_phase: Duration::from_secs(45),
            bloat_burst: 50_000,
            late_txns: 40,
            poison_rounds: 3,
            sigterm_cycles: 5,
            sigstop_cycles: 3,
            sigstop: Duration::from_secs(15),
            sink_pauses: 6,
            sink_pause: Duration::from_secs(8),
        }
    }
}

/// Throughput in one phase of the bloat scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// before / during / after.
    pub name: String,
    /// Offered-load events seen per second in the phase.
    pub steady_events_per_sec: f64,
    /// A burst written at the start of the phase, drained at this rate.
    pub burst_events_per_sec: f64,
    /// Dead tuples in `outbox` at the phase end.
    pub dead_tuples: i64,
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario.
    pub scenario: String,
    /// Wall time.
    pub duration_secs: f64,
    /// Events committed by the load generator (and scenario writers).
    pub events_written: u64,
    /// Events whose COMMIT outcome was unknown (not counted if missing).
    pub uncertain: u64,
    /// Faults injected.
    pub faults: u32,
    /// Committed, never seen.
    pub lost: u64,
    /// First sightings out of order.
    pub reordered: u64,
    /// Records seen again.
    pub duplicates: u64,
    /// What the design allows: `relay.max_in_flight` per fault.
    pub duplicate_bound: u64,
    /// Records of events never committed.
    pub unexpected: u64,
    /// Rows in the dead-letter table.
    pub dead_lettered: u64,
    /// Poison rows written.
    pub poison_rows: u64,
    /// Commit→first sighting, p50 / p99, ms.
    pub latency_p50_ms: f64,
    /// p99.
    pub latency_p99_ms: f64,
    /// Scenario-specific facts.
    pub notes: Vec<String>,
    /// Bloat phases.
    pub phases: Vec<Phase>,
    /// What failed, if anything.
    pub failures: Vec<String>,
}

impl Report {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn pause(lo_ms: u64, hi_ms: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(lo_ms..=hi_ms))
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Starts a relay and waits until it holds the lease.
async fn start_relay(env: &mut Env, instance: &str) -> anyhow::Result<RelayProc> {
    let before = env.lease_epoch().await;
    let relay = env.spawn_relay(instance)?;
    anyhow::ensure!(
        env.wait_active(before, Duration::from_secs(30)).await,
        "relay {instance} did not take the lease; see {}",
        relay.log.display()
    );
    Ok(relay)
}

/// A scenario's world under steady load: the ledger consumer reading, a relay holding
/// the lease (instance id = the scenario's name), the load generator writing; and its
/// report.
async fn under_load(
    name: &str,
    sink: SinkKind,
    p: &Profile,
) -> anyhow::Result<(Env, RelayProc, Generator, Report)> {
    let mut env = Env::new(name, sink, None, p.database).await?;
    env.start_consumer();
    let relay = start_relay(&mut env, name).await?;
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let report = new_report(&env.name);
    Ok((env, relay, generator, report))
}

/// Fails the report if healthy aggregates' commit→sighting p99 from `from` on is worse
/// than 3× (or 1 s) what it was before; `what` names the fault in the note.
fn healthy_not_delayed(env: &Env, from: Instant, what: &str, report: &mut Report) {
    let b = env.book.lock().unwrap();
    let (before, during): (Vec<_>, Vec<_>) = b.latencies.iter().partition(|(t, _)| *t < from);
    let p99 =
        |v: Vec<&(Instant, Duration)>| quantile_ms(v.into_iter().map(|x| x.1).collect(), 0.99);
    let (b99, d99) = (p99(before), p99(during));
    report.notes.push(format!(
        "healthy aggregates' commit→sighting p99: {b99:.0} ms before, {d99:.0} ms while {what}"
    ));
    if d99 > (3.0 * b99).max(1_000.0) {
        report.failures.push(format!(
            "healthy aggregates delayed while {what}: p99 {b99:.0} → {d99:.0} ms"
        ));
    }
}

fn quantile_ms(mut v: Vec<Duration>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// Drains, stops everything and checks the ledger.
async fn finish(
    mut env: Env,
    generator: Option<Generator>,
    relays: Vec<RelayProc>,
    started: Instant,
    mut report: Report,
) -> Report {
    if let Some(g) = generator {
        g.stop().await;
    }
    if !env.drained(Duration::from_secs(180)).await {
        report.failures.push(format!(
            "not drained: {} rows pending",
            env.pending_except("poison-").await
        ));
    }
    // Let the consumer read everything the relay published: until nothing is missing, or
    // nothing changed for 15 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let lost = env.book.lock().unwrap().ledger.report().lost;
        if lost == 0 || Instant::now() > deadline {
            break;
        }
        if lost != last {
            (last, since) = (lost, Instant::now());
        } else if since.elapsed() > Duration::from_secs(15) {
            break;
        }
        sleep(Duration::from_millis(250)).await;
    }
    for mut r in relays {
        r.signal(Signal::SIGCONT);
        r.signal(Signal::SIGTERM);
        match r.wait_for(Duration::from_secs(20)) {
            Some(s) if s.success() => {}
            other => report.failures.push(format!(
                "relay did not stop cleanly on SIGTERM ({other:?}); see {}",
                r.log.display()
            )),
        }
    }
    env.stop_consumer();
    let consumer_errors = env
        .consumer_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    if consumer_errors > 0 {
        report.notes.push(format!(
            "ledger consumer rode out {consumer_errors} consumer errors"
        ));
    }
    let dead_lettered: i64 = env
        .db
        .count("SELECT count(*) FROM outbox_dead_letter")
        .await
        .unwrap_or(-1);
    {
        let book = env.book.lock().unwrap();
        let l = book.ledger.report();
        report.events_written = l.expected;
        report.uncertain = l.uncertain_delivered;
        report.lost = l.lost;
        report.reordered = l.reordered;
        report.duplicates = l.duplicates;
        report.unexpected = l.unexpected;
        let lat: Vec<Duration> = book.latencies.iter().map(|(_, d)| *d).collect();
        report.latency_p50_ms = quantile_ms(lat.clone(), 0.5);
        report.latency_p99_ms = quantile_ms(lat, 0.99);
        if l.lost > 0 {
            let missing = book.ledger.missing();
            let sample: Vec<String> = missing
                .iter()
                .take(5)
                .map(|(a, s)| format!("{a}: {:?}", &s[..s.len().min(5)]))
                .collect();
            report
                .failures
                .push(format!("{} lost, e.g. {sample:?}", l.lost));
        }
        if l.reordered > 0 {
            report.failures.push(format!(
                "{} reordered, e.g. {:?}",
                l.reordered, book.ledger.reorder_examples
            ));
        }
        if l.unexpected > 0 {
            report.failures.push(format!(
                "{} records of events never committed",
                l.unexpected
            ));
        }
    }
    report.faults = env.faults;
    // Rows read and not yet marked — the only ones a fault can send twice — are bounded by
    // `relay.max_in_flight` (the relay runs with the default).
    let max_in_flight = u64::from(outboxd::config::Config::default().relay.max_in_flight);
    report.duplicate_bound = u64::from(env.faults.max(1)) * max_in_flight;
    if report.duplicates > report.duplicate_bound {
        report.failures.push(format!(
            "{} duplicates above the bound {}",
            report.duplicates, report.duplicate_bound
        ));
    }
    report.dead_lettered = dead_lettered.max(0) as u64;
    if report.poison_rows == 0 && dead_lettered != 0 {
        report
            .failures
            .push(format!("{dead_lettered} rows dead-lettered without poison"));
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    env.cleanup().await;
    report
}

fn new_report(name: &str) -> Report {
    Report {
        scenario: name.into(),
        duration_secs: 0.0,
        events_written: 0,
        uncertain: 0,
        faults: 0,
        lost: 0,
        reordered: 0,
        duplicates: 0,
        duplicate_bound: 0,
        unexpected: 0,
        dead_lettered: 0,
        poison_rows: 0,
        latency_p50_ms: 0.0,
        latency_p99_ms: 0.0,
        notes: Vec::new(),
        phases: Vec::new(),
        failures: Vec::new(),
    }
}

/// Every scenario name, in the order `all` runs them.
pub const ALL: &[&str] = &[
    "kill9",
    "broker-restart",
    "netcut",
    "sink-pause",
    "poison",
    "destination",
    "sigterm",
    "sigstop",
    "db-restart",
    "bloat",
    "late",
    "unknown-topic",
    "pg-failover",
    "pg-switchover",
    "kafka-leaders",
    "redis-cluster",
    "redis-sentinel",
    "nats-cluster",
];

/// Whether scenario `name` runs for `sink`. The database-side scenarios (`db-restart`,
/// `bloat`, `late`) do not depend on the sink and run with Kafka only; `unknown-topic`
/// needs librdkafka's mock cluster; `destination` is Redis's and NATS's held
/// destinations (Kafka's are in `unknown-topic`).
///
/// On MariaDB the scenarios that concern the database run, with Kafka: the relay's
/// crashes, restarts, standby and fencing, the database's restart and connection cuts,
/// poison rows and late committers (and a broker restart). `bloat` (PostgreSQL's vacuum
/// horizon), `destination` and `unknown-topic` (sink-side) stay on PostgreSQL.
pub fn applies(name: &str, sink: SinkKind, database: Database) -> bool {
    if database == Database::MariaDb {
        return sink == SinkKind::Kafka
            && matches!(
                name,
                "kill9"
                    | "broker-restart"
                    | "netcut"
                    | "poison"
                    | "sigterm"
                    | "sigstop"
                    | "db-restart"
                    | "late"
            );
    }
    match name {
        "db-restart" | "bloat" | "late" | "unknown-topic" | "pg-failover" | "pg-switchover"
        | "kafka-leaders" => sink == SinkKind::Kafka,
        "redis-cluster" | "redis-sentinel" => sink == SinkKind::Redis,
        "nats-cluster" => sink == SinkKind::Nats,
        "destination" => sink != SinkKind::Kafka,
        _ => true,
    }
}

/// Runs one scenario by name.
pub async fn run(name: &str, p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    match name {
        "kill9" => kill9(p, sink).await,
        "broker-restart" => broker_restart(p, sink).await,
        "db-restart" | "pg-restart" => db_restart(p, sink).await,
        "netcut" => netcut(p, sink).await,
        "sink-pause" => sink_pause(p, sink).await,
        "bloat" => bloat(p, sink).await,
        "late" => late(p, sink).await,
        "poison" => poison(p, sink).await,
        "destination" => destination(p, sink).await,
        "unknown-topic" => unknown_topic(p, sink).await,
        "sigterm" => sigterm(p, sink).await,
        "sigstop" => sigstop(p, sink).await,
        "pg-failover" => pg_failover(p, sink, Stop::Crash).await,
        "pg-switchover" => pg_failover(p, sink, Stop::Planned).await,
        "kafka-leaders" => kafka_leaders(p, sink).await,
        "redis-cluster" => redis_failover(p, sink, RedisTopology::Cluster).await,
        "redis-sentinel" => redis_failover(p, sink, RedisTopology::Sentinel).await,
        "nats-cluster" => nats_cluster(p, sink).await,
        other => anyhow::bail!("unknown scenario {other:?}; one of {ALL:?}"),
    }
}

/// How the primary goes in a failover scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `pg_ctl stop -m immediate`: a crash.
    Crash,
    /// `pg_ctl stop -m fast`: a planned switch-over.
    Planned,
}

/// The PostgreSQL primary goes — crashed (`pg-failover`) or stopped for a switch-over
/// (`pg-switchover`) — under the writers' load, and its synchronous replica is promoted a
/// second later (an HA manager's decision, shortened). The relay runs on the multi-host
/// URL (primary first) and must find the new primary on its own; the writers are pointed
/// there by the harness, as an application's own failover would. Measured: promotion →
/// the first record of an event committed on the new primary.
async fn pg_failover(p: &Profile, sink: SinkKind, stop: Stop) -> anyhow::Result<Report> {
    let started = Instant::now();
    let name = match stop {
        Stop::Crash => "pg-failover",
        Stop::Planned => "pg-switchover",
    };
    let dir = std::env::temp_dir().join(format!("outboxd-torture-{name}-pair"));
    let pair = tokio::task::spawn_blocking(move || testkit::pgpair::PgPair::start(&dir)).await??;
    let pair = std::sync::Arc::new(pair);
    let admin = testkit::pgpair::PgPair::url(pair.primary, "postgres");
    let mut env = Env::on_postgres(name, sink, admin).await?;
    env.relay_env
        .push(("OUTBOXD__DATABASE__URL".into(), pair.both(&env.db_name)));
    env.start_consumer();
    let relay = start_relay(&mut env, name).await?;
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let mut report = new_report(&env.name);
    sleep(Duration::from_secs(5)).await;
    let stopping = Instant::now();
    let pair_now = pair.clone();
    tokio::task::spawn_blocking(move || match stop {
        Stop::Crash => pair_now.kill_primary(),
        Stop::Planned => pair_now.stop_primary(),
    })
    .await??;
    let stopped = stopping.elapsed();
    sleep(Duration::from_secs(1)).await;
    let pair_now = pair.clone();
    tokio::task::spawn_blocking(move || pair_now.promote()).await??;
    let promoted = Instant::now();
    let new_primary = testkit::pgpair::PgPair::url(pair.replica, &env.db_name);
    env.pg().set_connect_options(new_primary.parse()?);
    env.faults += 1;
    // The first sighting of an event committed after the promotion.
    let resumed = loop {
        let first = {
            let b = env.book.lock().unwrap();
            b.latencies
                .iter()
                .filter(|(seen, latency)| *seen - *latency >= promoted)
                .map(|(seen, _)| *seen)
                .min()
        };
        if let Some(seen) = first {
            break Some(seen - promoted);
        }
        if promoted.elapsed() > Duration::from_secs(60) {
            break None;
        }
        sleep(Duration::from_millis(20)).await;
    };
    let how = match stop {
        Stop::Crash => "crashed (immediate)",
        Stop::Planned => "stopped (fast)",
    };
    report.notes.push(format!(
        "primary {how} in {:.1} s, replica promoted 1 s later (synchronous replication)",
        stopped.as_secs_f64()
    ));
    match resumed {
        Some(d) => {
            report.notes.push(format!(
                "promotion → first record of an event committed on the new primary: {:.0} ms",
                d.as_secs_f64() * 1000.0
            ));
            if d > Duration::from_secs(5) {
                report.failures.push(format!(
                    "publishing resumed {:.1} s after the promotion (goal: 5 s); see {}",
                    d.as_secs_f64(),
                    relay.log.display()
                ));
            }
        }
        None => report.failures.push(format!(
            "nothing committed on the new primary was published within 60 s; see {}",
            relay.log.display()
        )),
    }
    sleep(Duration::from_secs(5)).await;
    let report = finish(env, Some(generator), vec![relay], started, report).await;
    drop(pair);
    Ok(report)
}

/// `kill -9` of the relay at random moments, restarted each time.
async fn kill9(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut env = Env::new("kill9", sink, None, p.database).await?;
    env.start_consumer();
    // No instance id: the relay goes by its default name, the host's, as a restarted
    // systemd unit or Kubernetes container does.
    let mut relay = start_relay(&mut env, "").await?;
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let mut report = new_report(&env.name);
    let (mut to_lease, mut to_publish) = (Vec::new(), Vec::new());
    for _ in 0..p.kill_cycles {
        sleep(pause(300, 3_000)).await;
        relay.signal(Signal::SIGKILL);
        relay.wait_for(Duration::from_secs(5));
        env.faults += 1;
        let consumed = env.consumed.load(std::sync::atomic::Ordering::Relaxed);
        let restarted = Instant::now();
        relay = start_relay(&mut env, "").await?;
        to_lease.push(restarted.elapsed());
        // The first record the ledger consumer reads after the restart (it polls every
        // 100 ms, so this is an upper bound).
        while env.consumed.load(std::sync::atomic::Ordering::Relaxed) == consumed
            && restarted.elapsed() < Duration::from_secs(15)
        {
            sleep(Duration::from_millis(10)).await;
        }
        to_publish.push(restarted.elapsed());
    }
    report.notes.push(format!(
        "{} kill -9 at random moments (0.3–3 s apart)",
        p.kill_cycles
    ));
    let worst_lease = to_lease.iter().max().copied().unwrap_or_default();
    report.notes.push(format!(
        "restart → lease reclaimed: p50 {:.0} ms, max {:.0} ms; restart → first record consumed: p50 {:.0} ms, max {:.0} ms",
        quantile_ms(to_lease.clone(), 0.5),
        worst_lease.as_secs_f64() * 1000.0,
        quantile_ms(to_publish.clone(), 0.5),
        quantile_ms(to_publish, 1.0),
    ));
    // Its own name reclaims a lease unrenewed for 1 s (4 renewals of 250 ms), so within
    // about 1.5 s of the restart; a stranger would wait for the old lease to expire:
    // 2.75–3 s of the 3 s TTL, plus its standby poll.
    if worst_lease > Duration::from_secs(2) {
        report.failures.push(format!(
            "a restarted relay took {worst_lease:?} to reclaim its own lease (waited for it to expire?)"
        ));
    }
    sleep(Duration::from_secs(2)).await;
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

/// The sink's server is killed and restarted while the relay runs. Redis (append-only
/// file, fsync always) and NATS (file store) keep what they acknowledged: they are
/// `kill -9`ed under load. Tansu keeps records in memory only, so before each kill the
/// relay is paused for a moment and the ledger consumer reads everything the broker
/// acknowledged; the relay then resumes into a dead broker and rides out its restart.
async fn broker_restart(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut env, relay, generator, mut report) = under_load("broker-restart", sink, p).await?;
    for _ in 0..p.broker_restarts {
        sleep(Duration::from_secs(4)).await;
        if sink != SinkKind::Kafka {
            let t = Instant::now();
            env.restart_broker().await?;
            env.faults += 1;
            report.notes.push(format!(
                "{sink} server killed (-9) under load and restarted in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
            sleep(Duration::from_secs(6)).await;
            continue;
        }
        relay.signal(Signal::SIGSTOP);
        env.consumer_quiet(Duration::from_millis(1_500), Duration::from_secs(30))
            .await;
        let t = Instant::now();
        env.restart_broker().await?;
        relay.signal(Signal::SIGCONT);
        env.faults += 1;
        report.notes.push(format!(
            "broker killed and restarted in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        sleep(Duration::from_secs(8)).await;
    }
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

/// The database (PostgreSQL or MariaDB) is stopped (fast) and started again while the
/// relay and the writers run.
async fn db_restart(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut env, relay, generator, mut report) = under_load("db-restart", sink, p).await?;
    let database = env.database;
    for _ in 0..p.pg_restarts {
        sleep(Duration::from_secs(5)).await;
        let t = Instant::now();
        tokio::task::spawn_blocking(move || database.ctl("stop")).await??;
        sleep(Duration::from_secs(3)).await;
        tokio::task::spawn_blocking(move || database.ctl("start")).await??;
        env.faults += 1;
        report.notes.push(format!(
            "{} down for {:.1} s",
            database.name(),
            t.elapsed().as_secs_f64()
        ));
        sleep(Duration::from_secs(6)).await;
    }
    let failed = generator.failed.load(std::sync::atomic::Ordering::Relaxed);
    report.notes.push(format!(
        "{failed} writer transactions failed during outages"
    ));
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

/// TCP proxies between the relay and the broker and between the relay and the database
/// refuse or blackhole connections for a few seconds.
async fn netcut(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut env, relay, generator, mut report) = under_load("netcut", sink, p).await?;
    for _ in 0..p.netcut_rounds {
        for (target, mode, secs) in [
            ("broker", Mode::Refuse, 3),
            ("database", Mode::Refuse, 3),
            ("broker", Mode::Blackhole, 5),
            ("database", Mode::Blackhole, 5),
        ] {
            sleep(Duration::from_secs(3)).await;
            let proxy = if target == "broker" {
                env.broker_proxy.as_ref().expect("broker proxy")
            } else {
                &env.db_proxy
            };
            proxy.set(mode);
            sleep(Duration::from_secs(secs)).await;
            proxy.set(Mode::Pass);
            env.faults += 1;
            report.notes.push(format!("{target} {mode:?} for {secs} s"));
        }
    }
    sleep(Duration::from_secs(3)).await;
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

/// The sink's server is paused (SIGSTOP) for longer than the relay's send timeout, then
/// resumed: sends in flight time out and go again, the paused server then runs the first
/// copies late; nothing may be lost or put out of order.
async fn sink_pause(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut env, relay, generator, mut report) = under_load("sink-pause", sink, p).await?;
    for _ in 0..p.sink_pauses {
        sleep(Duration::from_secs(3)).await;
        env.signal_sink(Signal::SIGSTOP);
        sleep(p.sink_pause).await;
        env.signal_sink(Signal::SIGCONT);
        env.faults += 1;
        report.notes.push(format!(
            "{sink} server paused for {} s",
            p.sink_pause.as_secs()
        ));
        sleep(Duration::from_secs(5)).await;
    }
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

/// Destination-level faults on Redis and NATS during steady load: a stream key that holds
/// another type (Redis `WRONGTYPE`), a subject no stream captures (NATS). The rows for
/// that destination are held — not published, not dead-lettered — while every other
/// aggregate flows; once the operator fixes the destination they go, in order.
async fn destination(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut env, relay, generator, mut report) = under_load("destination", sink, p).await?;
    let direct = env.server.as_ref().expect("a Redis or NATS server").url();
    let held = match sink {
        SinkKind::Redis => "torture:wrongtype".to_string(),
        _ => "held.torture".to_string(),
    };
    if sink == SinkKind::Redis {
        let mut conn = redis::Client::open(direct.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("SET")
            .arg(&held)
            .arg("not a stream")
            .query_async::<()>(&mut conn)
            .await?;
    }
    sleep(Duration::from_secs(3)).await;
    let held_from = Instant::now();
    let (aggs, per) = (["poison-held-a", "poison-held-b"], 5i64);
    for seq in 1..=per {
        for a in aggs {
            sqlx::query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
                 VALUES ('torture', $1, 'torture.held', $2, jsonb_build_object('seq', $3::int8))",
            )
            .bind(a)
            .bind(&held)
            .bind(seq)
            .execute(env.pg())
            .await?;
        }
    }
    env.faults += 1;
    sleep(Duration::from_secs(8)).await;
    let pending = |env: &Env| {
        let pool = env.pg().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox WHERE aggregate_id LIKE 'poison-held-%' AND published_at IS NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(-1)
        }
    };
    let total = aggs.len() as i64 * per;
    let still = pending(&env).await;
    if still != total {
        report.failures.push(format!(
            "{still} of {total} rows for the broken destination {held:?} pending (want all held)"
        ));
    }
    report.notes.push(format!(
        "{total} rows for {held:?} held for 8 s ({})",
        match sink {
            SinkKind::Redis => "the key holds a string",
            _ => "no stream captures the subject",
        }
    ));
    // The operator's fix.
    let fixed = Instant::now();
    match sink {
        SinkKind::Redis => {
            let mut conn = redis::Client::open(direct.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("DEL")
                .arg(&held)
                .query_async::<()>(&mut conn)
                .await?;
        }
        _ => {
            testkit::verify::create_nats_stream(&direct, "HELD", &[&held], Duration::from_secs(120))
                .await?
        }
    }
    while pending(&env).await > 0 && fixed.elapsed() < Duration::from_secs(60) {
        sleep(Duration::from_millis(200)).await;
    }
    report.notes.push(format!(
        "after the fix, the held rows went in {:.1} s",
        fixed.elapsed().as_secs_f64()
    ));
    let idle = Duration::from_secs(1);
    let records = match sink {
        SinkKind::Redis => {
            testkit::verify::read_redis(&direct, &[&held], Duration::from_secs(10), idle, |_| false)
                .await?
        }
        _ => {
            testkit::verify::read_nats(&direct, "HELD", Duration::from_secs(10), idle, |_| false)
                .await?
        }
    };
    let mut ledger = testkit::verify::Ledger::default();
    for a in aggs {
        for seq in 1..=per {
            ledger.written(a, seq as u64);
        }
    }
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
        if let Some(seq) = v.get("seq").and_then(serde_json::Value::as_u64) {
            ledger.seen(&r.key, seq);
        }
    }
    let l = ledger.report();
    if l.lost > 0 || l.reordered > 0 {
        report.failures.push(format!(
            "the held destination's records after the fix: {} lost, {} reordered",
            l.lost, l.reordered
        ));
    }
    healthy_not_delayed(&env, held_from, "a destination was held", &mut report);
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

async fn dead_tuples(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'")
        .fetch_one(env.pg())
        .await
        .unwrap_or(-1)
}

/// Writes a burst of `n` events in one statement and measures how fast it drains.
async fn burst(env: &Env, phase: &str, n: u32) -> anyhow::Result<f64> {
    let events: Vec<outboxd::NewEvent> = (0..n)
        .map(|i| {
            outboxd::NewEvent::builder("torture", format!("burst-{phase}-{}", i % 1_000))
                .event_type("torture.burst")
                .topic(env.topic.clone())
                .json(&serde_json::json!({"seq": i / 1_000 + 1, "pad": "b".repeat(100)}))
                .build()
                .expect("valid")
        })
        .collect();
    let mut tx = env.pg().begin().await?;
    outboxd::enqueue_batch(&mut *tx, &events).await?;
    tx.commit().await?;
    let t = Instant::now();
    {
        let mut b = env.book.lock().unwrap();
        for i in 0..n {
            let key = (
                format!("burst-{phase}-{}", i % 1_000),
                u64::from(i / 1_000 + 1),
            );
            b.ledger.written(&key.0, key.1);
            b.committed_at.insert(key, t);
        }
    }
    // Done when the ledger consumer has seen every burst event (polling the table instead
    // would scan a bloating table every few milliseconds and distort what is measured).
    loop {
        let left = {
            let b = env.book.lock().unwrap();
            (0..n)
                .filter(|i| {
                    b.committed_at.contains_key(&(
                        format!("burst-{phase}-{}", i % 1_000),
                        u64::from(i / 1_000 + 1),
                    ))
                })
                .count()
        };
        if left == 0 {
            return Ok(f64::from(n) / t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("burst {phase} did not drain in 5 minutes");
        }
        sleep(Duration::from_millis(50)).await;
    }
}

fn steady_rate(env: &Env, from: Instant, to: Instant) -> f64 {
    let b = env.book.lock().unwrap();
    let n = b
        .sightings
        .iter()
        .filter(|t| **t >= from && **t < to)
        .count();
    n as f64 / to.duration_since(from).as_secs_f64()
}

/// A transaction holds back the xmin horizon (table bloat) while the load runs: throughput
/// before, during and after, at the offered rate and for a burst.
async fn bloat(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (env, relay, generator, mut report) = under_load("bloat", sink, p).await?;
    let mut holder = None;
    for (phase, length) in [
        ("before", p.bloat_phase),
        ("during", p.bloat_hold),
        ("after", p.bloat_phase),
    ] {
        if phase == "during" {
            let mut conn = env.pg().acquire().await?.detach();
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut conn)
                .await?;
            sqlx::query("SELECT pg_current_xact_id(), count(*) FROM outbox")
                .execute(&mut conn)
                .await?;
            holder = Some(conn);
        }
        if phase == "after"
            && let Some(mut conn) = holder.take()
        {
            sqlx::query("COMMIT").execute(&mut conn).await?;
        }
        let from = Instant::now();
        let burst_rate = burst(&env, phase, p.bloat_burst).await?;
        let rest = length.saturating_sub(from.elapsed());
        let steady_from = Instant::now();
        sleep(rest.max(Duration::from_secs(3))).await;
        let to = Instant::now();
        report.phases.push(Phase {
            name: phase.into(),
            steady_events_per_sec: steady_rate(&env, steady_from, to),
            burst_events_per_sec: burst_rate,
            dead_tuples: dead_tuples(&env).await,
        });
    }
    let before = report.phases[0].burst_events_per_sec;
    let during = report.phases[1].burst_events_per_sec;
    report.notes.push(format!(
        "xmin held for {} s; burst drain during / before = {:.2}",
        p.bloat_hold.as_secs(),
        during / before
    ));
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

/// Transactions take a low id, hold it while later rows are published, then commit (or
/// roll back); every committed one must arrive.
async fn late(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut env, relay, generator, mut report) = under_load("late", sink, p).await?;
    let (mut committed, mut rolled_back, mut truly_late) = (0, 0, 0);
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for i in 0..p.late_txns {
        let agg = format!("late-{}", i % 5);
        let seq = seqs.entry(agg.clone()).or_insert(0);
        *seq += 1;
        let event = outboxd::NewEvent::builder("torture", agg.clone())
            .event_type("torture.late")
            .topic(env.topic.clone())
            .json(&serde_json::json!({"seq": *seq}))
            .build()?;
        let (tx, id) = env.db.hold(&event).await?;
        sleep(pause(1_000, 4_000)).await;
        let published_past = env.book.lock().unwrap().max_outbox_id > id;
        if rand::rng().random_bool(0.8) {
            tx.commit().await?;
            let now = Instant::now();
            let mut b = env.book.lock().unwrap();
            b.ledger.written(&agg, *seq);
            b.committed_at.insert((agg.clone(), *seq), now);
            committed += 1;
            truly_late += u32::from(published_past);
        } else {
            tx.rollback().await?;
            rolled_back += 1;
        }
        env.faults += 1;
    }
    report.notes.push(format!(
        "{committed} late commits ({truly_late} after higher ids were already published), {rolled_back} rolled back"
    ));
    if truly_late == 0 {
        report
            .failures
            .push("no transaction committed after higher ids were published".into());
    }
    sleep(Duration::from_secs(2)).await;
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

/// One poison row: its aggregate, its SQL, the class it must be dead-lettered with.
struct Poison {
    kind: &'static str,
    class: &'static str,
    topic: Option<String>,
    payload: &'static str,
    payload_bytes: bool,
    headers: String,
}

/// The per-row poison each sink must dead-letter: too big for it, a destination name it
/// refuses, headers that are not a flat JSON object of strings.
fn poison_kinds(sink: SinkKind, topic: &str) -> Vec<Poison> {
    let kinds = all_poison_kinds(topic);
    let wanted: &[&str] = match sink {
        SinkKind::Kafka => &[
            "big-payload",
            "big-bytes",
            "big-header",
            "bad-topic",
            "dot-topic",
            "long-topic",
            "builtin-header",
        ],
        // Redis has no header limit of its own (fields are free) and takes any non-empty
        // key; its size limit is redis.max_payload_bytes.
        SinkKind::Redis => &["big-payload", "big-bytes", "empty-topic", "builtin-header"],
        // NATS counts headers in max_payload (1 MiB by default); subjects are tokens.
        SinkKind::Nats => &[
            "big-payload",
            "big-bytes",
            "big-header",
            "bad-topic",
            "dot-topic",
            "wildcard-topic",
            "builtin-header",
            "nats-msg-id",
        ],
    };
    kinds
        .into_iter()
        .filter(|k| k.class == "malformed_row" || wanted.contains(&k.kind))
        .collect()
}

fn all_poison_kinds(topic: &str) -> Vec<Poison> {
    let p = |kind, class, topic: Option<&str>, payload, headers: &str| Poison {
        kind,
        class,
        topic: topic.map(str::to_string),
        payload,
        payload_bytes: false,
        headers: headers.to_string(),
    };
    let big_header = format!(r#"{{"blob": "{}"}}"#, "h".repeat(1_200_000));
    vec![
        p("big-payload", "record_too_large", Some(topic), "big", "{}"),
        Poison {
            payload_bytes: true,
            ..p("big-bytes", "record_too_large", Some(topic), "big", "{}")
        },
        p(
            "big-header",
            "record_too_large",
            Some(topic),
            "small",
            &big_header,
        ),
        p(
            "bad-topic",
            "invalid_topic",
            Some("bad topic!"),
            "small",
            "{}",
        ),
        p("dot-topic", "invalid_topic", Some("."), "small", "{}"),
        p("empty-topic", "invalid_topic", Some(""), "small", "{}"),
        p(
            "wildcard-topic",
            "invalid_topic",
            Some("torture.*"),
            "small",
            "{}",
        ),
        p("long-topic", "invalid_topic", None, "small", "{}"),
        // A row's header named like one the relay or the broker sets: never published
        // (NATS would take a Nats-Msg-Id as the de-duplication id and drop the event).
        p(
            "builtin-header",
            "reserved_header",
            Some(topic),
            "small",
            r#"{"event_type": "spoofed", "outbox_id": "0"}"#,
        ),
        p(
            "nats-msg-id",
            "reserved_header",
            Some(topic),
            "small",
            r#"{"Nats-Msg-Id": "fixed-id"}"#,
        ),
        p(
            "number-header",
            "malformed_row",
            Some(topic),
            "small",
            r#"{"n": 1}"#,
        ),
        p(
            "array-headers",
            "malformed_row",
            Some(topic),
            "small",
            "[1, 2]",
        ),
        p(
            "null-headers",
            "malformed_row",
            Some(topic),
            "small",
            "null",
        ),
        p(
            "nested-header",
            "malformed_row",
            Some(topic),
            "small",
            r#"{"a": {"b": "c"}}"#,
        ),
    ]
}

/// Writes every kind of poison row, each followed by a healthy row of its aggregate, plus
/// an oddity that must be published as it is (an empty aggregate id). Returns the poison
/// rows' event ids with their expected class.
async fn write_poison(env: &Env, round: u32) -> anyhow::Result<Vec<(uuid::Uuid, &'static str)>> {
    let mut out = Vec::new();
    let long_topic = "t".repeat(250);
    for k in poison_kinds(env.sink, &env.topic) {
        let agg = format!("poison-{}-{round}", k.kind);
        let topic = k.topic.clone().unwrap_or_else(|| long_topic.clone());
        let payload = if k.payload == "big" {
            format!(r#"{{"seq": 1, "pad": "{}"}}"#, "x".repeat(1_500_000))
        } else {
            r#"{"seq": 1}"#.to_string()
        };
        let (json, bytes) = if k.payload_bytes {
            (None, Some(vec![7u8; 2_000_000]))
        } else {
            (Some(payload), None)
        };
        let event_id = env
            .db
            .insert(&agg, "torture.poison", &topic, (json, bytes), &k.headers)
            .await?;
        // The aggregate's next row: held behind its dead letter (policy "hold").
        let next = (Some(r#"{"seq": 2}"#.to_string()), None);
        env.db
            .insert(&agg, "torture.after-poison", &env.topic, next, "{}")
            .await?;
        out.push((event_id, k.class));
    }
    // Not poison: must be published, empty keys allowed.
    let odd = (Some(format!(r#"{{"seq": {}}}"#, round + 1)), None);
    env.db
        .insert("", "torture.odd", &env.topic, odd, "{}")
        .await?;
    env.book
        .lock()
        .unwrap()
        .ledger
        .written("", u64::from(round) + 1);
    Ok(out)
}

/// Poison rows of every kind during steady load: each must be dead-lettered with its
/// reason, its aggregate held, and no other aggregate delayed.
async fn poison(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (mut env, relay, generator, mut report) = under_load("poison", sink, p).await?;
    sleep(Duration::from_secs(5)).await;
    let poison_from = Instant::now();
    let mut poisoned = Vec::new();
    for round in 0..p.poison_rounds {
        poisoned.extend(write_poison(&env, round).await?);
        env.faults += 1;
        sleep(Duration::from_secs(4)).await;
    }
    sleep(Duration::from_secs(3)).await;
    report.poison_rows = poisoned.len() as u64;
    check_dead_letters(&env, &poisoned, &mut report).await?;
    let held = env
        .db
        .count(
            "SELECT count(*) FROM outbox WHERE aggregate_id LIKE 'poison-%' AND published_at IS NULL",
        )
        .await?;
    if held != poisoned.len() as i64 {
        report.failures.push(format!(
            "{held} rows held behind {} dead letters (want one each)",
            poisoned.len()
        ));
    }
    healthy_not_delayed(&env, poison_from, "poison was written", &mut report);
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

async fn check_dead_letters(
    env: &Env,
    expected: &[(uuid::Uuid, &'static str)],
    report: &mut Report,
) -> anyhow::Result<()> {
    let rows = env.db.dead_letters().await?;
    let by_id: HashMap<uuid::Uuid, (String, String)> =
        rows.into_iter().map(|(e, c, r)| (e, (c, r))).collect();
    let mut classes: HashMap<&str, u32> = HashMap::new();
    for (id, class) in expected {
        match by_id.get(id) {
            Some((c, r)) if c == class && !r.is_empty() => *classes.entry(class).or_default() += 1,
            Some((c, r)) => report.failures.push(format!(
                "poison {id}: class {c} (want {class}), reason {r:?}"
            )),
            None => report.failures.push(format!(
                "poison {id} ({class}) is not in the dead-letter table"
            )),
        }
    }
    if by_id.len() != expected.len() {
        report.failures.push(format!(
            "{} dead letters for {} poison rows",
            by_id.len(),
            expected.len()
        ));
    }
    let mut c: Vec<String> = classes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    c.sort();
    report
        .notes
        .push(format!("dead-lettered with reason: {}", c.join(", ")));
    Ok(())
}

/// Faults a real broker cannot stage, on librdkafka's mock cluster: a topic that does not
/// exist (auto-creation off) and a topic the relay may not write. Both are destination
/// problems, held like on every sink (`sink.missing_destination = "hold"`, the default):
/// no dead letter, no attempt spent, the healthy aggregates unaffected. Then the relay is
/// restarted with `sink.missing_destination = "dead_letter"`: the missing topic's row is
/// dead-lettered as `unknown_topic`, the forbidden one stays held.
async fn unknown_topic(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;
    let started = Instant::now();
    let mock = MockCluster::new(1)?;
    let mut env = Env::new(
        "unknown-topic",
        sink,
        Some(mock.bootstrap_servers()),
        p.database,
    )
    .await?;
    mock.create_topic(&env.topic, crate::env::PARTITIONS, 1)?;
    mock.topic_error(
        "missing-topic",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    )?;
    mock.topic_error(
        "forbidden-topic",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )?;
    env.relay_env.push((
        "OUTBOXD__KAFKA__PRODUCER__TOPIC.METADATA.PROPAGATION.MAX.MS".into(),
        "2000".into(),
    ));
    env.start_consumer();
    let mut relay = start_relay(&mut env, "unknown-topic").await?;
    let generator = Generator::start(&env, p.aggregates.min(100), p.rate.min(200), 2, 100);
    let mut report = new_report(&env.name);
    sleep(Duration::from_secs(3)).await;
    let mut poisoned = Vec::new();
    for (agg, topic, class) in [
        ("poison-missing", "missing-topic", "unknown_topic"),
        ("poison-forbidden", "forbidden-topic", "not_authorized"),
    ] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
             VALUES ('torture', $1, 'torture.poison', $2, '{\"seq\": 1}') RETURNING event_id",
        )
        .bind(agg)
        .bind(topic)
        .fetch_one(env.pg())
        .await?;
        poisoned.push((id, class));
        env.faults += 1;
    }
    let dead_letters = |env: &Env| {
        let pool = env.pg().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_dead_letter")
                .fetch_one(&pool)
                .await
                .unwrap_or(-1)
        }
    };
    let poison_pending = |env: &Env| {
        let pool = env.pg().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox WHERE aggregate_id LIKE 'poison-%' \
                 AND published_at IS NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(-1)
        }
    };
    // Held: several metadata timeouts later, both rows still pending, nothing dead-lettered.
    sleep(Duration::from_secs(10)).await;
    let (held, dead) = (poison_pending(&env).await, dead_letters(&env).await);
    if (held, dead) != (2, 0) {
        report.failures.push(format!(
            "with sink.missing_destination = \"hold\": {held} of 2 rows for the missing and \
             forbidden topics pending and {dead} dead letters (want 2 and 0)"
        ));
    } else {
        report
            .notes
            .push("missing and forbidden topics held for 10 s (no dead letter) by default".into());
    }
    // Dead-lettering asked for: the missing topic's row goes to the table, the forbidden
    // one stays held (an authorization problem is never the row's fault).
    relay.signal(Signal::SIGTERM);
    let _ = relay.wait_for(Duration::from_secs(15));
    env.relay_env.push((
        "OUTBOXD__SINK__MISSING_DESTINATION".into(),
        "dead_letter".into(),
    ));
    relay = start_relay(&mut env, "unknown-topic").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && dead_letters(&env).await < 1 {
        sleep(Duration::from_millis(200)).await;
    }
    report.poison_rows = 1;
    check_dead_letters(&env, &poisoned[..1], &mut report).await?;
    let still = poison_pending(&env).await;
    if still != 1 {
        report.failures.push(format!(
            "the forbidden topic's row: {still} pending (want 1: held, not dead-lettered)"
        ));
    }
    let r = finish(env, Some(generator), vec![relay], started, report).await;
    drop(mock);
    Ok(r)
}

/// A three-broker Kafka (librdkafka's mock cluster; replication factor 3) under load:
/// partition leaders move to another broker, a broker goes down with its partitions'
/// leadership moved away (as a controller would elect new leaders) and comes back, and
/// then every broker is down for longer than `message.timeout.ms`. The idempotent
/// producer keeps each partition's order through the re-sends; the relay's own retries
/// carry the rows whose sends timed out, without dead-lettering any.
async fn kafka_leaders(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    use rdkafka::mocking::MockCluster;
    const BROKERS: i32 = 3;
    let started = Instant::now();
    let mock = MockCluster::new(BROKERS)?;
    let mut env = Env::new(
        "kafka-leaders",
        sink,
        Some(mock.bootstrap_servers()),
        p.database,
    )
    .await?;
    mock.create_topic(&env.topic, crate::env::PARTITIONS, BROKERS)?;
    // Sends time out after 5 s, so that the whole-cluster outage below outlasts them.
    let timeout = Duration::from_secs(5);
    env.relay_env.push((
        "OUTBOXD__KAFKA__PRODUCER__MESSAGE.TIMEOUT.MS".into(),
        timeout.as_millis().to_string(),
    ));
    env.start_consumer();
    let relay = start_relay(&mut env, "kafka-leaders").await?;
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let mut report = new_report(&env.name);
    let lead = |shift: i32| -> anyhow::Result<()> {
        for partition in 0..crate::env::PARTITIONS {
            let broker = (partition + shift).rem_euclid(BROKERS) + 1;
            mock.partition_leader(&env.topic, partition, Some(broker))?;
        }
        Ok(())
    };
    let mut moves = 0;
    for round in 0..p.broker_restarts.max(1) as i32 * 2 {
        sleep(Duration::from_secs(3)).await;
        lead(round + 1)?;
        moves += 1;
        env.faults += 1;
        sleep(Duration::from_secs(3)).await;
        // A broker goes; a controller moves its leaderships to the others.
        let down = round.rem_euclid(BROKERS) + 1;
        mock.broker_down(down)?;
        for partition in 0..crate::env::PARTITIONS {
            let broker = (down + partition % (BROKERS - 1)).rem_euclid(BROKERS) + 1;
            mock.partition_leader(&env.topic, partition, Some(broker))?;
        }
        env.faults += 1;
        sleep(Duration::from_secs(3)).await;
        mock.broker_up(down)?;
        report.notes.push(format!(
            "round {}: leaders moved; broker {down} down 3 s, its leaderships moved away",
            round + 1
        ));
    }
    // Every broker down for longer than the send timeout.
    sleep(Duration::from_secs(3)).await;
    let outage = timeout * 2;
    mock.broker_down(-1)?;
    sleep(outage).await;
    mock.broker_up(-1)?;
    env.faults += 1;
    report.notes.push(format!(
        "{moves} leader moves; then all {BROKERS} brokers down {} s (message.timeout.ms {} s)",
        outage.as_secs(),
        timeout.as_secs()
    ));
    sleep(Duration::from_secs(5)).await;
    let r = finish(env, Some(generator), vec![relay], started, report).await;
    drop(mock);
    Ok(r)
}

/// The Redis topologies of the failover scenarios.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RedisTopology {
    /// Three masters with a replica each (`scripts/redis-cluster.sh`).
    Cluster,
    /// A master, its replica and three sentinels (`scripts/redis-sentinel.sh`).
    Sentinel,
}

/// A Redis master is killed (`kill -9`) under load and its replica takes over: in a
/// Redis Cluster (`redis-cluster`; the writers spread aggregates over 16 streams, so
/// over the three masters' slots) or behind sentinels (`redis-sentinel`). The killed
/// server is started again 5 s later and rejoins as a replica (the next round waits until
/// it is in sync, so that there is a replica to promote); twice. The relay runs with
/// `redis.wait_replicas = 1`: without it, writes the master acknowledged and had not yet
/// replicated vanish with it (published, then lost). Measured: the longest commit →
/// sighting of an event committed in the 10 s after each kill.
async fn redis_failover(
    p: &Profile,
    sink: SinkKind,
    topology: RedisTopology,
) -> anyhow::Result<Report> {
    use testkit::redistopo::{MASTER_NAME, RedisCluster, RedisSentinel, Topology};
    let started = Instant::now();
    let name = match topology {
        RedisTopology::Cluster => "redis-cluster",
        RedisTopology::Sentinel => "redis-sentinel",
    };
    let dir = std::env::temp_dir().join(format!("outboxd-torture-{name}-servers"));
    let (cluster, sentinel) = match topology {
        RedisTopology::Cluster => {
            let c = tokio::task::spawn_blocking(move || RedisCluster::start(&dir)).await??;
            (Some(Arc::new(c)), None)
        }
        RedisTopology::Sentinel => {
            let s = tokio::task::spawn_blocking(move || RedisSentinel::start(&dir)).await??;
            (None, Some(Arc::new(s)))
        }
    };
    let mut env = match (&cluster, &sentinel) {
        (Some(c), _) => {
            let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let mut env = Env::new(name, sink, Some(nodes.join(",")), p.database).await?;
            env.topics = 16;
            env.redis_topology = Some(Topology::Cluster(c.node_urls()));
            env.relay_env
                .push(("OUTBOXD__REDIS__CLUSTER".into(), "true".into()));
            env
        }
        (_, Some(s)) => {
            // redis.url gives only the scheme and credentials: the sentinels name the master.
            let mut env = Env::new(name, sink, Some("127.0.0.1:1".into()), p.database).await?;
            env.redis_topology = Some(Topology::Sentinel(s.sentinel_urls()));
            let list: Vec<String> = s.sentinel_urls().iter().map(|u| format!("{u:?}")).collect();
            env.relay_env.push((
                "OUTBOXD__REDIS__SENTINELS".into(),
                format!("[{}]", list.join(", ")),
            ));
            env.relay_env
                .push(("OUTBOXD__REDIS__MASTER_NAME".into(), MASTER_NAME.into()));
            env
        }
        _ => unreachable!("one topology is started"),
    };
    env.relay_env
        .push(("OUTBOXD__REDIS__WAIT_REPLICAS".into(), "1".into()));
    env.relay_env
        .push(("OUTBOXD__REDIS__WAIT_TIMEOUT_MS".into(), "1000".into()));
    env.start_consumer();
    let relay = start_relay(&mut env, name).await?;
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let mut report = new_report(&env.name);
    let mut kills = Vec::new();
    for round in 0..2 {
        sleep(Duration::from_secs(5)).await;
        let (c, s) = (cluster.clone(), sentinel.clone());
        let victim = tokio::task::spawn_blocking(move || -> anyhow::Result<u16> {
            let victim = match (c, s) {
                (Some(c), _) => {
                    let masters = c.masters()?;
                    anyhow::ensure!(!masters.is_empty(), "no cluster master answers");
                    let v = masters[round % masters.len()];
                    c.kill(v)?;
                    v
                }
                (_, Some(s)) => {
                    let v = s.current_master()?;
                    s.kill(v)?;
                    v
                }
                _ => unreachable!("one topology is started"),
            };
            Ok(victim)
        })
        .await??;
        let killed = Instant::now();
        kills.push(killed);
        env.faults += 1;
        sleep(Duration::from_secs(5)).await;
        let (c, s) = (cluster.clone(), sentinel.clone());
        tokio::task::spawn_blocking(move || match (c, s) {
            (Some(c), _) => c.restart(victim),
            (_, Some(s)) => s.restart(victim),
            _ => unreachable!("one topology is started"),
        })
        .await??;
        report.notes.push(format!(
            "round {}: master on port {victim} killed (-9), started again 5 s later, a replica in sync {:.1} s after the kill",
            round + 1,
            killed.elapsed().as_secs_f64()
        ));
        sleep(Duration::from_secs(2)).await;
    }
    sleep(Duration::from_secs(5)).await;
    failover_latencies(&env, &kills, &relay, &mut report);
    let r = finish(env, Some(generator), vec![relay], started, report).await;
    drop((cluster, sentinel));
    Ok(r)
}

/// A three-node JetStream cluster (current nats-server) with the scenario's stream
/// replicated three times: under load, the stream's leader is killed (`kill -9`) and
/// started again 5 s later, twice. The relay is given all three servers, and
/// `sink.missing_destination = "dead_letter"`, so that a leader election mistaken for a
/// missing stream would dead-letter rows. NATS drops resends inside the duplicate window,
/// so this one asks for 0 duplicates too. Measured:
/// commit → consumer of the events committed in the 10 s after each kill.
async fn nats_cluster(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    use testkit::natscluster::NatsCluster;
    let started = Instant::now();
    let dir = std::env::temp_dir().join("outboxd-torture-nats-cluster-servers");
    let cluster = Arc::new(tokio::task::spawn_blocking(move || NatsCluster::start(&dir)).await??);
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut env = Env::new("nats-cluster", sink, Some(nodes.join(",")), p.database).await?;
    cluster
        .create_stream(crate::sinks::NATS_STREAM, &[&env.topic])
        .await?;
    env.nats_servers = Some(cluster.url());
    // A missing stream dead-letters its rows: a leader election taken for one would
    // show as dead letters (and fail the scenario).
    env.relay_env.push((
        "OUTBOXD__SINK__MISSING_DESTINATION".into(),
        "dead_letter".into(),
    ));
    env.start_consumer();
    let relay = start_relay(&mut env, "nats-cluster").await?;
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let mut report = new_report(&env.name);
    let mut kills = Vec::new();
    for round in 0..2 {
        sleep(Duration::from_secs(5)).await;
        let leader = cluster.stream_leader(crate::sinks::NATS_STREAM).await?;
        let port = cluster
            .port_of(&leader)
            .ok_or_else(|| anyhow::anyhow!("stream leader {leader:?} is not n1..n3"))?;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.kill(port)).await??;
        let killed = Instant::now();
        kills.push(killed);
        env.faults += 1;
        sleep(Duration::from_secs(5)).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.restart(port)).await??;
        let new_leader = cluster
            .stream_leader(crate::sinks::NATS_STREAM)
            .await
            .unwrap_or_else(|e| e.to_string());
        report.notes.push(format!(
            "round {}: stream leader {leader} (port {port}) killed (-9), started again 5 s later; leader now {new_leader}",
            round + 1
        ));
        sleep(Duration::from_secs(3)).await;
    }
    sleep(Duration::from_secs(5)).await;
    failover_latencies(&env, &kills, &relay, &mut report);
    let mut r = finish(env, Some(generator), vec![relay], started, report).await;
    if r.duplicates > 0 {
        r.failures.push(format!(
            "{} duplicates: JetStream should have dropped every resend inside its duplicate window",
            r.duplicates
        ));
    }
    drop(cluster);
    Ok(r)
}

/// Notes commit → consumer of the events committed before the first kill and in the 10 s
/// after each; fails a kill after which nothing committed was published.
fn failover_latencies(env: &Env, kills: &[Instant], relay: &RelayProc, report: &mut Report) {
    if let Some(first) = kills.first() {
        let before: Vec<Duration> = {
            let b = env.book.lock().unwrap();
            b.latencies
                .iter()
                .filter(|(seen, latency)| *seen - *latency < *first)
                .map(|(_, latency)| *latency)
                .collect()
        };
        report.notes.push(format!(
            "before the first kill: commit → consumer p50 {:.0} ms, p99 {:.0} ms",
            quantile_ms(before.clone(), 0.5),
            quantile_ms(before, 0.99)
        ));
    }
    for (i, killed) in kills.iter().enumerate() {
        let window: Vec<Duration> = {
            let b = env.book.lock().unwrap();
            b.latencies
                .iter()
                .filter(|(seen, latency)| {
                    let committed = *seen - *latency;
                    committed >= *killed && committed < *killed + Duration::from_secs(10)
                })
                .map(|(_, latency)| *latency)
                .collect()
        };
        if window.is_empty() {
            report.failures.push(format!(
                "kill {}: nothing committed in the 10 s after it was published; see {}",
                i + 1,
                relay.log.display()
            ));
            continue;
        }
        report.notes.push(format!(
            "kill {}: events committed in the 10 s after it reached the consumer after p50 {:.0} ms, p99 {:.0} ms, at most {:.1} s",
            i + 1,
            quantile_ms(window.clone(), 0.5),
            quantile_ms(window.clone(), 0.99),
            window.iter().max().map_or(0.0, Duration::as_secs_f64)
        ));
    }
}

/// SIGTERM under load: exit 0 within `relay.shutdown_timeout_ms`, then a new relay carries on.
async fn sigterm(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut env = Env::new("sigterm", sink, None, p.database).await?;
    env.relay_env
        .push(("OUTBOXD__RELAY__SHUTDOWN_TIMEOUT_MS".into(), "5000".into()));
    env.start_consumer();
    let mut relay = start_relay(&mut env, "sigterm").await?;
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let mut report = new_report(&env.name);
    let mut took = Vec::new();
    for _ in 0..p.sigterm_cycles {
        sleep(pause(2_000, 4_000)).await;
        let t = Instant::now();
        relay.signal(Signal::SIGTERM);
        match relay.wait_for(Duration::from_secs(15)) {
            Some(s) if s.code() == Some(0) => {}
            other => report.failures.push(format!(
                "SIGTERM: exit {other:?}; see {}",
                relay.log.display()
            )),
        }
        let secs = t.elapsed().as_secs_f64();
        if secs > 7.0 {
            report
                .failures
                .push(format!("SIGTERM took {secs:.1} s (deadline 5 s)"));
        }
        took.push(format!("{secs:.2}"));
        env.faults += 1;
        relay = start_relay(&mut env, "sigterm").await?;
    }
    report
        .notes
        .push(format!("exited 0 after SIGTERM in [{}] s", took.join(", ")));
    Ok(finish(env, Some(generator), vec![relay], started, report).await)
}

async fn lease_owner(env: &Env) -> String {
    env.db.lease_owner().await
}

/// Two relays, one standing by. The active one is SIGSTOPped for longer than any relay
/// timeout (lease, message, stall): the standby takes over; when the stopped one wakes up
/// its lease is gone, its writes are fenced, and it must not publish out of order.
async fn sigstop(p: &Profile, sink: SinkKind) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut env = Env::new("sigstop", sink, None, p.database).await?;
    env.relay_env.push((
        "OUTBOXD__KAFKA__PRODUCER__MESSAGE.TIMEOUT.MS".into(),
        "5000".into(),
    ));
    env.start_consumer();
    let a = start_relay(&mut env, "sigstop-a").await?;
    let b = env.spawn_relay("sigstop-b")?;
    let relays = HashMap::from([("sigstop-a".to_string(), a), ("sigstop-b".to_string(), b)]);
    let generator = Generator::start(&env, p.aggregates, p.rate, 4, 100);
    let mut report = new_report(&env.name);
    for _ in 0..p.sigstop_cycles {
        sleep(Duration::from_secs(3)).await;
        let owner = lease_owner(&env).await;
        let before = env.lease_epoch().await;
        let active = relays.get(&owner).expect("active relay");
        active.signal(Signal::SIGSTOP);
        sleep(p.sigstop).await;
        let took_over = env.lease_epoch().await > before && lease_owner(&env).await != owner;
        relays[&owner].signal(Signal::SIGCONT);
        env.faults += 1;
        report.notes.push(format!(
            "{owner} stopped for {} s; standby took over: {took_over}",
            p.sigstop.as_secs()
        ));
        if !took_over {
            report.failures.push("standby did not take over".into());
        }
        sleep(Duration::from_secs(3)).await;
    }
    Ok(finish(
        env,
        Some(generator),
        relays.into_values().collect(),
        started,
        report,
    )
    .await)
}
