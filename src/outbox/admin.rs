//! Operator queries: `outboxd status` and `outboxd dead-letters list|replay|discard`.

use chrono::{DateTime, Utc};

use super::{NOTIFY_CHANNEL, NOTIFY_RESCAN, NOTIFY_RESCAN_CHANNEL};

/// The backlog of one aggregate.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AggregateBacklog {
    /// The aggregate.
    pub aggregate_id: String,
    /// Pending rows.
    pub pending: i64,
    /// Oldest pending row's insert time.
    pub oldest: DateTime<Utc>,
}

/// Pending rows per aggregate (the caller groups them by partition).
pub async fn backlog_by_aggregate(
    pool: &sqlx::PgPool,
) -> Result<Vec<AggregateBacklog>, sqlx::Error> {
    sqlx::query_as(
        "SELECT aggregate_id, count(*) AS pending, min(created_at) AS oldest \
         FROM outbox WHERE published_at IS NULL GROUP BY aggregate_id",
    )
    .fetch_all(pool)
    .await
}

/// Pending rows per destination (topic, stream key or subject), the longest-waiting
/// first: a destination the sink holds (no stream captures a subject, a key of another
/// type) shows as one whose oldest row keeps ageing.
pub async fn backlog_by_destination(
    pool: &sqlx::PgPool,
    limit: i64,
) -> Result<Vec<(String, i64, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT topic, count(*), min(created_at) FROM outbox WHERE published_at IS NULL \
         GROUP BY topic ORDER BY min(created_at) LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Open and resolved dead letters.
pub async fn dead_letter_counts(pool: &sqlx::PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE resolved_at IS NULL), count(*) FILTER (WHERE resolved_at IS NOT NULL) \
         FROM outbox_dead_letter",
    )
    .fetch_one(pool)
    .await
}

/// Rows published and kept (`relay.on_publish = "mark"`).
pub async fn published_kept(pool: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        .fetch_one(pool)
        .await
}

/// The lease as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LeaseRow {
    /// Lease name.
    pub name: String,
    /// Holder.
    pub owner: String,
    /// Epoch.
    pub epoch: i64,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Whether it has expired.
    pub expired: bool,
}

/// Every lease.
pub async fn leases(pool: &sqlx::PgPool) -> Result<Vec<LeaseRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, owner, epoch, expires_at, expires_at < now() AS expired \
         FROM outbox_lease ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// One dead letter as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    /// Original outbox id.
    pub id: i64,
    /// Aggregate.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Topic.
    pub topic: String,
    /// Error class.
    pub error_class: String,
    /// Reason.
    pub reason: String,
    /// Attempts.
    pub attempts: i32,
    /// When.
    pub dead_lettered_at: DateTime<Utc>,
    /// `replayed` or `discarded`, if resolved.
    pub resolution: Option<String>,
}

/// Dead letters, oldest first; open ones only unless `all`.
pub async fn list_dead_letters(
    pool: &sqlx::PgPool,
    all: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, aggregate_id, event_type, topic, error_class, reason, attempts, \
                dead_lettered_at, resolution \
         FROM outbox_dead_letter WHERE $1 OR resolved_at IS NULL ORDER BY id LIMIT $2",
    )
    .bind(all)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Which open dead letters an operator command applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These original ids.
    Ids(Vec<i64>),
    /// Every open dead letter of this aggregate.
    Aggregate(String),
    /// Every open dead letter.
    All,
}

impl Selection {
    fn binds(&self) -> (Option<Vec<i64>>, Option<String>) {
        match self {
            Selection::Ids(ids) => (Some(ids.clone()), None),
            Selection::Aggregate(a) => (None, Some(a.clone())),
            Selection::All => (None, None),
        }
    }
}

/// Puts open dead letters back into the outbox under their original ids (so they keep
/// their place in their aggregate's order) and marks them replayed; wakes the relay.
/// Returns how many were replayed.
pub async fn replay(pool: &sqlx::PgPool, sel: &Selection) -> Result<u64, sqlx::Error> {
    let (ids, agg) = sel.binds();
    let mut tx = pool.begin().await?;
    let n: i64 = sqlx::query_scalar(
        "WITH picked AS ( \
             UPDATE outbox_dead_letter SET resolved_at = now(), resolution = 'replayed' \
             WHERE resolved_at IS NULL \
               AND ($1::int8[] IS NULL OR id = ANY($1)) \
               AND ($2::text IS NULL OR aggregate_id = $2) \
             RETURNING *), \
         ins AS ( \
             INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, topic, payload, \
                                 payload_bytes, headers, event_id, created_at) \
             OVERRIDING SYSTEM VALUE \
             SELECT id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, \
                    headers, event_id, created_at FROM picked RETURNING 1) \
         SELECT count(*) FROM ins",
    )
    .bind(ids)
    .bind(agg)
    .fetch_one(&mut *tx)
    .await?;
    notify_rescan(&mut tx).await?;
    tx.commit().await?;
    Ok(n as u64)
}

/// Marks open dead letters discarded (their aggregates are released); wakes the relay.
pub async fn discard(pool: &sqlx::PgPool, sel: &Selection) -> Result<u64, sqlx::Error> {
    let (ids, agg) = sel.binds();
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "UPDATE outbox_dead_letter SET resolved_at = now(), resolution = 'discarded' \
         WHERE resolved_at IS NULL \
           AND ($1::int8[] IS NULL OR id = ANY($1)) \
           AND ($2::text IS NULL OR aggregate_id = $2)",
    )
    .bind(ids)
    .bind(agg)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    notify_rescan(&mut tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// Asks running relays to re-read everything pending: on the rescan channel, which a relay
/// always listens on, and on the rows channel, which older relays listened on alone.
async fn notify_rescan(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $3), pg_notify($2, $3)")
        .bind(NOTIFY_CHANNEL)
        .bind(NOTIFY_RESCAN_CHANNEL)
        .bind(NOTIFY_RESCAN)
        .execute(conn)
        .await?;
    Ok(())
}
