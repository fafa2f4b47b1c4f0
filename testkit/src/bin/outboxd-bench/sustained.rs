//! Sustained rates: writers through the library API, the relay in-process, every event's
//! commit→acknowledgement latency split into stages; the search for the highest flat rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outboxd::actors::{Delivered, Hooks, ReadTimes};
use outboxd::config::Config;
use outboxd::sink::SinkKind;
use outboxd::store::OutboxRow;
use outboxd::{NewEvent, Relay, RelayOptions, enqueue_batch};
use serde::{Deserialize, Serialize};

use crate::world::{AGGREGATES, World, bar, say};
use testkit::cpu::{CpuTicks, CpuUse, ProcCpu, relay_threads_cpu_secs};

/// Writer tasks for the sustained phases.
pub(crate) const WRITERS: usize = 4;

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

/// How the sustained writers offer `rate` events/s: (transactions per second, events per
/// transaction). One event per transaction up to 1,000/s; above that 500 transactions per
/// second with more events each (the writers share the two cores with everything
/// measured). The produce latency floor sends its records in the same clumps.
pub(crate) fn clumps(rate: u32) -> (u32, usize) {
    let per_sec = if rate <= 1_000 { rate.max(1) } else { 500 };
    let per = (f64::from(rate) / f64::from(per_sec)).round().max(1.0) as usize;
    (per_sec, per)
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
pub(crate) struct EventPath {
    pub(crate) stages: [u64; 4],
    pub(crate) total: u64,
}

impl EventPath {
    /// From the writer's commit, the poller's read, the hand-off to the producer and the
    /// acknowledgement. The writer notes its commit when `COMMIT` returns to it, which can
    /// be a little after the row became visible: a query that started in between found it,
    /// and that first stage counts as zero.
    pub(crate) fn of(
        committed: Instant,
        read: ReadTimes,
        sent: Instant,
        acked: Instant,
    ) -> EventPath {
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
    pub(crate) fn of(paths: &[EventPath]) -> Option<Stages> {
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
pub(crate) fn verdict(s: &Sustained) -> &'static str {
    if !s.offered_fully {
        "not offered"
    } else if s.flat {
        "flat"
    } else {
        "growing"
    }
}

/// Least-squares slope of (t, backlog).
pub(crate) fn slope(points: &[(f64, f64)]) -> f64 {
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

pub(crate) async fn writer(
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
pub(crate) async fn search(
    known: &[Sustained],
    seconds: u64,
) -> anyhow::Result<(u32, Vec<Sustained>)> {
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
