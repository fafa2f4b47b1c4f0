//! The PostgreSQL store: [`Store`] on two pools — one for reads and the relay's
//! bookkeeping, one with `synchronous_commit = off` for marking rows published (a mark lost
//! in a crash only means the row is sent again) — the late-committer reader
//! (`reader.rs`), NOTIFY wake-ups (`listen.rs`) and session advisory locks for instance
//! names. The SQL itself is in [`sql`].

mod listen;
pub mod primary;
mod reader;
pub mod sql;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::PgConnectOptions;

use crate::config::{Config, OnPublish};
use crate::db;
use crate::store::gaps::GapReader;
use crate::store::{
    Fence, InstanceLock, LeaseClaim, LockCheck, OutboxRow, PendingReader, RowWakeups, Store,
    StoreError, WakeFn,
};
use primary::Primary;

pub use sql::FETCH_AFTER_AND_IN_RANGES;

/// The relay's database on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
    ack_pool: sqlx::PgPool,
    gap_grace: Duration,
    primary: Arc<Primary>,
}

/// The marking pool's sessions: a mark lost in a crash only means the row is sent again.
fn synchronous_commit_off(opts: PgConnectOptions) -> PgConnectOptions {
    opts.options([("synchronous_commit", "off")])
}

impl PgStore {
    /// Pools that connect lazily: the relay starts (and says so) while the database is
    /// down, and every operation reports and retries the outage.
    ///
    /// With several hosts in the URL they follow the primary among them ([`primary`]).
    pub fn connect_lazy(config: &Config) -> anyhow::Result<Self> {
        let db = &config.database;
        let timeout = Duration::from_millis(db.connect_timeout_ms);
        let primary = Primary::new(db::pg_host_options(db)?, timeout);
        let pool = primary
            .pool_options(db.max_connections, timeout)
            .connect_lazy_with(primary.options(|o| o));
        primary.follow(pool.clone(), |o| o);
        let ack_pool = primary
            .pool_options(2, timeout)
            .connect_lazy_with(primary.options(synchronous_commit_off));
        primary.follow(ack_pool.clone(), synchronous_commit_off);
        Ok(Self {
            pool,
            ack_pool,
            gap_grace: Duration::from_millis(config.poller.gap_grace_ms),
            primary,
        })
    }

    /// A store on these pools, connected to one host; `gap_grace` is
    /// `poller.gap_grace_ms`.
    pub fn new(pool: sqlx::PgPool, ack_pool: sqlx::PgPool, gap_grace: Duration) -> Self {
        let host = (*pool.connect_options()).clone();
        let name = format!("{}:{}", host.get_host(), host.get_port());
        Self {
            pool,
            ack_pool,
            gap_grace,
            primary: Primary::new(vec![(name, host)], Duration::from_secs(5)),
        }
    }

    /// The host the store uses now (`host:port`): the primary among the URL's hosts.
    pub fn current_host(&self) -> &str {
        self.primary.current()
    }

    /// Runs `op`; a failure that may mean the primary is gone starts a search for it.
    async fn seen<T, E: AsDbError>(&self, op: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let r = op.await;
        if let Err(e) = &r
            && let Some(e) = e.db_error()
        {
            self.primary.saw(e);
        }
        r
    }

    /// The pool for reads and bookkeeping.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }
}

/// The database error inside a store failure, if any.
trait AsDbError {
    fn db_error(&self) -> Option<&sqlx::Error>;
}

impl AsDbError for sqlx::Error {
    fn db_error(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

impl AsDbError for StoreError {
    fn db_error(&self) -> Option<&sqlx::Error> {
        match self {
            StoreError::Db(e) => Some(e),
            StoreError::Fenced(_) => None,
        }
    }
}

impl AsDbError for LockCheck {
    fn db_error(&self) -> Option<&sqlx::Error> {
        match self {
            LockCheck::Db(e) => Some(e),
            _ => None,
        }
    }
}

/// A session holding an instance name's advisory lock (on the primary it was taken on:
/// advisory locks are not replicated, so after a failover it is taken again there).
struct PgInstanceLock(sqlx::PgConnection, Arc<Primary>);

impl InstanceLock for PgInstanceLock {
    fn alive(&mut self, patience: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let ping = sqlx::query("SELECT 1").execute(&mut self.0);
            match tokio::time::timeout(patience, ping).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    self.1.saw(&e);
                    false
                }
                Err(_) => false,
            }
        })
    }

    fn renew_lease<'a>(
        &'a mut self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let r = sql::renew_lease(&mut self.0, fence, ttl.as_millis() as i64).await;
            if let Err(e) = &r {
                self.1.saw(e);
            }
            r
        })
    }
}

impl Store for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn reader(&self) -> Box<dyn PendingReader> {
        Box::new(GapReader::new(
            reader::PgGaps(self.pool.clone(), self.primary.clone()),
            self.gap_grace,
        ))
    }

    fn fetch_ids<'a>(
        &'a self,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<Vec<OutboxRow>, StoreError>> {
        Box::pin(self.seen(async move { Ok(sql::fetch_ids(&self.pool, ids).await?) }))
    }

    fn pending_ids_upto<'a>(
        &'a self,
        upto: i64,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(self.seen(async move { Ok(sql::pending_ids_upto(&self.pool, upto, skip).await?) }))
    }

    fn held_aggregates(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.seen(async move { Ok(sql::held_aggregates(&self.pool).await?) }))
    }

    fn mark_published<'a>(
        &'a self,
        fence: &'a Fence,
        ids: &'a [i64],
        mode: OnPublish,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.seen(sql::mark_published(&self.ack_pool, fence, ids, mode)))
    }

    fn record_failure<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        retry_in: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.seen(sql::record_failure(
            &self.pool,
            fence,
            id,
            attempts,
            retry_in.as_millis() as i64,
            error,
        )))
    }

    fn dead_letter<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        reason: &'a str,
        error_class: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.seen(sql::dead_letter(
            &self.pool,
            fence,
            id,
            attempts,
            reason,
            error_class,
        )))
    }

    fn acquire_lease<'a>(
        &'a self,
        claim: &'a LeaseClaim<'a>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(self.seen(async move {
            Ok(sql::acquire_lease(
                &self.pool,
                claim.name,
                claim.owner,
                claim.ttl.as_millis() as i64,
                claim.reclaim,
                claim.grace.as_millis() as i64,
            )
            .await?)
        }))
    }

    fn renew_lease<'a>(
        &'a self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(self.seen(sql::renew_lease(&self.pool, fence, ttl.as_millis() as i64)))
    }

    fn release_lease<'a>(&'a self, fence: &'a Fence) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(self.seen(sql::release_lease(&self.pool, fence)))
    }

    fn lock_instance<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn InstanceLock>>, LockCheck>> {
        Box::pin(self.seen(async move {
            let mut conn = self.pool.acquire().await?.detach();
            Ok(if sql::lock_instance(&mut conn, owner).await? {
                Some(Box::new(PgInstanceLock(conn, self.primary.clone())) as Box<dyn InstanceLock>)
            } else {
                None
            })
        }))
    }

    fn backlog(&self, cap: i64) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(self.seen(async move { Ok(sql::backlog(&self.pool, cap).await?) }))
    }

    fn delete_published<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.seen(sql::delete_published(
            &self.pool,
            fence,
            retention.as_secs() as i64,
            limit,
        )))
    }

    fn delete_resolved_dead_letters<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.seen(sql::delete_resolved_dead_letters(
            &self.pool,
            fence,
            retention.as_secs() as i64,
            limit,
        )))
    }

    fn watch(&self, wake: WakeFn, wanted: RowWakeups) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(listen::listen(
            self.pool.clone(),
            self.primary.clone(),
            wake,
            wanted,
        )))
    }

    fn report_to(&self, health: Arc<crate::health::Health>) {
        self.primary.report_to(health);
    }
}
