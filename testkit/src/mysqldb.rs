//! The real MariaDB for tests: a fresh, migrated database per test, dropped when it ends.
//! The server is `OUTBOXD_TEST_MYSQL_URL` (default: the local MariaDB as the test user
//! `scripts/setup.sh` creates, after starting the server if it is down). Like `db.rs`, included by path by the product
//! crate's own tests.

use std::time::Duration;

/// The server the tests create their databases on (a URL without a database, or with one
/// that is ignored).
pub fn mysql_admin_url() -> String {
    std::env::var("OUTBOXD_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mariadb://outboxd_test:outboxd_test@127.0.0.1:3306".into())
}

/// The server's URL with another database.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let server = rest.split(['/', '?']).next().expect("host");
    format!("{scheme}://{server}/{name}")
}

/// A pool as the relay connects (sessions in UTC, matched rows reported).
pub async fn mysql_pool(url: &str, max: u32) -> sqlx::MySqlPool {
    let cfg = outboxd::config::DatabaseConfig {
        url: url.into(),
        ..Default::default()
    };
    let opts = outboxd::db::mysql_connect_options(&cfg).expect("a MariaDB URL");
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .expect("connect to MariaDB (scripts/setup.sh starts it)")
}

/// A migrated MariaDB database of its own, dropped when the test ends.
pub struct MySqlTestDb {
    /// Its name.
    pub name: String,
    /// Its URL (`mariadb://…`).
    pub url: String,
    /// A pool on it, connected as the relay connects.
    pub pool: sqlx::MySqlPool,
}

impl MySqlTestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> MySqlTestDb {
        Self::create(true).await
    }

    /// Creates a fresh, empty database (no migrations).
    pub async fn empty() -> MySqlTestDb {
        Self::create(false).await
    }

    async fn create(migrate: bool) -> MySqlTestDb {
        let name = format!(
            "outboxd_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = mysql_pool(&mysql_admin_url(), 1).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let url = with_database(&mysql_admin_url(), &name);
        let pool = mysql_pool(&url, 8).await;
        if migrate {
            outboxd::MYSQL_MIGRATOR.run(&pool).await.expect("migrate");
        }
        MySqlTestDb { name, url, pool }
    }

    /// Rows left in the outbox.
    pub async fn pending(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for MySqlTestDb {
    fn drop(&mut self) {
        // On a thread of its own: Drop may run inside the test's runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = mysql_pool(&mysql_admin_url(), 1).await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{name}`"
                )))
                .execute(&admin)
                .await;
            });
        })
        .join();
    }
}

/// A fresh, migrated MariaDB database named `name` (dropped first if it exists) on the
/// test server; returns its URL. For the fault harness and the benchmark, which drop it
/// themselves ([`drop_mysql_database`]).
pub async fn fresh_mysql_database(name: &str) -> String {
    let admin = mysql_pool(&mysql_admin_url(), 1).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS `{name}`"),
        format!("CREATE DATABASE `{name}`"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("create database");
    }
    admin.close().await;
    let url = with_database(&mysql_admin_url(), name);
    let pool = mysql_pool(&url, 1).await;
    outboxd::MYSQL_MIGRATOR.run(&pool).await.expect("migrate");
    pool.close().await;
    url
}

/// Drops a database made by [`fresh_mysql_database`].
pub async fn drop_mysql_database(name: &str) {
    let admin = mysql_pool(&mysql_admin_url(), 1).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(&admin)
    .await;
    admin.close().await;
}
