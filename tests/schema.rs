//! The schema: `outboxd migrate` (twice), design.md's smallest insert, the payload check,
//! the NOTIFY trigger.

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestDb;

/// The `outboxd` binary built for these tests.
fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_outboxd")
}
use sqlx::postgres::PgListener;

fn migrate(url: &str) -> std::process::Output {
    Command::new(bin())
        .arg("migrate")
        .env("OUTBOXD__DATABASE__URL", url)
        .env_remove("OUTBOXD__KAFKA__BROKERS")
        .output()
        .expect("run outboxd migrate")
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_gives_a_table_that_takes_the_smallest_insert() {
    let db = TestDb::empty().await;
    let first = migrate(&db.url);
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("Applied 5 migration(s)"));
    let second = migrate(&db.url);
    assert!(second.status.success(), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("up to date"),
        "{second:?}"
    );

    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('order', 'o-42', 'order.created', 'orders', '{\"total\": 12}')",
    )
    .execute(&db.pool)
    .await
    .expect("design.md's smallest insert");
    let (headers, attempts, has_event_id): (serde_json::Value, i32, bool) = sqlx::query_as(
        "SELECT headers, attempts, event_id IS NOT NULL FROM outbox WHERE aggregate_id = 'o-42'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(headers, serde_json::json!({}));
    assert_eq!(attempts, 0);
    assert!(has_event_id);
}

#[tokio::test]
async fn a_row_with_both_or_neither_payload_is_refused() {
    let db = TestDb::new().await;
    for (payload, bytes) in [("'{}'", "'\\x00'"), ("NULL", "NULL")] {
        let sql = format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes) \
             VALUES ('a', '1', 'e', 't', {payload}, {bytes})"
        );
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .expect_err("check constraint");
        let code = err.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "23514", "{err}");
        assert!(
            err.to_string().contains("outbox_exactly_one_payload"),
            "{err}"
        );
    }
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload_bytes) \
         VALUES ('a', '1', 'e', 't', '\\x0102')",
    )
    .execute(&db.pool)
    .await
    .expect("bytes alone are fine");
}

#[tokio::test]
async fn library_migrator_creates_the_same_schema() {
    let db = TestDb::empty().await;
    outboxd::MIGRATOR.run(&db.pool).await.unwrap();
    outboxd::MIGRATOR.run(&db.pool).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
         AND tablename LIKE 'outbox%' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "outbox",
            "outbox_dead_letter",
            "outbox_inbox",
            "outbox_lease"
        ]
    );
    let pending_index: bool = sqlx::query_scalar(
        "SELECT indexdef LIKE '%WHERE (published_at IS NULL)%' FROM pg_indexes \
         WHERE indexname = 'outbox_pending_idx'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(pending_index, "partial index on pending rows");
}

#[tokio::test]
async fn a_transaction_wakes_the_relay_at_most_once_and_only_on_commit() {
    let db = TestDb::new().await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener
        .listen(outboxd::outbox::NOTIFY_CHANNEL)
        .await
        .unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..5 {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
             VALUES ('a', $1, 'e', 't', '{}')",
        )
        .bind(i.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    let mut rolled = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('a', 'x', 'e', 't', '{}')",
    )
    .execute(&mut *rolled)
    .await
    .unwrap();
    rolled.rollback().await.unwrap();

    let mut got = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        assert_eq!(n.channel(), "outboxd");
        got += 1;
    }
    assert_eq!(
        got, 1,
        "five inserts in one transaction, one rolled back: one wake-up"
    );
}

/// The relay decodes its rows by position without sqlx's type checks (store.rs): every
/// column must come back exactly as written, through each of the relay's reads.
#[tokio::test]
async fn rows_decode_as_the_relay_reads_them() {
    use outboxd::store::postgres::sql as store;
    let db = TestDb::new().await;
    let (id_json, event_id, created_at): (i64, uuid::Uuid, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload, headers) \
             VALUES ('order', 'o-42', 'order.paid', 'orders', '{\"total\": 12, \"note\": \"é\"}', \
                     '{\"traceparent\": \"00-ab\"}') \
             RETURNING id, event_id, created_at",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (id_bytes,): (i64,) = sqlx::query_as(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload_bytes) \
         VALUES ('blob', 'b-1', 'blob.put', 'blobs', '\\x00ff10') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox SET attempts = 3 WHERE id = $1")
        .bind(id_bytes)
        .execute(&db.pool)
        .await
        .unwrap();

    let reads = [
        store::fetch_after(&db.pool, 0, 10).await.unwrap(),
        store::fetch_after_and_in_ranges(&db.pool, id_json, &[(0, id_json)], 10)
            .await
            .unwrap(),
        store::fetch_ids(&db.pool, &[id_json, id_bytes])
            .await
            .unwrap(),
    ];
    for rows in reads {
        assert_eq!(rows.len(), 2, "{rows:?}");
        let (json, bytes) = (&rows[0], &rows[1]);
        assert_eq!(json.id, id_json);
        assert_eq!(
            (
                json.aggregate_type.as_str(),
                json.aggregate_id.as_str(),
                json.event_type.as_str(),
                json.topic.as_str()
            ),
            ("order", "o-42", "order.paid", "orders")
        );
        assert_eq!(
            std::str::from_utf8(json.payload.as_deref().unwrap()).unwrap(),
            r#"{"note": "é", "total": 12}"#
        );
        assert_eq!(json.payload_bytes, None);
        assert_eq!(json.headers, r#"{"traceparent": "00-ab"}"#);
        assert_eq!(json.event_id, event_id);
        assert_eq!(json.created_at, created_at);
        assert_eq!(json.attempts, 0);

        assert_eq!(bytes.id, id_bytes);
        assert_eq!(bytes.payload, None);
        assert_eq!(
            bytes.payload_bytes.as_deref(),
            Some(&[0x00, 0xff, 0x10][..])
        );
        assert_eq!(bytes.headers, "", "no headers: nothing allocated");
        assert_eq!(bytes.attempts, 3);
    }
}

/// Reading the rows of open id gaps must cost what the gaps hold, not what the backlog
/// holds: with a plain join PostgreSQL walked the whole pending index (from its lowest id)
/// on every read while a gap was open — the whole backlog, and under a held-back vacuum
/// every dead entry as well. Counts the index entries the statement actually visits.
#[tokio::test]
async fn reading_rows_in_gaps_visits_the_gaps_not_the_backlog() {
    use outboxd::store::postgres::sql as store;
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         SELECT 'a', 'a-' || (s % 100), 'e', 't', '{}' FROM generate_series(1, 20000) AS s",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE outbox")
        .execute(&db.pool)
        .await
        .unwrap();
    let (first, last): (i64, i64) = sqlx::query_as("SELECT min(id), max(id) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Two small gaps near the top of the backlog, the cursor past the last row.
    let gaps = [(last - 100, last - 98), (last - 10, last - 5)];
    let (lo, hi): (Vec<i64>, Vec<i64>) = gaps.iter().copied().unzip();
    // A constant of the crate's, not input: nothing to inject.
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        store::FETCH_AFTER_AND_IN_RANGES
    )))
    .bind(last)
    .bind(&lo)
    .bind(&hi)
    .bind(1000_i64)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    fn visited(node: &serde_json::Value) -> f64 {
        let own = match node["Node Type"].as_str() {
            Some("Index Scan" | "Index Only Scan" | "Seq Scan" | "Bitmap Index Scan") => {
                let rows = node["Actual Rows"].as_f64().unwrap_or(0.0)
                    + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
                rows * node["Actual Loops"].as_f64().unwrap_or(1.0)
            }
            _ => 0.0,
        };
        own + node["Plans"]
            .as_array()
            .map(|p| p.iter().map(visited).sum())
            .unwrap_or(0.0)
    }
    let root = &plan[0]["Plan"];
    let n = visited(root);
    assert_eq!(
        root["Actual Rows"].as_f64(),
        Some(9.0),
        "3 + 6 gap rows: {plan:#}"
    );
    assert!(
        n < 100.0,
        "the read visited {n} rows for 9 rows in gaps over a backlog of {}: {plan:#}",
        last - first + 1
    );
    // And it returns them, in id order.
    let rows = store::fetch_after_and_in_ranges(&db.pool, last, &gaps, 1000)
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let want: Vec<i64> = (last - 100..=last - 98)
        .chain(last - 10..=last - 5)
        .collect();
    assert_eq!(ids, want);
}

/// The relay's watcher on PostgreSQL: row wake-ups while the poller wants them (the insert
/// trigger's NOTIFY), none while it reads on its own cadence (`UNLISTEN`), one as soon as it
/// wants them again (rows written meanwhile sent it nothing), and rescan requests
/// (`dead-letters replay`) either way.
#[tokio::test]
async fn the_watcher_follows_the_pollers_wish_for_wake_ups_and_always_hears_rescans() {
    use outboxd::store::postgres::PgStore;
    use outboxd::store::{Store, Wakeup};
    use std::sync::{Arc, Mutex};

    let db = TestDb::new().await;
    let store = PgStore::new(db.pool.clone(), db.pool.clone(), Duration::from_secs(1));
    let heard: Arc<Mutex<Vec<Wakeup>>> = Arc::default();
    let h = heard.clone();
    let (wanted, rx) = tokio::sync::watch::channel(true);
    let task = store
        .watch(
            Arc::new(move |w| {
                h.lock().unwrap().push(w);
                true
            }),
            rx,
        )
        .expect("PostgreSQL watches");
    let take = || std::mem::take(&mut *heard.lock().unwrap());
    let insert = async || {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
             VALUES ('a', 'a-1', 'e', 't', '{}')",
        )
        .execute(&db.pool)
        .await
        .unwrap();
    };
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    // Connected and listening: one wake-up for what was written before.
    settle().await;
    assert_eq!(take(), vec![Wakeup::Rows]);
    insert().await;
    settle().await;
    assert_eq!(take(), vec![Wakeup::Rows]);

    wanted.send_replace(false);
    settle().await;
    insert().await;
    insert().await;
    settle().await;
    assert_eq!(take(), vec![], "wake-ups while UNLISTENed");
    outboxd::outbox::admin::replay(&db.pool, &outboxd::outbox::admin::Selection::All)
        .await
        .unwrap();
    settle().await;
    assert_eq!(take(), vec![Wakeup::Rescan]);

    wanted.send_replace(true);
    settle().await;
    assert_eq!(take(), vec![Wakeup::Rows], "no wake-up on LISTEN again");
    insert().await;
    settle().await;
    assert_eq!(take(), vec![Wakeup::Rows]);
    task.abort();
}

/// A row dead-lettered, replayed and failing again is dead-lettered again — its dead
/// letter reopened with the new reason — not deleted with nowhere to go.
#[tokio::test]
async fn a_replayed_row_that_fails_again_is_dead_lettered_again() {
    use outboxd::outbox::admin::{self, Selection};
    use outboxd::store::postgres::PgStore;
    use outboxd::store::{Fence, LeaseClaim, Store};

    let db = TestDb::new().await;
    let store = PgStore::new(db.pool.clone(), db.pool.clone(), Duration::from_secs(1));
    let claim = LeaseClaim {
        name: "relay",
        owner: "a",
        ttl: Duration::from_secs(30),
        reclaim: false,
        grace: Duration::from_secs(1),
    };
    let epoch = store.acquire_lease(&claim).await.unwrap().unwrap();
    let fence = Fence {
        name: "relay".into(),
        owner: "a".into(),
        epoch,
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('a', 'poisoned', 'e', 't', '{}') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        store
            .dead_letter(&fence, id, 3, "too large", "record_too_large")
            .await
            .unwrap()
    );
    assert_eq!(admin::replay(&db.pool, &Selection::All).await.unwrap(), 1);
    assert!(store.held_aggregates().await.unwrap().is_empty());
    assert!(
        store
            .dead_letter(&fence, id, 5, "still too large", "record_too_large")
            .await
            .unwrap(),
        "dead-lettered again"
    );
    assert_eq!(
        store.held_aggregates().await.unwrap(),
        vec!["poisoned".to_string()]
    );
    let open = admin::list_dead_letters(&db.pool, false, 10).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].id, open[0].attempts, open[0].reason.as_str()),
        (id, 5, "still too large")
    );
    assert_eq!(open[0].resolution, None);
}
