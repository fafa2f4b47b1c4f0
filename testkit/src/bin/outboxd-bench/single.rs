//! Single-event transactions, the commonest real workload, measured as users run the relay:
//! writers in one process (`pgbench`, four connections, each transaction one `INSERT` of
//! one event over 1,000 aggregates with a ~300-byte JSON payload, Poisson arrivals at the
//! offered rate), the relay in another, and a consumer reading the topic (two partitions)
//! in this one. Two relays take turns on a fresh database and broker each:
//!
//! - **outboxd** — `outboxd run` with its default configuration (only the database, the
//!   brokers, the metrics address and librdkafka's statistics interval set);
//! - **naive** — `outboxd-naive`, an independent program with librdkafka's default
//!   producer settings: select the oldest 500 pending rows → produce them all → wait for
//!   every acknowledgement → delete them; sleep 100 ms when nothing was pending.
//!
//! Per run: the rate the writers achieved (a relay that loads the machine slows the
//! application), whole-process CPU per event of the relay, of Tansu and of PostgreSQL
//! (every process of the cluster, the writers' backends included), statements and produce
//! requests per 1,000 events (the relay's own counters: outboxd's metrics, the naive
//! relay's report; produce requests from librdkafka's statistics), insert → acknowledgement
//! latency as each relay sees it (outboxd's `outboxd_commit_to_ack_seconds` histogram, the
//! naive relay's own with the same buckets: independent of how the consumer fetches), and
//! insert → consumer latency (the insert's `clock_timestamp()` is in the payload; the
//! consumer notes when it received the record; Tansu answers a waiting fetch late, which
//! adds milliseconds to both relays alike).
//!
//! Why not in-process: the earlier version of this phase ran the relay inside the
//! benchmark with the naive relay sharing outboxd's producer settings; there the relay's
//! threads looked cheap while, as its own process with its defaults, it answered each
//! single-event transaction with a produce request (docs/performance.md).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use serde::{Deserialize, Serialize};

use crate::world::{World, bar, metric_sum, say};
use testkit::buckets::Buckets;
use testkit::cpu::{CpuTicks, CpuUse, ProcCpu, proc_cpu_secs, proc_threads_cpu_secs};
use testkit::process::free_port;

/// Aggregates the events are spread over.
const AGGREGATES: usize = 1_000;
/// Writer connections.
pub(crate) const WRITERS: usize = 4;
/// Topic partitions.
const PARTITIONS: i32 = 2;
/// How often librdkafka reports its statistics (produce requests are counted from them).
const STATS_MS: u64 = 250;

/// Which relay ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    /// outboxd.
    Outboxd,
    /// The naive yardstick.
    Naive,
}

impl Which {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Which::Outboxd => "outboxd",
            Which::Naive => "naive",
        }
    }
}

/// One relay at one offered rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SingleRun {
    /// The relay.
    pub relay: Which,
    /// `sslmode` of the writers and the relay, when the run set one.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// Offered transactions (= events) per second.
    pub offered: u32,
    /// Transactions per second the writers committed in the window.
    pub achieved: f64,
    /// Events committed in the window.
    pub events: u64,
    /// The relay process's CPU per event, µs.
    pub relay_cpu_us_per_event: f64,
    /// CPU of PostgreSQL's processes (the writers' backends included) per event, µs.
    pub pg_cpu_us_per_event: f64,
    /// CPU of the broker (Tansu) per event, µs.
    #[serde(default)]
    pub broker_cpu_us_per_event: f64,
    /// Statements the relay sent per 1,000 events.
    pub statements_per_1000: f64,
    /// Produce requests per 1,000 events (librdkafka's statistics).
    pub produce_requests_per_1000: f64,
    /// Insert → the broker's acknowledgement as the relay saw it, median, ms (interpolated
    /// inside its histogram bucket).
    #[serde(default)]
    pub ack_p50_ms: f64,
    /// Its p99.
    #[serde(default)]
    pub ack_p99_ms: f64,
    /// Share of events acknowledged within 5 ms of their insert.
    #[serde(default)]
    pub ack_within_5ms: f64,
    /// Insert → received by the consumer, ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// max.
    pub max_ms: f64,
    /// Pending rows when the window closed (the relay's lag, in events).
    pub backlog_end: i64,
    /// Events written (in the window or not) that the consumer had not received a minute
    /// after the writers stopped.
    pub unacknowledged: u64,
    /// outboxd only: rows found late in id gaps, per 1,000 events.
    #[serde(default)]
    pub late_rows_per_1000: f64,
    /// The relay's CPU per event by thread name (the profile's first cut).
    #[serde(default)]
    pub relay_threads_us_per_event: BTreeMap<String, f64>,
    /// Where the machine's CPU went.
    pub cpu: Option<CpuUse>,
}

/// The relay's counters at one moment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Counters {
    pub(crate) statements: f64,
    pub(crate) produce_requests: f64,
    pub(crate) late_rows: f64,
    /// Events acknowledged by the broker (outboxd: rows marked published).
    pub(crate) acknowledged: f64,
    /// Insert → acknowledgement.
    pub(crate) ack: Buckets,
}

/// The relay under test, as its own process.
pub(crate) struct RelayUnderTest {
    child: Child,
    /// outboxd: its metrics address.
    metrics: Option<String>,
    /// The naive relay: its latest report.
    report: Arc<Mutex<Counters>>,
}

impl RelayUnderTest {
    /// `which` relaying the outbox of `url` (PostgreSQL or MariaDB) to the Kafka at
    /// `brokers`.
    pub(crate) fn start(
        which: Which,
        url: &str,
        brokers: &str,
        sslmode: Option<&str>,
    ) -> anyhow::Result<RelayUnderTest> {
        let report = Arc::new(Mutex::new(Counters::default()));
        match which {
            Which::Outboxd => {
                let metrics = format!("127.0.0.1:{}", free_port());
                let bin = testkit::process::find_outboxd()?;
                let child = Command::new(&bin)
                    .arg("run")
                    .current_dir(std::env::temp_dir())
                    .env("OUTBOXD__DATABASE__URL", url)
                    .env("OUTBOXD__KAFKA__BROKERS", brokers)
                    .env("OUTBOXD__METRICS__LISTEN", &metrics)
                    .env(
                        "OUTBOXD__KAFKA__PRODUCER__STATISTICS.INTERVAL.MS",
                        STATS_MS.to_string(),
                    )
                    .env("OUTBOXD__LOG__LEVEL", "warn")
                    .envs(sslmode.map(|m| ("OUTBOXD__DATABASE__SSLMODE", m)))
                    .env_remove("RUST_LOG")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()?;
                Ok(RelayUnderTest {
                    child,
                    metrics: Some(metrics),
                    report,
                })
            }
            Which::Naive => {
                let bin = testkit::process::built_beside_me("outboxd-naive")?;
                // Experiments only (the yardstick sets nothing): librdkafka settings
                // for the naive relay, "KEY=VALUE,…". outboxd takes its own from the
                // environment (`OUTBOXD__KAFKA__PRODUCER__…`).
                let experiment = std::env::var("OUTBOXD_BENCH_NAIVE_PRODUCER").unwrap_or_default();
                let url = with_sslmode(url, sslmode);
                let mut child = Command::new(&bin)
                    .args(["--database-url", &url, "--brokers", brokers])
                    .args(["--report-ms", &STATS_MS.to_string()])
                    .args(
                        experiment
                            .split(',')
                            .filter(|kv| !kv.is_empty())
                            .flat_map(|kv| ["--producer", kv]),
                    )
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()?;
                let out = child.stdout.take().expect("piped");
                let r = report.clone();
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if let Ok(c) = serde_json::from_str::<Counters>(&line) {
                            *r.lock().expect("report") = c;
                        }
                    }
                });
                Ok(RelayUnderTest {
                    child,
                    metrics: None,
                    report,
                })
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) async fn counters(&self) -> Counters {
        match &self.metrics {
            Some(addr) => {
                // One scrape for every counter. A counter not yet incremented is not
                // exported: 0.
                let body = testkit::process::http_get(addr, "/metrics")
                    .await
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                let counter = |name| metric_sum(&body, name).unwrap_or(0.0);
                Counters {
                    statements: counter("outboxd_db_queries_total"),
                    produce_requests: counter("outboxd_kafka_produce_requests_total"),
                    late_rows: counter("outboxd_late_rows_total"),
                    acknowledged: counter("outboxd_rows_marked_total"),
                    ack: Buckets::from_exposition(&body, "outboxd_commit_to_ack_seconds"),
                }
            }
            None => self.report.lock().expect("report").clone(),
        }
    }

    pub(crate) fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgbench`: on the PATH, or PostgreSQL's own directory (Debian keeps it there).
fn pgbench() -> anyhow::Result<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("pgbench"))
        .find(|p| p.exists());
    let debian = || {
        let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin/pgbench"))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        found.pop()
    };
    on_path.or_else(debian).ok_or_else(|| {
        anyhow::anyhow!("pgbench is missing: install PostgreSQL's client tools (Debian: postgresql-client or postgresql)")
    })
}

/// The writers' transaction: one event for one of `AGGREGATES` aggregates, its insert time
/// (µs since the epoch) in the payload for the consumer.
fn writer_script() -> String {
    format!("\\set a random(0, {})\n{}", AGGREGATES - 1, WRITER_INSERT)
}

const WRITER_INSERT: &str = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) VALUES \
('bench', 'agg-' || :a, 'bench.event', 'bench', jsonb_build_object('t', \
(extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'pad', repeat('x', 280)));\n";

/// The writers: `pgbench` offering `rate` transactions/s over four connections until it is
/// stopped.
fn start_writers(
    url: &str,
    rate: u32,
    sslmode: Option<&str>,
) -> anyhow::Result<(Child, tempfile::NamedTempFile)> {
    let mut script = tempfile::NamedTempFile::new()?;
    script.write_all(writer_script().as_bytes())?;
    let child = Command::new(pgbench()?)
        .envs(sslmode.map(|m| ("PGSSLMODE", m)))
        .args(["--no-vacuum", "--protocol", "prepared"])
        .args(["--client", &WRITERS.to_string(), "--jobs", "1"])
        .args(["--rate", &rate.to_string(), "--time", "100000"])
        .arg("--file")
        .arg(script.path())
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok((child, script))
}

pub(crate) fn epoch_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What the consumer received: event id → (insert time, receive time), µs since the epoch.
type Received = Arc<Mutex<HashMap<String, (i64, i64)>>>;

/// Reads the topic from its start until `stop`, noting each event's insert and receive
/// times.
fn start_consumer(
    brokers: &str,
    topic: &str,
    received: Received,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    #[derive(Deserialize)]
    struct Payload {
        t: i64,
    }
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let at = epoch_us();
            let t = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Payload>(p).ok())
                .map(|p| p.t);
            let id = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "event_id")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            if let (Some(t), Some(id)) = (t, id) {
                received
                    .lock()
                    .expect("received")
                    .entry(id)
                    .or_insert((t, at));
            }
        }
    }))
}

/// Rows written so far (the identity sequence's position).
async fn written(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce((SELECT last_value FROM pg_sequences \
         WHERE sequencename = 'outbox_id_seq'), 0)",
    )
    .fetch_one(pool)
    .await?)
}

/// One run: `which` relays while the writers offer `rate` single-event transactions/s for
/// `seconds` (after a 5 s warm-up).
/// `url` with `sslmode` set (the naive relay takes it from its URL).
fn with_sslmode(url: &str, sslmode: Option<&str>) -> String {
    match sslmode {
        Some(m) if url.contains('?') => format!("{url}&sslmode={m}"),
        Some(m) => format!("{url}?sslmode={m}"),
        None => url.to_string(),
    }
}

/// One run with TLS to PostgreSQL as `sslmode` says for the writers and the relay (`None`:
/// their defaults, `prefer`).
pub async fn single(
    which: Which,
    rate: u32,
    seconds: u64,
    sslmode: Option<&str>,
) -> anyhow::Result<SingleRun> {
    let w = World::with_partitions(PARTITIONS).await?;
    let received: Received = Arc::new(Mutex::new(HashMap::new()));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let consumer = start_consumer(
        &w.brokers,
        &w.topic,
        received.clone(),
        stop_consumer.clone(),
    )?;
    let relay = RelayUnderTest::start(which, &w.url, &w.brokers, sslmode)?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (mut writers, _script) = start_writers(&w.url, rate, sslmode)?;

    let tls = sslmode.map_or(String::new(), |m| format!(" sslmode={m}"));
    let label = format!("single {rate}/s {}{tls}", which.name());
    let b = bar(seconds, &label);
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Ok(Some(status)) = writers.try_wait() {
        let mut err = String::new();
        if let Some(mut e) = writers.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        anyhow::bail!("pgbench stopped ({status}): {err}");
    }

    let window_start = Instant::now();
    let t0 = epoch_us();
    let ticks = CpuTicks::now();
    let procs = ProcCpu::now();
    let relay_cpu0 = proc_cpu_secs(relay.pid());
    let threads0 = threads_cpu(relay.pid());
    // Both readings lag by up to one statistics report alike.
    let c0 = relay.counters().await;
    let written0 = written(&w.pool).await?;
    for s in 0..seconds {
        b.set_position(s);
        tokio::time::sleep_until((window_start + Duration::from_secs(s + 1)).into()).await;
    }
    let window = window_start.elapsed();
    let t1 = epoch_us();
    let written1 = written(&w.pool).await?;
    let relay_cpu1 = proc_cpu_secs(relay.pid());
    let threads1 = threads_cpu(relay.pid());
    let c1 = relay.counters().await;
    let cpu_use = procs.used_since();
    ticks.note(label.clone());
    let backlog_end: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&w.pool)
            .await?;
    let _ = writers.kill();
    let _ = writers.wait();
    b.finish_and_clear();

    let total = written(&w.pool).await? as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().expect("received").len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_consumer.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    relay.stop();

    let received = std::mem::take(&mut *received.lock().expect("received"));
    let unacknowledged = total.saturating_sub(received.len()) as u64;
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    for &(t, at) in received.values() {
        if t >= t0 && t <= t1 {
            hist.record(at.saturating_sub(t).max(0) as u64)?;
        }
    }
    let events = (written1 - written0).max(1) as u64;
    let secs = window.as_secs_f64();
    let per_event_us = |cpu_secs: f64| cpu_secs * 1e6 / events as f64;
    let per_1000 = |n: f64| n * 1000.0 / events as f64;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let acks = c1.ack.since(&c0.ack);
    let ack_ms = |q: f64| acks.quantile(q).unwrap_or(0.0) * 1000.0;
    let cores = |kind: &str| cpu_use.cores.get(kind).copied().unwrap_or(0.0);
    let run = SingleRun {
        relay: which,
        sslmode: sslmode.map(str::to_string),
        offered: rate,
        achieved: events as f64 / secs,
        events,
        relay_cpu_us_per_event: per_event_us(relay_cpu1 - relay_cpu0),
        pg_cpu_us_per_event: per_event_us(cores("PostgreSQL") * secs),
        broker_cpu_us_per_event: per_event_us(cores("Tansu") * secs),
        statements_per_1000: per_1000(c1.statements - c0.statements),
        produce_requests_per_1000: per_1000(c1.produce_requests - c0.produce_requests),
        ack_p50_ms: ack_ms(0.5),
        ack_p99_ms: ack_ms(0.99),
        ack_within_5ms: acks.share_within(0.005),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        backlog_end,
        unacknowledged,
        late_rows_per_1000: per_1000(c1.late_rows - c0.late_rows),
        relay_threads_us_per_event: threads1
            .iter()
            .map(|(name, secs)| {
                let before = threads0.get(name).copied().unwrap_or(0.0);
                (name.clone(), per_event_us(secs - before))
            })
            .collect(),
        cpu: Some(cpu_use),
    };
    w.close().await;
    say(format!(
        "{label}: written {:.0}/s, relay {:.1} µs/event, PostgreSQL {:.1} µs/event, Tansu {:.1} µs/event, {:.0} statements and {:.0} produce requests per 1,000, acknowledged p50 {:.1} ms (within 5 ms {:.0} %), p99 {:.1} ms, received p50 {:.1} ms, p99 {:.1} ms, backlog {}{}",
        run.achieved,
        run.relay_cpu_us_per_event,
        run.pg_cpu_us_per_event,
        run.broker_cpu_us_per_event,
        run.statements_per_1000,
        run.produce_requests_per_1000,
        run.ack_p50_ms,
        run.ack_within_5ms * 100.0,
        run.ack_p99_ms,
        run.p50_ms,
        run.p99_ms,
        run.backlog_end,
        if unacknowledged > 0 {
            format!(", {unacknowledged} NOT RECEIVED")
        } else {
            String::new()
        }
    ));
    say(format!(
        "{label}: relay threads, µs/event: {}",
        run.relay_threads_us_per_event
            .iter()
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(run)
}

/// The relay's CPU seconds so far by thread name (threads of one name, such as the
/// runtime's workers, summed).
pub(crate) fn threads_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    for (name, secs) in proc_threads_cpu_secs(pid) {
        *by_name.entry(name).or_insert(0.0) += secs;
    }
    by_name
}

/// The single-event table: per rate, each relay's medians over the runs, and outboxd's
/// ratio to the naive relay.
pub fn table(runs: &[SingleRun]) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let mut rates: Vec<(u32, Option<String>)> = runs
        .iter()
        .map(|r| (r.offered, r.sslmode.clone()))
        .collect();
    rates.sort_unstable();
    rates.dedup();
    let med = |v: Vec<f64>| crate::stats::Stat::of(v).median;
    let mut s = String::from(
        "\nSingle-event transactions (pgbench: 4 writer connections, 1,000 aggregates, 300-byte \
         payloads, 2 topic partitions; each relay its own process; whole-process CPU); medians \
         over the runs, outboxd's ratio to the naive relay in brackets:\n\n| offered tx/s | \
         relay | runs | writers achieved/s | relay CPU µs/event | PostgreSQL CPU µs/event | \
         Tansu CPU µs/event | statements /1,000 | produce requests /1,000 | acked p50 ms | \
         acked within 5 ms | acked p99 ms | received p50 ms | received p99 ms | backlog at end | \
         not received |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (rate, sslmode) in rates {
        let of = |which: Which| -> Vec<&SingleRun> {
            runs.iter()
                .filter(|r| r.offered == rate && r.relay == which && r.sslmode == sslmode)
                .collect()
        };
        let tls = sslmode
            .as_deref()
            .map_or(String::new(), |m| format!(", sslmode={m}"));
        let (naive, ours) = (of(Which::Naive), of(Which::Outboxd));
        for (which, these) in [(Which::Naive, &naive), (Which::Outboxd, &ours)] {
            if these.is_empty() {
                continue;
            }
            let m = |f: fn(&SingleRun) -> f64| med(these.iter().map(|r| f(r)).collect());
            let base = |f: fn(&SingleRun) -> f64| {
                (which == Which::Outboxd && !naive.is_empty())
                    .then(|| med(naive.iter().map(|r| f(r)).collect()))
            };
            let cell = |f: fn(&SingleRun) -> f64, digits: usize| {
                crate::stats::with_ratio(m(f), base(f), digits)
            };
            let within_5ms = format!("{:.0} %", m(|r| r.ack_within_5ms) * 100.0);
            let name = format!("{}{tls}", which.name());
            s.push_str(&format!(
                "| {rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |\n",
                name,
                these.len(),
                cell(|r| r.achieved, 0),
                cell(|r| r.relay_cpu_us_per_event, 1),
                cell(|r| r.pg_cpu_us_per_event, 1),
                cell(|r| r.broker_cpu_us_per_event, 1),
                cell(|r| r.statements_per_1000, 0),
                cell(|r| r.produce_requests_per_1000, 0),
                cell(|r| r.ack_p50_ms, 1),
                within_5ms,
                cell(|r| r.ack_p99_ms, 1),
                cell(|r| r.p50_ms, 1),
                cell(|r| r.p99_ms, 1),
                m(|r| r.backlog_end as f64),
                m(|r| r.unacknowledged as f64),
            ));
        }
    }
    s
}
