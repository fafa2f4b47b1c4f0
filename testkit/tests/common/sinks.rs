//! Helpers for the sink tests: the machine's Redis and NATS, configurations, and the
//! order-and-completeness check.

use outboxd::NewEvent;
use outboxd::config::Config;
use outboxd::enqueue_batch;
use outboxd::sink::SinkKind;
use testkit::verify::Consumed;

use super::{TestDb, check_ledger, config};

pub fn redis_url() -> String {
    std::env::var("OUTBOXD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn nats_url() -> String {
    std::env::var("OUTBOXD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_config(db: &TestDb, url: &str) -> Config {
    let mut c = config(db);
    c.sink.kind = SinkKind::Redis;
    c.redis.url = url.to_string();
    c.redis.timeout_ms = 1_000;
    c.redis.connect_timeout_ms = 500;
    c
}

pub fn nats_config(db: &TestDb, url: &str) -> Config {
    let mut c = config(db);
    c.sink.kind = SinkKind::Nats;
    c.nats.url = url.to_string();
    c.nats.timeout_ms = 1_000;
    c.nats.connect_timeout_ms = 500;
    c
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Events `1..=n` for each aggregate, interleaved, with a header, every tenth payload
/// binary; returns (aggregate, seq)s.
pub async fn write_events(
    db: &TestDb,
    topic: &str,
    aggregates: &[String],
    n: u64,
) -> Vec<(String, u64)> {
    let mut written = Vec::new();
    let mut events = Vec::new();
    for seq in 1..=n {
        for a in aggregates {
            written.push((a.clone(), seq));
            let b = NewEvent::builder("user", a.clone())
                .event_type("user.changed")
                .topic(topic)
                .header("traceparent", format!("00-{seq:032x}-01"));
            let b = if seq % 10 == 0 {
                // Binary, and still JSON-readable by the ledger.
                b.bytes(format!(r#"{{"seq": {seq}}}"#).into_bytes())
            } else {
                b.json(&serde_json::json!({ "seq": seq }))
            };
            events.push(b.build().unwrap());
        }
    }
    for chunk in events.chunks(500) {
        let mut tx = db.pool.begin().await.unwrap();
        enqueue_batch(&mut *tx, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
    written
}

pub fn assert_whole_and_in_order(written: &[(String, u64)], records: &[Consumed]) {
    let (report, ledger) = check_ledger(written, records);
    if report.lost > 0 {
        let mut seen = std::collections::HashMap::new();
        for r in records {
            *seen
                .entry((
                    r.key.clone(),
                    String::from_utf8_lossy(&r.value).into_owned(),
                ))
                .or_insert(0) += 1;
        }
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        // Which events are missing and which came twice, and where in the stream their
        // neighbours are: for a failure's diagnosis.
        let position = |a: &str, seq: u64| -> Vec<usize> {
            records
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.key == a
                        && serde_json::from_slice::<serde_json::Value>(&r.value)
                            .ok()
                            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                            == Some(seq)
                })
                .map(|(i, _)| i)
                .collect()
        };
        for (a, seqs) in ledger.missing() {
            for seq in seqs {
                eprintln!(
                    "missing {a}/{seq}: previous at {:?}, next at {:?}",
                    position(&a, seq.saturating_sub(1)),
                    position(&a, seq + 1)
                );
            }
        }
        for ((a, v), _) in &dups {
            eprintln!(
                "duplicated {a} {v} at {:?}",
                records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| &r.key == a && String::from_utf8_lossy(&r.value) == v.as_str())
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>()
            );
        }
        eprintln!("{} records", records.len());
    }
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(
        report.reordered, 0,
        "{report:?} {:?}",
        ledger.reorder_examples
    );
    assert_eq!(report.unexpected, 0, "{report:?}");
    assert_eq!(report.delivered as usize, written.len(), "{report:?}");
}

pub fn aggregates(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u-{i}")).collect()
}

/// A reader's stop condition: `expected` distinct events (by `event_id`) have been read.
/// Counting records instead would stop short when resends are among them.
pub fn every_event(expected: usize) -> impl FnMut(&[Consumed]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut counted = 0;
    move |records: &[Consumed]| {
        for r in &records[counted..] {
            seen.insert(r.header("event_id").unwrap_or_default().to_string());
        }
        counted = records.len();
        seen.len() >= expected
    }
}
