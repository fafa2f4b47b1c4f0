//! outboxd — a transactional-outbox relay from PostgreSQL to Kafka, Redis Streams or NATS
//! JetStream.
//!
//! Applications write business rows and outbox rows in one transaction, with
//! [`enqueue`] / [`enqueue_batch`] or plain SQL; the relay (`outboxd run`, or `Relay`
//! in-process) publishes every committed outbox row at least once, in order per
//! aggregate. Consumers make their own database writes happen once per event with the
//! [`inbox`].
//!
//! Features: with `default-features = false` this crate is the library an application
//! needs — [`NewEvent`], [`enqueue`], [`enqueue_batch`], [`MIGRATOR`], [`inbox`] — on sqlx,
//! serde, uuid and thiserror alone. `relay` adds the relay (actors, configuration, CLI,
//! HTTP, metrics); `kafka`, `redis` and `nats` (the default: all three) each add a sink and
//! imply `relay`.

#![deny(missing_docs)]

// The relay's insides (actors, CLI, database plumbing, rate limits, telemetry) are public
// for the `outboxd` binary and this repository's tests, not for applications: hidden from
// the docs, which show what users call — the library, the inbox, `Relay` with its
// configuration, and the `Sink` interface.

#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod actors;
#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "relay")]
pub mod config;
#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod db;
#[cfg(feature = "relay")]
pub mod health;
pub mod inbox;
pub mod outbox;
#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod ratelimit;
#[cfg(feature = "relay")]
pub mod relay;
#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod secrets;
#[cfg(feature = "relay")]
pub mod sink;
#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod store;
#[cfg(feature = "relay")]
mod task;
#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod telemetry;

pub use outbox::{
    NewEvent, NewEventBuilder, OutboxDatabase, Payload, SinkKind, ValidationError, enqueue,
    enqueue_batch,
};
#[cfg(feature = "relay")]
pub use relay::{Relay, RelayOptions};

/// The schema migrations (`outbox`, `outbox_dead_letter`, `outbox_lease`, the NOTIFY
/// trigger, the consumers' `outbox_inbox`), for applications that migrate themselves:
/// `outboxd::MIGRATOR.run(&pool)`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The schema migrations for MariaDB (>= 10.6) and MySQL (>= 8.0): the same tables and
/// meanings on InnoDB (`migrations/mysql`), for applications that migrate themselves:
/// `outboxd::MYSQL_MIGRATOR.run(&pool)`.
#[cfg(feature = "mysql")]
pub static MYSQL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");
