//! The relay's SQL on MariaDB / MySQL: the statements of [`super::MySqlStore`]. Every
//! write names the lease (owner, epoch) in the statement itself, so an instance whose lease
//! was taken over changes nothing (fencing); where a statement changed fewer rows than
//! asked, the fence is looked up to tell "fenced" from "already gone". Id lists travel as
//! one JSON array (`JSON_TABLE`), so each statement is prepared once whatever the batch
//! size. The relay's connections report matched rows, not changed rows (`found_rows`).

use sqlx::MySqlPool;
use sqlx::mysql::MySqlRow;

use crate::config::OnPublish;
use crate::store::{Fence, LockCheck, OutboxRow, StoreError};

impl<'r> sqlx::FromRow<'r, MySqlRow> for OutboxRow {
    /// By position and unchecked, as on PostgreSQL (the relay reads many rows); the column
    /// types are fixed by the `SELECT` list below and the migrations in
    /// `migrations/mysql`, and `tests/mysql.rs` reads rows of every shape back.
    fn from_row(row: &'r MySqlRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(OutboxRow {
            id: row.try_get_unchecked(0)?,
            aggregate_type: row.try_get_unchecked(1)?,
            aggregate_id: row.try_get_unchecked(2)?,
            event_type: row.try_get_unchecked(3)?,
            topic: row.try_get_unchecked(4)?,
            payload: row.try_get_unchecked(5)?,
            payload_bytes: row.try_get_unchecked(6)?,
            headers: row
                .try_get_unchecked::<Option<String>, _>(7)?
                .unwrap_or_default(),
            event_id: row
                .try_get_unchecked::<uuid::fmt::Hyphenated, _>(8)?
                .into_uuid(),
            created_at: row.try_get_unchecked(9)?,
            attempts: row.try_get_unchecked(10)?,
            tries: 0,
        })
    }
}

/// The columns of [`OutboxRow`], in its order, of the table aliased `o`. `payload` is
/// sent as text (MySQL's JSON type would otherwise come in its binary form), headers as
/// NULL when empty (the usual case, which then costs no allocation).
macro_rules! row_columns {
    () => {
        "o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, \
         CAST(o.payload AS CHAR) AS payload, o.payload_bytes, \
         NULLIF(CAST(o.headers AS CHAR), '{}') AS headers, o.event_id, o.created_at, o.attempts"
    };
}

/// `EXISTS (…)` of the lease row: `?` name, owner, epoch.
macro_rules! fence_holds {
    () => {
        "EXISTS (SELECT 1 FROM outbox_lease WHERE name = ? AND owner = ? AND epoch = ?)"
    };
}

/// One JSON array of ids, as a table `j(id)`.
macro_rules! json_ids {
    () => {
        "JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j"
    };
}

/// Counts a statement sent to the database (`outboxd_db_queries_total`).
fn count_query() {
    metrics::counter!("outboxd_db_queries_total").increment(1);
}

/// A JSON array of ids.
fn id_array(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(itoa::Buffer::new().format(*id));
    }
    s.push(']');
    s
}

/// The `limit` oldest pending rows that have `id > after` or fall in one of the inclusive
/// ranges `[lo, hi]` (all below `after`), in one statement — one consistent read — so
/// that the rows of a transaction that committed late are read in id order, those below
/// the cursor never after those above it. The ranges become index ranges of one scan of
/// `outbox_pending_idx`, in id order (no sort).
pub async fn fetch_after_and_in_ranges(
    pool: &MySqlPool,
    after: i64,
    ranges: &[(i64, i64)],
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    count_query();
    let mut q = sqlx::QueryBuilder::new(concat!(
        "SELECT ",
        row_columns!(),
        " FROM outbox AS o WHERE o.published_at IS NULL AND (o.id > "
    ));
    q.push_bind(after);
    for &(lo, hi) in ranges {
        q.push(" OR o.id BETWEEN ");
        q.push_bind(lo);
        q.push(" AND ");
        q.push_bind(hi);
    }
    q.push(") ORDER BY o.id LIMIT ");
    q.push_bind(limit);
    // The statement changes with the number of gaps: with no gap (the usual case) it is
    // the same every time and prepared once.
    q.build_query_as()
        .persistent(ranges.is_empty())
        .fetch_all(pool)
        .await
}

/// Pending rows by id, oldest first.
pub async fn fetch_ids(pool: &MySqlPool, ids: &[i64]) -> Result<Vec<OutboxRow>, sqlx::Error> {
    count_query();
    sqlx::query_as(concat!(
        "SELECT ",
        row_columns!(),
        " FROM ",
        json_ids!(),
        " JOIN outbox AS o ON o.id = j.id WHERE o.published_at IS NULL ORDER BY o.id"
    ))
    .bind(id_array(ids))
    .fetch_all(pool)
    .await
}

/// Ids of all pending rows with `id <= upto`, except those of the `skip` aggregates.
pub async fn pending_ids_upto(
    pool: &MySqlPool,
    upto: i64,
    skip: &[String],
) -> Result<Vec<i64>, sqlx::Error> {
    count_query();
    sqlx::query_scalar(
        "SELECT id FROM outbox WHERE published_at IS NULL AND id <= ? \
         AND aggregate_id NOT IN ( \
             SELECT a FROM JSON_TABLE(?, '$[*]' COLUMNS (a VARCHAR(255) PATH '$')) AS s) \
         ORDER BY id",
    )
    .bind(upto)
    .bind(serde_json::to_string(skip).expect("strings serialize"))
    .fetch_all(pool)
    .await
}

/// The ids of the InnoDB transactions that have written something and are still running
/// (`information_schema.INNODB_TRX`; needs the PROCESS privilege). Read-write transaction
/// ids are never reused, so a transaction seen here once and missing later has ended.
pub async fn running_writers(pool: &MySqlPool) -> Result<Vec<u64>, sqlx::Error> {
    count_query();
    sqlx::query_scalar(
        "SELECT CAST(trx_id AS UNSIGNED) FROM information_schema.INNODB_TRX \
         WHERE trx_rows_modified > 0",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| {
        // ER_SPECIFIC_ACCESS_DENIED_ERROR (1227) / ER_DBACCESS_DENIED_ERROR.
        let denied = e
            .as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|d| matches!(d.number(), 1227 | 1044 | 1142));
        if denied {
            sqlx::Error::Configuration(
                "the relay's database user may not see running transactions \
                 (information_schema.INNODB_TRX), which it needs to tell when an id gap \
                 can no longer be filled by a late-committing transaction: \
                 GRANT PROCESS ON *.* TO the relay's user"
                    .into(),
            )
        } else {
            e
        }
    })
}

/// Whether the lease is still held under this epoch.
async fn fence_held(pool: &MySqlPool, fence: &Fence) -> Result<bool, sqlx::Error> {
    count_query();
    sqlx::query_scalar(concat!("SELECT ", fence_holds!()))
        .bind(&fence.name)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .fetch_one(pool)
        .await
}

/// After a fenced statement changed `n` of `wanted` rows: fenced, unless every row was
/// changed or the lease is still ours (the others were gone already).
async fn check_after(
    pool: &MySqlPool,
    fence: &Fence,
    n: u64,
    wanted: u64,
) -> Result<u64, StoreError> {
    if n < wanted && !fence_held(pool, fence).await? {
        return Err(StoreError::Fenced(fence.name.clone()));
    }
    Ok(n)
}

/// Marks rows the broker acknowledged: deletes them, or sets `published_at`.
/// Returns how many rows changed (rows already gone are not an error).
pub async fn mark_published(
    pool: &MySqlPool,
    fence: &Fence,
    ids: &[i64],
    mode: OnPublish,
) -> Result<u64, StoreError> {
    count_query();
    let sql = match mode {
        OnPublish::Delete => concat!(
            "DELETE o FROM outbox AS o JOIN ",
            json_ids!(),
            " ON o.id = j.id WHERE ",
            fence_holds!()
        ),
        OnPublish::Mark => concat!(
            "UPDATE outbox AS o JOIN ",
            json_ids!(),
            " ON o.id = j.id SET o.published_at = NOW(6) WHERE o.published_at IS NULL AND ",
            fence_holds!()
        ),
    };
    let n = sqlx::query(sql)
        .bind(id_array(ids))
        .bind(&fence.name)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .execute(pool)
        .await?
        .rows_affected();
    check_after(pool, fence, n, ids.len() as u64).await
}

/// Records a transient failure: attempts so far, when the next attempt is due, the error.
pub async fn record_failure(
    pool: &MySqlPool,
    fence: &Fence,
    id: i64,
    attempts: i32,
    retry_in_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    count_query();
    let n = sqlx::query(concat!(
        "UPDATE outbox SET attempts = ?, first_failed_at = COALESCE(first_failed_at, NOW(6)), \
                next_attempt_at = NOW(6) + INTERVAL ? MICROSECOND, last_error = ? \
         WHERE id = ? AND ",
        fence_holds!()
    ))
    .bind(attempts)
    .bind(retry_in_ms.saturating_mul(1_000))
    .bind(error)
    .bind(id)
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .execute(pool)
    .await?
    .rows_affected();
    check_after(pool, fence, n, 1).await.map(drop)
}

/// Moves a row to `outbox_dead_letter` with the reason, in one transaction that holds
/// the lease row shared (a takeover waits for it, as on PostgreSQL). A row dead-lettered
/// before, replayed and failed again reopens its dead letter. Returns false when the row
/// was no longer pending.
pub async fn dead_letter(
    pool: &MySqlPool,
    fence: &Fence,
    id: i64,
    attempts: i32,
    reason: &str,
    error_class: &str,
) -> Result<bool, StoreError> {
    count_query();
    let mut tx = pool.begin().await?;
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM outbox_lease WHERE name = ? AND owner = ? AND epoch = ? \
         LOCK IN SHARE MODE",
    )
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        return Err(StoreError::Fenced(fence.name.clone()));
    }
    sqlx::query(
        "INSERT INTO outbox_dead_letter \
           (id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, \
            headers, event_id, created_at, reason, error_class, attempts, \
            first_failed_at, last_failed_at) \
         SELECT id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, \
                headers, event_id, created_at, ?, ?, ?, COALESCE(first_failed_at, NOW(6)), NOW(6) \
         FROM outbox WHERE id = ? AND published_at IS NULL \
         ON DUPLICATE KEY UPDATE reason = VALUES(reason), error_class = VALUES(error_class), \
            attempts = VALUES(attempts), first_failed_at = VALUES(first_failed_at), \
            last_failed_at = VALUES(last_failed_at), dead_lettered_at = NOW(6), \
            resolved_at = NULL, resolution = NULL",
    )
    .bind(reason)
    .bind(error_class)
    .bind(attempts)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query("DELETE FROM outbox WHERE id = ? AND published_at IS NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(moved > 0)
}

/// The name of an instance's lock: at most 64 characters (MySQL's limit) whatever the
/// instance's name, and the same for every build of the relay.
macro_rules! lock_name {
    () => {
        "CONCAT('outboxd.instance.', SHA1(?))"
    };
}

/// Takes, on `conn`, the named lock on an instance name (`GET_LOCK`): only one session
/// can hold it and it goes with the session, as PostgreSQL's advisory lock does (see the
/// PostgreSQL store's `lock_instance` for what holding it does and does not prove).
/// `Err(LockCheck::NotSession)` when the next statement runs in another session (a proxy
/// that multiplexes sessions).
pub async fn lock_instance(
    conn: &mut sqlx::MySqlConnection,
    owner: &str,
) -> Result<bool, LockCheck> {
    count_query();
    let locked: Option<i64> = sqlx::query_scalar(concat!("SELECT GET_LOCK(", lock_name!(), ", 0)"))
        .bind(owner)
        .fetch_one(&mut *conn)
        .await?;
    if locked != Some(1) {
        return Ok(false);
    }
    let mine: Option<i64> = sqlx::query_scalar(concat!(
        "SELECT IS_USED_LOCK(",
        lock_name!(),
        ") = CONNECTION_ID()"
    ))
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    if mine != Some(1) {
        return Err(LockCheck::NotSession);
    }
    Ok(true)
}

/// Aggregates with an open (not replayed, not discarded) dead letter.
pub async fn held_aggregates(pool: &MySqlPool) -> Result<Vec<String>, sqlx::Error> {
    count_query();
    sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM outbox_dead_letter WHERE resolved_at IS NULL",
    )
    .fetch_all(pool)
    .await
}

/// Takes the lease if it is free or expired, or reclaims it (see the PostgreSQL store's
/// `acquire_lease`); returns the new epoch. One transaction: the row is created expired if
/// missing, taken by a conditional update (row-locked), and its epoch read back.
pub async fn acquire_lease(
    pool: &MySqlPool,
    name: &str,
    owner: &str,
    ttl_ms: i64,
    reclaim: bool,
    grace_ms: i64,
) -> Result<Option<i64>, sqlx::Error> {
    count_query();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT IGNORE INTO outbox_lease (name, owner, epoch, expires_at) \
         VALUES (?, ?, 0, NOW(6) - INTERVAL 1 MICROSECOND)",
    )
    .bind(name)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    let taken = sqlx::query(
        "UPDATE outbox_lease SET owner = ?, epoch = epoch + 1, acquired_at = NOW(6), \
                renewed_at = NOW(6), expires_at = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE name = ? AND (expires_at < NOW(6) \
               OR (owner = ? AND ? AND renewed_at < NOW(6) - INTERVAL ? MICROSECOND))",
    )
    .bind(owner)
    .bind(ttl_ms.saturating_mul(1_000))
    .bind(name)
    .bind(owner)
    .bind(reclaim)
    .bind(grace_ms.saturating_mul(1_000))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let epoch = if taken == 1 {
        sqlx::query_scalar("SELECT epoch FROM outbox_lease WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
    } else {
        None
    };
    tx.commit().await?;
    Ok(epoch)
}

/// Extends our lease; false when it is no longer ours.
pub async fn renew_lease<'c>(
    db: impl sqlx::MySqlExecutor<'c>,
    fence: &Fence,
    ttl_ms: i64,
) -> Result<bool, sqlx::Error> {
    count_query();
    let n = sqlx::query(
        "UPDATE outbox_lease SET renewed_at = NOW(6), expires_at = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE name = ? AND owner = ? AND epoch = ?",
    )
    .bind(ttl_ms.saturating_mul(1_000))
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Gives the lease up at once.
pub async fn release_lease(pool: &MySqlPool, fence: &Fence) -> Result<(), sqlx::Error> {
    count_query();
    sqlx::query(
        "UPDATE outbox_lease SET expires_at = NOW(6) - INTERVAL 1 MICROSECOND \
         WHERE name = ? AND owner = ? AND epoch = ?",
    )
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .execute(pool)
    .await?;
    Ok(())
}

/// Pending rows, counted up to `cap`, and open dead letters.
pub async fn backlog(pool: &MySqlPool, cap: i64) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT ?) AS p), \
                (SELECT COUNT(*) FROM outbox_dead_letter WHERE resolved_at IS NULL)",
    )
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// Deletes up to `limit` rows published more than `retention_secs` ago (mark mode).
pub async fn delete_published(
    pool: &MySqlPool,
    fence: &Fence,
    retention_secs: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    fenced_cleanup(
        pool,
        fence,
        concat!(
            "DELETE FROM outbox WHERE published_at < NOW(6) - INTERVAL ? SECOND AND ",
            fence_holds!(),
            " LIMIT ?"
        ),
        retention_secs,
        limit,
    )
    .await
}

/// Deletes up to `limit` dead letters resolved more than `retention_secs` ago.
pub async fn delete_resolved_dead_letters(
    pool: &MySqlPool,
    fence: &Fence,
    retention_secs: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    fenced_cleanup(
        pool,
        fence,
        concat!(
            "DELETE FROM outbox_dead_letter WHERE resolved_at < NOW(6) - INTERVAL ? SECOND AND ",
            fence_holds!(),
            " LIMIT ?"
        ),
        retention_secs,
        limit,
    )
    .await
}

/// One of the cleanup deletes: the retention, the fence, the limit. Fenced when nothing
/// was deleted and the lease is no longer ours.
async fn fenced_cleanup(
    pool: &MySqlPool,
    fence: &Fence,
    sql: &'static str,
    retention_secs: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    count_query();
    let n = sqlx::query(sql)
        .bind(retention_secs)
        .bind(&fence.name)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected();
    check_after(pool, fence, n, 1).await
}

/// What the watcher polls: the highest id (new rows) and the latest replay or discard of a
/// dead letter (a rescan), both read off the end of an index.
pub async fn watch_marks(
    conn: &mut sqlx::MySqlConnection,
) -> Result<(Option<i64>, Option<String>), sqlx::Error> {
    count_query();
    sqlx::query_as(
        "SELECT (SELECT MAX(id) FROM outbox), \
                CAST((SELECT MAX(resolved_at) FROM outbox_dead_letter) AS CHAR)",
    )
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn id_lists_are_json_arrays() {
        assert_eq!(super::id_array(&[]), "[]");
        assert_eq!(super::id_array(&[1, -2, 300]), "[1,-2,300]");
    }
}
