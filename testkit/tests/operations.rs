//! What operators rely on: the lease (standby, takeover, fencing), mark mode with cleanup,
//! the DLQ topic, `status`, and the metrics / health endpoint.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use outboxd::config::{DeadLetterPolicy, OnPublish};
use outboxd::outbox::admin::{self, Selection};
use outboxd::store::postgres::sql as store;
use outboxd::store::{Fence, RELAY_LEASE, StoreError};
use outboxd::{Relay, RelayOptions};
use testkit::verify::create_topic;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_stands_by_and_takes_over_within_the_lease() {
    let db = TestDb::new().await;
    let t = topic("lease");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let mut cfg = config(&db); // lease_ttl_ms = 3000
    // Two names: the take-over below is the lease's expiry, not a same-name reclaim.
    cfg.relay.instance_id = "first".into();
    let first = start_active(cfg.clone()).await;
    cfg.relay.instance_id = "second".into();
    let second = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.info().await.unwrap().active, "second one stands by");

    let aggs: Vec<String> = (0..10).map(|i| format!("l-{i}")).collect();
    let mut written = insert_sql(&db.pool, &t, &aggs, 10).await;
    assert!(drained(&db, Duration::from_secs(20)).await);

    // The first one dies without a word (its lease is not released).
    let epoch_before = first.info().await.unwrap().epoch.unwrap();
    first.supervisor().kill();
    let killed_at = std::time::Instant::now();
    written.extend(insert_seqs(&db.pool, &t, &aggs, 11..=20).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            second.info().await.unwrap().active
        })
        .await,
        "took over"
    );
    let took = killed_at.elapsed();
    // Not before the lease expired (renewed at most 250 ms before the kill), and soon after.
    assert!(
        took >= Duration::from_millis(3_000 - 300) && took <= Duration::from_millis(3_000 + 2_000),
        "took over after {took:?}"
    );
    assert!(
        second.info().await.unwrap().epoch.unwrap() > epoch_before,
        "new epoch"
    );
    assert!(drained(&db, Duration::from_secs(20)).await);
    let records = read_back(&[&t], 200, Duration::from_secs(30)).await;
    second.shutdown().await.unwrap();
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0);
}

/// A process restarted under its name (systemd, Kubernetes) reclaims its dead
/// predecessor's lease within 2 s, not after the lease's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_process_reclaims_its_own_lease_within_two_seconds() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.relay.lease_ttl_ms = 10_000;
    let first = start_active(cfg.clone()).await;
    // Dies without a word: its connections, the instance lock's included, close.
    first.supervisor().kill();
    let killed_at = std::time::Instant::now();
    let second = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            second.info().await.unwrap().active
        })
        .await
    );
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(2), "reclaimed after {took:?}");
    second.shutdown().await.unwrap();
}

/// Two live processes under one instance name (host networking, a copied config). The
/// holder's instance-lock session dies while the holder lives — a PostgreSQL restart,
/// `idle_session_timeout`, `pg_terminate_backend`, a NAT: the other may take the lock but
/// must not publish beside the holder. Under load: never both active, nothing lost,
/// reordered or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_relays_under_one_name_never_publish_together_when_the_lock_session_dies() {
    let db = TestDb::new().await;
    let t = topic("samename");
    create_topic(&brokers(), &t, 2).await.unwrap();
    let cfg = config(&db); // one instance name for both, lease_ttl_ms = 3000
    let first = start_active(cfg.clone()).await;
    let second = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.info().await.unwrap().active, "second one stands by");

    // Load: one transaction per event, 20 aggregates, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (pool, t, stop) = (db.pool.clone(), t.clone(), stop.clone());
        tokio::spawn(async move {
            let aggs: Vec<String> = (0..20).map(|i| format!("same-{i}")).collect();
            let mut written = Vec::new();
            let mut seq = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for a in &aggs {
                    written
                        .extend(insert_seqs(&pool, &t, std::slice::from_ref(a), seq..=seq).await);
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            written
        })
    };
    // Both active at once, sampled every 5 ms.
    let overlap = {
        let stop = stop.clone();
        let (a, b) = (first.supervisor().clone(), second.supervisor().clone());
        tokio::spawn(async move {
            let mut seen = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let info = |r: &ractor::ActorRef<outboxd::actors::messages::SupervisorMsg>| {
                    let r = r.clone();
                    async move {
                        ractor::call_t!(r, outboxd::actors::messages::SupervisorMsg::Info, 1_000)
                            .map(|i| i.active)
                            .unwrap_or(false)
                    }
                };
                if info(&a).await && info(&b).await {
                    seen += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Cut whichever session holds the name's lock, three times, each time longer apart
    // than a same-name reclaim takes (1 s without renewal).
    for _ in 0..3 {
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'outboxd instance lock' AND datname = current_database()",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(cut, [true], "one session holds the instance lock");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    let overlapped = overlap.await.unwrap();
    assert!(drained(&db, Duration::from_secs(20)).await);
    let records = read_back(&[&t], written.len(), Duration::from_secs(30)).await;
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(overlapped, 0, "both relays were active at once");
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0);
    assert_eq!(report.duplicates, 0, "sent twice: {report:?}");
    assert!(written.len() > 1_000, "load: {} events", written.len());
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// A standby publishes nothing; it must still not call itself ready when it could not
/// publish if it took over: it asks the broker itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_ready_only_when_it_reaches_the_broker() {
    let db = TestDb::new().await;
    // Another instance holds the lease for a minute.
    store::acquire_lease(&db.pool, RELAY_LEASE, "the-holder", 60_000, false, 0)
        .await
        .unwrap()
        .unwrap();
    let mut cfg = config(&db);
    cfg.relay.instance_id = "standby".into();
    cfg.kafka.brokers = format!("127.0.0.1:{}", free_port()); // nobody listens
    let unreachable = Relay::start(cfg.clone(), RelayOptions::default())
        .await
        .unwrap();
    let health = unreachable.health();
    assert!(
        eventually(Duration::from_secs(20), || async {
            health.lease() == outboxd::health::LeaseState::Standby
                && health.db_up()
                && !health.ready()
                && health.broker_problem().is_some()
        })
        .await,
        "lease {:?}, ready {}, problem {:?}",
        health.lease(),
        health.ready(),
        health.broker_problem()
    );
    unreachable.shutdown().await.unwrap();

    cfg.kafka.brokers = brokers();
    let reachable = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    let health = reachable.health();
    assert!(
        eventually(Duration::from_secs(20), || async {
            health.lease() == outboxd::health::LeaseState::Standby && health.ready()
        })
        .await,
        "a standby that reaches the broker is ready: {:?}",
        health.broker_problem()
    );
    reachable.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_write_of_an_instance_whose_lease_was_taken_over_is_refused() {
    let db = TestDb::new().await;
    insert_sql(&db.pool, "t", &["a".to_string()], 3).await;
    let e1 = store::acquire_lease(&db.pool, RELAY_LEASE, "one", 1, true, 0)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await; // expires
    let e2 = store::acquire_lease(&db.pool, RELAY_LEASE, "two", 60_000, true, 0)
        .await
        .unwrap()
        .unwrap();
    assert!(e2 > e1);
    let zombie = Fence {
        name: RELAY_LEASE.into(),
        owner: "one".into(),
        epoch: e1,
    };
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        store::mark_published(&db.pool, &zombie, &ids, OnPublish::Delete).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        store::dead_letter(&db.pool, &zombie, ids[0], 1, "x", "y").await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        store::record_failure(&db.pool, &zombie, ids[0], 1, 10, "x").await,
        Err(StoreError::Fenced(_))
    ));
    assert!(!store::renew_lease(&db.pool, &zombie, 1000).await.unwrap());
    assert_eq!(db.pending().await, 3, "nothing changed");
    // A standby cannot take a live lease.
    assert_eq!(
        store::acquire_lease(&db.pool, RELAY_LEASE, "three", 1000, true, 0)
            .await
            .unwrap(),
        None
    );
    let owner = Fence {
        name: RELAY_LEASE.into(),
        owner: "two".into(),
        epoch: e2,
    };
    assert_eq!(
        store::mark_published(&db.pool, &owner, &ids, OnPublish::Delete)
            .await
            .unwrap(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_mode_keeps_published_rows_until_cleanup_removes_them() {
    let db = TestDb::new().await;
    let t = topic("mark");
    create_topic(&brokers(), &t, 1).await.unwrap();
    let mut cfg = config(&db);
    cfg.relay.on_publish = OnPublish::Mark;
    cfg.relay.dead_letter_policy = DeadLetterPolicy::Continue;
    cfg.cleanup.interval_secs = 1;
    cfg.cleanup.published_retention_secs = 3;
    cfg.cleanup.dead_letter_retention_secs = 1;
    cfg.cleanup.batch_size = 7; // several statements per run
    let written = insert_sql(&db.pool, &t, &["m".to_string()], 30).await;
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('t', 'bad', 'e', 'no good', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let relay = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    assert!(drained(&db, Duration::from_secs(20)).await);
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(kept, 30, "published rows are kept, marked");
    let records = read_back(&[&t], 30, Duration::from_secs(20)).await;
    assert_eq!(check_ledger(&written, &records).0.lost, 0);
    admin::discard(&db.pool, &Selection::All).await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            left == 0 && db.dead_letters().await.is_empty()
        })
        .await,
        "cleanup removed published rows and the resolved dead letter"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_copied_to_the_dlq_topic_with_their_reason() {
    let db = TestDb::new().await;
    let t = topic("main");
    let dlq = topic("dlq");
    create_topic(&brokers(), &t, 1).await.unwrap();
    create_topic(&brokers(), &dlq, 1).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload, headers) \
         VALUES ('t', 'p', 'e', $1, '{\"seq\": 1}', '{\"n\": 1}')",
    )
    .bind(&t)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut cfg = config(&db);
    cfg.dead_letter.topic = dlq.clone();
    let relay = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    let records = read_back(&[&dlq], 1, Duration::from_secs(20)).await;
    relay.shutdown().await.unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.key, "p");
    assert_eq!(r.value, br#"{"seq": 1}"#);
    assert_eq!(r.header("dead_letter_class"), Some("malformed_row"));
    assert_eq!(r.header("original_topic"), Some(t.as_str()));
    assert!(
        r.header("dead_letter_reason")
            .unwrap()
            .contains("not a string")
    );
    assert!(r.header("event_id").is_some());
    // The same built-ins as every sink's copy, also for a row that is not a message.
    assert_eq!(r.header("event_type"), Some("e"));
    assert_eq!(r.header("aggregate_id"), Some("p"));
    assert_eq!(db.dead_letters().await.len(), 1, "the table is the record");
}

#[tokio::test]
async fn status_shows_backlog_dead_letters_and_partitions() {
    let db = TestDb::new().await;
    insert_sql(&db.pool, "t", &["a".into(), "b".into(), "c".into()], 4).await;
    sqlx::query(
        "INSERT INTO outbox_dead_letter (id, aggregate_type, aggregate_id, event_type, topic, payload, \
           headers, event_id, created_at, reason, error_class, attempts, first_failed_at, last_failed_at) \
         VALUES (999, 't', 'z', 'e', 't', '{}', '{}', gen_random_uuid(), now(), 'r', 'c', 1, now(), now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["status", "--json"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &db.url)
        .env("OUTBOXD__RELAY__PARTITIONS", "4")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pending"], 12);
    assert_eq!(v["dead_letters"]["open"], 1);
    let parts = v["partitions"].as_object().unwrap();
    assert_eq!(parts.len(), 4);
    let sum: i64 = parts.values().map(|p| p["pending"].as_i64().unwrap()).sum();
    assert_eq!(sum, 12);
    let aggs: i64 = parts
        .values()
        .map(|p| p["aggregates"].as_i64().unwrap())
        .sum();
    assert_eq!(aggs, 3);
    assert!(v["oldest_pending_age_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["destinations"][0]["destination"], "t");
    assert_eq!(v["destinations"][0]["pending"], 12);

    // The sink it is configured for, and the destinations waiting longest, in words.
    let out = std::process::Command::new(bin())
        .args(["status"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &db.url)
        .env("OUTBOXD__SINK__KIND", "redis")
        .env(
            "OUTBOXD__REDIS__URL",
            "redis://relay:s3cret-pw@127.0.0.1:6379",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sink:           redis at redis://relay:"),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(
        text.contains("destination (longest waiting first)"),
        "{text}"
    );

    let list = std::process::Command::new(bin())
        .args(["dead-letters", "list"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("999  aggregate=z"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_are_served_and_follow_the_database() {
    let db = TestDb::new().await;
    let t = topic("metrics");
    create_topic(&brokers(), &t, 1).await.unwrap();
    insert_sql(&db.pool, &t, &["a".into()], 5).await;
    let addr = format!("127.0.0.1:{}", free_port());
    // The database goes through a proxy so that the test can take it away.
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = testkit::chaos::TcpProxy::start("127.0.0.1:0", pg)
        .await
        .unwrap();
    let url = db.url.replace("127.0.0.1:5432", &proxy.addr().to_string());
    let mut relay = RelayProcess::spawn(&[
        ("OUTBOXD__DATABASE__URL", url),
        ("OUTBOXD__KAFKA__BROKERS", brokers()),
        ("OUTBOXD__METRICS__LISTEN", addr.clone()),
        ("OUTBOXD__DATABASE__CONNECT_TIMEOUT_MS", "1000".into()),
    ]);
    assert!(
        drained(&db, Duration::from_secs(20)).await,
        "{}",
        relay.output()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            http_get(&addr, "/readyz").await.map(|r| r.0) == Some(200)
        })
        .await
    );
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);
    let (code, metrics) = http_get(&addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "outboxd_events_published_total{{sink=\"kafka\",topic=\"{t}\"}} 5"
        )),
        "{metrics}"
    );

    proxy.set(testkit::chaos::Mode::Refuse);
    assert!(
        eventually(Duration::from_secs(15), || async {
            http_get(&addr, "/readyz").await.map(|r| r.0) == Some(503)
        })
        .await,
        "not ready while the database is away\n{}",
        relay.output()
    );
    let (_, body) = http_get(&addr, "/readyz").await.unwrap();
    assert!(body.contains("database: down"), "{body}");
    assert!(relay.output().contains("Cannot read the outbox; retrying."));
    proxy.set(testkit::chaos::Mode::Pass);
    insert_sql(&db.pool, &t, &["b".into()], 5).await;
    assert!(
        drained(&db, Duration::from_secs(20)).await,
        "{}",
        relay.output()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            http_get(&addr, "/readyz").await.map(|r| r.0) == Some(200)
        })
        .await
    );
    relay.signal(Signal::SIGTERM);
    assert_eq!(
        relay.wait_for(Duration::from_secs(15)).map(|s| s.code()),
        Some(Some(0))
    );
}
