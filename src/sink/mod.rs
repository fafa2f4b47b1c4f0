//! Sinks: where the relay publishes. One per relay, chosen by `[sink] kind`.
//!
//! The publishers hand a [`Batch`] of rows (distinct aggregates, in id order) to the
//! [`Sink`]; the sink sends every row without waiting for the previous one and settles
//! each row exactly once — acknowledged, or failed with a [`PublishFailure`] it classified
//! itself. When the last row is settled the batch reports to the pipeline. Everything a
//! sink knows about its broker — building messages, connections, error classification,
//! TLS and credentials, `outboxd check` — lives in its own file:
//!
//! - `kafka` (feature `kafka`) — librdkafka's idempotent producer;
//! - `redis` (feature `redis`) — one `XADD` per event to the stream named by the row's topic, pipelined;
//! - `nats` (feature `nats`) — a JetStream publish per event with `Nats-Msg-Id = event_id`, complete on
//!   its PubAck.
//!
//! A new sink is a new file implementing [`Sink`], a [`SinkKind`] and a line in [`create`].

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::config::Config;
use crate::health::Health;
use crate::store::{OutboxRow, Row};

pub use crate::outbox::{SinkKind, validate_subject};

/// What kind of failure a publish attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The row itself can never be published: dead-letter at once.
    Permanent,
    /// Worth retrying with back-off.
    Transient,
    /// The destination cannot take anything until an operator acts (no stream captures
    /// the subject, a sealed stream, missing permissions, a key of another type): the row
    /// is held — retried with back-off, never counted as an attempt, never dead-lettered —
    /// and the problem is reported on `/readyz`, in `status` and in metrics.
    Destination,
    /// The client is unusable (Kafka's idempotence state lost): restart the pipeline.
    Fatal,
}

/// A classified publish failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFailure {
    /// Permanent, transient, destination-level or fatal.
    pub kind: FailureKind,
    /// A short stable name, stored as `error_class` (e.g. `record_too_large`).
    pub class: &'static str,
    /// The full message.
    pub message: String,
}

impl PublishFailure {
    /// A failure of this kind and class.
    pub fn new(kind: FailureKind, class: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            class,
            message: message.into(),
        }
    }

    /// A row that cannot be turned into a message.
    pub fn malformed(why: impl Into<String>) -> Self {
        Self::new(FailureKind::Permanent, "malformed_row", why)
    }

    /// A row header with a name the sink reserves ([`SinkKind::reserves_header`]).
    pub fn reserved_header(kind: SinkKind, name: &str) -> Self {
        Self::new(
            FailureKind::Permanent,
            "reserved_header",
            format!(
                "header {name:?} is reserved on the {kind} sink (outboxd or the broker reads it); \
                 the row was not published"
            ),
        )
    }

    /// A destination name the sink refuses.
    pub fn invalid_destination(kind: SinkKind, name: &str, why: &str) -> Self {
        Self::new(
            FailureKind::Permanent,
            "invalid_topic",
            format!("{} {name:?} is invalid: {why}", kind.destination_word()),
        )
    }
}

/// One batch handed to a sink. Each row's outcome is written once, from whichever
/// thread or task learns it; the last one to arrive reports the batch.
pub struct Batch {
    rows: Vec<Row>,
    /// One slot per row, each written once: no lock per acknowledgement.
    outcomes: Vec<OnceLock<Result<Instant, PublishFailure>>>,
    remaining: AtomicUsize,
    sent_at: Instant,
    /// Exact acknowledgement times only when someone measures them (demo, benchmark):
    /// reading the clock per row showed up in the relay's profile.
    exact_times: bool,
    done: Box<dyn Fn(&Batch) + Send + Sync>,
}

impl Batch {
    /// A batch of `rows`; `done` runs once, after the last row is settled.
    pub fn new(
        rows: Vec<Row>,
        exact_times: bool,
        done: impl Fn(&Batch) + Send + Sync + 'static,
    ) -> Arc<Batch> {
        let n = rows.len();
        let batch = Arc::new(Batch {
            outcomes: (0..n).map(|_| OnceLock::new()).collect(),
            remaining: AtomicUsize::new(n),
            rows,
            sent_at: Instant::now(),
            exact_times,
            done: Box::new(done),
        });
        if n == 0 {
            (batch.done)(&batch);
        }
        batch
    }

    /// The rows, in the order they are to be sent.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// When the batch was handed to the sink.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }

    /// Row `index` was acknowledged by the broker.
    pub fn acked(&self, index: usize) {
        let at = if self.exact_times {
            Instant::now()
        } else {
            self.sent_at
        };
        self.settle(index, Ok(at));
    }

    /// Row `index` failed.
    pub fn failed(&self, index: usize, failure: PublishFailure) {
        self.settle(index, Err(failure));
    }

    /// Every row not settled yet failed the same way (a connection lost under a
    /// pipeline).
    pub fn fail_rest(&self, failure: &PublishFailure) {
        for i in 0..self.rows.len() {
            if self.outcomes[i].get().is_none() {
                self.failed(i, failure.clone());
            }
        }
    }

    fn settle(&self, index: usize, outcome: Result<Instant, PublishFailure>) {
        // Each row has exactly one outcome; a second one would be a client bug, and the
        // first outcome stands.
        if self.outcomes[index].set(outcome).is_err() {
            return;
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            (self.done)(self);
        }
    }

    /// Each row with its outcome (for `done`, which runs after the last one: the
    /// `AcqRel` countdown orders every slot's write before this read). The time is the
    /// acknowledgement's when measured, else when the batch was sent.
    pub fn outcomes(&self) -> impl Iterator<Item = (&Row, &Result<Instant, PublishFailure>)> {
        self.rows
            .iter()
            .zip(&self.outcomes)
            .filter_map(|(row, o)| o.get().map(|o| (row, o)))
    }

    /// Whether acknowledgement times are measured per row.
    pub fn exact_times(&self) -> bool {
        self.exact_times
    }
}

/// What the relay needs from a broker.
pub trait Sink: Send + Sync + 'static {
    /// Which sink this is.
    fn kind(&self) -> SinkKind;

    /// Sends every row of the batch without waiting for acknowledgements and settles each
    /// one (acknowledged or classified failure), now or later, from any thread. Sends are
    /// bounded by the relay (`relay.max_in_flight`), not here.
    fn send(&self, batch: Arc<Batch>);

    /// Best effort: a copy of a dead-lettered row to `topic` on this sink, with the
    /// built-in headers, `original_topic`, `dead_letter_class` and `dead_letter_reason`.
    /// The dead-letter table is the record; this is a notification.
    fn copy_dead_letter(&self, row: &OutboxRow, topic: &str, class: &str, reason: &str);

    /// Asks the server something cheap; `Ok` with what it is and how the sink connects to
    /// it (version, TLS, authentication — never a secret) when it answers, `Err` with what
    /// to fix when not. Used by `outboxd check` and to tell a wedged client from an outage.
    fn probe(&self, timeout: Duration) -> BoxFuture<'static, Result<String, String>>;

    /// The client library and what it was built with, for `outboxd check`.
    fn describe(&self) -> String;

    /// With rows in flight and nothing acknowledged for this long while the server
    /// answers [`Sink::probe`], the client is wedged and is replaced; `None` when the
    /// client's own timeouts settle every send (so it cannot wedge).
    fn stall_timeout(&self) -> Option<Duration> {
        None
    }

    /// Drops whatever is queued in the client (before it is replaced).
    fn discard(&self) {}

    /// Waits up to `timeout` for sends still queued in the client (graceful shutdown).
    fn flush(&self, timeout: Duration) -> BoxFuture<'static, ()>;
}

/// Where a sink's `send` hands batches: a task that passes them on to `send` in groups,
/// at most `in_flight` groups outstanding; batches handed over while it waits for a free
/// one go together (up to `max_rows` rows a group).
///
/// Why a sink wants this: the relay sends an aggregate's next row only after the previous
/// one's acknowledgement, so when every batch is sent on its own, acknowledgements of
/// small batches release small batches, and a drain settles into many tiny sends and as
/// many statements marking them (Redis: 60–146 statements per 1,000 events before, 2.7
/// after; docs/performance.md).
pub fn coalescing<F, Fut>(
    in_flight: usize,
    max_rows: usize,
    send: F,
) -> tokio::sync::mpsc::UnboundedSender<Arc<Batch>>
where
    F: Fn(Vec<Arc<Batch>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut queue) = tokio::sync::mpsc::unbounded_channel::<Arc<Batch>>();
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        while let Some(first) = queue.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut rows = first.rows().len();
            let mut batches = vec![first];
            while rows < max_rows {
                match queue.try_recv() {
                    Ok(b) => {
                        rows += b.rows().len();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            let group = send(batches);
            tokio::spawn(async move {
                group.await;
                drop(slot);
            });
        }
    });
    tx
}

/// Hands `batch` to a [`coalescing`] queue; if the queue is gone (the runtime is shutting
/// down) its rows fail as transient and are sent again later.
pub fn enqueue(queue: &tokio::sync::mpsc::UnboundedSender<Arc<Batch>>, batch: Arc<Batch>) {
    if let Err(unsent) = queue.send(batch) {
        unsent.0.fail_rest(&PublishFailure::new(
            FailureKind::Transient,
            "broker_unavailable",
            "the sink's sender has stopped",
        ));
    }
}

/// Builds a sink from the configuration: [`create`], or an embedder's own (the pipeline's
/// tests use an in-memory sink). Called again when a sink's client must be replaced.
pub type SinkFactory = Arc<
    dyn Fn(&Config, Arc<Health>) -> BoxFuture<'static, anyhow::Result<Arc<dyn Sink>>> + Send + Sync,
>;

/// The configured sink, as a [`SinkFactory`].
pub fn configured() -> SinkFactory {
    Arc::new(|config: &Config, health: Arc<Health>| {
        let config = config.clone();
        Box::pin(async move { create(&config, health).await })
    })
}

/// Builds the configured sink. Connections are made in the background: a broker that is
/// down only delays publishing (rows stay pending); a configuration it cannot use at all
/// (an unreadable certificate, a bad URL) is an error here.
// A build without sinks (feature `relay` alone) refuses every kind: the `Ok` is unreachable.
#[allow(unreachable_code)]
pub async fn create(config: &Config, health: Arc<Health>) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(match config.sink.kind {
        #[cfg(feature = "kafka")]
        SinkKind::Kafka => Arc::new(kafka::KafkaSink::new(&config.kafka, health)?),
        #[cfg(feature = "redis")]
        SinkKind::Redis => Arc::new(redis::RedisSink::new(&config.redis, health)?),
        #[cfg(feature = "nats")]
        SinkKind::Nats => Arc::new(nats::NatsSink::new(&config.nats, health).await?),
        #[allow(unreachable_patterns)]
        other => {
            let _ = health;
            anyhow::bail!("{}", not_built(other))
        }
    })
}

/// Problems with the chosen sink's section of the configuration, each naming its key.
pub fn check_config(config: &Config) -> Vec<String> {
    match config.sink.kind {
        #[cfg(feature = "kafka")]
        SinkKind::Kafka => kafka::check_config(&config.kafka),
        #[cfg(feature = "redis")]
        SinkKind::Redis => redis::check_config(&config.redis),
        #[cfg(feature = "nats")]
        SinkKind::Nats => nats::check_config(&config.nats),
        #[allow(unreachable_patterns)]
        other => vec![not_built(other)],
    }
}

/// The sinks this build of outboxd has (Cargo features `kafka`, `redis`, `nats`).
pub fn built_in() -> Vec<SinkKind> {
    [
        (cfg!(feature = "kafka"), SinkKind::Kafka),
        (cfg!(feature = "redis"), SinkKind::Redis),
        (cfg!(feature = "nats"), SinkKind::Nats),
    ]
    .into_iter()
    .filter_map(|(on, kind)| on.then_some(kind))
    .collect()
}

/// The message for a sink this build does not have.
fn not_built(kind: SinkKind) -> String {
    let have: Vec<&str> = built_in().iter().map(|k| k.name()).collect();
    format!(
        "sink.kind: this outboxd was built without the \"{0}\" sink (Cargo feature `{0}`); \
         it has: {1}",
        kind.name(),
        if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        }
    )
}

/// A row as most sinks carry it: the payload, and named string fields — the built-ins
/// first, then the row's own headers (a row's header with a built-in's name is dropped).
#[derive(Debug)]
pub struct Message<'a> {
    /// Destination: topic, stream key or subject.
    pub topic: &'a str,
    /// JSON text or raw bytes.
    pub payload: &'a [u8],
    /// Built-ins, then the row's headers.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Message<'a> {
    /// The message for `kind` of a row, or why the row cannot be one (`malformed_row`,
    /// `reserved_header`).
    pub fn from_row(row: &'a OutboxRow, kind: SinkKind) -> Result<Message<'a>, PublishFailure> {
        let payload: &[u8] = match (&row.payload, &row.payload_bytes) {
            (Some(text), None) => text,
            (None, Some(bytes)) => bytes,
            _ => {
                return Err(PublishFailure::malformed(
                    "row must have exactly one of payload and payload_bytes",
                ));
            }
        };
        let mut headers = builtin_headers(row);
        if let Some(user) = user_headers(row, kind)? {
            headers.extend(
                user.into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v))),
            );
        }
        Ok(Message {
            topic: &row.topic,
            payload,
            headers,
        })
    }

    /// The dead-letter copy of a row: its message (or, for a row that cannot be one, its
    /// payload and ids) sent to `topic`, with where it was going and why it was not.
    pub fn dead_letter(
        row: &'a OutboxRow,
        kind: SinkKind,
        topic: &'a str,
        class: &'a str,
        reason: &'a str,
    ) -> Message<'a> {
        let mut message = Message::from_row(row, kind).unwrap_or_else(|_| Message {
            topic,
            payload: row
                .payload
                .as_deref()
                .or(row.payload_bytes.as_deref())
                .unwrap_or_default(),
            headers: builtin_headers(row),
        });
        message.topic = topic;
        message.headers.extend([
            ("original_topic".into(), Cow::Borrowed(row.topic.as_str())),
            ("dead_letter_class".into(), Cow::Borrowed(class)),
            ("dead_letter_reason".into(), Cow::Borrowed(reason)),
        ]);
        message
    }
}

/// A row's own headers (`None` when it has none), or why they cannot be sent: not a JSON
/// object of strings (`malformed_row`), or a name the sink reserves (`reserved_header`,
/// never silently dropped: a header the application meant for the broker would otherwise
/// change what the broker does, or vanish).
pub fn user_headers(
    row: &OutboxRow,
    kind: SinkKind,
) -> Result<Option<std::collections::BTreeMap<String, String>>, PublishFailure> {
    if row.headers.is_empty() || row.headers == "{}" {
        return Ok(None);
    }
    let parsed: serde_json::Value = serde_json::from_str(&row.headers)
        .map_err(|e| PublishFailure::malformed(format!("headers are not JSON: {e}")))?;
    let user = crate::outbox::headers_from_json(&parsed)
        .map_err(|e| PublishFailure::malformed(format!("headers: {e}")))?;
    if let Some(name) = user.keys().find(|k| kind.reserves_header(k)) {
        return Err(PublishFailure::reserved_header(kind, name));
    }
    Ok(Some(user))
}

/// `event_id`, `event_type`, `aggregate_type`, `aggregate_id`, `outbox_id`, `created_at`.
fn builtin_headers(row: &OutboxRow) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    vec![
        (
            "event_id".into(),
            row.event_id.hyphenated().to_string().into(),
        ),
        ("event_type".into(), row.event_type.as_str().into()),
        ("aggregate_type".into(), row.aggregate_type.as_str().into()),
        ("aggregate_id".into(), row.aggregate_id.as_str().into()),
        ("outbox_id".into(), row.id.to_string().into()),
        (
            "created_at".into(),
            row.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        ),
    ]
}

/// A problem for each configured file (`(key, path)`, empty path = not set) that cannot
/// be opened, naming its key.
pub fn unreadable_files(files: &[(&str, &String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, path)| !path.is_empty())
        .filter_map(|(key, path)| {
            std::fs::File::open(path)
                .err()
                .map(|err| format!("{key}: cannot read {path:?}: {err}"))
        })
        .collect()
}

/// What to change when a TLS connection to a Redis or NATS server fails, read from the
/// client library's words (rustls's): `(kind, hint)`, the hint naming the keys of
/// `section`.
pub fn tls_hint(section: &str, words: &str) -> Option<(&'static str, String)> {
    let m = words.to_ascii_lowercase();
    if m.contains("certificaterequired") || m.contains("certificate required") {
        Some((
            "certificate",
            format!(
                "the server wants a client certificate: set {section}.cert_file and {section}.key_file"
            ),
        ))
    } else if m.contains("badcertificate") || m.contains("unknownca") || m.contains("decrypterror")
    {
        Some((
            "certificate",
            format!(
                "the server refused the client certificate in {section}.cert_file (not signed by a CA it trusts, or expired)"
            ),
        ))
    } else if m.contains("unknownissuer")
        || m.contains("invalid peer certificate")
        || m.contains("notvalidforname")
        || m.contains("expired")
    {
        Some((
            "certificate",
            format!(
                "the server's certificate is not signed by the CA in {section}.ca_file (or has expired, or is not issued for this host name)"
            ),
        ))
    } else if m.contains("handshake")
        || m.contains("corrupt message")
        || m.contains("invalid content type")
        || m.contains("tls")
    {
        Some((
            "tls",
            format!(
                "TLS failed: check that the server speaks TLS on this port and {section}.ca_file / cert_file / key_file"
            ),
        ))
    } else {
        None
    }
}

/// `path`'s content, for a certificate or key named in the configuration; the error
/// names the key to fix.
pub fn read_pem(key: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{key}: cannot read {path:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(feature = "kafka"))]
    fn a_sink_left_out_of_the_build_is_refused_naming_its_feature() {
        let problems = check_config(&Config::default());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("built without the \"kafka\" sink (Cargo feature `kafka`)"),
            "{problems:?}"
        );
        let have: Vec<&str> = built_in().iter().map(|k| k.name()).collect();
        assert!(problems[0].ends_with(&have.join(", ")), "{problems:?}");
    }

    #[test]
    fn each_sink_judges_names_by_its_own_rules() {
        use SinkKind::*;
        for (name, kafka, redis, nats) in [
            ("orders", true, true, true),
            ("orders.v1_x-y", true, true, true),
            ("user:events", false, true, true),
            ("a b", false, true, false),
            ("orders.*", false, true, false),
            ("orders.>", false, true, false),
            ("orders..x", true, true, false),
            (".orders", true, true, false),
            ("", false, false, false),
        ] {
            assert_eq!(
                Kafka.validate_destination(name).is_ok(),
                kafka,
                "kafka {name:?}"
            );
            assert_eq!(
                Redis.validate_destination(name).is_ok(),
                redis,
                "redis {name:?}"
            );
            assert_eq!(
                Nats.validate_destination(name).is_ok(),
                nats,
                "nats {name:?}"
            );
        }
    }

    fn row() -> OutboxRow {
        use chrono::TimeZone;
        OutboxRow {
            id: 7,
            aggregate_type: "user".into(),
            aggregate_id: "u-1".into(),
            event_type: "user.created".into(),
            topic: "user:events".into(),
            payload: Some(br#"{"id": 1}"#.to_vec()),
            payload_bytes: None,
            headers: r#"{"traceparent": "00-abc"}"#.into(),
            event_id: uuid::Uuid::nil(),
            created_at: chrono::Utc.with_ymd_and_hms(2026, 12, 2, 8, 0, 0).unwrap(),
            attempts: 0,
            tries: 0,
        }
    }

    #[test]
    fn a_message_carries_builtins_first_then_the_row_headers() {
        let r = row();
        let m = Message::from_row(&r, SinkKind::Redis).unwrap();
        let names: Vec<&str> = m.headers.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "event_type",
                "aggregate_type",
                "aggregate_id",
                "outbox_id",
                "created_at",
                "traceparent"
            ]
        );
        assert_eq!(m.headers[0].1, "00000000-0000-0000-0000-000000000000");
        assert_eq!(m.headers[5].1, "2026-12-02T08:00:00.000000Z");
        assert_eq!(m.payload, br#"{"id": 1}"#);
    }

    #[test]
    fn a_row_header_the_sink_reserves_is_refused_never_dropped() {
        let mut r = row();
        r.headers = r#"{"event_id": "forged", "traceparent": "00-1"}"#.into();
        for kind in SinkKind::ALL {
            let f = Message::from_row(&r, kind).unwrap_err();
            assert_eq!(
                (f.kind, f.class),
                (FailureKind::Permanent, "reserved_header")
            );
            assert!(f.message.contains("event_id"), "{}", f.message);
        }
        r.headers = r#"{"Nats-Msg-Id": "fixed"}"#.into();
        let f = Message::from_row(&r, SinkKind::Nats).unwrap_err();
        assert_eq!(f.class, "reserved_header");
        assert!(Message::from_row(&r, SinkKind::Redis).is_ok());
        r.headers = r#"{"payload": "x"}"#.into();
        assert_eq!(
            Message::from_row(&r, SinkKind::Redis).unwrap_err().class,
            "reserved_header"
        );
    }

    #[test]
    fn a_dead_letter_copy_says_where_it_was_going_and_why() {
        let mut r = row();
        r.headers = "[1]".into();
        let m = Message::dead_letter(
            &r,
            SinkKind::Redis,
            "dlq",
            "malformed_row",
            "headers: not an object",
        );
        assert_eq!(m.topic, "dlq");
        let get = |k: &str| {
            m.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(get("original_topic").as_deref(), Some("user:events"));
        assert_eq!(get("dead_letter_class").as_deref(), Some("malformed_row"));
        assert_eq!(
            get("event_id").as_deref(),
            Some(uuid::Uuid::nil().to_string().as_str())
        );
    }

    #[test]
    fn a_batch_reports_once_after_its_last_row() {
        use std::sync::atomic::AtomicU32;
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let rows: Vec<Row> = (0..3).map(|_| Arc::new(row())).collect();
        let b = Batch::new(rows, false, move |b| {
            assert_eq!(b.outcomes().count(), 3);
            c.fetch_add(1, Ordering::SeqCst);
        });
        b.acked(0);
        b.acked(0);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        b.fail_rest(&PublishFailure::malformed("x"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        b.fail_rest(&PublishFailure::malformed("x"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
