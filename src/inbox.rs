//! The consumer's half of the pattern: an inbox that makes a consumer's database writes
//! happen once per event, although every relay — outboxd included — delivers at least once.
//!
//! In the consumer's own database transaction — PostgreSQL, or MariaDB / MySQL with the
//! `mysql` feature — [`Inbox::process`] records `(consumer, event_id)` in the
//! `outbox_inbox` table (created by [`crate::MIGRATOR`] / `outboxd migrate`) and runs the handler's writes only if that pair was not recorded
//! before. A duplicate is skipped; the caller acknowledges it to the broker like any other.
//! Works the same behind any sink: the `event_id` is a field of every Redis entry, a header
//! of every Kafka record and NATS message.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool, event_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
//! use outboxd::inbox::{Handled, Inbox};
//!
//! let inbox = Inbox::new("welcome-mailer");
//! let outcome = inbox
//!     .process(&pool, event_id, async |tx| {
//!         sqlx::query("INSERT INTO welcome_mail (user_id, email) VALUES ($1, $2)")
//!             .bind("u-1")
//!             .bind("ada@example.com")
//!             .execute(&mut *tx)
//!             .await?;
//!         Ok::<_, sqlx::Error>(())
//!     })
//!     .await?;
//! if let Handled::Duplicate = outcome {
//!     // Already done by an earlier delivery: acknowledge and move on.
//! }
//! # Ok(()) }
//! ```
//!
//! # What it guarantees, and what it cannot
//!
//! - **Writes in the consumer's database happen once per event and consumer name**: the
//!   inbox row and the handler's writes commit together or not at all. A handler error,
//!   a crash or a lost connection before the commit rolls both back, and the next delivery
//!   runs the handler again. Two deliveries racing (two members of a consumer group after a
//!   take-over) serialize on the inbox row: the second waits for the first to commit and is
//!   then skipped, or proceeds if the first rolled back.
//! - **An external side effect is at least once.** An SMTP call, an HTTP request to a
//!   partner, a message to another broker made from the handler cannot be rolled back: if
//!   the transaction fails after it, it is repeated on the next delivery. Make it
//!   idempotent on the far side (pass the `event_id` as an idempotency key), or write it to
//!   an outbox of your own in the same transaction and let a relay deliver it.
//! - **Deduplication lasts as long as the entry.** [`Inbox::cleanup`] deletes entries past
//!   the retention; a duplicate arriving later would be processed again. Keep the retention
//!   longer than any redelivery can come: the broker's retention of unacknowledged messages,
//!   a replay you might run, the relay's resends after a crash (seconds).
//! - **Order is not its business.** The inbox does not reorder. Per-aggregate order holds
//!   only if one consumer sees an aggregate's events one after another: a Kafka consumer
//!   group does that per partition (the relay keys records by aggregate); a Redis consumer
//!   group or a NATS queue group spreads one stream over its members, so ordered
//!   consumption there needs one consumer per stream, or streams sharded by aggregate
//!   (`orders.{hash(aggregate_id) % N}`), each with a single consumer.
//!
//! The consumer name is the identity being deduplicated: use the *group's* name, shared by
//! every member, not each process's own name — a message a dead member left behind is
//! taken over by another member and must be recognised there.

use std::time::Duration;

use uuid::Uuid;

use crate::outbox::OutboxDatabase;

/// A connection or an open transaction the inbox records on: `PgConnection`,
/// `MySqlConnection` (feature `mysql`), or a `Transaction` of either.
pub trait InboxConnection: Send {
    /// Its database.
    type Database: OutboxDatabase;
    /// The connection underneath.
    #[doc(hidden)]
    fn connection(&mut self) -> &mut <Self::Database as sqlx::Database>::Connection;
}

impl InboxConnection for sqlx::PgConnection {
    type Database = sqlx::Postgres;
    fn connection(&mut self) -> &mut sqlx::PgConnection {
        self
    }
}

#[cfg(feature = "mysql")]
impl InboxConnection for sqlx::MySqlConnection {
    type Database = sqlx::MySql;
    fn connection(&mut self) -> &mut sqlx::MySqlConnection {
        self
    }
}

impl<DB: OutboxDatabase> InboxConnection for sqlx::Transaction<'_, DB> {
    type Database = DB;
    fn connection(&mut self) -> &mut DB::Connection {
        self
    }
}

/// What [`Inbox::process`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<T> {
    /// First time this consumer saw the event: the handler ran and its writes committed
    /// with the inbox entry. Holds what the handler returned.
    Done(T),
    /// Processed before: the handler did not run, nothing was written.
    Duplicate,
}

/// Why [`Inbox::process`] did not finish. Either way nothing was committed: the event is
/// not marked as processed and its next delivery runs the handler again.
#[derive(Debug, thiserror::Error)]
pub enum InboxError<E> {
    /// The inbox's own statements, or the commit, failed (database down, connection lost).
    #[error("inbox: database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The handler returned an error; its writes were rolled back.
    #[error("inbox: handler failed: {0}")]
    Handler(E),
}

/// The inbox of one consumer (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Inbox {
    consumer: String,
    retention: Duration,
}

/// How long entries are kept by default: a week, longer than any redelivery outboxd causes
/// and than the usual broker retention of unacknowledged messages.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Entries deleted per statement by [`Inbox::cleanup`], so that no statement holds locks
/// on many rows or runs for long.
const CLEANUP_BATCH: i64 = 5_000;

impl Inbox {
    /// The inbox of the consumer named `consumer` (for a consumer group: the group's name),
    /// keeping entries for [`DEFAULT_RETENTION`].
    pub fn new(consumer: impl Into<String>) -> Inbox {
        Inbox {
            consumer: consumer.into(),
            retention: DEFAULT_RETENTION,
        }
    }

    /// Keeps entries this long before [`Inbox::cleanup`] may delete them.
    pub fn with_retention(mut self, retention: Duration) -> Inbox {
        self.retention = retention;
        self
    }

    /// The consumer name entries are recorded under.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs `handler` in a new transaction on `pool` unless this consumer already processed
    /// `event_id`: begins, records the event, runs the handler on the transaction, commits.
    ///
    /// On a duplicate the handler does not run and the result is [`Handled::Duplicate`].
    /// If the handler fails, or the commit does, everything is rolled back and the error
    /// returned; the event counts as not processed.
    pub async fn process<DB: OutboxDatabase, T, E>(
        &self,
        pool: &sqlx::Pool<DB>,
        event_id: Uuid,
        handler: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, E>,
    ) -> Result<Handled<T>, InboxError<E>> {
        let mut tx = pool.begin().await?;
        if !self.record(&mut tx, event_id).await? {
            // Nothing was written; dropping the transaction rolls it back.
            return Ok(Handled::Duplicate);
        }
        let value = handler(&mut tx).await.map_err(InboxError::Handler)?;
        tx.commit().await?;
        Ok(Handled::Done(value))
    }

    /// Records `event_id` as processed within the caller's open transaction, for consumers
    /// that manage their own (a batch of events in one transaction, say). Returns `true` the
    /// first time — go ahead with the writes, in the same transaction — and `false` if
    /// it was recorded before (skip them).
    ///
    /// If another transaction recorded the same event and has not finished, this waits for
    /// it: `false` once it commits, `true` if it rolls back.
    pub async fn record<C: InboxConnection>(
        &self,
        tx: &mut C,
        event_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        C::Database::inbox_record(tx.connection(), &self.consumer, event_id).await
    }

    /// Whether this consumer has processed `event_id` (and the entry is still kept).
    pub async fn seen<DB: OutboxDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
        event_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        DB::inbox_seen(pool, &self.consumer, event_id).await
    }

    /// Deletes this consumer's entries older than the retention, a few thousand per
    /// statement, and returns how many went. Call it now and then (hourly is plenty); it
    /// never blocks [`Inbox::process`] for long.
    pub async fn cleanup<DB: OutboxDatabase>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        loop {
            let n = DB::inbox_delete_old(
                pool,
                &self.consumer,
                self.retention.as_secs_f64(),
                CLEANUP_BATCH,
            )
            .await?;
            deleted += n;
            if n < CLEANUP_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}
