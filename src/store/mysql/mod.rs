//! The MariaDB / MySQL store: [`Store`] on InnoDB, for MariaDB >= 10.6 and MySQL >= 8.0
//! (`database.url = "mariadb://…"` or `"mysql://…"`). Two pools — one for reads and the
//! relay's bookkeeping, a small one for marking rows published, so that acknowledgements
//! never queue behind reads — the late-committer reader (`reader.rs`, which explains why
//! it cannot skip a row), the polling watcher that stands in for NOTIFY (`watch.rs`) and
//! `GET_LOCK` for instance names. The SQL itself is in [`sql`].

mod reader;
pub mod sql;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::config::{Config, OnPublish};
use crate::db;
use crate::store::gaps::GapReader;
use crate::store::{
    Fence, InstanceLock, LeaseClaim, LockCheck, OutboxRow, PendingReader, RowWakeups, Store,
    StoreError, WakeFn,
};

/// The relay's database on MariaDB / MySQL.
#[derive(Clone)]
pub struct MySqlStore {
    pool: sqlx::MySqlPool,
    ack_pool: sqlx::MySqlPool,
    gap_grace: Duration,
    watch_every: Duration,
    /// The server's version, checked once it is reachable (an older server is refused).
    version_ok: Arc<OnceCell<()>>,
}

impl MySqlStore {
    /// Pools that connect lazily: the relay starts (and says so) while the database is
    /// down, and every operation reports and retries the outage.
    pub fn connect_lazy(config: &Config) -> anyhow::Result<Self> {
        let db = &config.database;
        Ok(Self::new(
            db::lazy_mysql_pool(db, db.max_connections)?,
            db::lazy_mysql_pool(db, 2)?,
            Duration::from_millis(config.poller.gap_grace_ms),
            Duration::from_millis(config.poller.watch_ms),
        ))
    }

    /// A store on these pools (whose connections must report matched rows:
    /// [`db::mysql_connect_options`]); `gap_grace` is `poller.gap_grace_ms`, `watch_every`
    /// `poller.watch_ms`.
    pub fn new(
        pool: sqlx::MySqlPool,
        ack_pool: sqlx::MySqlPool,
        gap_grace: Duration,
        watch_every: Duration,
    ) -> Self {
        Self {
            pool,
            ack_pool,
            gap_grace: gap_grace.max(reader::MIN_GRACE),
            watch_every,
            version_ok: Arc::new(OnceCell::new()),
        }
    }

    /// The pool for reads and bookkeeping.
    pub fn pool(&self) -> &sqlx::MySqlPool {
        &self.pool
    }

    /// Refuses a server older than MariaDB 10.6 / MySQL 8.0, once it answers.
    async fn check_version(&self) -> Result<(), sqlx::Error> {
        self.version_ok
            .get_or_try_init(|| async {
                let version = db::mysql_version(&self.pool).await?;
                db::check_mysql_version(&version)
                    .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))
            })
            .await
            .map(drop)
    }
}

/// A session holding an instance name's `GET_LOCK` lock.
struct MySqlInstanceLock(sqlx::MySqlConnection);

impl InstanceLock for MySqlInstanceLock {
    fn alive(&mut self, patience: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let ping = sqlx::query("SELECT 1").execute(&mut self.0);
            matches!(tokio::time::timeout(patience, ping).await, Ok(Ok(_)))
        })
    }

    fn renew_lease<'a>(
        &'a mut self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(sql::renew_lease(&mut self.0, fence, ttl.as_millis() as i64))
    }
}

impl Store for MySqlStore {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn reader(&self) -> Box<dyn PendingReader> {
        Box::new(GapReader::new(
            reader::TrxGaps(self.pool.clone()),
            self.gap_grace,
        ))
    }

    fn fetch_ids<'a>(
        &'a self,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<Vec<OutboxRow>, StoreError>> {
        Box::pin(async move { Ok(sql::fetch_ids(&self.pool, ids).await?) })
    }

    fn pending_ids_upto<'a>(
        &'a self,
        upto: i64,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(async move { Ok(sql::pending_ids_upto(&self.pool, upto, skip).await?) })
    }

    fn held_aggregates(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move { Ok(sql::held_aggregates(&self.pool).await?) })
    }

    fn mark_published<'a>(
        &'a self,
        fence: &'a Fence,
        ids: &'a [i64],
        mode: OnPublish,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(sql::mark_published(&self.ack_pool, fence, ids, mode))
    }

    fn record_failure<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        retry_in: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(sql::record_failure(
            &self.pool,
            fence,
            id,
            attempts,
            retry_in.as_millis() as i64,
            error,
        ))
    }

    fn dead_letter<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        reason: &'a str,
        error_class: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(sql::dead_letter(
            &self.pool,
            fence,
            id,
            attempts,
            reason,
            error_class,
        ))
    }

    fn acquire_lease<'a>(
        &'a self,
        claim: &'a LeaseClaim<'a>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            self.check_version().await?;
            Ok(sql::acquire_lease(
                &self.pool,
                claim.name,
                claim.owner,
                claim.ttl.as_millis() as i64,
                claim.reclaim,
                claim.grace.as_millis() as i64,
            )
            .await?)
        })
    }

    fn renew_lease<'a>(
        &'a self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(sql::renew_lease(&self.pool, fence, ttl.as_millis() as i64))
    }

    fn release_lease<'a>(&'a self, fence: &'a Fence) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(sql::release_lease(&self.pool, fence))
    }

    fn lock_instance<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn InstanceLock>>, LockCheck>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?.detach();
            Ok(if sql::lock_instance(&mut conn, owner).await? {
                Some(Box::new(MySqlInstanceLock(conn)) as Box<dyn InstanceLock>)
            } else {
                None
            })
        })
    }

    fn backlog(&self, cap: i64) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(async move { Ok(sql::backlog(&self.pool, cap).await?) })
    }

    fn delete_published<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(sql::delete_published(
            &self.pool,
            fence,
            retention.as_secs() as i64,
            limit,
        ))
    }

    fn delete_resolved_dead_letters<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(sql::delete_resolved_dead_letters(
            &self.pool,
            fence,
            retention.as_secs() as i64,
            limit,
        ))
    }

    fn watch(&self, wake: WakeFn, wanted: RowWakeups) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(watch::watch(
            self.pool.clone(),
            self.watch_every,
            wake,
            wanted,
        )))
    }
}
