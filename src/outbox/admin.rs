//! Operator queries: `outboxd status` and `outboxd dead-letters list|replay|discard`, on
//! PostgreSQL and on MariaDB / MySQL ([`Db`]).

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, PgPool};

use super::{NOTIFY_CHANNEL, NOTIFY_RESCAN, NOTIFY_RESCAN_CHANNEL};

/// The database an operator command runs against.
#[derive(Debug, Clone, Copy)]
pub enum Db<'a> {
    /// PostgreSQL.
    Postgres(&'a PgPool),
    /// MariaDB / MySQL.
    MySql(&'a MySqlPool),
}

impl<'a> From<&'a PgPool> for Db<'a> {
    fn from(pool: &'a PgPool) -> Self {
        Db::Postgres(pool)
    }
}

impl<'a> From<&'a MySqlPool> for Db<'a> {
    fn from(pool: &'a MySqlPool) -> Self {
        Db::MySql(pool)
    }
}

/// Runs the PostgreSQL or the MySQL form of a query: `on!(db, |pool| …, |pool| …)`.
macro_rules! on {
    ($db:expr, |$pg:ident| $pg_body:expr, |$my:ident| $my_body:expr $(,)?) => {
        match $db.into() {
            Db::Postgres($pg) => $pg_body,
            Db::MySql($my) => $my_body,
        }
    };
}

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
pub async fn backlog_by_aggregate<'a>(
    db: impl Into<Db<'a>>,
) -> Result<Vec<AggregateBacklog>, sqlx::Error> {
    const SQL: &str = "SELECT aggregate_id, count(*) AS pending, min(created_at) AS oldest \
                       FROM outbox WHERE published_at IS NULL GROUP BY aggregate_id";
    on!(
        db,
        |pool| sqlx::query_as(SQL).fetch_all(pool).await,
        |pool| sqlx::query_as(SQL).fetch_all(pool).await,
    )
}

/// Pending rows per destination (topic, stream key or subject), the longest-waiting
/// first: a destination the sink holds (no stream captures a subject, a key of another
/// type) shows as one whose oldest row keeps ageing.
pub async fn backlog_by_destination<'a>(
    db: impl Into<Db<'a>>,
    limit: i64,
) -> Result<Vec<(String, i64, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    on!(
        db,
        |pool| sqlx::query_as(
            "SELECT topic, count(*), min(created_at) FROM outbox WHERE published_at IS NULL \
             GROUP BY topic ORDER BY min(created_at) LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await,
        |pool| sqlx::query_as(
            "SELECT topic, count(*), min(created_at) FROM outbox WHERE published_at IS NULL \
             GROUP BY topic ORDER BY min(created_at) LIMIT ?",
        )
        .bind(limit)
        .fetch_all(pool)
        .await,
    )
}

/// Open and resolved dead letters.
pub async fn dead_letter_counts<'a>(db: impl Into<Db<'a>>) -> Result<(i64, i64), sqlx::Error> {
    on!(
        db,
        |pool| sqlx::query_as(
            "SELECT count(*) FILTER (WHERE resolved_at IS NULL), \
                    count(*) FILTER (WHERE resolved_at IS NOT NULL) \
             FROM outbox_dead_letter",
        )
        .fetch_one(pool)
        .await,
        |pool| sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(resolved_at IS NULL), 0) AS SIGNED), \
                    CAST(COALESCE(SUM(resolved_at IS NOT NULL), 0) AS SIGNED) \
             FROM outbox_dead_letter",
        )
        .fetch_one(pool)
        .await,
    )
}

/// Rows published and kept (`relay.on_publish = "mark"`).
pub async fn published_kept<'a>(db: impl Into<Db<'a>>) -> Result<i64, sqlx::Error> {
    const SQL: &str = "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL";
    on!(
        db,
        |pool| sqlx::query_scalar(SQL).fetch_one(pool).await,
        |pool| sqlx::query_scalar(SQL).fetch_one(pool).await,
    )
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
pub async fn leases<'a>(db: impl Into<Db<'a>>) -> Result<Vec<LeaseRow>, sqlx::Error> {
    on!(
        db,
        |pool| sqlx::query_as(
            "SELECT name, owner, epoch, expires_at, expires_at < now() AS expired \
             FROM outbox_lease ORDER BY name",
        )
        .fetch_all(pool)
        .await,
        |pool| sqlx::query_as(
            "SELECT name, owner, epoch, expires_at, expires_at < NOW(6) IS TRUE AS expired \
             FROM outbox_lease ORDER BY name",
        )
        .fetch_all(pool)
        .await,
    )
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
pub async fn list_dead_letters<'a>(
    db: impl Into<Db<'a>>,
    all: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    on!(
        db,
        |pool| sqlx::query_as(
            "SELECT id, aggregate_id, event_type, topic, error_class, reason, attempts, \
                    dead_lettered_at, resolution \
             FROM outbox_dead_letter WHERE $1 OR resolved_at IS NULL ORDER BY id LIMIT $2",
        )
        .bind(all)
        .bind(limit)
        .fetch_all(pool)
        .await,
        |pool| sqlx::query_as(
            "SELECT id, aggregate_id, event_type, topic, error_class, reason, attempts, \
                    dead_lettered_at, resolution \
             FROM outbox_dead_letter WHERE ? OR resolved_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(all)
        .bind(limit)
        .fetch_all(pool)
        .await,
    )
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
pub async fn replay<'a>(db: impl Into<Db<'a>>, sel: &Selection) -> Result<u64, sqlx::Error> {
    let pool = match db.into() {
        Db::Postgres(pool) => pool,
        Db::MySql(pool) => return replay_mysql(pool, sel).await,
    };
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
pub async fn discard<'a>(db: impl Into<Db<'a>>, sel: &Selection) -> Result<u64, sqlx::Error> {
    let pool = match db.into() {
        Db::Postgres(pool) => pool,
        Db::MySql(pool) => return discard_mysql(pool, sel).await,
    };
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

/// The selection as MySQL binds: a JSON array of ids (or NULL), an aggregate (or NULL).
fn mysql_binds(sel: &Selection) -> (Option<String>, Option<String>) {
    let (ids, agg) = sel.binds();
    (
        ids.map(|ids| serde_json::to_string(&ids).expect("ids serialize")),
        agg,
    )
}

/// The open dead letters a selection names, for MySQL: `?` the JSON array of ids, `?` the
/// aggregate (each NULL for any).
macro_rules! selected {
    () => {
        "resolved_at IS NULL \
         AND (? IS NULL OR id IN (SELECT j.id FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j)) \
         AND (? IS NULL OR aggregate_id = ?)"
    };
}

/// Binds a selection to the placeholders of [`selected!`].
trait BindSelection: Sized {
    fn bind_selection(self, ids: &Option<String>, agg: &Option<String>) -> Self;
}

impl<'q> BindSelection for sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    fn bind_selection(self, ids: &Option<String>, agg: &Option<String>) -> Self {
        self.bind(ids.clone())
            .bind(ids.clone())
            .bind(agg.clone())
            .bind(agg.clone())
    }
}

/// [`replay`] on MariaDB / MySQL: the rows go back, then their dead letters are marked
/// replayed — which a running relay sees as a new latest `resolved_at` and rescans.
async fn replay_mysql(pool: &MySqlPool, sel: &Selection) -> Result<u64, sqlx::Error> {
    let (ids, agg) = mysql_binds(sel);
    let mut tx = pool.begin().await?;
    sqlx::query(concat!(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, topic, payload, \
                             payload_bytes, headers, event_id, created_at) \
         SELECT id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, \
                headers, event_id, created_at FROM outbox_dead_letter WHERE ",
        selected!()
    ))
    .bind_selection(&ids, &agg)
    .execute(&mut *tx)
    .await?;
    let n = sqlx::query(concat!(
        "UPDATE outbox_dead_letter SET resolved_at = NOW(6), resolution = 'replayed' WHERE ",
        selected!()
    ))
    .bind_selection(&ids, &agg)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// [`discard`] on MariaDB / MySQL.
async fn discard_mysql(pool: &MySqlPool, sel: &Selection) -> Result<u64, sqlx::Error> {
    let (ids, agg) = mysql_binds(sel);
    Ok(sqlx::query(concat!(
        "UPDATE outbox_dead_letter SET resolved_at = NOW(6), resolution = 'discarded' WHERE ",
        selected!()
    ))
    .bind_selection(&ids, &agg)
    .execute(pool)
    .await?
    .rows_affected())
}
