//! What the actors say to each other, and what they report to the relay's owner: every
//! message type, and the rows' outcomes they carry. Below the actors: this module imports
//! none of them, and each actor imports only this to talk to the others.

use std::sync::Arc;
use std::time::Instant;

use ractor::{ActorRef, RpcReplyPort};

use crate::sink::PublishFailure;
use crate::store::{OutboxRow, Row, StoreError};

/// A row the broker acknowledged, and when.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The row.
    pub row: Row,
    /// When its batch was handed to the sink.
    pub sent_at: Instant,
    /// When the acknowledgement reached the relay.
    pub acked_at: Instant,
}

/// Called with every batch of acknowledged rows.
pub type DeliveredHook = Arc<dyn Fn(&[Delivered]) + Send + Sync>;

/// When the poller's query for some rows was sent, and when its rows were back.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimes {
    /// The query went out.
    pub started: Instant,
    /// Its rows were decoded.
    pub returned: Instant,
}

/// Called with every batch of rows the poller read.
pub type ReadHook = Arc<dyn Fn(&[OutboxRow], ReadTimes) + Send + Sync>;

/// Callbacks for embedding applications (the demo and the benchmark measure with them).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called with every batch of acknowledged rows, before they are marked.
    pub on_delivered: Option<DeliveredHook>,
    /// Called with every batch of rows read from the outbox (new rows, late rows in id
    /// gaps, and deferred rows read again), before they are handed out.
    pub on_read: Option<ReadHook>,
}

/// The other actors the poller talks to.
pub struct Wiring {
    /// One per partition.
    pub publishers: Vec<ActorRef<PublisherMsg>>,
    /// Marks acknowledged rows.
    pub acker: ActorRef<AckerMsg>,
    /// Decides about failures.
    pub retry: ActorRef<RetryMsg>,
}

/// A publisher's report on one batch.
pub struct Completion {
    /// Which publisher.
    pub partition: usize,
    /// Which incarnation of it.
    pub generation: u64,
    /// Rows the broker acknowledged.
    pub delivered: Vec<Delivered>,
    /// Rows that failed, with the classified failure.
    pub failed: Vec<(Row, PublishFailure)>,
    /// When the batch was handed to the producer.
    pub sent_at: Instant,
}

/// Messages the poller takes.
pub enum PollerMsg {
    /// Connects the poller to the other actors; it starts reading then.
    Wire(Wiring),
    /// Rows were inserted (NOTIFY).
    Wake,
    /// Fallback poll.
    Tick,
    /// Hand out what is ready (a retry came due, a rate limit allows more).
    Dispatch,
    /// Re-read everything pending (dead letters replayed or discarded).
    Rescan,
    /// The rescan's query came back: pending ids below the cursor it had then (or the
    /// error).
    RescanFound(Result<Vec<i64>, StoreError>),
    /// Publishers' batch outcomes wait in [`crate::actors::Flow::take_reports`] (one message for
    /// however many arrived meanwhile).
    Reports,
    /// A wanted read's time came (`poller.gather_ms`, `poller.coalesce_ms`).
    ReadDue,
    /// From the retry actor, once the row's back-off is over: it goes back to the head of
    /// its aggregate.
    RetryDue {
        /// The row, with its attempts updated.
        row: Row,
    },
    /// From the retry actor: the row is in the dead-letter table.
    DeadLettered {
        /// The row.
        row: Row,
        /// Its aggregate's later rows wait until an operator replays or discards it
        /// (`relay.dead_letter_policy = "hold"`); else the aggregate goes on.
        hold: bool,
    },
    /// Publisher `partition` was restarted: rows it held are sent again to the new one.
    PublisherRestarted {
        /// Partition index.
        partition: usize,
        /// The new incarnation.
        generation: u64,
        /// Its reference.
        publisher: ActorRef<PublisherMsg>,
    },
    /// Stop reading and handing out rows (graceful shutdown); in-flight rows finish.
    StopClaiming(RpcReplyPort<()>),
    /// How many rows are with the producer now.
    InFlight(RpcReplyPort<usize>),
    /// What the poller holds now.
    Stats(RpcReplyPort<PollerStats>),
    /// Run one read cycle now; replies with the rows loaded (for tests).
    PollNow(RpcReplyPort<usize>),
}

/// What the poller holds, for tests and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PollerStats {
    /// Rows in memory: queued, in flight, failing or waiting for a retry.
    pub in_memory: usize,
    /// Rows with the producer now.
    pub in_flight: usize,
    /// Ids of rows beyond `relay.max_rows_per_aggregate`, to be read again.
    pub deferred: usize,
    /// Rows deferred since the poller started (a row can be deferred more than once).
    pub deferred_total: u64,
    /// Aggregates held by an open dead letter.
    pub held: usize,
    /// Age of the oldest pending row the poller knows of, in seconds (see
    /// `outboxd_oldest_pending_age_seconds`); `None` when it holds none.
    pub oldest_pending_age_secs: Option<f64>,
}

/// Messages a publisher takes.
pub enum PublisherMsg {
    /// Send these rows (distinct aggregates) and report back.
    Publish(Vec<Row>),
}

/// Messages the acker takes.
pub enum AckerMsg {
    /// These rows were acknowledged by the broker.
    Delivered(Vec<i64>),
    /// Write out what is buffered now (the poller, when it waits for room; and after a
    /// failed write).
    FlushNow,
    /// The gathering window is over (internal).
    Gathered,
    /// Write out everything received so far; replies whether nothing is left buffered.
    Flush(RpcReplyPort<bool>),
}

/// Messages the retry actor takes.
pub enum RetryMsg {
    /// A publish attempt failed.
    Failed {
        /// The row, with the attempts counted so far.
        row: Row,
        /// The classified failure.
        failure: PublishFailure,
        /// When the row was handed to the producer.
        sent_at: Instant,
    },
}

/// Messages the cleanup actor takes.
pub enum CleanupMsg {
    /// Time for a run.
    Tick,
    /// Time to measure the backlog.
    Measure,
    /// Run now and reply with what was deleted (for tests and operators).
    RunNow(RpcReplyPort<CleanupReport>),
}

/// What one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Published rows deleted.
    pub published: u64,
    /// Resolved dead letters deleted.
    pub dead_letters: u64,
}

/// How the relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayExit {
    /// Graceful shutdown.
    Stopped,
    /// Too many crashes in the restart window.
    RestartBudgetExhausted(String),
    /// The set-up cannot keep the guarantees (a pooler in transaction mode).
    Misconfigured(String),
}

impl RelayExit {
    /// The process's exit code: 0 after a graceful shutdown, 1 past the restart budget
    /// (systemd or Kubernetes restarts it), 2 for a set-up that cannot keep the guarantees
    /// (restarting would not help).
    pub fn exit_code(&self) -> u8 {
        match self {
            RelayExit::Stopped => 0,
            RelayExit::RestartBudgetExhausted(_) => 1,
            RelayExit::Misconfigured(_) => 2,
        }
    }
}

/// Which part of the pipeline a restart concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Poller, publishers, acker and retry.
    Pipeline,
    /// One publisher.
    Publisher(usize),
    /// The cleanup actor.
    Cleanup,
}

/// What `Shutdown` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Rows still with the sink at the deadline (they stay pending and are sent
    /// again by the next run).
    pub abandoned_in_flight: usize,
    /// Whether every acknowledged row was marked.
    pub marked_all: bool,
}

/// A snapshot of the supervisor, for tests and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorInfo {
    /// Whether this instance holds the lease and runs the pipeline.
    pub active: bool,
    /// The lease epoch held.
    pub epoch: Option<i64>,
    /// Crash restarts so far.
    pub restarts: u64,
}

/// Messages the supervisor takes.
pub enum SupervisorMsg {
    /// Try to take the lease.
    AcquireLease,
    /// Extend the lease.
    RenewLease,
    /// Restart part of the pipeline (after back-off).
    Restart(Scope),
    /// A write was fenced: the lease with this epoch is gone.
    LeaseLost(String),
    /// The sink's client hit a fatal error and must be replaced.
    ProducerFatal(String),
    /// Graceful shutdown.
    Shutdown(RpcReplyPort<ShutdownReport>),
    /// Current state.
    Info(RpcReplyPort<SupervisorInfo>),
    /// The poller, for tests (`PollNow`).
    Poller(RpcReplyPort<Option<ActorRef<PollerMsg>>>),
    /// Look for a wedged sink client.
    CheckProducer,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_delivered", &self.on_delivered.is_some())
            .field("on_read", &self.on_read.is_some())
            .finish()
    }
}
