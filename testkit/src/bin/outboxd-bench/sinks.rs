//! The `sinks` phase: Redis Streams and NATS JetStream measured the way Kafka is — an
//! in-run ceiling (the sink's own client writing the same 500-byte events as fast as it
//! can, no PostgreSQL), a drain of the same backlog by `outboxd run`, and sustained
//! commit→acknowledgement latency at the plan's rates (1k and 10k events/s by default).
//! Each sink gets a private server started fresh: `redis-server` with its append-only
//! file fsynced always (an acknowledged entry is on disk, as an outbox wants) and
//! `nats-server -js` with its file store and a stream with a two-minute duplicate window.

use std::time::{Duration, Instant};

use futures::StreamExt;
use outboxd::sink::SinkKind;
use serde::{Deserialize, Serialize};

use crate::drain::{Drain, drain};
use crate::sustained::{Sustained, sustained};
use crate::world::{World, bar, say};

/// One sink's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkResult {
    /// `redis` or `nats`.
    pub sink: String,
    /// The ceiling: the raw client, events/s.
    pub ceiling_events_per_sec: f64,
    /// What the ceiling measured.
    pub ceiling_what: String,
    /// The drain by `outboxd run`.
    pub drain: Drain,
    /// Sustained rates.
    pub sustained: Vec<Sustained>,
}

/// The same event fields the relay sends: a 500-byte JSON payload and the built-ins.
fn fields(i: u64) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let payload = format!(
        r#"{{"seq": {}, "pad": "{}"}}"#,
        i / 10_000 + 1,
        "x".repeat(468)
    )
    .into_bytes();
    let headers = vec![
        ("event_id", uuid::Uuid::new_v4().to_string()),
        ("event_type", "bench.event".to_string()),
        ("aggregate_type", "bench".to_string()),
        ("aggregate_id", format!("agg-{}", i % 10_000)),
        ("outbox_id", i.to_string()),
        ("created_at", chrono::Utc::now().to_rfc3339()),
    ];
    (payload, headers)
}

/// Raw pipelined `XADD`: pipelines of 500 commands, up to 8 in flight on one multiplexed
/// connection (the relay's shape), until `rows` entries are acknowledged.
async fn ceiling_redis(url: &str, stream: &str, rows: u64) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let b = bar(rows, "ceiling: raw pipelined XADD");
    let t = Instant::now();
    let pipes = (0..rows.div_ceil(500)).map(|p| {
        let mut pipe = redis::pipe();
        for i in p * 500..((p + 1) * 500).min(rows) {
            let (payload, headers) = fields(i);
            let cmd = pipe
                .cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(payload);
            for (k, v) in headers {
                cmd.arg(k).arg(v);
            }
        }
        let mut conn = conn.clone();
        async move { pipe.query_async::<Vec<redis::Value>>(&mut conn).await }
    });
    let mut done = 0u64;
    let mut in_flight = futures::stream::iter(pipes).buffered(8);
    while let Some(r) = in_flight.next().await {
        done += r?.len() as u64;
        b.set_position(done);
    }
    b.finish_and_clear();
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

/// Raw JetStream publishes with their PubAcks: every event published in order with its
/// `Nats-Msg-Id`, up to 10,000 acknowledgements outstanding, until `rows` are acknowledged.
async fn ceiling_nats(url: &str, subject: &str, rows: u64) -> anyhow::Result<f64> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .max_ack_inflight(1 << 20)
        .build(client);
    let b = bar(rows, "ceiling: raw JetStream publish + ack");
    let t = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    let mut done = 0u64;
    for i in 0..rows {
        let (payload, fields) = fields(i);
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in fields {
            headers.insert(k, v.as_str());
        }
        let id = headers.get("event_id").map(|v| v.to_string()).unwrap();
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(id);
        acks.push_back(js.send_publish(subject.to_string(), publish).await?);
        if acks.len() >= 10_000 {
            acks.pop_front().unwrap().await?;
            done += 1;
            if done.is_multiple_of(10_000) {
                b.set_position(done);
            }
        }
    }
    for ack in acks {
        ack.await?;
        done += 1;
    }
    b.finish_and_clear();
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

/// Measures `sink`: its ceiling, a drain of `rows`, and each of `rates` for `seconds`.
pub async fn measure(
    sink: SinkKind,
    rows: u64,
    rates: &[u32],
    seconds: u64,
) -> anyhow::Result<SinkResult> {
    let w = World::for_sink(sink).await?;
    let url = w.server.as_ref().expect("a Redis or NATS server").url();
    let (ceiling, what) = match sink {
        SinkKind::Redis => (
            ceiling_redis(&url, &w.topic, rows).await?,
            "raw pipelined XADD (500 per pipeline, 8 in flight)",
        ),
        _ => (
            ceiling_nats(&url, &w.topic, rows).await?,
            "raw JetStream publish + PubAck (10,000 acks outstanding)",
        ),
    };
    w.close().await;
    say(format!("{sink}: ceiling {ceiling:.0} events/s ({what})"));
    let d = drain(rows, sink).await?;
    say(format!(
        "{sink}: drain {:.0} events/s, {:.2} µs CPU/event, peak RSS {:.1} MB",
        d.events_per_sec, d.cpu_us_per_event, d.peak_rss_mb
    ));
    let mut runs = Vec::new();
    for &rate in rates {
        let s = sustained(rate, seconds, sink).await?;
        say(format!(
            "{sink}: sustained {rate}/s: achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, {:.2} µs CPU/event",
            s.achieved, s.p50_ms, s.p99_ms, s.cpu_us_per_event
        ));
        runs.push(s);
    }
    // Let the server's files go before the next world.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(SinkResult {
        sink: sink.name().to_string(),
        ceiling_events_per_sec: ceiling,
        ceiling_what: what.to_string(),
        drain: d,
        sustained: runs,
    })
}
