//! The ceilings: PostgreSQL alone, rdkafka alone, a minimal relay, the broker's own latency
//! floor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outboxd::config::OnPublish;
use outboxd::sink::kafka::{DeliveryTarget, DeliveryToken};
use outboxd::store::postgres::sql as store;
use outboxd::store::{Fence, RELAY_LEASE};
use rdkafka::producer::BaseRecord;
use serde::{Deserialize, Serialize};

use crate::sustained::clumps;
use crate::world::{AGGREGATES, World, bar};
use testkit::cpu::{CpuTicks, proc_cpu_secs};

/// The relay's own SQL with no Kafka: read a batch after the cursor, hand its ids to a
/// second connection that deletes them (`synchronous_commit = off`, batches coalesced
/// like the acker's). Rows per second, and this process's CPU per row (the client side of
/// the SQL: a floor for the relay).
pub(crate) async fn ceiling_postgres(rows: u64) -> anyhow::Result<(f64, f64)> {
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
pub(crate) async fn ceiling_produce(rows: u64) -> anyhow::Result<(f64, f64)> {
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
pub(crate) fn send_bench_record(
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

/// Delivery times by record index, for the produce latency floor.
#[derive(Default)]
pub(crate) struct AckTimes {
    pub(crate) at: Mutex<Vec<(usize, Instant)>>,
    pub(crate) failed: AtomicU64,
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

pub(crate) async fn produce_latency(rate: u32, seconds: u64) -> anyhow::Result<ProduceLatency> {
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
pub(crate) struct AckedIds {
    pub(crate) ids: Mutex<Vec<i64>>,
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
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
pub(crate) async fn ceiling_minimal(rows: u64) -> anyhow::Result<(f64, f64)> {
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

/// Counts delivery reports.
#[derive(Default)]
pub(crate) struct AckCounter {
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl DeliveryTarget for AckCounter {
    fn delivered(&self, _index: usize, result: Result<(), rdkafka::error::KafkaError>) {
        match result {
            Ok(()) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}
