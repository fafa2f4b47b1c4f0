//! The NATS JetStream sink: one JetStream publish per event to the subject named by the
//! row's topic, body = payload, headers = the built-ins and the row's headers, and
//! `Nats-Msg-Id = event_id`. A publish is complete only on its PubAck.
//!
//! Streams are the operator's: outboxd never creates one. The stream's duplicate window
//! (`duplicate_window`, 2 minutes by default) must be longer than the longest time a row
//! can wait between two sends — with the default retry settings a minute — so that every
//! resend of an event inside it is dropped by the server (the PubAck says `duplicate`).
//!
//! Sends. Up to [`GROUPS_IN_FLIGHT`] groups of batches are out at once; batches handed
//! over meanwhile go together in the next group ([`super::coalescing`] says why). A group
//! writes every message to the connection in order, then waits for all their PubAcks
//! together; each settles its row.
//!
//! Unknown outcomes and late copies. A publish without a PubAck within `nats.timeout_ms`,
//! or whose connection dropped, fails as a transient `timeout` / `broker_unavailable` and
//! is published again with the same `Nats-Msg-Id`. A late first copy and the resend are
//! one message for the stream within the duplicate window. Order: an aggregate's next row
//! is sent only after a PubAck for some copy of the previous one, so every event's first
//! copy is in the stream before its successor is sent (see the Redis sink for the whole
//! argument, and its one exception, a row dead-lettered after a timeout).
//!
//! Classification (the one place for NATS):
//!
//! | What NATS says | Kind | Class |
//! |---|---|---|
//! | message over the server's `max_payload`; stream `max_msg_size` exceeded (10054) | permanent | `record_too_large` |
//! | a subject one cannot publish to (wildcards, white space), a bad header | permanent | `invalid_topic` / `malformed_row` |
//! | a row header named `Nats-…` (any case) or like a built-in (checked before sending) | permanent | `reserved_header` |
//! | no PubAck in time | transient | `timeout` |
//! | connection lost | transient | `broker_unavailable` |
//! | storage or resource errors (10023, 10028, 10047, 10072, 10002, 10077 except "maximum … exceeded") | transient | `storage` |
//! | no responders, and JetStream says no stream captures the subject | destination: held | `no_stream` |
//! | no responders from a stream that captures the subject (its leader election, its server restarting) | transient | `no_leader` |
//! | no responders, and the JetStream API does not answer either (a meta-leader election, no quorum) | transient | `jetstream_unavailable` |
//! | the stream is sealed (10109) | destination: held | `stream_sealed` |
//! | the stream is full and discards new messages (10077 "maximum … exceeded") | destination: held | `stream_full` |
//! | JetStream not enabled (10076, 10039) | destination: held | `jetstream_disabled` |
//! | permissions violation for the subject | destination: held | `not_authorized` |
//! | anything else | transient (counted) | `transient` |
//!
//! Clusters. `nats.url` may list several servers; the client reconnects to any of them.
//! A publish that meets "no responders" is told apart by asking JetStream which stream
//! captures the subject (once per subject and group): a missing stream is held with its
//! name (dead-lettered only with `sink.missing_destination = "dead_letter"`), a stream
//! electing a leader is a transient failure, retried within `retry.max_attempts` (an
//! outage that fails every row spends none). A server older than 2.11 is named once in
//! the log and in `outboxd check`: its JetStream can lose a message on a leader change.
//!
//! Layout: [`config`] (the `[nats]` section, in every build), `client` and `cluster`
//! (feature `nats`).

pub mod config;

#[cfg(feature = "nats")]
mod client;
#[cfg(feature = "nats")]
mod cluster;

#[cfg(feature = "nats")]
pub use client::*;

/// The Nats sink in the registry.
#[cfg(feature = "nats")]
pub const SPEC: crate::sink::api::SinkSpec = crate::sink::api::SinkSpec {
    kind: crate::outbox::SinkKind::Nats,
    create: |config, health| {
        let section = config.nats.clone();
        Box::pin(async move {
            let sink: std::sync::Arc<dyn crate::sink::api::Sink> =
                std::sync::Arc::new(NatsSink::new(&section, health).await?);
            Ok(sink)
        })
    },
    check: |config| check_config(&config.nats),
    location: |config| crate::secrets::redact(&config.nats.url),
};
