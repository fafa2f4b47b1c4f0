//! The relay in-process on the real MariaDB and the real broker (Tansu): delivery in order
//! per aggregate with concurrent writers, a late-committing lower id, poison rows held and
//! released by the operator.

mod common;

use std::time::Duration;

use common::*;
use outboxd::config::DeadLetterPolicy;
use outboxd::outbox::admin::{self, Selection};
use outboxd::{NewEvent, Relay, RelayOptions};
use testkit::verify::create_topic;

fn mysql_config(db: &MySqlTestDb) -> outboxd::config::Config {
    config_for(&db.url)
}

async fn drained(db: &MySqlTestDb, timeout: Duration) -> bool {
    eventually(timeout, || async { db.pending().await == 0 }).await
}

/// `(aggregate, seq)` rows with payload `{"seq": seq}`, one multi-row insert.
async fn insert_rows(conn: impl sqlx::MySqlExecutor<'_>, topic: &str, rows: &[(String, u64)]) {
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) ",
    );
    q.push_values(rows, |mut b, (agg, seq)| {
        b.push_bind("test")
            .push_bind(agg.clone())
            .push_bind("test.happened")
            .push_bind(topic.to_string())
            .push_bind(format!("{{\"seq\": {seq}}}"));
    });
    q.build().execute(conn).await.expect("insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_concurrent_writers_arrive_whole_and_in_order() {
    let db = MySqlTestDb::new().await;
    let t = topic("my-orders");
    create_topic(&brokers(), &t, 4).await.unwrap();
    let relay = Relay::start(mysql_config(&db), RelayOptions::default())
        .await
        .unwrap();
    // Four writers, each with its own aggregates, 100 transactions of 25 events each,
    // some through the library, some with plain SQL; their ids interleave.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let pool = db.pool.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for round in 0..100u64 {
                let seq = round + 1;
                let rows: Vec<(String, u64)> =
                    (0..25).map(|a| (format!("w{w}-a{a}"), seq)).collect();
                let mut tx = pool.begin().await.unwrap();
                if round % 2 == 0 {
                    insert_rows(&mut *tx, &t, &rows).await;
                } else {
                    let events: Vec<NewEvent> = rows
                        .iter()
                        .map(|(a, s)| {
                            NewEvent::builder("test", a.clone())
                                .event_type("test.happened")
                                .topic(t.clone())
                                .json(&serde_json::json!({ "seq": s }))
                                .header("traceparent", "00-abc-01")
                                .build()
                                .unwrap()
                        })
                        .collect();
                    outboxd::enqueue_batch(&mut *tx, &events).await.unwrap();
                }
                tx.commit().await.unwrap();
                written.extend(rows);
            }
            written
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    assert!(drained(&db, Duration::from_secs(60)).await, "drained");
    let records = read_back(&[&t], written.len(), Duration::from_secs(60)).await;
    relay.shutdown().await.unwrap();
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(
        (report.lost, report.reordered),
        (0, 0),
        "{:?}",
        ledger.missing()
    );
    let r = &records[0];
    for header in [
        "event_id",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "outbox_id",
        "created_at",
    ] {
        assert!(r.header(header).is_some(), "{header} on {:?}", r.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_committing_lower_id_is_published_not_skipped() {
    let db = MySqlTestDb::new().await;
    let t = topic("my-late");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let mut cfg = mysql_config(&db);
    // Only the gap tracking may find the row, not the periodic rescan.
    cfg.poller.rescan_interval_ms = 3_600_000;
    let relay = Relay::start(cfg, RelayOptions::default()).await.unwrap();

    let mut late = db.pool.begin().await.unwrap();
    insert_rows(&mut *late, &t, &[("late-agg".into(), 1)]).await;
    let others: Vec<(String, u64)> = (0..20)
        .flat_map(|i| (1..=5).map(move |s| (format!("other-{i}"), s)))
        .collect();
    insert_rows(&db.pool, &t, &others).await;
    let first = read_back(&[&t], 100, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 100);
    // Longer than the gap grace period: the relay must still wait for this transaction.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    late.commit().await.unwrap();
    assert!(
        drained(&db, Duration::from_secs(10)).await,
        "late row published"
    );
    let all = read_back(&[&t], 101, Duration::from_secs(30)).await;
    relay.shutdown().await.unwrap();
    let mut written = others;
    written.push(("late-agg".into(), 1));
    let (report, ledger) = check_ledger(&written, &all);
    assert_eq!(
        (report.lost, report.reordered),
        (0, 0),
        "{:?}",
        ledger.missing()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_are_held_and_released_by_the_operator() {
    let db = MySqlTestDb::new().await;
    let t = topic("my-poison");
    create_topic(&brokers(), &t, 2).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload, headers) VALUES \
         ('test', 'big', 'e', ?, JSON_OBJECT('seq', 1, 'pad', REPEAT('x', 1500000)), '{}'), \
         ('test', 'badheaders', 'e', ?, '{\"seq\": 1}', '{\"retries\": 3}'), \
         ('test', 'big', 'e', ?, '{\"seq\": 2}', '{}'), \
         ('test', 'badheaders', 'e', ?, '{\"seq\": 2}', '{}')",
    )
    .bind(&t)
    .bind(&t)
    .bind(&t)
    .bind(&t)
    .execute(&db.pool)
    .await
    .unwrap();
    let healthy: Vec<(String, u64)> = (0..10)
        .flat_map(|i| (1..=20).map(move |s| (format!("ok-{i}"), s)))
        .collect();
    insert_rows(&db.pool, &t, &healthy).await;
    let mut cfg = mysql_config(&db);
    cfg.relay.dead_letter_policy = DeadLetterPolicy::Hold;
    let relay = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    let open = || async { admin::dead_letter_counts(&db.pool).await.unwrap().0 };
    assert!(
        eventually(Duration::from_secs(30), || async { open().await == 2 }).await,
        "two dead letters"
    );
    let listed = admin::list_dead_letters(&db.pool, false, 10).await.unwrap();
    let class_of = |agg: &str| {
        listed
            .iter()
            .find(|d| d.aggregate_id == agg)
            .map(|d| d.error_class.clone())
            .unwrap()
    };
    assert_eq!(class_of("big"), "record_too_large");
    assert_eq!(class_of("badheaders"), "malformed_row");
    let records = read_back(&[&t], 200, Duration::from_secs(30)).await;
    let (report, _) = check_ledger(&healthy, &records);
    assert_eq!((report.lost, report.reordered), (0, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.pending().await,
        2,
        "the poisoned aggregates' later rows are held"
    );

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
        drained(&db, Duration::from_secs(30)).await,
        "released and drained"
    );
    let records = read_back(&[&t], 203, Duration::from_secs(30)).await;
    relay.shutdown().await.unwrap();
    let seqs = |agg: &str| -> Vec<u64> {
        records
            .iter()
            .filter(|r| r.key == agg)
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(seqs("big"), vec![2]);
    assert_eq!(
        seqs("badheaders"),
        vec![1, 2],
        "the replayed row keeps its place"
    );
}
