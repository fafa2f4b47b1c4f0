//! The relay's SQL on PostgreSQL: reading pending rows, marking them published, recording
//! failures, dead-lettering, leases and cleanup. Every write checks the lease (owner,
//! epoch), so an instance whose lease was taken over cannot change anything (fencing).

use crate::config::OnPublish;
use crate::store::{Fence, LockCheck, OutboxRow, StoreError};

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for OutboxRow {
    /// By position, not by name, and without sqlx's per-value type check: the relay reads
    /// many rows, and both showed up in its profile. The column types are fixed by the
    /// `SELECT` lists in this file and the migrations; `rows_decode_as_the_relay_reads_them`
    /// (tests/schema.rs) checks them against the real table.
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
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
            event_id: row.try_get_unchecked(8)?,
            created_at: row.try_get_unchecked(9)?,
            attempts: row.try_get_unchecked(10)?,
            tries: 0,
        })
    }
}

macro_rules! select_rows {
    ($tail:literal) => {
        concat!(
            "SELECT id, aggregate_type, aggregate_id, event_type, topic, ",
            "payload::text AS payload, payload_bytes, NULLIF(headers, '{}')::text AS headers, event_id, ",
            "created_at, attempts FROM outbox ",
            $tail
        )
    };
}

/// Counts a statement sent to the database (`outboxd_db_queries_total`: the benchmark's
/// round trips per 1,000 events).
fn count_query() {
    metrics::counter!("outboxd_db_queries_total").increment(1);
}

/// `WITH fence AS (…)` prefix: $1 name, $2 owner, $3 epoch.
macro_rules! fenced {
    ($lock:literal, $rest:literal) => {
        concat!(
            "WITH fence AS (SELECT 1 FROM outbox_lease WHERE name = $1 AND owner = $2 AND epoch = $3 ",
            $lock,
            "), ",
            $rest
        )
    };
}

/// Pending rows with `id > after`, oldest first.
pub async fn fetch_after(
    pool: &sqlx::PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    count_query();
    fetch_rows_after(pool, after, limit).await
}

async fn fetch_rows_after(
    pool: &sqlx::PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(select_rows!(
        "WHERE published_at IS NULL AND id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The statement of [`fetch_after_and_in_ranges`]: `$1` the cursor, `$2`/`$3` the gaps'
/// bounds, `$4` the limit. Each gap is read by its own index range scan (`LATERAL`): with
/// a plain join PostgreSQL walked the pending index from its lowest id, filtering by the
/// ranges — the whole backlog, and with vacuum held back every dead entry too, on every
/// read while a gap was open.
#[doc(hidden)]
pub const FETCH_AFTER_AND_IN_RANGES: &str = concat!(
    "SELECT * FROM ( \
       (SELECT o.* FROM UNNEST($2::int8[], $3::int8[]) AS r(lo, hi) CROSS JOIN LATERAL (",
    select_rows!("WHERE id BETWEEN r.lo AND r.hi AND published_at IS NULL ORDER BY id LIMIT $4"),
    ") AS o ORDER BY o.id LIMIT $4) \
     UNION ALL (",
    select_rows!("WHERE published_at IS NULL AND id > $1 ORDER BY id LIMIT $4"),
    ") ) AS pending ORDER BY id LIMIT $4"
);

/// The `limit` oldest pending rows that either have `id > after` or fall in one of the
/// inclusive ranges `[lo, hi]` (all below `after`), in one statement — one snapshot — so
/// that the rows of a transaction that committed late are read in id order, those below
/// the cursor never after those above it.
pub async fn fetch_after_and_in_ranges(
    pool: &sqlx::PgPool,
    after: i64,
    ranges: &[(i64, i64)],
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    count_query();
    if ranges.is_empty() {
        return fetch_rows_after(pool, after, limit).await;
    }
    let (lo, hi): (Vec<i64>, Vec<i64>) = ranges.iter().copied().unzip();
    sqlx::query_as(FETCH_AFTER_AND_IN_RANGES)
        .bind(after)
        .bind(&lo)
        .bind(&hi)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Pending rows by id, oldest first.
pub async fn fetch_ids(pool: &sqlx::PgPool, ids: &[i64]) -> Result<Vec<OutboxRow>, sqlx::Error> {
    count_query();
    sqlx::query_as(select_rows!(
        "WHERE published_at IS NULL AND id = ANY($1) ORDER BY id"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Ids of all pending rows with `id <= upto`, except those of the `skip` aggregates.
pub async fn pending_ids_upto(
    pool: &sqlx::PgPool,
    upto: i64,
    skip: &[String],
) -> Result<Vec<i64>, sqlx::Error> {
    count_query();
    sqlx::query_scalar(
        "SELECT id FROM outbox WHERE published_at IS NULL AND id <= $1 \
         AND NOT (aggregate_id = ANY($2)) ORDER BY id",
    )
    .bind(upto)
    .bind(skip)
    .fetch_all(pool)
    .await
}

/// The current snapshot's `xmin` and `xmax`: every transaction below `xmin` has ended,
/// every transaction at or above `xmax` had not started.
pub async fn snapshot_bounds(pool: &sqlx::PgPool) -> Result<(i64, i64), sqlx::Error> {
    count_query();
    sqlx::query_as(
        "SELECT pg_snapshot_xmin(s)::text::int8, pg_snapshot_xmax(s)::text::int8 \
         FROM pg_current_snapshot() AS s",
    )
    .fetch_one(pool)
    .await
}

fn check_fence(fence: &Fence, held: bool) -> Result<(), StoreError> {
    if held {
        Ok(())
    } else {
        Err(StoreError::Fenced(fence.name.clone()))
    }
}

/// Marks rows the broker acknowledged: deletes them, or sets `published_at`.
/// Returns how many rows changed (rows already gone are not an error).
pub async fn mark_published(
    pool: &sqlx::PgPool,
    fence: &Fence,
    ids: &[i64],
    mode: OnPublish,
) -> Result<u64, StoreError> {
    count_query();
    let sql = match mode {
        OnPublish::Delete => fenced!(
            "",
            "done AS (DELETE FROM outbox WHERE id = ANY($4) AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM done)"
        ),
        OnPublish::Mark => fenced!(
            "",
            "done AS (UPDATE outbox SET published_at = now() \
                      WHERE id = ANY($4) AND published_at IS NULL AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM done)"
        ),
    };
    let (held, n): (bool, i64) = sqlx::query_as(sql)
        .bind(&fence.name)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(ids)
        .fetch_one(pool)
        .await?;
    check_fence(fence, held)?;
    Ok(n as u64)
}

/// Records a transient failure: attempts so far, when the next attempt is due, the error.
pub async fn record_failure(
    pool: &sqlx::PgPool,
    fence: &Fence,
    id: i64,
    attempts: i32,
    retry_in_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    count_query();
    let (held, _n): (bool, i64) = sqlx::query_as(fenced!(
        "FOR SHARE",
        "done AS (UPDATE outbox SET attempts = $5, first_failed_at = coalesce(first_failed_at, now()), \
                  next_attempt_at = now() + $6 * interval '1 millisecond', last_error = $7 \
                  WHERE id = $4 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM done)"
    ))
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .bind(id)
    .bind(attempts)
    .bind(retry_in_ms)
    .bind(error)
    .fetch_one(pool)
    .await?;
    check_fence(fence, held)
}

/// Moves a row to `outbox_dead_letter` with the reason, in one statement. A row that was
/// dead-lettered before, replayed and failed again reopens its dead letter (its id is
/// taken). Returns false when the row was no longer pending (already published or
/// dead-lettered).
pub async fn dead_letter(
    pool: &sqlx::PgPool,
    fence: &Fence,
    id: i64,
    attempts: i32,
    reason: &str,
    error_class: &str,
) -> Result<bool, StoreError> {
    count_query();
    let (held, n): (bool, i64) = sqlx::query_as(fenced!(
        "FOR SHARE",
        "moved AS (DELETE FROM outbox WHERE id = $4 AND published_at IS NULL \
                   AND EXISTS (SELECT 1 FROM fence) RETURNING *), \
         ins AS (INSERT INTO outbox_dead_letter \
                   (id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, \
                    headers, event_id, created_at, reason, error_class, attempts, \
                    first_failed_at, last_failed_at) \
                 SELECT id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, \
                        headers, event_id, created_at, $6, $7, $5, \
                        coalesce(first_failed_at, now()), now() FROM moved \
                 ON CONFLICT (id) DO UPDATE SET reason = EXCLUDED.reason, \
                    error_class = EXCLUDED.error_class, attempts = EXCLUDED.attempts, \
                    first_failed_at = EXCLUDED.first_failed_at, \
                    last_failed_at = EXCLUDED.last_failed_at, dead_lettered_at = now(), \
                    resolved_at = NULL, resolution = NULL \
                 RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM ins)"
    ))
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .bind(id)
    .bind(attempts)
    .bind(reason)
    .bind(error_class)
    .fetch_one(pool)
    .await?;
    check_fence(fence, held)?;
    Ok(n > 0)
}

/// Takes, on `conn`, the session-level advisory lock on an instance name. Only one session
/// can hold it, and it goes with the session: when the process exits or is killed its
/// connection closes and PostgreSQL releases the lock. A process that gets it knows that
/// no other process *holds the name's lock* — not that none is alive: the holder's lock
/// session can die while the holder lives (a PostgreSQL restart, `idle_session_timeout`,
/// `pg_terminate_backend`, a NAT dropping an idle connection). So the lock only lets a
/// process reclaim its name's lease early when the lease also stopped being renewed (see
/// [`acquire_lease`]).
///
/// `Err(LockCheck::NotSession)` when the lock, just taken, is not held by the session that
/// asks next: statements of one connection reach different server sessions, as behind a
/// pooler in transaction mode, where neither the lock nor the relay's guarantees hold.
pub async fn lock_instance(conn: &mut sqlx::PgConnection, owner: &str) -> Result<bool, LockCheck> {
    count_query();
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtext('outboxd.instance'), hashtext($1))",
    )
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    if !locked {
        return Ok(false);
    }
    // A second statement, which a transaction-mode pooler may hand to another session.
    let visible: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
           AND pid = pg_backend_pid() AND granted AND objsubid = 2 \
           AND classid = hashtext('outboxd.instance')::oid AND objid = hashtext($1)::oid)",
    )
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    if !visible {
        return Err(LockCheck::NotSession);
    }
    // For operators (and tests) looking at pg_stat_activity.
    sqlx::query("SET application_name = 'outboxd instance lock'")
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Aggregates with an open (not replayed, not discarded) dead letter.
pub async fn held_aggregates(pool: &sqlx::PgPool) -> Result<Vec<String>, sqlx::Error> {
    count_query();
    sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM outbox_dead_letter WHERE resolved_at IS NULL",
    )
    .fetch_all(pool)
    .await
}

/// Takes the lease if it is free or expired — or, with `reclaim` (this process holds
/// its name's lock, see [`lock_instance`]), held under this owner name but not renewed for
/// `grace_ms`: its holder, an earlier incarnation of this process or another process
/// given the same name, is dead or cut off from the database, and by then has stopped
/// publishing (it publishes only within a shorter window after each renewal). Returns the
/// new epoch. The epoch goes up on every take, so the writes of any earlier holder, an
/// earlier incarnation included, are fenced.
pub async fn acquire_lease(
    pool: &sqlx::PgPool,
    name: &str,
    owner: &str,
    ttl_ms: i64,
    reclaim: bool,
    grace_ms: i64,
) -> Result<Option<i64>, sqlx::Error> {
    count_query();
    sqlx::query_scalar(
        "INSERT INTO outbox_lease AS l (name, owner, epoch, expires_at) \
         VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond') \
         ON CONFLICT (name) DO UPDATE \
            SET owner = EXCLUDED.owner, epoch = l.epoch + 1, acquired_at = now(), \
                renewed_at = now(), expires_at = EXCLUDED.expires_at \
            WHERE l.expires_at < now() \
               OR (l.owner = EXCLUDED.owner AND $4 \
                   AND l.renewed_at < now() - $5 * interval '1 millisecond') \
         RETURNING epoch",
    )
    .bind(name)
    .bind(owner)
    .bind(ttl_ms)
    .bind(reclaim)
    .bind(grace_ms)
    .fetch_optional(pool)
    .await
}

/// Extends our lease (on a connection of the pool, or on the instance-lock connection,
/// which no busy pool can delay); false when it is no longer ours.
pub async fn renew_lease<'c>(
    db: impl sqlx::PgExecutor<'c>,
    fence: &Fence,
    ttl_ms: i64,
) -> Result<bool, sqlx::Error> {
    count_query();
    let row: Option<i32> = sqlx::query_scalar(
        "UPDATE outbox_lease SET renewed_at = now(), expires_at = now() + $4 * interval '1 millisecond' \
         WHERE name = $1 AND owner = $2 AND epoch = $3 RETURNING 1",
    )
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .bind(ttl_ms)
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// Gives the lease up at once, so another instance need not wait for it to expire.
pub async fn release_lease(pool: &sqlx::PgPool, fence: &Fence) -> Result<(), sqlx::Error> {
    count_query();
    sqlx::query(
        "UPDATE outbox_lease SET expires_at = now() - interval '1 millisecond' \
         WHERE name = $1 AND owner = $2 AND epoch = $3",
    )
    .bind(&fence.name)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes up to `limit` rows published more than `retention_secs` ago (mark mode).
pub async fn delete_published(
    pool: &sqlx::PgPool,
    fence: &Fence,
    retention_secs: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    fenced_cleanup(
        pool,
        fence,
        fenced!(
            "",
            "done AS (DELETE FROM outbox WHERE id IN ( \
                        SELECT id FROM outbox \
                        WHERE published_at < now() - $4 * interval '1 second' LIMIT $5) \
                      AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM done)"
        ),
        retention_secs,
        limit,
    )
    .await
}

/// Runs one of the cleanup deletes (`$4` the retention in seconds, `$5` the limit),
/// fenced; returns how many rows it deleted.
async fn fenced_cleanup(
    pool: &sqlx::PgPool,
    fence: &Fence,
    sql: &'static str,
    retention_secs: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    count_query();
    let (held, n): (bool, i64) = sqlx::query_as(sql)
        .bind(&fence.name)
        .bind(&fence.owner)
        .bind(fence.epoch)
        .bind(retention_secs)
        .bind(limit)
        .fetch_one(pool)
        .await?;
    check_fence(fence, held)?;
    Ok(n as u64)
}

/// Pending rows, counted up to `cap`, and open dead letters: what the backlog gauges show.
/// Both walk partial indexes (`outbox_pending_idx`, `outbox_dead_letter_open_idx`).
pub async fn backlog(pool: &sqlx::PgPool, cap: i64) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT $1) p), \
                (SELECT count(*) FROM outbox_dead_letter WHERE resolved_at IS NULL)",
    )
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// Deletes up to `limit` dead letters resolved more than `retention_secs` ago.
pub async fn delete_resolved_dead_letters(
    pool: &sqlx::PgPool,
    fence: &Fence,
    retention_secs: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    fenced_cleanup(
        pool,
        fence,
        fenced!(
            "",
            "done AS (DELETE FROM outbox_dead_letter WHERE id IN ( \
                        SELECT id FROM outbox_dead_letter \
                        WHERE resolved_at < now() - $4 * interval '1 second' LIMIT $5) \
                      AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM done)"
        ),
        retention_secs,
        limit,
    )
    .await
}
