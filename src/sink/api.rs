//! The sink interface: the [`Sink`] trait, the [`Batch`] a publisher hands it, the
//! [`PublishFailure`] it classifies each failed row with, and the coalescing queue most
//! sinks send through.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::config::Config;
use crate::health::Health;
use crate::outbox::SinkKind;
use crate::store::{OutboxRow, Row};

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

/// The failure classes that mean "the destination does not exist", on every sink.
pub const MISSING_DESTINATION: &[&str] = &["unknown_topic", "no_stream"];

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

    /// Whether this is a destination that does not exist (Kafka's unknown topic, NATS's
    /// subject no stream captures): held as a destination problem, or dead-lettered when
    /// `sink.missing_destination = "dead_letter"`.
    pub fn is_missing_destination(&self) -> bool {
        self.kind == FailureKind::Destination && MISSING_DESTINATION.contains(&self.class)
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

/// A sink being built: ready, or why its configuration cannot be used.
pub type Building = BoxFuture<'static, anyhow::Result<Arc<dyn Sink>>>;

/// A sink in the registry ([`crate::sink::registry::SINKS`]): what the relay asks of it.
pub struct SinkSpec {
    /// Which sink.
    pub kind: SinkKind,
    /// Builds it from its configuration section.
    pub create: fn(&Config, Arc<Health>) -> Building,
    /// Problems with its configuration section, each naming its key.
    pub check: fn(&Config) -> Vec<String>,
    /// Where it is, without secrets (logs, `status`).
    pub location: fn(&Config) -> String,
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

/// What a [`coalescing`] queue carries: rows to send, which can all fail at once.
pub trait Rows: Send + 'static {
    /// How many rows.
    fn row_count(&self) -> usize;
    /// Each of them not settled yet failed this way.
    fn fail_all(&self, failure: &PublishFailure);
}

impl Rows for Arc<Batch> {
    fn row_count(&self) -> usize {
        self.rows().len()
    }

    fn fail_all(&self, failure: &PublishFailure) {
        self.fail_rest(failure);
    }
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
pub fn coalescing<T, F, Fut>(
    in_flight: usize,
    max_rows: usize,
    send: F,
) -> tokio::sync::mpsc::UnboundedSender<T>
where
    T: Rows,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut queue) = tokio::sync::mpsc::unbounded_channel::<T>();
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        while let Some(first) = queue.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut rows = first.row_count();
            let mut batches = vec![first];
            while rows < max_rows {
                match queue.try_recv() {
                    Ok(b) => {
                        rows += b.row_count();
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
pub fn enqueue<T: Rows>(queue: &tokio::sync::mpsc::UnboundedSender<T>, batch: T) {
    if let Err(unsent) = queue.send(batch) {
        unsent.0.fail_all(&PublishFailure::new(
            FailureKind::Transient,
            "broker_unavailable",
            "the sink's sender has stopped",
        ));
    }
}
