//! Publisher: one of `relay.partitions`; rows reach it by `hash(aggregate_id) % partitions`.
//!
//! In: `Publish(rows)` from the poller — at most one row per aggregate, in id order.
//! Out: the rows go to the sink as one [`Batch`]; the sink sends every row without waiting
//! for the previous one (pipelined) and settles each from wherever its acknowledgement
//! arrives (librdkafka's polling thread, a Redis or NATS task). Once the last row has an
//! outcome, the batch reports to the poller (delivered rows, and failed rows with their
//! classified failure) through [`Flow::report`], which folds the reports that arrive
//! together into one wake-up. The publisher knows nothing about any broker.
//! Failure: a crash loses nothing — the poller still holds every row it handed out and
//! sends them again to the restarted publisher.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;

use super::messages::{Completion, Delivered, PollerMsg, PublisherMsg};
use super::{Context, Flow};
use crate::sink::Batch;
use crate::store::Row;

/// The publisher behaviour.
pub struct Publisher;

/// Start-up arguments.
pub struct PublisherArgs {
    /// Partition index.
    pub partition: usize,
    /// Incarnation of this partition's publisher (stale reports are recognised by it).
    pub generation: u64,
    /// The incarnation's ports (the sink).
    pub ctx: Arc<Context>,
    /// Where outcomes wait for the poller; deliveries are noted there.
    pub flow: Arc<Flow>,
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
        send_batch(&state.args, rows);
        Ok(())
    }
}

/// Hands the rows to the sink as one batch, which reports to the poller once every row
/// has an outcome.
fn send_batch(args: &PublisherArgs, rows: Vec<Row>) {
    let ctx = args.ctx.clone();
    let flow = args.flow.clone();
    let poller = args.poller.clone();
    let (partition, generation) = (args.partition, args.generation);
    let exact_times = ctx.hooks.on_delivered.is_some();
    let sink = ctx.sink.clone();
    let batch = Batch::new(rows, exact_times, move |batch| {
        report(&ctx, &flow, &poller, partition, generation, batch)
    });
    sink.send(batch);
}

/// Runs once per batch, after its last outcome: delivered and failed rows to the poller.
fn report(
    ctx: &Context,
    flow: &Flow,
    poller: &ActorRef<PollerMsg>,
    partition: usize,
    generation: u64,
    batch: &Batch,
) {
    let now = Instant::now();
    let mut delivered = Vec::with_capacity(batch.rows().len());
    let mut failed = Vec::new();
    for (row, outcome) in batch.outcomes() {
        match outcome {
            Ok(acked_at) => delivered.push(Delivered {
                row: row.clone(),
                sent_at: batch.sent_at(),
                acked_at: if batch.exact_times() { *acked_at } else { now },
            }),
            Err(f) => failed.push((row.clone(), f.clone())),
        }
    }
    if !delivered.is_empty() {
        flow.note_delivery(now);
        ctx.health
            .clear_destination_problems(delivered.iter().map(|d| d.row.topic.as_str()));
    }
    flow.report(
        Completion {
            partition,
            generation,
            delivered,
            failed,
            sent_at: batch.sent_at(),
        },
        poller,
    );
}
