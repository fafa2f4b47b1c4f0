//! Publisher: one of `relay.partitions`; rows reach it by `hash(aggregate_id) % partitions`.
//!
//! In: `Publish(rows)` from the poller — at most one row per aggregate, in id order.
//! Out: every row is sent through the shared idempotent producer without waiting for the
//! previous one (pipelined); the delivery reports come back on librdkafka's polling thread
//! and, once the last row of the batch has one, the batch reports its outcome to the
//! poller (delivered rows, and failed rows with their classified failure) through
//! [`Shared::report`], which folds the reports that arrive together into one wake-up. A row that
//! cannot become a record fails here, permanently.
//! Failure: a crash loses nothing — the poller still holds every row it handed out and
//! sends them again to the restarted publisher.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::error::KafkaError;
use tracing::{debug, warn};

use super::poller::{Completion, PollerMsg};
use super::{Delivered, Row, Shared};
use crate::kafka::{
    DeliveryTarget, DeliveryToken, FailureKind, PublishFailure, build_record_with, classify,
};

/// The publisher behaviour.
pub struct Publisher;

/// Messages a publisher takes.
pub enum PublisherMsg {
    /// Send these rows (distinct aggregates) and report back.
    Publish(Vec<Row>),
}

/// Start-up arguments.
pub struct PublisherArgs {
    /// Partition index.
    pub partition: usize,
    /// Incarnation of this partition's publisher (stale reports are recognised by it).
    pub generation: u64,
    /// Pipeline context.
    pub shared: Arc<Shared>,
    /// Where reports go.
    pub poller: ActorRef<PollerMsg>,
}

/// What a publisher owns.
pub struct PublisherState {
    args: PublisherArgs,
    batches: u64,
}

impl Actor for Publisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = PublisherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: PublisherArgs,
    ) -> Result<PublisherState, ActorProcessingErr> {
        debug!(
            partition = args.partition,
            generation = args.generation,
            "Publisher started."
        );
        Ok(PublisherState { args, batches: 0 })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: PublisherMsg,
        state: &mut PublisherState,
    ) -> Result<(), ActorProcessingErr> {
        let PublisherMsg::Publish(rows) = msg;
        state.batches += 1;
        let every = state.args.shared.faults.panic_publisher_every;
        let crash_after =
            (every > 0 && state.batches.is_multiple_of(every)).then_some(rows.len() / 2);
        send_batch(&state.args, rows, crash_after);
        Ok(())
    }
}

/// One batch handed to the producer: it collects the delivery reports (on librdkafka's
/// polling thread) and, when the last one is in, reports the batch to the poller.
struct Batch {
    rows: Vec<Row>,
    /// One slot per row, each written once from librdkafka's polling thread (or from the
    /// publisher for rows the producer refused): no lock per delivery report.
    outcomes: Vec<OnceLock<Result<Instant, PublishFailure>>>,
    remaining: AtomicUsize,
    shared: Arc<Shared>,
    poller: ActorRef<PollerMsg>,
    partition: usize,
    generation: u64,
    sent_at: Instant,
    /// Exact acknowledgement times only for a delivery hook (demo, benchmark): reading the
    /// clock per row showed up in the relay's profile.
    exact_times: bool,
}

impl Batch {
    fn settle(&self, index: usize, outcome: Result<Instant, PublishFailure>) {
        // Each record has exactly one delivery report; a second one would be a librdkafka
        // bug, and the first outcome stands.
        let _ = self.outcomes[index].set(outcome);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.report();
        }
    }

    /// Runs once, after the last outcome is in (the `AcqRel` countdown orders every
    /// slot's write before this read).
    fn report(&self) {
        let now = Instant::now();
        let mut delivered = Vec::with_capacity(self.rows.len());
        let mut failed = Vec::new();
        for (row, outcome) in self.rows.iter().zip(&self.outcomes) {
            match outcome.get() {
                Some(Ok(acked_at)) => delivered.push(Delivered {
                    row: row.clone(),
                    sent_at: self.sent_at,
                    acked_at: if self.exact_times { *acked_at } else { now },
                }),
                Some(Err(f)) => failed.push((row.clone(), f.clone())),
                None => {}
            }
        }
        if !delivered.is_empty() {
            self.shared.note_delivery(now);
        }
        self.shared.report(
            Completion {
                partition: self.partition,
                generation: self.generation,
                delivered,
                failed,
                sent_at: self.sent_at,
            },
            &self.poller,
        );
    }
}

impl DeliveryTarget for Batch {
    fn delivered(&self, index: usize, result: Result<(), KafkaError>) {
        let outcome = match result {
            Ok(()) => Ok(if self.exact_times {
                Instant::now()
            } else {
                self.sent_at
            }),
            Err(e) => Err(classify(&e)),
        };
        self.settle(index, outcome);
    }
}

/// Sends every row without waiting for the previous one; the batch reports itself once
/// every row has an outcome. `crash_after` is the test fault: panic after that many rows.
fn send_batch(args: &PublisherArgs, rows: Vec<Row>, crash_after: Option<usize>) {
    let shared = &args.shared;
    let n = rows.len();
    let batch = Arc::new(Batch {
        outcomes: (0..n).map(|_| OnceLock::new()).collect(),
        remaining: AtomicUsize::new(n),
        rows,
        shared: shared.clone(),
        poller: args.poller.clone(),
        partition: args.partition,
        generation: args.generation,
        sent_at: Instant::now(),
        exact_times: shared.hooks.on_delivered.is_some(),
    });
    let target: Arc<dyn DeliveryTarget> = batch.clone();
    // Rows of a batch mostly share a topic: check its name once per run of equal topics.
    let mut valid_topic: Option<&str> = None;
    for (i, row) in batch.rows.iter().enumerate() {
        if crash_after == Some(i) {
            panic!(
                "test fault: publisher {} crashes mid-batch (OUTBOXD_TEST_PANIC_PUBLISHER_EVERY)",
                args.partition
            );
        }
        let topic_checked = valid_topic == Some(row.topic.as_str());
        let record = match build_record_with(row, topic_checked) {
            Ok(r) => r,
            Err(f) => {
                batch.settle(i, Err(f));
                continue;
            }
        };
        valid_topic = Some(row.topic.as_str());
        let token = Box::new(DeliveryToken {
            target: target.clone(),
            index: i,
        });
        if let Err((e, _)) = shared.producer.send(record.into_base_record(token)) {
            let f = classify(&e);
            if f.kind != FailureKind::Permanent {
                warn!(partition = args.partition, error = %e, "Producer refused a record.");
            }
            batch.settle(i, Err(f));
        }
    }
}
