//! The Redis Streams sink: one `XADD <topic> * payload … event_id … created_at …` per
//! event, the stream key being the row's topic.
//!
//! Topologies (`conn`, `connect`): one server (the `redis` crate's reconnecting
//! `ConnectionManager`); a master named by sentinels (`redis.sentinels`, asked again
//! after `READONLY`, a lost connection or a timeout); a Redis Cluster (`redis.cluster`,
//! the crate's async cluster client, which follows `MOVED` / `ASK` and refreshes its slot
//! map after a failover; a few quick retries, then the relay's back-off).
//!
//! Sends (`send`). On one server, up to [`PIPELINES_IN_FLIGHT`] pipelines are in flight
//! on the shared multiplexed connection; batches handed over while those are out go
//! together in the next one (up to [`PIPELINE_ROWS`] commands; [`super::coalescing`] says
//! why). On a cluster, rows go to one queue per hash slot of their stream key, with one
//! pipeline out at a time per slot: a pipeline never crosses slots, and a slot whose
//! master is failing over holds only its own rows. One write per pipeline, one reply per
//! command, in order, each settling its row. With `redis.wait_replicas = N` the pipeline
//! ends with `WAIT N redis.wait_timeout_ms`; when fewer replicas answer, its rows fail as
//! `not_replicated` and are sent again (a master crash loses writes no replica has).
//! Order per aggregate does not rest on the pipelines' order: the relay has at most one
//! row of an aggregate out at a time.
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
//! | no reply in time | transient¹ | `timeout` |
//! | connection refused / dropped, TLS or DNS failure | transient¹ | `broker_unavailable` |
//! | `LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `MISCONF` | transient¹ | `server_busy` |
//! | `OOM` | transient | `out_of_memory` |
//! | `READONLY` (a failover in progress) | transient¹ | `read_only` |
//! | `WAIT` answered fewer than `redis.wait_replicas` | transient¹ | `not_replicated` |
//! | `MOVED`, `ASK` with `redis.cluster` (slots moving faster than the client's retries) | transient¹ | `cluster_redirect` |
//! | `WRONGTYPE` (the key holds another type) | destination: held | `wrong_type` |
//! | `MOVED`, `ASK`, `CROSSSLOT` without `redis.cluster` (a cluster node that does not serve the key) | destination: held | `cluster_redirect` |
//! | `NOPERM` (the ACL user may not write the key) | destination: held | `not_authorized` |
//! | `NOAUTH`, `WRONGPASS` | destination: held | `not_authenticated` |
//! | anything else | transient (counted) | `transient` |
//!
//! ¹ With `redis.cluster`, destination: held. The failure is the node's that serves the
//! stream's slot while the other masters take their rows, so as a transient failure it
//! would spend the rows' attempts; held, it spends none, and `/readyz` names the streams.
//!
//! Layout: [`config`] (the `[redis]` section, in every build); with the feature `redis`:
//! `client` (the `Sink`), `command` (a row as its `XADD`), `connect` (the section → a connection), `conn` (the three
//! topologies behind one `ConnectionLike`), `send` (pipelines), `classify`.

pub mod config;

#[cfg(feature = "redis")]
mod classify;
#[cfg(feature = "redis")]
mod client;
#[cfg(feature = "redis")]
mod command;
#[cfg(feature = "redis")]
mod conn;
#[cfg(feature = "redis")]
mod connect;
#[cfg(feature = "redis")]
mod send;

#[cfg(feature = "redis")]
pub use classify::{classify, classify_code};
#[cfg(feature = "redis")]
pub use client::*;
#[cfg(feature = "redis")]
pub use command::supports_idmp;
#[cfg(feature = "redis")]
pub use connect::check_config;
#[cfg(feature = "redis")]
pub use send::{PIPELINE_ROWS, PIPELINES_IN_FLIGHT};

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
    location: |config| {
        let r = &config.redis;
        if r.sentinels.is_empty() {
            crate::secrets::redact(&r.url)
        } else {
            format!(
                "master {:?} through sentinels {}",
                r.master_name,
                crate::secrets::redact(&r.sentinels.join(","))
            )
        }
    },
};
