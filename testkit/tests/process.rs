//! `outboxd run` as a process: rows inserted with plain SQL, configured only through the
//! environment; `kill -9` and restart, SIGTERM under load, the crash budget.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use testkit::verify::create_topic;

fn env_for(db: &TestDb) -> Vec<(&'static str, String)> {
    vec![
        ("OUTBOXD__DATABASE__URL", db.url.clone()),
        ("OUTBOXD__KAFKA__BROKERS", brokers()),
    ]
}

/// Inserts `per_aggregate` rows per aggregate, one small transaction at a time, with a
/// pause between them, so that the relay works while rows keep coming.
async fn trickle(
    pool: sqlx::PgPool,
    topic: String,
    aggregates: Vec<String>,
    per_aggregate: u64,
    pause: Duration,
) -> Vec<(String, u64)> {
    let mut all = Vec::new();
    for seq in 1..=per_aggregate {
        all.extend(insert_seqs(&pool, &topic, &aggregates, seq..=seq).await);
        tokio::time::sleep(pause).await;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_rows_arrive_in_order_across_kill_dash_nine_and_restart() {
    let db = TestDb::new().await;
    let t = topic("kill9");
    create_topic(&brokers(), &t, 4).await.unwrap();
    let aggs: Vec<String> = (0..40).map(|i| format!("k-{i}")).collect();
    // About 25 s of writes: the kills and the final takeover all happen while rows come in.
    let writer = tokio::spawn(trickle(
        db.pool.clone(),
        t.clone(),
        aggs,
        60,
        Duration::from_millis(400),
    ));
    let epoch = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(max(epoch), 0) FROM outbox_lease")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };

    let oldest_pending = || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT min(id) FROM outbox")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };

    // No instance id: every process goes by the host's name, as a restarted systemd unit
    // or Kubernetes container does.
    let env = env_for(&db);
    for cycle in 0..2 {
        let before = epoch().await;
        let oldest = oldest_pending().await;
        let started = Instant::now();
        let mut relay = RelayProcess::spawn(&env);
        // It takes the lease: after a kill -9 its own, at once (not after the 10 s TTL)...
        let took_over =
            eventually(Duration::from_secs(30), || async { epoch().await > before }).await;
        assert!(
            took_over,
            "cycle {cycle}: relay took the lease\n{}",
            relay.output()
        );
        let publishing = eventually(Duration::from_secs(30), || async {
            oldest_pending().await.is_none_or(|o| Some(o) > oldest)
        })
        .await;
        assert!(publishing, "cycle {cycle}: publishing\n{}", relay.output());
        let resumed = started.elapsed();
        if cycle > 0 {
            assert!(
                resumed < Duration::from_secs(2),
                "cycle {cycle}: restarted relay published again after {resumed:?}\n{}",
                relay.output()
            );
        }
        // ...publishes a while, and dies mid-run.
        let pending_before = db.pending().await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(!writer.is_finished(), "cycle {cycle}: rows still coming in");
        assert!(
            relay.output().contains("Lease acquired"),
            "cycle {cycle}: {pending_before} pending\n{}",
            relay.output()
        );
        relay.signal(Signal::SIGKILL);
        assert!(relay.wait_for(Duration::from_secs(5)).is_some());
    }
    let written = writer.await.unwrap();
    let mut relay = RelayProcess::spawn(&env);
    assert!(
        drained(&db, Duration::from_secs(60)).await,
        "{}",
        relay.output()
    );
    let records = read_back(&[&t], written.len(), Duration::from_secs(60)).await;
    relay.signal(Signal::SIGTERM);
    assert_eq!(
        relay.wait_for(Duration::from_secs(15)).map(|s| s.code()),
        Some(Some(0))
    );

    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.expected, 2_400);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{:?}", ledger.reorder_examples);
    // design.md §4 on records produced from plain SQL rows.
    let r = &records[0];
    assert_eq!(r.topic, t);
    for h in [
        "event_id",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "outbox_id",
        "created_at",
    ] {
        assert!(r.header(h).is_some(), "header {h}");
    }
    assert_eq!(r.header("aggregate_id"), Some(r.key.as_str()));
    assert_eq!(r.header("event_type"), Some("test.happened"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_within_the_deadline_and_loses_nothing() {
    let db = TestDb::new().await;
    let t = topic("sigterm");
    create_topic(&brokers(), &t, 4).await.unwrap();
    let aggs: Vec<String> = (0..500).map(|i| format!("s-{i}")).collect();
    let written = insert_sql(&db.pool, &t, &aggs, 60).await;
    let mut env = env_for(&db);
    env.push(("OUTBOXD__RELAY__SHUTDOWN_TIMEOUT_MS", "3000".into()));
    env.push(("OUTBOXD__RATE_LIMIT__EVENTS_PER_SECOND", "5000".into()));
    env.push(("OUTBOXD__METRICS__LISTEN", String::new()));
    let mut relay = RelayProcess::spawn(&env);
    assert!(
        eventually(Duration::from_secs(30), || async {
            db.pending().await < 29_000
        })
        .await,
        "{}",
        relay.output()
    );
    let sent = Instant::now();
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_for(Duration::from_secs(10));
    let took = sent.elapsed();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "{}",
        relay.output()
    );
    assert!(
        took < Duration::from_secs(5),
        "stopped in {took:?} (deadline 3 s)"
    );
    let left = db.pending().await;
    assert!(left > 0, "stopped mid-run");
    assert!(
        relay.output().contains("Relay stopped."),
        "{}",
        relay.output()
    );

    // The lease was released: a new relay takes over at once and sends the rest.
    let mut env2 = env_for(&db);
    env2.push(("OUTBOXD__METRICS__LISTEN", String::new()));
    let mut again = RelayProcess::spawn(&env2);
    assert!(
        drained(&db, Duration::from_secs(60)).await,
        "{}",
        again.output()
    );
    let records = read_back(&[&t], written.len(), Duration::from_secs(60)).await;
    again.signal(Signal::SIGTERM);
    assert_eq!(
        again.wait_for(Duration::from_secs(15)).map(|s| s.code()),
        Some(Some(0))
    );
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{:?}", ledger.reorder_examples);
    let bound = u64::from(outboxd::config::Config::default().relay.max_in_flight);
    assert!(
        report.duplicates <= bound,
        "duplicates only from rows in flight at the kill: {} > {bound}",
        report.duplicates
    );
}
