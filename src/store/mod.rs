//! The store port: what the relay needs from its database, as one trait ([`Store`]), and
//! the rows, fences and failures that cross it. The actors know their database only
//! through this trait; [`postgres`] implements it with SQL and [`memory`] in memory (for
//! the pipeline's own tests, which then need no database).
//!
//! What every implementation promises:
//! - **Reading** ([`PendingReader`]): every committed pending row is returned, once per
//!   reader unless the rescan asks again, and never after a higher id of its aggregate —
//!   also when the transaction that wrote it committed after rows with higher ids were
//!   read (a *late committer*). How is the store's own business: PostgreSQL tracks id gaps
//!   until its snapshot horizon passes them.
//! - **Fencing**: every write names the lease ([`Fence`]) and changes nothing unless the
//!   lease is still held under that epoch ([`StoreError::Fenced`]).
//! - **Leases**: taking a lease bumps its epoch; a name's instance lock ([`InstanceLock`])
//!   goes with its session, so a restarted process can reclaim its own lease early.
//! - **Wake-ups** ([`Store::watch`]): the poller is told when rows may have been written,
//!   where the database can say so (PostgreSQL's NOTIFY); otherwise it polls.

mod gaps;
pub mod memory;
pub mod mysql;
pub mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use uuid::Uuid;

use crate::config::OnPublish;

/// The lease every relay instance competes for. (Scale-out will add one per partition.)
pub const RELAY_LEASE: &str = "relay";

/// A pending outbox row as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Identity column: the order of the outbox.
    pub id: i64,
    /// e.g. `order`.
    pub aggregate_type: String,
    /// The ordering key and Kafka key.
    pub aggregate_id: String,
    /// e.g. `order.created`.
    pub event_type: String,
    /// Destination topic.
    pub topic: String,
    /// `payload` as JSON text (UTF-8 bytes, as the database sent them: Kafka takes bytes,
    /// so the relay does not validate them again).
    pub payload: Option<Vec<u8>>,
    /// `payload_bytes`.
    pub payload_bytes: Option<Vec<u8>>,
    /// `headers` as JSON text; empty when the row has none (`{}`), the usual case, which
    /// then costs no allocation.
    pub headers: String,
    /// Idempotency key.
    pub event_id: Uuid,
    /// Insert time (the writing transaction's start).
    pub created_at: DateTime<Utc>,
    /// Publish attempts that failed so far (stored; outage-wide failures are not counted).
    pub attempts: i32,
    /// Failed tries since this process loaded the row, counted or not (sets the back-off).
    pub tries: u32,
}

/// A row as it travels between actors and to the sink (read once, shared).
pub type Row = Arc<OutboxRow>;

/// The lease identity every write is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Lease name.
    pub name: String,
    /// This instance.
    pub owner: String,
    /// The epoch this instance acquired; bumped by every takeover.
    pub epoch: i64,
}

/// A store operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lease is no longer ours: another instance took over. Nothing was written.
    #[error("lease {0:?} is held by another instance now (fenced); nothing written")]
    Fenced(String),
    /// The database refused or is unreachable.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the outbox tables do not exist (`outboxd migrate` was not run).
    pub fn is_missing_schema(&self) -> bool {
        match self {
            StoreError::Db(e) => is_missing_schema(e),
            StoreError::Fenced(_) => false,
        }
    }
}

/// Whether a database error says a table does not exist: PostgreSQL's `42P01`, MySQL's
/// and MariaDB's `42S02`.
pub fn is_missing_schema(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42P01" || c == "42S02")
}

/// Why the instance lock could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum LockCheck {
    /// The database could not be asked.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The session that took the lock is not the one that asked next.
    #[error(
        "the instance lock taken by one statement was not held by the session of the next \
         statement on the same connection: a connection pooler in transaction mode \
         (PgBouncer pool_mode = transaction or statement, a proxy multiplexing MySQL \
         sessions) stands between the relay and the database. The relay needs session-level \
         connections: connect it to the database directly or through a pool in session mode"
    )]
    NotSession,
}

impl From<StoreError> for LockCheck {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => LockCheck::Db(e),
            // Taking or renewing a lease is not fenced; a store that says so anyway is
            // answered like a database refusing.
            StoreError::Fenced(name) => {
                LockCheck::Db(sqlx::Error::Protocol(format!("lease {name:?}: fenced")))
            }
        }
    }
}

/// What a try for the lease asks.
#[derive(Debug, Clone)]
pub struct LeaseClaim<'a> {
    /// The lease.
    pub name: &'a str,
    /// This instance.
    pub owner: &'a str,
    /// How long the lease lasts without renewal.
    pub ttl: Duration,
    /// This process holds its name's instance lock: it may take a lease held under its
    /// own name that went unrenewed for `grace` (its dead predecessor's).
    pub reclaim: bool,
    /// See `reclaim`.
    pub grace: Duration,
}

/// One read of pending rows.
#[derive(Debug)]
pub struct ReadBatch {
    /// The rows, oldest first among those above `cursor_before`; rows at or below it were
    /// committed late and are returned first, in id order.
    pub rows: Vec<OutboxRow>,
    /// The reader's cursor before this read: rows with a higher id are new, the others
    /// late.
    pub cursor_before: i64,
    /// The limit cut the read: more rows are waiting.
    pub full: bool,
    /// When the statement that returned the rows went out.
    pub started: Instant,
}

/// Reads pending rows for one poller incarnation: a cursor and whatever the store needs to
/// find late-committed rows below it.
pub trait PendingReader: Send {
    /// The next pending rows, at most `limit`: late-committed rows below the cursor and
    /// new rows above it, in one snapshot, so that an aggregate's rows come in id order.
    fn read(&mut self, limit: i64) -> BoxFuture<'_, Result<ReadBatch, StoreError>>;
    /// The highest id read so far (rows at or below it that were not returned are found
    /// by the reader's late-row tracking or by the rescan).
    fn cursor(&self) -> i64;
    /// The rescan found this pending row: the reader need not look for it any more.
    /// Returns whether the reader was still looking for it.
    fn found(&mut self, id: i64) -> bool;
}

/// The session-level lock on an instance name: held while its session lives.
pub trait InstanceLock: Send {
    /// Whether the session (and the lock) is still there; `patience` bounds the wait.
    fn alive(&mut self, patience: Duration) -> BoxFuture<'_, bool>;
    /// Extends the lease through this session, which no busy pool can delay.
    fn renew_lease<'a>(
        &'a mut self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
}

/// What the store's watcher tells the poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Rows may have been written (or notifications may have been missed).
    Rows,
    /// An operator replayed or discarded dead letters: read everything pending again.
    Rescan,
}

/// Called by the watcher; returns false when nobody listens any more (the watcher ends).
pub type WakeFn = Arc<dyn Fn(Wakeup) -> bool + Send + Sync>;

/// Whether the poller wants [`Wakeup::Rows`] now. Under load it reads on its own cadence
/// and says no: the watcher may then stop sending them (PostgreSQL: `UNLISTEN`, which also
/// spares the database a signal and a message per commit). When the poller says yes again
/// the watcher wakes it once, since rows may have been written meanwhile.
/// [`Wakeup::Rescan`] comes either way.
pub type RowWakeups = tokio::sync::watch::Receiver<bool>;

/// What the relay needs from its database.
pub trait Store: Send + Sync + 'static {
    /// `postgres`, `memory`.
    fn name(&self) -> &'static str;

    /// A reader for a new poller incarnation, starting before every pending row.
    fn reader(&self) -> Box<dyn PendingReader>;

    /// Pending rows by id, oldest first (rows no longer pending are not returned).
    fn fetch_ids<'a>(&'a self, ids: &'a [i64])
    -> BoxFuture<'a, Result<Vec<OutboxRow>, StoreError>>;

    /// Ids of all pending rows with `id <= upto`, except those of the `skip` aggregates.
    fn pending_ids_upto<'a>(
        &'a self,
        upto: i64,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>>;

    /// Aggregates with an open (not replayed, not discarded) dead letter.
    fn held_aggregates(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// Marks rows the broker acknowledged (deletes them, or sets `published_at`); returns
    /// how many changed (rows already gone are not an error).
    fn mark_published<'a>(
        &'a self,
        fence: &'a Fence,
        ids: &'a [i64],
        mode: OnPublish,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Records a transient failure: attempts so far, when the next attempt is due, the
    /// error.
    fn record_failure<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        retry_in: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Moves a row to the dead letters with the reason; false when it was no longer
    /// pending.
    fn dead_letter<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        reason: &'a str,
        error_class: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Takes the lease if it is free or expired (or reclaimable, see [`LeaseClaim`]);
    /// returns the new epoch.
    fn acquire_lease<'a>(
        &'a self,
        claim: &'a LeaseClaim<'a>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>>;

    /// Extends our lease; false when it is no longer ours.
    fn renew_lease<'a>(
        &'a self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// Gives the lease up at once.
    fn release_lease<'a>(&'a self, fence: &'a Fence) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Takes the lock on an instance name on a session of its own; `None` while another
    /// session holds it.
    fn lock_instance<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn InstanceLock>>, LockCheck>>;

    /// Pending rows (counted up to `cap`) and open dead letters.
    fn backlog(&self, cap: i64) -> BoxFuture<'_, Result<(i64, i64), StoreError>>;

    /// Deletes up to `limit` rows published more than `retention` ago (mark mode).
    fn delete_published<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Deletes up to `limit` dead letters resolved more than `retention` ago.
    fn delete_resolved_dead_letters<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Starts telling `wake` when rows may have been written (while `wanted` says so) and
    /// when a rescan was asked for; `None` when the store cannot say (the poller then reads
    /// every `poller.interval_ms`). The task ends when `wake` returns false, when `wanted`'s
    /// sender is gone, or when it is aborted.
    fn watch(&self, wake: WakeFn, wanted: RowWakeups) -> Option<tokio::task::JoinHandle<()>>;

    /// Where to say why the database cannot be used while it looks for it (PostgreSQL:
    /// no primary among the URL's hosts yet). Nothing by default.
    fn report_to(&self, _health: Arc<crate::health::Health>) {}
}
