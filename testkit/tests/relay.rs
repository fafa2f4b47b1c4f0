//! The relay in-process against the real PostgreSQL and the real broker: delivery with
//! every header, late committers, publisher crashes, poison rows under both dead-letter
//! policies, rate limits.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use outboxd::actors::{Delivered, Hooks, ReadTimes};
use outboxd::config::DeadLetterPolicy;
use outboxd::outbox::admin::{self, Selection};
use outboxd::{NewEvent, Relay, RelayOptions, enqueue_batch};
use serde_json::json;
use testkit::verify::create_topic;

/// id, event_id, aggregate_id, event_type, topic, payload text, payload bytes, created_at
type StoredRow = (
    i64,
    uuid::Uuid,
    String,
    String,
    String,
    Option<String>,
    Option<Vec<u8>>,
    chrono::DateTime<chrono::Utc>,
);

async fn relay(cfg: outboxd::config::Config) -> Relay {
    Relay::start(cfg, RelayOptions::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_over_two_topics_arrive_whole_and_in_order() {
    let db = TestDb::new().await;
    let topics = [topic("orders"), topic("payments")];
    for t in &topics {
        create_topic(&brokers(), t, 4).await.unwrap();
    }
    // 200 aggregates, each on one of two topics; some payloads binary, some with headers.
    let mut written = Vec::new();
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for chunk in 0..40 {
        let mut events = Vec::new();
        for i in 0..500u64 {
            let n = chunk * 500 + i;
            let agg = format!("agg-{}", n % 200);
            let seq = seqs.entry(agg.clone()).or_insert(0);
            *seq += 1;
            let topic = &topics[(n % 200 % 2) as usize];
            let b = NewEvent::builder("account", agg.clone())
                .event_type(if n % 3 == 0 {
                    "account.opened"
                } else {
                    "account.changed"
                })
                .topic(topic.clone())
                .header("traceparent", format!("00-{n:032x}-01"));
            let b = if n % 10 == 0 {
                b.bytes(format!("bin:{}:{}", agg, seq).into_bytes())
            } else {
                b.json(&json!({"seq": *seq, "agg": agg, "pad": "x".repeat((n % 50) as usize)}))
            };
            written.push((agg.clone(), *seq));
            events.push(b.build().unwrap());
        }
        let mut tx = db.pool.begin().await.unwrap();
        enqueue_batch(&mut *tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    }
    // What the table holds, to compare every record against.
    let rows: Vec<StoredRow> =
        sqlx::query_as(
            "SELECT id, event_id, aggregate_id, event_type, topic, payload::text, payload_bytes, created_at FROM outbox",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let by_event: HashMap<String, _> = rows.iter().map(|r| (r.1.to_string(), r.clone())).collect();

    let r = relay(config(&db)).await;
    assert!(
        drained(&db, Duration::from_secs(120)).await,
        "backlog drained"
    );
    let records = read_back(&[&topics[0], &topics[1]], 20_000, Duration::from_secs(60)).await;
    r.shutdown().await.unwrap();

    let mut ledger = testkit::verify::Ledger::default();
    for (a, s) in &written {
        ledger.written(a, *s);
    }
    let mut seen_events = std::collections::HashSet::new();
    for rec in &records {
        let event_id = rec.header("event_id").expect("event_id header");
        let (id, _, agg, event_type, topic, payload, bytes, created_at) =
            by_event.get(event_id).expect("record of a written event");
        seen_events.insert(event_id.to_string());
        assert_eq!(&rec.topic, topic);
        assert_eq!(&rec.key, agg, "key is the aggregate id");
        match (payload, bytes) {
            (Some(p), None) => {
                assert_eq!(rec.value, p.as_bytes(), "value is the JSON text");
                let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
                ledger.seen(agg, v["seq"].as_u64().unwrap());
            }
            (None, Some(b)) => {
                assert_eq!(&rec.value, b, "value is the raw bytes");
                let text = String::from_utf8(b.clone()).unwrap();
                ledger.seen(agg, text.rsplit(':').next().unwrap().parse().unwrap());
            }
            _ => unreachable!(),
        }
        let names: Vec<&str> = rec.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "event_type",
                "aggregate_type",
                "aggregate_id",
                "outbox_id",
                "created_at",
                "traceparent"
            ]
        );
        assert_eq!(rec.header("event_type"), Some(event_type.as_str()));
        assert_eq!(rec.header("aggregate_type"), Some("account"));
        assert_eq!(rec.header("aggregate_id"), Some(agg.as_str()));
        assert_eq!(rec.header("outbox_id"), Some(id.to_string().as_str()));
        let ts = chrono::DateTime::parse_from_rfc3339(rec.header("created_at").unwrap()).unwrap();
        assert_eq!(ts.timestamp_micros(), created_at.timestamp_micros());
        assert!(rec.header("traceparent").unwrap().starts_with("00-"));
    }
    let report = ledger.report();
    assert_eq!(seen_events.len(), 20_000);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{:?}", ledger.reorder_examples);
    assert_eq!(report.expected, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_committing_lower_id_is_published_not_skipped() {
    let db = TestDb::new().await;
    let t = topic("late");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let mut cfg = config(&db);
    // Only the gap tracking may find the row, not the periodic rescan.
    cfg.poller.rescan_interval_ms = 3_600_000;
    let r = relay(cfg).await;

    // A transaction takes a low id and holds it.
    let mut late = db.pool.begin().await.unwrap();
    let late_id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('test', 'late-agg', 'test.late', $1, '{\"seq\": 1}') RETURNING id",
    )
    .bind(&t)
    .fetch_one(&mut *late)
    .await
    .unwrap();

    // Later ids commit and are published meanwhile.
    let others: Vec<String> = (0..20).map(|i| format!("other-{i}")).collect();
    let mut written = insert_sql(&db.pool, &t, &others, 5).await;
    assert!(drained(&db, Duration::from_secs(30)).await);
    let first = read_back(&[&t], 100, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 100);
    let min_other: i64 = first
        .iter()
        .map(|r| r.header("outbox_id").unwrap().parse::<i64>().unwrap())
        .min()
        .unwrap();
    assert!(late_id < min_other, "the held row has the lower id");

    // Longer than the gap grace period: the relay must still wait for this transaction.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    late.commit().await.unwrap();
    written.push(("late-agg".into(), 1));

    assert!(
        drained(&db, Duration::from_secs(10)).await,
        "late row published"
    );
    let all = read_back(&[&t], 101, Duration::from_secs(30)).await;
    r.shutdown().await.unwrap();
    let (report, ledger) = check_ledger(&written, &all);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert!(
        all.iter()
            .any(|r| r.header("outbox_id") == Some(late_id.to_string().as_str())),
        "the late row reached Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_transaction_straddling_the_cursor_keeps_its_order() {
    straddle(1_000, |_| {}).await;
}

/// The same with most rows deferred: two rows per aggregate in memory, 300 in all, so
/// that gap rows, deferred ids and re-reads by id all meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straddling_transaction_keeps_its_order_when_rows_are_deferred() {
    let deferred = straddle(10, |cfg| {
        cfg.relay.max_in_flight = 300;
        cfg.relay.max_rows_per_aggregate = 2;
        cfg.poller.batch_size = 40;
    })
    .await;
    assert!(deferred >= 50, "rows were deferred: {deferred}");
}

/// Returns how many rows the poller deferred.
async fn straddle(aggregates: u64, tune: impl FnOnce(&mut outboxd::config::Config)) -> u64 {
    // A transaction of 10 rows per aggregate whose ids interleave with small committed
    // rows: when it commits, 8 rows per aggregate lie in gaps below the poller's cursor
    // (more than one read batch) and 1 above it. Aggregate k gets seq 1 in the first
    // chunk, 2..9 in the second, 10 in the third: seq 10 must not go before 2..9.
    let db = TestDb::new().await;
    let t = topic("straddle");
    create_topic(&brokers(), &t, 4).await.unwrap();
    let mut cfg = config(&db);
    cfg.poller.rescan_interval_ms = 3_600_000;
    tune(&mut cfg);
    let r = relay(cfg).await;
    let chunk = |seqs: std::ops::RangeInclusive<u64>| -> Vec<NewEvent> {
        seqs.flat_map(|seq| (0..aggregates).map(move |a| (a, seq)))
            .map(|(a, seq)| {
                NewEvent::builder("test", format!("big-{a}"))
                    .event_type("test.big")
                    .topic(t.clone())
                    .json(&json!({"seq": seq}))
                    .build()
                    .unwrap()
            })
            .collect()
    };
    let mut tx = db.pool.begin().await.unwrap();
    enqueue_batch(&mut *tx, &chunk(1..=1)).await.unwrap();
    let mut written = insert_seqs(&db.pool, &t, &["small".into()], 1..=1).await;
    enqueue_batch(&mut *tx, &chunk(2..=9)).await.unwrap();
    written.extend(insert_seqs(&db.pool, &t, &["small".into()], 2..=2).await);
    enqueue_batch(&mut *tx, &chunk(10..=10)).await.unwrap();
    assert!(
        drained(&db, Duration::from_secs(10)).await,
        "small rows published"
    );
    tx.commit().await.unwrap();
    written.extend(
        (1..=10u64).flat_map(|seq| (0..aggregates).map(move |a| (format!("big-{a}"), seq))),
    );
    let mut deferred = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(s)) = r.poller_stats().await {
            deferred = s.deferred_total;
        }
        if db.pending().await == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not drained in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Ok(Some(s)) = r.poller_stats().await {
        deferred = s.deferred_total;
    }
    let records = read_back(&[&t], written.len(), Duration::from_secs(60)).await;
    r.shutdown().await.unwrap();
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{:?}", ledger.reorder_examples);
    deferred
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_gap_does_not_hold_anything_up() {
    let db = TestDb::new().await;
    let t = topic("rollback");
    create_topic(&brokers(), &t, 1).await.unwrap();
    let r = relay(config(&db)).await;
    let mut aborted = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('test', 'gone', 'x', $1, '{}')",
    )
    .bind(&t)
    .execute(&mut *aborted)
    .await
    .unwrap();
    let written = insert_sql(&db.pool, &t, &["a".to_string()], 10).await;
    aborted.rollback().await.unwrap();
    let w2 = insert_sql(&db.pool, &t, &["b".to_string()], 10).await;
    assert!(drained(&db, Duration::from_secs(30)).await);
    let all = read_back(&[&t], 20, Duration::from_secs(30)).await;
    r.shutdown().await.unwrap();
    let mut expected = written;
    expected.extend(w2);
    let (report, _) = check_ledger(&expected, &all);
    assert_eq!(
        (report.lost, report.reordered, report.delivered),
        (0, 0, 20)
    );
}

/// The hooks an embedding application (the benchmark) times events with: every event is
/// reported read, then handed to the producer, then acknowledged, in that order of time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_see_each_event_read_then_sent_then_acknowledged() {
    let db = TestDb::new().await;
    let t = topic("hooks");
    create_topic(&brokers(), &t, 2).await.unwrap();
    type Reads = Arc<Mutex<HashMap<uuid::Uuid, ReadTimes>>>;
    type Acks = Arc<Mutex<Vec<(uuid::Uuid, Instant, Instant)>>>;
    let reads: Reads = Arc::default();
    let acks: Acks = Arc::default();
    let (rd, a) = (reads.clone(), acks.clone());
    let hooks = Hooks {
        on_read: Some(Arc::new(move |rows: &[outboxd::store::OutboxRow], at| {
            let mut m = rd.lock().unwrap();
            m.extend(rows.iter().map(|r| (r.event_id, at)));
        })),
        on_delivered: Some(Arc::new(move |batch: &[Delivered]| {
            let mut v = a.lock().unwrap();
            v.extend(
                batch
                    .iter()
                    .map(|d| (d.row.event_id, d.sent_at, d.acked_at)),
            );
        })),
    };
    let r = Relay::start(
        config(&db),
        RelayOptions {
            hooks,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let aggs: Vec<String> = (0..20).map(|i| format!("h-{i}")).collect();
    insert_sql(&db.pool, &t, &aggs, 10).await;
    assert!(drained(&db, Duration::from_secs(30)).await);
    r.shutdown().await.unwrap();
    let reads = reads.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = acks.iter().map(|a| a.0).collect();
    assert_eq!((acks.len(), distinct.len()), (200, 200));
    for (id, sent, acked) in &acks {
        let read = reads
            .get(id)
            .expect("every delivered event was reported read");
        assert!(read.started <= read.returned, "{id}");
        assert!(read.returned <= *sent, "{id}: sent before it was read");
        assert!(sent <= acked, "{id}: acknowledged before it was sent");
    }
}

/// Inserts the poison rows (plus a good row after each) and 10 healthy aggregates.
async fn poison(db: &TestDb, t: &str) -> Vec<(String, u64)> {
    let big = "x".repeat(1_500_000);
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload, headers) VALUES \
         ('test', 'big', 'e', $1, jsonb_build_object('seq', 1, 'pad', $2::text), '{}'), \
         ('test', 'badtopic', 'e', 'bad topic!', '{\"seq\": 1}', '{}'), \
         ('test', 'badheaders', 'e', $1, '{\"seq\": 1}', '{\"retries\": 3}'), \
         ('test', 'big', 'e', $1, '{\"seq\": 2}', '{}'), \
         ('test', 'badtopic', 'e', $1, '{\"seq\": 2}', '{}'), \
         ('test', 'badheaders', 'e', $1, '{\"seq\": 2}', '{}'), \
         ('test', 'big', 'e', $1, '{\"seq\": 3}', '{}')",
    )
    .bind(t)
    .bind(&big)
    .execute(&db.pool)
    .await
    .unwrap();
    let healthy: Vec<String> = (0..10).map(|i| format!("ok-{i}")).collect();
    insert_sql(&db.pool, t, &healthy, 20).await
}

fn seqs_of(records: &[testkit::verify::Consumed], agg: &str) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r.key == agg)
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_are_dead_lettered_and_hold_only_their_aggregate() {
    let db = TestDb::new().await;
    let t = topic("poison");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let healthy = poison(&db, &t).await;
    let mut cfg = config(&db);
    cfg.relay.dead_letter_policy = DeadLetterPolicy::Hold;
    let r = relay(cfg).await;

    assert!(
        eventually(Duration::from_secs(30), || async {
            db.dead_letters().await.len() == 3
        })
        .await,
        "three dead letters"
    );
    let dl = db.dead_letters().await;
    let class_of = |agg: &str| {
        dl.iter()
            .find(|d| d.1 == agg)
            .map(|d| (d.2.clone(), d.3.clone()))
            .unwrap()
    };
    let (c, reason) = class_of("big");
    assert_eq!(c, "record_too_large", "{reason}");
    assert!(reason.to_lowercase().contains("too large"), "{reason}");
    let (c, reason) = class_of("badtopic");
    assert_eq!(c, "invalid_topic");
    assert!(reason.contains("bad topic!"), "{reason}");
    let (c, reason) = class_of("badheaders");
    assert_eq!(c, "malformed_row");
    assert!(reason.contains("\"retries\" is not a string"), "{reason}");

    // Healthy aggregates all flowed; the poisoned ones are held with their later rows.
    let records = read_back(&[&t], 200, Duration::from_secs(30)).await;
    let (report, _) = check_ledger(&healthy, &records);
    assert_eq!((report.lost, report.reordered), (0, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.pending().await,
        4,
        "big 2,3, badtopic 2, badheaders 2 are held"
    );
    for agg in ["big", "badtopic", "badheaders"] {
        assert!(seqs_of(&records, agg).is_empty(), "{agg} held");
    }

    // Operator: discard big's dead letter; fix badheaders' row and replay it.
    admin::discard(&db.pool, &Selection::Aggregate("big".into()))
        .await
        .unwrap();
    sqlx::query("UPDATE outbox_dead_letter SET headers = '{}' WHERE aggregate_id = 'badheaders'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        admin::replay(&db.pool, &Selection::Aggregate("badheaders".into()))
            .await
            .unwrap(),
        1
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            db.pending().await == 1
        })
        .await,
        "released aggregates drained; badtopic still held"
    );
    let records = read_back(&[&t], 204, Duration::from_secs(30)).await;
    r.shutdown().await.unwrap();
    assert_eq!(seqs_of(&records, "big"), vec![2, 3]);
    assert_eq!(
        seqs_of(&records, "badheaders"),
        vec![1, 2],
        "the replayed row keeps its place"
    );
    assert!(seqs_of(&records, "badtopic").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_policy_continue_a_poisoned_aggregate_carries_on() {
    let db = TestDb::new().await;
    let t = topic("poison-c");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let healthy = poison(&db, &t).await;
    let mut cfg = config(&db);
    cfg.relay.dead_letter_policy = DeadLetterPolicy::Continue;
    let r = relay(cfg).await;
    assert!(drained(&db, Duration::from_secs(30)).await);
    let records = read_back(&[&t], 204, Duration::from_secs(30)).await;
    r.shutdown().await.unwrap();
    assert_eq!(db.dead_letters().await.len(), 3);
    let (report, _) = check_ledger(&healthy, &records);
    assert_eq!((report.lost, report.reordered), (0, 0));
    assert_eq!(seqs_of(&records, "big"), vec![2, 3]);
    assert_eq!(seqs_of(&records, "badtopic"), vec![2]);
    assert_eq!(seqs_of(&records, "badheaders"), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_500_per_second_holds_within_ten_percent() {
    let db = TestDb::new().await;
    let t = topic("rate");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let aggs: Vec<String> = (0..100).map(|i| format!("r-{i}")).collect();
    insert_sql(&db.pool, &t, &aggs, 40).await;
    let mut cfg = config(&db);
    cfg.rate_limit.events_per_second = 500;
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let a = acks.clone();
    let r = Relay::start(
        cfg,
        RelayOptions {
            hooks: Hooks {
                on_delivered: Some(Arc::new(move |batch: &[Delivered]| {
                    a.lock().unwrap().extend(batch.iter().map(|d| d.acked_at));
                })),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Held back by the limit (4,000 rows at 500/s take 8 s), the oldest rows age; the
    // relay reports their age from memory (outboxd_oldest_pending_age_seconds).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let age = r
        .poller_stats()
        .await
        .unwrap()
        .and_then(|s| s.oldest_pending_age_secs)
        .expect("rows pending");
    assert!((2.5..60.0).contains(&age), "oldest pending age {age}");
    assert!(drained(&db, Duration::from_secs(60)).await);
    let after = r.poller_stats().await.unwrap().unwrap();
    assert_eq!(after.oldest_pending_age_secs, None, "nothing pending");
    r.shutdown().await.unwrap();
    let mut times = acks.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 4_000);
    // The steady part: skip the first and last 10 %.
    let (lo, hi) = (400, 3_600);
    let secs = times[hi].duration_since(times[lo]).as_secs_f64();
    let rate = (hi - lo) as f64 / secs;
    assert!(
        (450.0..=550.0).contains(&rate),
        "observed {rate:.1} events/s"
    );
}

/// One aggregate with a long backlog must not fill the relay's memory and starve the
/// others: its rows beyond `relay.max_rows_per_aggregate` wait in the table (their ids
/// remembered), and rows of other aggregates written after it flow at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_aggregate_with_a_long_backlog_does_not_starve_the_others() {
    let db = TestDb::new().await;
    let t = topic("hot");
    create_topic(&brokers(), &t, 4).await.unwrap();
    let hot = vec!["hot".to_string()];
    let cold: Vec<String> = (0..100).map(|i| format!("cold-{i}")).collect();
    let mut written = insert_sql(&db.pool, &t, &hot, 3_000).await;
    written.extend(insert_sql(&db.pool, &t, &cold, 5).await);

    // Per delivered row: its aggregate and how many hot rows were delivered before it.
    let order: Arc<Mutex<Vec<(String, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let mut cfg = config(&db);
    cfg.relay.max_in_flight = 500;
    cfg.poller.batch_size = 200;
    let r = Relay::start(
        cfg,
        RelayOptions {
            hooks: Hooks {
                on_delivered: Some(Arc::new(move |batch: &[Delivered]| {
                    let mut o = o.lock().unwrap();
                    o.extend(batch.iter().map(|d| (d.row.aggregate_id.clone(), d.row.id)));
                })),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(drained(&db, Duration::from_secs(120)).await, "drained");
    let stats = r.poller_stats().await.unwrap().expect("pipeline runs");
    assert!(
        stats.deferred_total >= 2_000,
        "the hot backlog was deferred, not held: {stats:?}"
    );
    r.shutdown().await.unwrap();

    let order = order.lock().unwrap().clone();
    let mut hot_before_last_cold = 0;
    let mut hot_seen = 0;
    let mut last_hot_id = 0;
    for (agg, id) in &order {
        if agg == "hot" {
            assert!(*id > last_hot_id, "hot rows acknowledged in id order");
            last_hot_id = *id;
            hot_seen += 1;
        } else {
            hot_before_last_cold = hot_seen;
        }
    }
    assert!(
        hot_before_last_cold < 1_000,
        "the 500 cold rows waited for {hot_before_last_cold} of the 3,000 hot ones"
    );
    let records = read_back(&[&t], written.len(), Duration::from_secs(60)).await;
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{:?}", ledger.reorder_examples);
}

/// The periodic rescan is the safety net for a pending row below the read position that
/// no id gap explains (here: written with an explicit, already used id — as a restore or
/// a hand-made fix could). Its query runs beside the poller, which keeps publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_rescan_finds_a_row_no_gap_explains() {
    let db = TestDb::new().await;
    let t = topic("rescan");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let mut cfg = config(&db);
    cfg.poller.rescan_interval_ms = 1_000;
    let r = relay(cfg).await;
    let aggs: Vec<String> = (0..10).map(|i| format!("r-{i}")).collect();
    let mut written = insert_sql(&db.pool, &t, &aggs, 3).await;
    assert!(drained(&db, Duration::from_secs(30)).await);
    // Id 1 was published and deleted; the poller's cursor is far past it, with no gap.
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, topic, payload) \
         OVERRIDING SYSTEM VALUE VALUES (1, 'test', 'restored', 'test.restored', $1, '{\"seq\": 1}')",
    )
    .bind(&t)
    .execute(&db.pool)
    .await
    .unwrap();
    written.push(("restored".into(), 1));
    // Meanwhile ordinary rows keep flowing.
    written.extend(insert_seqs(&db.pool, &t, &aggs, 4..=4).await);
    assert!(
        drained(&db, Duration::from_secs(30)).await,
        "the rescan found the restored row"
    );
    let records = read_back(&[&t], written.len(), Duration::from_secs(30)).await;
    r.shutdown().await.unwrap();
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{:?}", ledger.reorder_examples);
}
