//! The library API on the caller's own transaction, against the real PostgreSQL.

mod common;

use common::TestDb;
use outboxd::{NewEvent, SinkKind, ValidationError, enqueue, enqueue_batch};
use serde_json::json;

async fn business_table(db: &TestDb) {
    sqlx::query("CREATE TABLE orders (id text PRIMARY KEY, total int NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
}

fn order_event(id: &str) -> NewEvent {
    NewEvent::builder("order", id)
        .event_type("order.created")
        .topic("orders")
        .json(&json!({"id": id, "total": 12}))
        .header("traceparent", "00-abc-def-01")
        .build()
        .unwrap()
}

#[tokio::test]
async fn enqueue_commits_with_the_business_rows() {
    let db = TestDb::new().await;
    business_table(&db).await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES ('o-1', 12)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let event = order_event("o-1");
    let id = enqueue(&mut *tx, &event).await.unwrap();
    assert_eq!(id, event.event_id());
    tx.commit().await.unwrap();

    let (agg, et, topic, payload, headers, event_id): (
        String,
        String,
        String,
        serde_json::Value,
        serde_json::Value,
        uuid::Uuid,
    ) = sqlx::query_as(
        "SELECT aggregate_id, event_type, topic, payload, headers, event_id FROM outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (agg.as_str(), et.as_str(), topic.as_str()),
        ("o-1", "order.created", "orders")
    );
    assert_eq!(payload, json!({"id": "o-1", "total": 12}));
    assert_eq!(headers, json!({"traceparent": "00-abc-def-01"}));
    assert_eq!(event_id, id);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(orders, 1);
}

#[tokio::test]
async fn enqueue_disappears_with_a_rollback() {
    let db = TestDb::new().await;
    business_table(&db).await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES ('o-2', 5)")
        .execute(&mut *tx)
        .await
        .unwrap();
    enqueue(&mut *tx, &order_event("o-2")).await.unwrap();
    enqueue_batch(&mut *tx, &[order_event("o-2"), order_event("o-2")])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.pending().await, 0);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(orders, 0);
}

#[tokio::test]
async fn enqueue_works_on_a_plain_connection_too() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let event = NewEvent::builder("blob", "b-1")
        .event_type("blob.stored")
        .topic("blobs")
        .bytes(vec![0u8, 1, 2, 255])
        .build()
        .unwrap();
    enqueue(&mut *conn, &event).await.unwrap();
    let (payload, bytes): (Option<serde_json::Value>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT payload, payload_bytes FROM outbox")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(payload, None);
    assert_eq!(bytes, Some(vec![0u8, 1, 2, 255]));
}

#[tokio::test]
async fn a_batch_of_ten_thousand_lands_whole_in_one_statement_in_order() {
    let db = TestDb::new().await;
    // Count INSERT statements on the outbox with a statement-level trigger.
    sqlx::raw_sql(
        "CREATE TABLE stmt_count (n int NOT NULL); INSERT INTO stmt_count VALUES (0);
         CREATE FUNCTION count_stmt() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE stmt_count SET n = n + 1; RETURN NULL; END $$;
         CREATE TRIGGER count_stmt AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION count_stmt();",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let events: Vec<NewEvent> = (0..10_000)
        .map(|i| {
            NewEvent::builder("order", format!("o-{}", i % 100))
                .event_type("order.updated")
                .topic("orders")
                .json(&json!({"seq": i}))
                .build()
                .unwrap()
        })
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    let ids = enqueue_batch(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(ids.len(), 10_000);
    assert!(ids.iter().zip(&events).all(|(id, e)| *id == e.event_id()));
    let statements: i32 = sqlx::query_scalar("SELECT n FROM stmt_count")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(statements, 1, "one INSERT for the whole batch");
    // Ids ascend with the slice: seq follows id.
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT (payload->>'seq')::int8 FROM outbox ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(seqs, (0..10_000).collect::<Vec<i64>>());
}

#[tokio::test]
async fn invalid_events_are_refused_before_anything_is_written() {
    let db = TestDb::new().await;
    let base = || {
        NewEvent::builder("order", "o-1")
            .event_type("order.created")
            .topic("orders")
            .json(&json!({}))
    };
    let cases: Vec<(Result<NewEvent, ValidationError>, &str)> = vec![
        (
            NewEvent::builder("order", "")
                .event_type("e")
                .topic("t")
                .json(&json!({}))
                .build(),
            "aggregate id is empty",
        ),
        (base().event_type("").build(), "event type is empty"),
        (
            base().topic("no spaces").build_for(SinkKind::Kafka),
            "invalid topic",
        ),
        (
            base().topic("..").build_for(SinkKind::Kafka),
            "invalid topic",
        ),
        (base().topic("").build(), "invalid topic"),
        (
            base().topic("x".repeat(250)).build_for(SinkKind::Kafka),
            "longer than 249",
        ),
        (
            base().headers_json(&json!({"retries": 3})).build(),
            "is not a string",
        ),
        (base().header("outbox_id", "1").build(), "reserved"),
    ];
    for (result, message) in cases {
        let err = result.expect_err(message);
        assert!(err.to_string().contains(message), "{err} / {message}");
    }
    assert_eq!(db.pending().await, 0);
}
