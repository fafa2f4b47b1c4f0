//! Writing events to the databases: [`enqueue`] / [`enqueue_batch`] on the caller's
//! transaction or connection, and [`OutboxDatabase`], implemented for PostgreSQL and —
//! with the `mysql` feature — for MariaDB / MySQL. It carries the few statements that
//! differ (the insert, the inbox's), so that the functions applications call take either
//! database's transactions, connections and pools.

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use super::event::{NewEvent, Payload};

/// Writes one event on the caller's transaction or connection — PostgreSQL's, or with the
/// `mysql` feature MariaDB's / MySQL's — and returns its event id.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE orders SET state = 'paid' WHERE id = 42").execute(&mut *tx).await?;
/// let event = outboxd::NewEvent::builder("order", "42")
///     .event_type("order.paid")
///     .topic("orders")
///     .json(&serde_json::json!({"total": 12}))
///     .build()?;
/// outboxd::enqueue(&mut *tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn enqueue<'e, E>(executor: E, event: &'e NewEvent) -> Result<Uuid, sqlx::Error>
where
    E: sqlx::Executor<'e> + 'e,
    E::Database: OutboxDatabase,
{
    let ids = enqueue_batch(executor, std::slice::from_ref(event)).await?;
    Ok(ids[0])
}

/// Writes many events in one statement, in slice order: ids ascend with the slice, so an
/// aggregate's events keep their order. Returns the event ids in the same order. On
/// PostgreSQL one `INSERT … SELECT FROM UNNEST`; on MariaDB / MySQL one multi-row
/// `INSERT`, of at most 8,000 events.
pub async fn enqueue_batch<'e, E>(
    executor: E,
    events: &'e [NewEvent],
) -> Result<Vec<Uuid>, sqlx::Error>
where
    E: sqlx::Executor<'e> + 'e,
    E::Database: OutboxDatabase,
{
    if events.is_empty() {
        return Ok(Vec::new());
    }
    <E::Database as OutboxDatabase>::insert_events(executor, events).await?;
    Ok(events.iter().map(NewEvent::event_id).collect())
}

/// A boxed future of the library's statements.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "mysql")]
    impl Sealed for sqlx::MySql {}
}

/// A database outboxd's library writes to: `sqlx::Postgres`, and `sqlx::MySql` (MariaDB
/// >= 10.6, MySQL >= 8.0) with the `mysql` feature. Sealed: the statements are outboxd's.
pub trait OutboxDatabase: sqlx::Database + sealed::Sealed {
    /// Inserts the events in slice order (ids ascend with the slice).
    #[doc(hidden)]
    fn insert_events<'e, E>(
        executor: E,
        events: &'e [NewEvent],
    ) -> BoxFuture<'e, Result<(), sqlx::Error>>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e;

    /// Records `(consumer, event_id)` in `outbox_inbox`; true when it was not there.
    #[doc(hidden)]
    fn inbox_record<'a>(
        conn: &'a mut Self::Connection,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// Whether `(consumer, event_id)` is in `outbox_inbox`.
    #[doc(hidden)]
    fn inbox_seen<'a>(
        pool: &'a sqlx::Pool<Self>,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// Deletes up to `limit` of the consumer's entries older than `retention_secs`.
    #[doc(hidden)]
    fn inbox_delete_old<'a>(
        pool: &'a sqlx::Pool<Self>,
        consumer: &'a str,
        retention_secs: f64,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
}

/// The payload as the two nullable columns.
fn payload_columns(e: &NewEvent) -> (Option<&str>, Option<&[u8]>) {
    match e.payload() {
        Payload::Json(text) => (Some(text.as_str()), None),
        Payload::Bytes(bytes) => (None, Some(bytes.as_slice())),
    }
}

fn headers_text(e: &NewEvent) -> String {
    serde_json::to_string(e.headers()).expect("string map serializes")
}

impl OutboxDatabase for sqlx::Postgres {
    /// One statement (`INSERT … SELECT FROM UNNEST`) for the whole batch.
    fn insert_events<'e, E>(
        executor: E,
        events: &'e [NewEvent],
    ) -> BoxFuture<'e, Result<(), sqlx::Error>>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let n = events.len();
            let mut event_ids = Vec::with_capacity(n);
            let mut aggregate_types = Vec::with_capacity(n);
            let mut aggregate_ids = Vec::with_capacity(n);
            let mut event_types = Vec::with_capacity(n);
            let mut topics = Vec::with_capacity(n);
            let mut payloads: Vec<Option<&str>> = Vec::with_capacity(n);
            let mut payload_bytes: Vec<Option<&[u8]>> = Vec::with_capacity(n);
            let mut headers = Vec::with_capacity(n);
            for e in events {
                event_ids.push(e.event_id());
                aggregate_types.push(e.aggregate_type());
                aggregate_ids.push(e.aggregate_id());
                event_types.push(e.event_type());
                topics.push(e.topic());
                let (json, bytes) = payload_columns(e);
                payloads.push(json);
                payload_bytes.push(bytes);
                headers.push(headers_text(e));
            }
            sqlx::query(
                "INSERT INTO outbox \
                     (event_id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, headers) \
                 SELECT e, at, ai, et, t, p::jsonb, pb, h::jsonb \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::text[], $7::bytea[], $8::text[]) AS u(e, at, ai, et, t, p, pb, h)",
            )
            .bind(&event_ids)
            .bind(&aggregate_types)
            .bind(&aggregate_ids)
            .bind(&event_types)
            .bind(&topics)
            .bind(&payloads)
            .bind(&payload_bytes)
            .bind(&headers)
            .execute(executor)
            .await?;
            Ok(())
        })
    }

    fn inbox_record<'a>(
        conn: &'a mut sqlx::PgConnection,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let inserted = sqlx::query(
                "INSERT INTO outbox_inbox (consumer, event_id) VALUES ($1, $2) \
                 ON CONFLICT (consumer, event_id) DO NOTHING",
            )
            .bind(consumer)
            .bind(event_id)
            .execute(conn)
            .await?
            .rows_affected();
            Ok(inserted == 1)
        })
    }

    fn inbox_seen<'a>(
        pool: &'a sqlx::PgPool,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM outbox_inbox WHERE consumer = $1 AND event_id = $2)",
            )
            .bind(consumer)
            .bind(event_id)
            .fetch_one(pool),
        )
    }

    fn inbox_delete_old<'a>(
        pool: &'a sqlx::PgPool,
        consumer: &'a str,
        retention_secs: f64,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            Ok(sqlx::query(
                "DELETE FROM outbox_inbox WHERE consumer = $1 AND event_id = ANY (ARRAY( \
                     SELECT event_id FROM outbox_inbox \
                     WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2) \
                     LIMIT $3))",
            )
            .bind(consumer)
            .bind(retention_secs)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }
}

/// Rows per `INSERT` on MySQL: 8 placeholders a row, under the protocol's 65,535.
#[cfg(feature = "mysql")]
const MYSQL_ROWS_PER_INSERT: usize = 8_000;

#[cfg(feature = "mysql")]
impl OutboxDatabase for sqlx::MySql {
    /// A multi-row `INSERT … VALUES` per 8,000 events; every statement's ids ascend in
    /// `VALUES` order and are above the previous statement's.
    fn insert_events<'e, E>(
        executor: E,
        events: &'e [NewEvent],
    ) -> BoxFuture<'e, Result<(), sqlx::Error>>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            if events.len() > MYSQL_ROWS_PER_INSERT {
                return Err(sqlx::Error::Protocol(format!(
                    "enqueue_batch on MariaDB/MySQL takes at most {MYSQL_ROWS_PER_INSERT} events per \
                     call (one statement); split the batch"
                )));
            }
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO outbox \
                 (event_id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, headers) ",
            );
            q.push_values(events, |mut row, e| {
                let (json, bytes) = payload_columns(e);
                row.push_bind(e.event_id().hyphenated())
                    .push_bind(e.aggregate_type())
                    .push_bind(e.aggregate_id())
                    .push_bind(e.event_type())
                    .push_bind(e.topic())
                    .push_bind(json)
                    .push_bind(bytes)
                    .push_bind(headers_text(e));
            });
            q.build()
                .persistent(events.len() == 1)
                .execute(executor)
                .await?;
            Ok(())
        })
    }

    fn inbox_record<'a>(
        conn: &'a mut sqlx::MySqlConnection,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            // IGNORE: a duplicate key inserts nothing (0 rows) — after waiting for a
            // transaction that inserted the same key and has not finished, as on PostgreSQL.
            let inserted =
                sqlx::query("INSERT IGNORE INTO outbox_inbox (consumer, event_id) VALUES (?, ?)")
                    .bind(consumer)
                    .bind(event_id.hyphenated())
                    .execute(conn)
                    .await?
                    .rows_affected();
            Ok(inserted == 1)
        })
    }

    fn inbox_seen<'a>(
        pool: &'a sqlx::MySqlPool,
        consumer: &'a str,
        event_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox_inbox WHERE consumer = ? AND event_id = ?",
            )
            .bind(consumer)
            .bind(event_id.hyphenated())
            .fetch_one(pool)
            .await?;
            Ok(n > 0)
        })
    }

    fn inbox_delete_old<'a>(
        pool: &'a sqlx::MySqlPool,
        consumer: &'a str,
        retention_secs: f64,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            Ok(sqlx::query(
                "DELETE FROM outbox_inbox WHERE consumer = ? \
                 AND processed_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?",
            )
            .bind(consumer)
            .bind((retention_secs * 1e6) as i64)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }
}
