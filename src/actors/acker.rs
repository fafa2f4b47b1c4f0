//! Acker: marks acknowledged rows published — deletes them (default) or sets
//! `published_at` — in batches, in the order the acknowledgements arrived.
//!
//! In: `Delivered(ids)` from the poller, `FlushNow` from the poller when it waits for
//! room, `Flush` (RPC) before a rescan or at shutdown.
//! Out: one fenced statement per batch on the `synchronous_commit = off` pool: ids gather
//! for 20 ms, and those that arrive while a statement runs go together in the next one.
//! Rows it holds count against `relay.max_in_flight`; when the poller waits for that room
//! the acker writes at once, and a `Tick` after the write wakes the poller.
//! Failure: a database error keeps the ids and retries with back-off (the rows are sent
//! again only if the process dies first — the bounded duplicates of design.md §2.3). A
//! fenced write means another instance owns the lease: the ids are dropped (that instance
//! re-sends the rows) and the supervisor is told.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, warn};

use super::messages::{AckerMsg, PollerMsg, SupervisorMsg};
use super::{Context, Flow};
use crate::config::OnPublish;
use crate::store::StoreError;

/// Rows per statement, at most.
const MAX_BATCH: usize = 10_000;

/// How long acknowledgements may gather before a statement goes out: one statement per
/// busy period of this length, however many events it carried (at 2,000 single-event
/// transactions a second, 40 rows each). A mark that waits only delays the row's
/// deletion, never its delivery; the rows it holds count against `relay.max_in_flight`,
/// and when the poller waits for that room the acker writes at once.
const GATHER: Duration = Duration::from_millis(20);

/// Rows that make a statement worth sending without gathering more.
const FLUSH_AT: usize = 1_000;

/// The acker behaviour.
pub struct Acker;

/// Start-up arguments.
pub struct AckerArgs {
    /// The incarnation's ports.
    pub ctx: Arc<Context>,
    /// Rows unmarked, and whether the poller waits for room.
    pub flow: Arc<Flow>,
    /// `relay.on_publish`: delete acknowledged rows, or mark them.
    pub on_publish: OnPublish,
    /// Woken when marks free room it waits for.
    pub poller: ActorRef<PollerMsg>,
}

/// What the acker owns.
pub struct AckerState {
    ctx: Arc<Context>,
    flow: Arc<Flow>,
    on_publish: OnPublish,
    poller: ActorRef<PollerMsg>,
    buffer: Vec<i64>,
    /// A `Gathered` is scheduled.
    gathering: bool,
    /// A `FlushNow` of its own is queued (behind the acknowledgements that arrived
    /// meanwhile, which it then writes too).
    flush_queued: bool,
    failures: u32,
}

impl Actor for Acker {
    type Msg = AckerMsg;
    type State = AckerState;
    type Arguments = AckerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AckerArgs,
    ) -> Result<AckerState, ActorProcessingErr> {
        Ok(AckerState {
            ctx: args.ctx,
            flow: args.flow,
            on_publish: args.on_publish,
            poller: args.poller,
            buffer: Vec::new(),
            gathering: false,
            flush_queued: false,
            failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: AckerMsg,
        state: &mut AckerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AckerMsg::Delivered(ids) => {
                state.buffer.extend(ids);
                // Everything that arrives meanwhile joins the same statement. A batch that
                // is big already, or rows the poller waits for, need not gather longer.
                if state.buffer.len() >= FLUSH_AT || state.flow.room_wanted() {
                    if !state.flush_queued {
                        state.flush_queued = true;
                        myself.send_message(AckerMsg::FlushNow)?;
                    }
                } else if !state.gathering {
                    state.gathering = true;
                    myself.send_after(GATHER, || AckerMsg::Gathered);
                }
            }
            AckerMsg::Gathered => {
                state.gathering = false;
                write_or_retry(&myself, state).await;
            }
            AckerMsg::FlushNow => {
                state.flush_queued = false;
                write_or_retry(&myself, state).await;
            }
            AckerMsg::Flush(reply) => {
                let ok = flush(state).await;
                let _ = reply.send(ok && state.buffer.is_empty());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut AckerState,
    ) -> Result<(), ActorProcessingErr> {
        // A clean stop (shutdown, pipeline restart) writes what it still holds.
        flush(state).await;
        Ok(())
    }
}

/// Writes the buffer; after a failure, tries again after a back-off (unless a gathering
/// window will).
async fn write_or_retry(myself: &ActorRef<AckerMsg>, state: &mut AckerState) {
    if !flush(state).await && !state.buffer.is_empty() && !state.gathering {
        state.gathering = true;
        let delay = super::exponential(
            Duration::from_millis(50),
            Duration::from_secs(5),
            state.failures,
        );
        myself.send_after(delay, || AckerMsg::Gathered);
    }
}

/// Writes the buffer; true when it is empty afterwards.
async fn flush(state: &mut AckerState) -> bool {
    while !state.buffer.is_empty() {
        let n = state.buffer.len().min(MAX_BATCH);
        let (ctx, flow) = (&state.ctx, &state.flow);
        let result = ctx
            .store
            .mark_published(&ctx.fence, &state.buffer[..n], state.on_publish)
            .await;
        match result {
            Ok(marked) => {
                state.buffer.drain(..n);
                flow.remove_unmarked(n);
                if flow.take_room_wanted() {
                    let _ = state.poller.send_message(PollerMsg::Tick);
                }
                state.failures = 0;
                ctx.health.set_db_up(true);
                metrics::counter!("outboxd_rows_marked_total").increment(marked);
                debug!(rows = n, marked, "Marked published.");
            }
            Err(StoreError::Fenced(lease)) => {
                warn!(rows = state.buffer.len(), %lease, "Lease lost; leaving rows to the new owner.");
                flow.remove_unmarked(state.buffer.len());
                state.buffer.clear();
                let _ = ctx
                    .supervisor
                    .send_message(SupervisorMsg::LeaseLost("acker write was fenced".into()));
                return true;
            }
            Err(StoreError::Db(e)) => {
                state.failures += 1;
                ctx.health.set_db_up(false);
                warn!(rows = state.buffer.len(), error = %e, "Cannot mark rows published; will retry.");
                return false;
            }
        }
    }
    true
}
