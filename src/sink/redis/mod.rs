//! The Redis Streams sink: one `XADD <topic> * payload … event_id … created_at …` per
//! event, the stream key being the row's topic.
//!
//! Sends. Up to [`PIPELINES_IN_FLIGHT`] pipelines are in flight on the shared
//! multiplexed connection (the `redis` crate's tokio `ConnectionManager`); batches handed
//! over while those are out go together in the next one (up to [`PIPELINE_ROWS`]
//! commands; [`super::coalescing`] says why). One write per pipeline, one reply per
//! command, in order, each settling its row.
//!
//! Unknown outcomes and late copies. A command without a reply within `redis.timeout_ms`,
//! or whose connection dropped, may or may not have run: it fails as a transient
//! `timeout` / `broker_unavailable` and is sent again later with the same `event_id`.
//! The copy sent first may still run after the resend (it sat in a paused server's socket
//! buffer). That never puts an aggregate's first deliveries out of order: the relay sends
//! an aggregate's next row only after some copy of the previous row was acknowledged,
//! and an acknowledged copy is already in the stream — so the first copy of every event
//! is in the stream before anything of its successor is sent, and a late copy can only
//! be a later duplicate, which consumers drop by `event_id`. Duplicates are bounded by
//! the resends (Redis 7 has no idempotent `XADD`). The one exception is a row that is
//! dead-lettered after such a timeout (`retry.max_attempts` spent while other rows were
//! acknowledged): its last copy may still appear after its successors; its dead letter
//! says "timeout" as its last error.
//!
//! Idempotent adds. On Redis 8.6 and later (`redis.idmp`, on by default) every `XADD`
//! carries `IDMP outboxd <event_id>`: one producer id for every relay of the outbox (a
//! standby that takes over resends under the same id), the event id as the idempotent id,
//! so a resend of an event the stream still remembers adds nothing and is acknowledged
//! with the first entry's id. The stream remembers `IDMP-MAXSIZE` ids per producer (100
//! by default, up to 10,000 with `XCFGSET`) for `IDMP-DURATION` seconds: beyond that a
//! resend is again a duplicate. The server's version is read once, with `INFO server`
//! (a user who may not run it gets plain adds).
//!
//! Classification (the one place for Redis):
//!
//! | What Redis says | Kind | Class |
//! |---|---|---|
//! | payload over `redis.max_payload_bytes` (checked before sending) | permanent | `record_too_large` |
//! | an empty stream key | permanent | `invalid_topic` |
//! | a row header named `payload` or like a built-in (checked before sending) | permanent | `reserved_header` |
//! | no reply in time | transient | `timeout` |
//! | connection refused / dropped, TLS or DNS failure | transient | `broker_unavailable` |
//! | `LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `MISCONF` | transient | `server_busy` |
//! | `OOM` | transient | `out_of_memory` |
//! | `READONLY` (a failover in progress) | transient | `read_only` |
//! | `WRONGTYPE` (the key holds another type) | destination: held | `wrong_type` |
//! | `MOVED`, `ASK`, `CROSSSLOT` (a Redis Cluster node that does not serve the key) | destination: held | `cluster_redirect` |
//! | `NOPERM` (the ACL user may not write the key) | destination: held | `not_authorized` |
//! | `NOAUTH`, `WRONGPASS` | destination: held | `not_authenticated` |
//! | anything else | transient (counted) | `transient` |
//!
//! Layout: [`config`] (the `[redis]` section, in every build) and `client` (feature
//! `redis`).

pub mod config;

#[cfg(feature = "redis")]
mod client;

#[cfg(feature = "redis")]
pub use client::*;

/// The Redis sink in the registry.
#[cfg(feature = "redis")]
pub const SPEC: crate::sink::api::SinkSpec = crate::sink::api::SinkSpec {
    kind: crate::outbox::SinkKind::Redis,
    create: |config, health| {
        let section = config.redis.clone();
        Box::pin(async move {
            let sink: std::sync::Arc<dyn crate::sink::api::Sink> =
                std::sync::Arc::new(RedisSink::new(&section, health)?);
            Ok(sink)
        })
    },
    check: |config| check_config(&config.redis),
    location: |config| crate::secrets::redact(&config.redis.url),
};
