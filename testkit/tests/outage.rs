//! The broker goes away for about 10 s while the relay runs: rows wait and are retried
//! with back-off, then everything arrives in order and nothing is dead-lettered.

mod common;

use std::time::Duration;

use common::*;
use outboxd::{Relay, RelayOptions};
use testkit::chaos::Mode;
use testkit::verify::create_topic;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_broker_outage_delays_but_loses_and_reorders_nothing() {
    let pb = ProxiedBroker::start().await;
    let db = TestDb::new().await;
    let t = topic("outage");
    create_topic(&pb.brokers(), &t, 4).await.unwrap();

    let mut cfg = config(&db);
    cfg.kafka.brokers = pb.brokers();
    // Sends time out during the outage, so the relay's own retry path runs (not only
    // librdkafka's); few attempts allowed, yet an outage must not use them up.
    cfg.kafka
        .producer
        .insert("message.timeout.ms".into(), "2000".into());
    cfg.retry.max_attempts = 2;
    // Tansu fences the epoch librdkafka bumps after timeouts: the producer must be
    // replaced once the broker answers again.
    cfg.kafka.stall_timeout_ms = 4_000;
    cfg.retry.initial_backoff_ms = 200;
    cfg.retry.max_backoff_ms = 2_000;
    let relay = Relay::start(cfg, RelayOptions::default()).await.unwrap();

    let aggs: Vec<String> = (0..100).map(|i| format!("o-{i}")).collect();
    let pool = db.pool.clone();
    let topic_name = t.clone();
    let writer = tokio::spawn(async move {
        let mut all = Vec::new();
        for seq in 1..=40u64 {
            all.extend(insert_seqs(&pool, &topic_name, &aggs, seq..=seq).await);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        all
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    pb.proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(db.pending().await > 0, "rows wait during the outage");
    assert!(!relay.health().broker_up() || db.pending().await > 100);
    tokio::time::sleep(Duration::from_secs(5)).await;
    pb.proxy.set(Mode::Pass);

    let written = writer.await.unwrap();
    assert!(
        drained(&db, Duration::from_secs(60)).await,
        "everything published after the outage"
    );
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let records =
        read_back_from(&pb.brokers(), &[&t], written.len(), Duration::from_secs(60)).await;
    relay.shutdown().await.unwrap();

    assert_eq!(failures, 0, "an outage dead-letters nothing");
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.expected, 4_000);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{:?}", ledger.reorder_examples);
}
