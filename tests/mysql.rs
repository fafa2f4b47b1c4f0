//! The MariaDB / MySQL store on the real MariaDB: the schema (`outboxd migrate`, the
//! smallest insert), rows as the relay reads them, late committers (the gaps and the
//! running-writer horizon), fencing and leases, the instance lock, dead letters (replayed
//! and failing again), cleanup, the polling watcher, and the privilege the relay needs.

#[path = "../testkit/src/mysqldb.rs"]
#[allow(dead_code)]
mod mysqldb;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysqldb::{MySqlTestDb, mysql_admin_url, mysql_pool};
use outboxd::config::OnPublish;
use outboxd::outbox::admin::{self, Selection};
use outboxd::store::mysql::MySqlStore;
use outboxd::store::{Fence, LeaseClaim, Store, StoreError, Wakeup};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_outboxd")
}

fn store(db: &MySqlTestDb, grace_ms: u64) -> MySqlStore {
    MySqlStore::new(
        db.pool.clone(),
        db.pool.clone(),
        Duration::from_millis(grace_ms),
        Duration::from_millis(10),
    )
}

async fn insert(pool: &sqlx::MySqlPool, agg: &str, payload: &str) -> i64 {
    let r = sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('a', ?, 'e', 't', ?)",
    )
    .bind(agg)
    .bind(payload)
    .execute(pool)
    .await
    .unwrap();
    r.last_insert_id() as i64
}

async fn insert_on(conn: &mut sqlx::MySqlConnection, agg: &str) -> i64 {
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('a', ?, 'e', 't', '{}')",
    )
    .bind(agg)
    .execute(conn)
    .await
    .unwrap()
    .last_insert_id() as i64
}

fn ids(rows: &[outboxd::store::OutboxRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

async fn lease(store: &MySqlStore, owner: &str) -> Option<Fence> {
    let claim = LeaseClaim {
        name: "relay",
        owner,
        ttl: Duration::from_secs(30),
        reclaim: false,
        grace: Duration::from_secs(1),
    };
    let epoch = store.acquire_lease(&claim).await.unwrap()?;
    Some(Fence {
        name: "relay".into(),
        owner: owner.into(),
        epoch,
    })
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_takes_the_smallest_insert() {
    let db = MySqlTestDb::empty().await;
    let run = || {
        std::process::Command::new(bin())
            .arg("migrate")
            .env("OUTBOXD__DATABASE__URL", &db.url)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("Applied 4 migration(s)"),
        "{first:?}"
    );
    let second = run();
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
    let (headers, attempts, event_id): (String, i32, String) = sqlx::query_as(
        "SELECT CAST(headers AS CHAR), attempts, event_id FROM outbox WHERE aggregate_id = 'o-42'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(headers, "{}");
    assert_eq!(attempts, 0);
    assert!(uuid::Uuid::parse_str(&event_id).is_ok(), "{event_id}");
    // Exactly one payload; JSON must be JSON.
    for (payload, bytes) in [("'{}'", "x'00'"), ("NULL", "NULL"), ("'not json'", "NULL")] {
        let sql = format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes) \
             VALUES ('a', 'b', 'c', 'd', {payload}, {bytes})"
        );
        let refused = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await;
        assert!(refused.is_err(), "{payload} / {bytes} accepted");
    }
}

#[tokio::test]
async fn the_check_command_names_the_server_and_a_missing_schema() {
    let db = MySqlTestDb::empty().await;
    let out = std::process::Command::new(bin())
        .arg("check")
        .env("OUTBOXD__DATABASE__URL", &db.url)
        .env("OUTBOXD__KAFKA__BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("database: ok") && text.contains("MariaDB") && text.contains("no TLS"),
        "{text}"
    );
    assert!(text.contains("run `outboxd migrate`"), "{text}");
}

#[tokio::test]
async fn rows_decode_as_the_relay_reads_them() {
    let db = MySqlTestDb::new().await;
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload, headers) \
         VALUES ('order', 'o-1', 'order.created', 'orders', '{\"total\": 12, \"ü\": \"€\"}', \
                 '{\"traceparent\": \"00-1\"}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, topic, payload_bytes) \
         VALUES ('6f1c1c1e-8a4b-4c55-9d4e-0a0b0c0d0e0f', 'blob', 'b-1', 'blob.put', 'blobs', x'00ff10')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut reader = store(&db, 200).reader();
    let batch = reader.read(10).await.unwrap();
    assert_eq!(batch.rows.len(), 2);
    assert!(!batch.full);
    let (a, b) = (&batch.rows[0], &batch.rows[1]);
    assert_eq!(
        (
            a.aggregate_type.as_str(),
            a.aggregate_id.as_str(),
            a.event_type.as_str(),
            a.topic.as_str()
        ),
        ("order", "o-1", "order.created", "orders")
    );
    let payload: serde_json::Value = serde_json::from_slice(a.payload.as_ref().unwrap()).unwrap();
    assert_eq!(payload, serde_json::json!({"total": 12, "ü": "€"}));
    assert_eq!(a.payload_bytes, None);
    let headers: serde_json::Value = serde_json::from_str(&a.headers).unwrap();
    assert_eq!(headers, serde_json::json!({"traceparent": "00-1"}));
    assert!((chrono::Utc::now() - a.created_at).num_seconds().abs() < 60);
    assert_eq!(a.attempts, 0);
    assert_eq!(b.payload, None);
    assert_eq!(b.payload_bytes.as_deref(), Some(&[0u8, 0xff, 0x10][..]));
    assert_eq!(b.headers, "", "empty headers come as nothing");
    assert_eq!(
        b.event_id.to_string(),
        "6f1c1c1e-8a4b-4c55-9d4e-0a0b0c0d0e0f"
    );
    assert_eq!(reader.cursor(), b.id);
    // By id, and the library's enqueue reads back the same.
    let event = outboxd::NewEvent::builder("order", "o-2")
        .event_type("order.paid")
        .topic("orders")
        .json(&serde_json::json!({"n": 1}))
        .header("k", "v")
        .build()
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let event_id = outboxd::enqueue(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let more = reader.read(10).await.unwrap().rows;
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].event_id, event_id);
    assert_eq!(more[0].headers, r#"{"k": "v"}"#.replace(": ", ":"));
    let by_id = store(&db, 200)
        .fetch_ids(&[b.id, more[0].id])
        .await
        .unwrap();
    assert_eq!(ids(&by_id), vec![b.id, more[0].id]);
}

#[tokio::test]
async fn enqueue_batch_keeps_slice_order_in_ids() {
    let db = MySqlTestDb::new().await;
    let events: Vec<_> = (0..500)
        .map(|i| {
            let b = outboxd::NewEvent::builder("acc", format!("a-{}", i % 7))
                .event_type("e")
                .topic("t");
            if i % 5 == 0 {
                b.bytes(vec![i as u8])
            } else {
                b.json(&serde_json::json!({ "i": i }))
            }
            .build()
            .unwrap()
        })
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    let written = outboxd::enqueue_batch(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let written: Vec<String> = written.iter().map(|u| u.to_string()).collect();
    assert_eq!(stored, written);
}

/// A transaction that took a lower id commits after a higher id was read: the reader
/// returns it on a later read (late, below the cursor); a gap whose writer still runs past
/// the grace period stays open until it ends; a rolled-back writer's gap is dropped.
#[tokio::test]
async fn late_committers_are_read_and_gaps_close_only_when_their_writers_end() {
    let db = MySqlTestDb::new().await;
    let grace = 200;
    let mut reader = store(&db, grace).reader();
    let mut slow = db.pool.begin().await.unwrap();
    let late_id = insert_on(&mut slow, "agg").await;
    let later = insert(&db.pool, "agg", "{}").await;
    assert!(later > late_id);
    let first = reader.read(100).await.unwrap();
    assert_eq!(ids(&first.rows), vec![later]);
    // Past the grace period the writers are noted; the slow one still runs: the gap stays.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(grace)).await;
        assert!(reader.read(100).await.unwrap().rows.is_empty());
    }
    slow.commit().await.unwrap();
    let late = reader.read(100).await.unwrap();
    assert_eq!(ids(&late.rows), vec![late_id]);
    assert_eq!(late.cursor_before, later, "read below the cursor");

    // A rolled-back writer: its gap is settled once it has ended.
    let mut undone = db.pool.begin().await.unwrap();
    let gone = insert_on(&mut undone, "x").await;
    let after = insert(&db.pool, "x", "{}").await;
    assert_eq!(ids(&reader.read(100).await.unwrap().rows), vec![after]);
    undone.rollback().await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(grace)).await;
        reader.read(100).await.unwrap();
    }
    assert!(!reader.found(gone), "the rolled-back gap was dropped");

    // An aggregate's rows straddling the cursor come in id order in one read.
    let mut straddle = db.pool.begin().await.unwrap();
    let low = insert_on(&mut straddle, "s").await;
    let high = insert(&db.pool, "other", "{}").await;
    assert_eq!(ids(&reader.read(100).await.unwrap().rows), vec![high]);
    let higher = insert_on(&mut straddle, "s").await;
    straddle.commit().await.unwrap();
    assert_eq!(
        ids(&reader.read(100).await.unwrap().rows),
        vec![low, higher]
    );
}

#[tokio::test]
async fn a_user_without_the_process_privilege_is_told_what_to_grant() {
    let db = MySqlTestDb::new().await;
    let admin = mysql_pool(&mysql_admin_url(), 1).await;
    let user = format!("outboxd_np_{}", &db.name[10..]);
    for sql in [
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'secret-pw-1'"),
        format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.name),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let url = format!(
        "{scheme}://{user}:secret-pw-1@{}",
        rest.split_once('@').map_or(rest, |(_, host)| host)
    );
    let pool = mysql_pool(&url, 1).await;
    let e = outboxd::store::mysql::sql::running_writers(&pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("GRANT PROCESS"), "{e}");
    let out = std::process::Command::new(bin())
        .arg("check")
        .env("OUTBOXD__DATABASE__URL", &url)
        .env("OUTBOXD__KAFKA__BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("database: MISCONFIGURED") && text.contains("GRANT PROCESS"),
        "{text}"
    );
    assert!(!text.contains("secret-pw-1"), "{text}");
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP USER '{user}'@'%'")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn writes_under_a_lost_lease_change_nothing() {
    let db = MySqlTestDb::new().await;
    let s = store(&db, 200);
    let a = lease(&s, "a").await.expect("a free lease");
    assert_eq!(a.epoch, 1);
    assert!(lease(&s, "b").await.is_none(), "held by a");
    assert!(s.renew_lease(&a, Duration::from_secs(30)).await.unwrap());
    let rows: Vec<i64> = [
        insert(&db.pool, "x", "{}").await,
        insert(&db.pool, "y", "{}").await,
    ]
    .into();
    s.release_lease(&a).await.unwrap();
    let b = lease(&s, "b").await.expect("released");
    assert_eq!(b.epoch, 2);
    assert!(!s.renew_lease(&a, Duration::from_secs(30)).await.unwrap());
    for result in [
        s.mark_published(&a, &rows, OnPublish::Delete)
            .await
            .map(drop),
        s.record_failure(&a, rows[0], 1, Duration::from_secs(1), "boom")
            .await,
        s.dead_letter(&a, rows[0], 1, "r", "c").await.map(drop),
        s.delete_published(&a, Duration::ZERO, 10).await.map(drop),
    ] {
        assert!(matches!(result, Err(StoreError::Fenced(_))), "{result:?}");
    }
    assert_eq!(db.pending().await, 2, "nothing changed");
    assert_eq!(
        s.mark_published(&b, &rows, OnPublish::Delete)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.mark_published(&b, &rows, OnPublish::Delete)
            .await
            .unwrap(),
        0,
        "gone already: not fenced"
    );
    // Reclaim: the same owner with the instance lock takes its unrenewed lease back.
    let claim = LeaseClaim {
        name: "relay",
        owner: "b",
        ttl: Duration::from_secs(30),
        reclaim: true,
        grace: Duration::from_millis(100),
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(s.acquire_lease(&claim).await.unwrap(), Some(3));
    // Mark mode, then cleanup of marked rows.
    let c = Fence {
        epoch: 3,
        ..b.clone()
    };
    let id = insert(&db.pool, "z", "{}").await;
    assert_eq!(
        s.mark_published(&c, &[id], OnPublish::Mark).await.unwrap(),
        1
    );
    assert_eq!(s.backlog(100).await.unwrap(), (0, 0));
    assert_eq!(s.delete_published(&c, Duration::ZERO, 10).await.unwrap(), 1);
}

#[tokio::test]
async fn the_instance_lock_is_exclusive_and_goes_with_its_session() {
    let db = MySqlTestDb::new().await;
    let s = store(&db, 200);
    let mut held = s.lock_instance("relay-1").await.unwrap().expect("free");
    assert!(held.alive(Duration::from_secs(1)).await);
    assert!(s.lock_instance("relay-1").await.unwrap().is_none());
    assert!(s.lock_instance(&"x".repeat(300)).await.unwrap().is_some());
    drop(held);
    // The session closes with the connection; the server then frees the lock.
    let mut again = None;
    for _ in 0..50 {
        again = s.lock_instance("relay-1").await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the lock went with its session");
}

/// A row dead-lettered, replayed and failing again is dead-lettered again (its dead letter
/// reopened), not lost.
#[tokio::test]
async fn dead_letters_hold_their_aggregate_and_a_replayed_row_can_fail_again() {
    let db = MySqlTestDb::new().await;
    let s = store(&db, 200);
    let f = lease(&s, "a").await.unwrap();
    let bad = insert(&db.pool, "poisoned", "{}").await;
    let ok = insert(&db.pool, "fine", "{}").await;
    s.record_failure(&f, bad, 3, Duration::from_secs(1), "no")
        .await
        .unwrap();
    assert!(
        s.dead_letter(&f, bad, 3, "too large", "record_too_large")
            .await
            .unwrap()
    );
    assert!(
        !s.dead_letter(&f, bad, 3, "again", "x").await.unwrap(),
        "no longer pending"
    );
    assert_eq!(
        s.held_aggregates().await.unwrap(),
        vec!["poisoned".to_string()]
    );
    assert_eq!(
        s.pending_ids_upto(i64::MAX, &["poisoned".into()])
            .await
            .unwrap(),
        vec![ok]
    );
    assert_eq!(s.backlog(100).await.unwrap(), (1, 1));
    assert_eq!(
        admin::replay(&db.pool, &Selection::Ids(vec![bad]))
            .await
            .unwrap(),
        1
    );
    assert!(s.held_aggregates().await.unwrap().is_empty());
    assert_eq!(
        ids(&s.fetch_ids(&[bad]).await.unwrap()),
        vec![bad],
        "back under its id"
    );
    assert!(
        s.dead_letter(&f, bad, 5, "still too large", "record_too_large")
            .await
            .unwrap()
    );
    assert_eq!(
        s.held_aggregates().await.unwrap(),
        vec!["poisoned".to_string()]
    );
    let listed = admin::list_dead_letters(&db.pool, false, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].attempts, listed[0].reason.as_str()),
        (5, "still too large")
    );
    assert_eq!(admin::discard(&db.pool, &Selection::All).await.unwrap(), 1);
    assert_eq!(admin::dead_letter_counts(&db.pool).await.unwrap(), (0, 1));
    assert_eq!(
        s.delete_resolved_dead_letters(&f, Duration::ZERO, 10)
            .await
            .unwrap(),
        1
    );
    let leases = admin::leases(&db.pool).await.unwrap();
    assert_eq!((leases[0].owner.as_str(), leases[0].expired), ("a", false));
}

/// Wake-ups without NOTIFY: a new row wakes the poller while it wants row wake-ups, none
/// come while it does not (one when it wants them again), and a replay or discard asks
/// for a rescan either way.
#[tokio::test]
async fn the_polling_watcher_wakes_on_new_rows_and_rescans() {
    let db = MySqlTestDb::new().await;
    let s = store(&db, 200);
    let heard: Arc<Mutex<Vec<Wakeup>>> = Arc::default();
    let h = heard.clone();
    let (wanted, rx) = tokio::sync::watch::channel(true);
    let task = s
        .watch(
            Arc::new(move |w| {
                h.lock().unwrap().push(w);
                true
            }),
            rx,
        )
        .expect("a watcher");
    let take = || std::mem::take(&mut *heard.lock().unwrap());
    let settle = || tokio::time::sleep(Duration::from_millis(200));
    settle().await;
    assert_eq!(take(), vec![], "nothing new at start");
    insert(&db.pool, "a", "{}").await;
    settle().await;
    assert_eq!(take(), vec![Wakeup::Rows]);

    wanted.send_replace(false);
    settle().await;
    insert(&db.pool, "a", "{}").await;
    settle().await;
    assert_eq!(take(), vec![], "row wake-ups while not wanted");
    let f = lease(&s, "w").await.unwrap();
    let id = insert(&db.pool, "a", "{}").await;
    s.dead_letter(&f, id, 1, "r", "c").await.unwrap();
    admin::replay(&db.pool, &Selection::All).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(take(), vec![Wakeup::Rescan]);

    wanted.send_replace(true);
    settle().await;
    assert_eq!(take(), vec![Wakeup::Rows], "one wake-up when wanted again");
    task.abort();
}

#[tokio::test]
async fn the_inbox_runs_a_handler_once_per_event() {
    use outboxd::inbox::{Handled, Inbox};
    let db = MySqlTestDb::new().await;
    sqlx::query("CREATE TABLE effect (event_id CHAR(36) NOT NULL, note TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let inbox = Inbox::new("mailer").with_retention(Duration::ZERO);
    let id = uuid::Uuid::new_v4();
    let effect = async |tx: &mut sqlx::MySqlConnection, note: &str| {
        sqlx::query("INSERT INTO effect VALUES (?, ?)")
            .bind(id.to_string())
            .bind(note)
            .execute(tx)
            .await
            .map(drop)
    };
    let first = inbox
        .process(&db.pool, id, async |tx| effect(tx, "first").await)
        .await
        .unwrap();
    assert_eq!(first, Handled::Done(()));
    let second = inbox
        .process(&db.pool, id, async |tx| effect(tx, "second").await)
        .await
        .unwrap();
    assert_eq!(second, Handled::Duplicate);
    // A failing handler rolls its inbox entry back.
    let other = uuid::Uuid::new_v4();
    let failed = inbox
        .process(&db.pool, other, async |_tx| Err::<(), _>("no"))
        .await;
    assert!(failed.is_err());
    assert!(!inbox.seen(&db.pool, other).await.unwrap());
    assert!(inbox.seen(&db.pool, id).await.unwrap());
    let mut tx = db.pool.begin().await.unwrap();
    assert!(inbox.record(&mut tx, other).await.unwrap());
    assert!(!inbox.record(&mut tx, other).await.unwrap());
    tx.commit().await.unwrap();
    let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM effect")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(notes, vec!["first".to_string()]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(inbox.cleanup(&db.pool).await.unwrap(), 2);
}
