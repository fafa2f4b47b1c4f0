//! outboxd — a transactional-outbox relay from PostgreSQL to Kafka.
//!
//! Applications write business rows and outbox rows in one transaction, with
//! [`enqueue`] / [`enqueue_batch`] or plain SQL; the relay (`outboxd run`, or [`Relay`]
//! in-process) publishes every committed outbox row to Kafka at least once, in order per
//! aggregate. Consumers make their own database writes happen once per event with the
//! [`inbox`].

pub mod actors;
pub mod broker;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod health;
pub mod inbox;
pub mod outbox;
pub mod ratelimit;
pub mod relay;
pub mod sink;
pub mod telemetry;
pub mod verify;

pub use outbox::{
    NewEvent, NewEventBuilder, Payload, SinkKind, ValidationError, enqueue, enqueue_batch,
};
pub use relay::{Relay, RelayOptions};

/// The schema migrations (`outbox`, `outbox_dead_letter`, `outbox_lease`, the NOTIFY
/// trigger, the consumers' `outbox_inbox`), for applications that migrate themselves: `outboxd::MIGRATOR.run(&pool)`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
