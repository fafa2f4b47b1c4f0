//! A database to drain: a fresh, migrated database beside the configured one, and a backlog
//! of pending rows as the benchmark and the profiling scripts write them — 500-byte JSON
//! payloads over 10,000 aggregates (`agg-0` … `agg-9999`), each aggregate's `seq` counting
//! from 1, written server-side in statements of 100,000 rows.

/// Aggregates a backlog's rows are spread over.
pub const AGGREGATES: u64 = 10_000;

/// Replaces the database name in a database URL.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut u = url::Url::parse(url)?;
    u.set_path(&format!("/{database}"));
    Ok(u.to_string())
}

/// Drops and creates `database` on the server of `admin_url` (PostgreSQL, or MariaDB /
/// MySQL by the URL's scheme), and migrates it; returns its URL.
pub async fn fresh_database(admin_url: &str, database: &str) -> anyhow::Result<String> {
    if outboxd::db::Backend::of(admin_url) == Some(outboxd::db::Backend::MySql) {
        return fresh_mysql_database(admin_url, database).await;
    }
    let admin = sqlx::PgPool::connect(admin_url).await?;
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    let url = with_database(admin_url, database)?;
    let pool = sqlx::PgPool::connect(&url).await?;
    outboxd::MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(url)
}

/// A pool on MariaDB / MySQL, connected now as the relay connects (the URL's TLS settings,
/// sessions in UTC, matched rows reported, an older server refused): `outboxd::db`'s
/// own connect, with the other `[database]` keys at their defaults.
pub async fn connect_mysql(url: &str, max: u32) -> anyhow::Result<sqlx::MySqlPool> {
    let cfg = outboxd::config::DatabaseConfig {
        url: url.into(),
        ..Default::default()
    };
    outboxd::db::connect_mysql(&cfg, max).await
}

/// [`fresh_database`] on MariaDB / MySQL.
async fn fresh_mysql_database(admin_url: &str, database: &str) -> anyhow::Result<String> {
    let admin = connect_mysql(admin_url, 1).await?;
    let quoted = format!("`{}`", database.replace('`', "``"));
    for sql in [
        format!("DROP DATABASE IF EXISTS {quoted}"),
        format!("CREATE DATABASE {quoted}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    let url = with_database(admin_url, database)?;
    let pool = connect_mysql(&url, 1).await?;
    outboxd::MYSQL_MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(url)
}

/// Rows `first ..= first + count - 1` of the backlog for `topic`, in one statement (one
/// transaction); returns when they are committed.
pub async fn insert_rows(
    pool: &sqlx::PgPool,
    first: u64,
    count: u64,
    topic: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         SELECT 'bench', 'agg-' || (s % 10000), 'bench.event', $3, \
                jsonb_build_object('seq', s / 10000 + 1, 'pad', repeat('x', 468)) \
         FROM generate_series($1::int8, $2::int8) AS s",
    )
    .bind(first as i64)
    .bind((first + count).saturating_sub(1) as i64)
    .bind(topic)
    .execute(pool)
    .await?;
    Ok(())
}

/// `rows` pending rows for `topic` (`progress` hears how many are written so far), then
/// `VACUUM (ANALYZE)`, so that the relay starts on a table as a long-running one is.
pub async fn prefill(
    pool: &sqlx::PgPool,
    rows: u64,
    topic: &str,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<()> {
    let mut done = 0;
    while done < rows {
        let m = 100_000.min(rows - done);
        insert_rows(pool, done, m, topic).await?;
        done += m;
        progress(done);
    }
    sqlx::query("VACUUM (ANALYZE) outbox").execute(pool).await?;
    Ok(())
}

/// [`prefill`] on MariaDB: the same rows, written server-side from MariaDB's SEQUENCE
/// engine (`seq_<first>_to_<last>`, which needs the database selected, as the pool's URL
/// does), then `ANALYZE TABLE`.
pub async fn prefill_mysql(
    pool: &sqlx::MySqlPool,
    rows: u64,
    topic: &str,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<()> {
    let mut done = 0;
    while done < rows {
        let m = 100_000.min(rows - done);
        // The table name carries the range: numbers only, formatted here.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
             SELECT 'bench', CONCAT('agg-', seq % 10000), 'bench.event', ?, \
                    JSON_OBJECT('seq', seq DIV 10000 + 1, 'pad', REPEAT('x', 468)) \
             FROM seq_{}_to_{}",
            done,
            done + m - 1
        )))
        .bind(topic)
        .execute(pool)
        .await?;
        done += m;
        progress(done);
    }
    sqlx::query("ANALYZE TABLE outbox").execute(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5433/postgres?sslmode=require", "x").unwrap(),
            "postgres://u:p@h:5433/x?sslmode=require"
        );
    }
}
