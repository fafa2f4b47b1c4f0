//! Everything that touches the outbox tables, as plain SQL functions: what applications
//! write ([`event`]) and the operators' commands (`admin`, with the `relay` feature).

#[cfg(feature = "relay")]
#[doc(hidden)]
pub mod admin;
pub mod backend;
pub mod event;

pub use backend::{OutboxDatabase, enqueue, enqueue_batch};
pub use event::{
    NewEvent, NewEventBuilder, Payload, RESERVED_HEADERS, SinkKind, TopicError, ValidationError,
    headers_from_json, validate_subject, validate_topic,
};

/// The NOTIFY channel the insert trigger signals and the relay listens on.
pub const NOTIFY_CHANNEL: &str = "outboxd";
/// Payload of a notification asking the relay to re-read everything pending (sent by
/// `outboxd dead-letters replay|discard` on both channels).
pub const NOTIFY_RESCAN: &str = "rescan";
/// The channel for rescan requests alone: the relay listens on it also while, under load,
/// it reads on its own cadence and does not listen on [`NOTIFY_CHANNEL`].
pub const NOTIFY_RESCAN_CHANNEL: &str = "outboxd_rescan";
