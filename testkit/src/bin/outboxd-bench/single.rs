//! Single-event transactions, the commonest real workload: four writer connections each
//! commit one event per transaction (1,000 aggregates, ~300-byte JSON payloads, a topic of
//! two partitions), at an offered rate, while a relay runs in this process. Two relays take
//! turns on a fresh database and broker each:
//!
//! - **outboxd** — [`outboxd::Relay`] with the configuration `outboxd run` would use;
//! - **naive** — the relay a team writes in an afternoon, as an in-run yardstick: select the
//!   oldest 500 pending rows → produce them all (the same producer configuration and record
//!   shape) → wait for every acknowledgement → delete them; sleep 100 ms when nothing was
//!   pending. No per-aggregate order under retries, no late-row tracking, no leases.
//!
//! Per run: the rate the writers achieved (a relay that loads the machine slows the
//! application), the relay's CPU per event (its threads: the relay runtime and librdkafka's),
//! PostgreSQL's CPU per event (every process of the cluster, the writers' backends included),
//! statements and produce requests per 1,000 events, and commit → acknowledgement latency.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outboxd::actors::{Delivered, Hooks};
use outboxd::sink::kafka::{DeliveryTarget, DeliveryToken, RelayProducer};
use outboxd::store::postgres::sql as store;
use outboxd::{NewEvent, enqueue};
use serde::{Deserialize, Serialize};

use crate::world::{World, bar, say};
use testkit::cpu::{CpuTicks, CpuUse, ProcCpu, relay_threads_cpu_secs};

/// Aggregates the events are spread over.
const AGGREGATES: usize = 1_000;
/// Writer connections.
const WRITERS: usize = 4;
/// Topic partitions.
const PARTITIONS: i32 = 2;
/// The naive relay's batch.
const NAIVE_BATCH: i64 = 500;
/// How often librdkafka reports its statistics (produce requests are counted from them).
const STATS_MS: &str = "250";

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
    /// Offered transactions (= events) per second.
    pub offered: u32,
    /// Transactions per second the writers committed in the window.
    pub achieved: f64,
    /// Events committed in the window.
    pub events: u64,
    /// Relay threads' CPU per event, µs.
    pub relay_cpu_us_per_event: f64,
    /// CPU of PostgreSQL's processes (the writers' backends included) per event, µs.
    pub pg_cpu_us_per_event: f64,
    /// Statements the relay sent per 1,000 events.
    pub statements_per_1000: f64,
    /// Produce requests per 1,000 events (librdkafka's statistics).
    pub produce_requests_per_1000: f64,
    /// Commit → acknowledgement, ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// max.
    pub max_ms: f64,
    /// Pending rows when the window closed (the relay's lag, in events).
    pub backlog_end: i64,
    /// Events of the window not acknowledged within a minute after the writers stopped.
    pub unacknowledged: u64,
    /// outboxd only: rows found late in id gaps, per 1,000 events.
    #[serde(default)]
    pub late_rows_per_1000: f64,
    /// Where the machine's CPU went.
    pub cpu: Option<CpuUse>,
}

/// A counter of the process's Prometheus recorder (the in-process relay's metrics).
fn counter(name: &str) -> f64 {
    let text = outboxd::telemetry::metrics_handle().render();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Acknowledgement times by event id.
type Acks = Arc<Mutex<Vec<(uuid::Uuid, Instant)>>>;

/// One run: `which` relays while the writers offer `rate` single-event transactions/s for
/// `seconds` (after a 5 s warm-up).
pub async fn single(which: Which, rate: u32, seconds: u64) -> anyhow::Result<SingleRun> {
    // Installed before the relay starts, so that its metrics are recorded here.
    outboxd::telemetry::metrics_handle();
    let w = World::with_partitions(PARTITIONS).await?;
    let mut cfg = w.config();
    cfg.kafka
        .producer
        .insert("statistics.interval.ms".into(), STATS_MS.into());
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let relay_rt = crate::sustained::relay_runtime(&cfg)?;
    let stop_relay = Arc::new(AtomicBool::new(false));
    let naive_statements = Arc::new(AtomicU64::new(0));
    let relay = match which {
        Which::Outboxd => {
            let a = acks.clone();
            let hooks = Hooks {
                on_delivered: Some(Arc::new(move |batch: &[Delivered]| {
                    let mut v = a.lock().expect("acks");
                    v.extend(batch.iter().map(|d| (d.row.event_id, d.acked_at)));
                })),
                on_read: None,
            };
            Some(crate::sustained::start_relay_on(&relay_rt, cfg, hooks).await?)
        }
        Which::Naive => {
            let health = Arc::new(outboxd::health::Health::default());
            let producer = outboxd::sink::kafka::create_producer(&cfg.kafka, health)?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&w.url)
                .await?;
            relay_rt.spawn(naive(
                pool,
                producer,
                stop_relay.clone(),
                naive_statements.clone(),
                acks.clone(),
            ));
            None
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for wi in 0..WRITERS {
        let own: Vec<String> = (0..AGGREGATES)
            .filter(|a| a % WRITERS == wi)
            .map(|a| format!("agg-{a}"))
            .collect();
        let period = Duration::from_secs_f64(WRITERS as f64 / f64::from(rate));
        writers.push(tokio::spawn(writer(
            w.pool.clone(),
            w.topic.clone(),
            own,
            period,
            stop.clone(),
            written.clone(),
        )));
    }
    let label = format!("single {rate}/s {}", which.name());
    let b = bar(seconds, &label);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let window_start = Instant::now();
    let ticks = CpuTicks::now();
    let procs = ProcCpu::now();
    let cpu0 = relay_threads_cpu_secs();
    let statements0 =
        counter("outboxd_db_queries_total") + naive_statements.load(Ordering::Relaxed) as f64;
    let produce0 = counter("outboxd_kafka_produce_requests_total");
    let late0 = counter("outboxd_late_rows_total");
    let written0 = written.load(Ordering::Relaxed);
    for s in 0..seconds {
        b.set_position(s);
        tokio::time::sleep_until((window_start + Duration::from_secs(s + 1)).into()).await;
    }
    let window = window_start.elapsed();
    let written1 = written.load(Ordering::Relaxed);
    let cpu1 = relay_threads_cpu_secs();
    let cpu_use = procs.used_since();
    ticks.note(label.clone());
    // librdkafka's statistics lag by up to one interval: wait for the next report.
    tokio::time::sleep(Duration::from_millis(STATS_MS.parse::<u64>()? + 50)).await;
    let produce1 = counter("outboxd_kafka_produce_requests_total");
    let statements1 =
        counter("outboxd_db_queries_total") + naive_statements.load(Ordering::Relaxed) as f64;
    let late1 = counter("outboxd_late_rows_total");
    let backlog_end: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&w.pool)
        .await?;
    stop.store(true, Ordering::Relaxed);
    let mut commits = Vec::new();
    for t in writers {
        commits.extend(t.await??);
    }
    b.finish_and_clear();

    let total = commits.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.lock().expect("acks").len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_relay.store(true, Ordering::Relaxed);
    if let Some(relay) = relay {
        relay_rt.spawn(relay.shutdown()).await??;
    }
    relay_rt.shutdown_background();

    let acked: std::collections::HashMap<uuid::Uuid, Instant> =
        acks.lock().expect("acks").iter().copied().collect();
    let window_end = window_start + window;
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut unacknowledged = 0;
    for (id, committed) in &commits {
        if *committed < window_start || *committed > window_end {
            continue;
        }
        match acked.get(id) {
            Some(at) => hist.record(at.saturating_duration_since(*committed).as_micros() as u64)?,
            None => unacknowledged += 1,
        }
    }
    let events = (written1 - written0).max(1);
    let per_event_us = |secs: f64| secs * 1e6 / events as f64;
    let per_1000 = |n: f64| n * 1000.0 / events as f64;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let pg_cores = cpu_use.cores.get("PostgreSQL").copied().unwrap_or(0.0);
    let run = SingleRun {
        relay: which,
        offered: rate,
        achieved: events as f64 / window.as_secs_f64(),
        events,
        relay_cpu_us_per_event: per_event_us(cpu1 - cpu0),
        pg_cpu_us_per_event: per_event_us(pg_cores * window.as_secs_f64()),
        statements_per_1000: per_1000(statements1 - statements0),
        produce_requests_per_1000: per_1000(produce1 - produce0),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        backlog_end,
        unacknowledged,
        late_rows_per_1000: per_1000(late1 - late0),
        cpu: Some(cpu_use),
    };
    w.close().await;
    say(format!(
        "{label}: written {:.0}/s, relay {:.1} µs/event, PostgreSQL {:.1} µs/event, {:.0} statements and {:.0} produce requests per 1,000, p50 {:.1} ms, p99 {:.1} ms, backlog {}{}",
        run.achieved,
        run.relay_cpu_us_per_event,
        run.pg_cpu_us_per_event,
        run.statements_per_1000,
        run.produce_requests_per_1000,
        run.p50_ms,
        run.p99_ms,
        run.backlog_end,
        if unacknowledged > 0 {
            format!(", {unacknowledged} NOT ACKNOWLEDGED")
        } else {
            String::new()
        }
    ));
    Ok(run)
}

/// One writer connection: one event per transaction, every `period`, round-robin over its
/// aggregates, through the library API. A writer that falls behind catches up in a burst,
/// so the rate it achieves is what the database let it write.
async fn writer(
    pool: sqlx::PgPool,
    topic: String,
    aggregates: Vec<String>,
    period: Duration,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> anyhow::Result<Vec<(uuid::Uuid, Instant)>> {
    use sqlx::Acquire;
    let mut conn = pool.acquire().await?;
    let pad = "x".repeat(280);
    let mut seqs = vec![0u64; aggregates.len()];
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let a = i % aggregates.len();
        i += 1;
        seqs[a] += 1;
        let event = NewEvent::builder("bench", aggregates[a].clone())
            .event_type("bench.event")
            .topic(topic.clone())
            .json(&serde_json::json!({"seq": seqs[a], "pad": pad}))
            .build()?;
        let mut tx = conn.begin().await?;
        let id = enqueue(&mut *tx, &event).await?;
        tx.commit().await?;
        out.push((id, Instant::now()));
        written.fetch_add(1, Ordering::Relaxed);
    }
    Ok(out)
}

/// The acknowledgements of one naive cycle.
struct Cycle {
    remaining: AtomicUsize,
    ok: Mutex<Vec<usize>>,
    done: tokio::sync::Notify,
    acks: Acks,
    event_ids: Vec<uuid::Uuid>,
}

impl DeliveryTarget for Cycle {
    fn delivered(&self, index: usize, result: Result<(), rdkafka::error::KafkaError>) {
        if result.is_ok() {
            let now = Instant::now();
            self.ok.lock().expect("ok").push(index);
            self.acks
                .lock()
                .expect("acks")
                .push((self.event_ids[index], now));
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// The naive relay: select 500 → produce all → wait → delete; 100 ms sleep when idle.
async fn naive(
    pool: sqlx::PgPool,
    producer: RelayProducer,
    stop: Arc<AtomicBool>,
    statements: Arc<AtomicU64>,
    acks: Acks,
) {
    while !stop.load(Ordering::Relaxed) {
        statements.fetch_add(1, Ordering::Relaxed);
        let rows = match store::fetch_after(&pool, 0, NAIVE_BATCH).await {
            Ok(rows) => rows,
            Err(e) => {
                say(format!("naive relay: select failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let cycle = Arc::new(Cycle {
            remaining: AtomicUsize::new(rows.len()),
            ok: Mutex::new(Vec::with_capacity(rows.len())),
            done: tokio::sync::Notify::new(),
            acks: acks.clone(),
            event_ids: rows.iter().map(|r| r.event_id).collect(),
        });
        let target: Arc<dyn DeliveryTarget> = cycle.clone();
        for (i, row) in rows.iter().enumerate() {
            let sent = outboxd::sink::kafka::build_record(row)
                .ok()
                .and_then(|record| {
                    let token = Box::new(DeliveryToken {
                        target: target.clone(),
                        index: i,
                    });
                    producer.send(record.into_base_record(token)).ok()
                });
            if sent.is_none() {
                target.delivered(i, Err(rdkafka::error::KafkaError::Canceled));
            }
        }
        cycle.done.notified().await;
        let ids: Vec<i64> = cycle
            .ok
            .lock()
            .expect("ok")
            .iter()
            .map(|&i| rows[i].id)
            .collect();
        statements.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&pool)
            .await
        {
            say(format!("naive relay: delete failed: {e}"));
        }
    }
}

/// The single-event table: per rate, each relay's medians over the runs, and outboxd's
/// ratio to the naive relay.
pub fn table(runs: &[SingleRun]) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let mut rates: Vec<u32> = runs.iter().map(|r| r.offered).collect();
    rates.sort_unstable();
    rates.dedup();
    let med = |v: Vec<f64>| crate::stats::Stat::of(v).median;
    let mut s = String::from(
        "\nSingle-event transactions (4 writer connections, 1,000 aggregates, 300-byte payloads, \
         2 topic partitions); medians over the runs, outboxd's ratio to the naive relay in \
         brackets:\n\n| offered tx/s | relay | runs | writers achieved/s | relay CPU µs/event | \
         PostgreSQL CPU µs/event | statements /1,000 | produce requests /1,000 | p50 ms | p99 ms | \
         backlog at end | unacknowledged |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for rate in rates {
        let of = |which: Which| -> Vec<&SingleRun> {
            runs.iter()
                .filter(|r| r.offered == rate && r.relay == which)
                .collect()
        };
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
                let v = m(f);
                match base(f) {
                    Some(b) if b > 0.0 => format!("{v:.digits$} ({:.2}×)", v / b),
                    _ => format!("{v:.digits$}"),
                }
            };
            s.push_str(&format!(
                "| {rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |\n",
                which.name(),
                these.len(),
                cell(|r| r.achieved, 0),
                cell(|r| r.relay_cpu_us_per_event, 1),
                cell(|r| r.pg_cpu_us_per_event, 1),
                cell(|r| r.statements_per_1000, 0),
                cell(|r| r.produce_requests_per_1000, 0),
                cell(|r| r.p50_ms, 1),
                cell(|r| r.p99_ms, 1),
                m(|r| r.backlog_end as f64),
                m(|r| r.unacknowledged as f64),
            ));
        }
    }
    s
}
