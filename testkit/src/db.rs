//! The real PostgreSQL for tests: a fresh, migrated database per test (dropped when it
//! ends), unique topic names, waiting for a condition, the TLS test cluster's files.
//!
//! The product crate's own tests (`tests/common`) use this file too (by path), so that
//! both crates create their databases one way.

use std::process::Command;
use std::time::{Duration, Instant};

/// The server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A migrated database of its own, dropped when the test ends.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// A pool on it.
    pub pool: sqlx::PgPool,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> TestDb {
        Self::create(true).await
    }

    /// Creates a fresh, empty database (no migrations).
    pub async fn empty() -> TestDb {
        Self::create(false).await
    }

    async fn create(migrate: bool) -> TestDb {
        let name = format!(
            "outboxd_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = sqlx::PgPool::connect(&admin_url()).await.expect("admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let admin_url = admin_url();
        let (server, _) = admin_url.rsplit_once('/').expect("a URL with a database");
        let url = format!("{server}/{name}");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect test database");
        if migrate {
            outboxd::MIGRATOR.run(&pool).await.expect("migrate");
        }
        TestDb { name, url, pool }
    }

    /// Rows left in the outbox.
    pub async fn pending(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Rows in the dead-letter table.
    pub async fn dead_letters(&self) -> Vec<(i64, String, String, String)> {
        sqlx::query_as(
            "SELECT id, aggregate_id, error_class, reason FROM outbox_dead_letter ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(admin_url())
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// A topic name no other test uses.
pub fn topic(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file of the test PKI that `scripts/pg-tls-cluster.sh` (run by `scripts/setup.sh`)
/// makes: `ca.crt`, `other-ca.crt`, `server.crt`/`.key`, `client.crt`/`.key`, `port`.
pub fn pki(name: &str) -> String {
    let dir: std::path::PathBuf = std::env::var("OUTBOXD_TEST_PG_TLS_DIR")
        .unwrap_or_else(|_| "/var/lib/outboxd-tests/pg-tls".into())
        .into();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (it makes the TLS test cluster)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}
