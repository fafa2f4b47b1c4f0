//! The poller's rescan: every pending row below the reader's cursor that the poller does
//! not hold — rows of aggregates an operator released, and anything the reader's late-row
//! tracking missed — found by a query running beside the poller.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tracing::{debug, info};

use super::PollerState;
use crate::actors::messages::{AckerMsg, PollerMsg};
use crate::config::DeadLetterPolicy;
use crate::store::StoreError;
use crate::task::AbortOnDrop;

impl PollerState {
    /// Starts the rescan: every pending row below the cursor that the poller does not hold
    /// (rows of aggregates released by an operator, and anything a gap missed). The query
    /// runs beside the poller; [`PollerState::rescan_found`] takes its answer.
    pub(super) async fn start_rescan(
        &mut self,
        myself: &ActorRef<PollerMsg>,
    ) -> Result<(), StoreError> {
        let store = self.ctx.store.clone();
        self.rescan_requested = false;
        self.next_rescan =
            Instant::now() + Duration::from_millis(self.settings.poller.rescan_interval_ms);
        if self.settings.dead_letter_policy == DeadLetterPolicy::Hold {
            self.held = store.held_aggregates().await?.into_iter().collect();
        }
        let skip: Vec<String> = self.held.iter().cloned().collect();
        let upto = self.reader.cursor();
        let poller = myself.clone();
        self.rescan_task = Some(AbortOnDrop(tokio::spawn(async move {
            let found = store.pending_ids_upto(upto, &skip).await;
            let _ = poller.send_message(PollerMsg::RescanFound(found));
        })));
        Ok(())
    }

    /// The rescan's answer: loads the pending rows the poller does not hold.
    pub(super) async fn rescan_found(&mut self, pending: Vec<i64>) -> Result<usize, StoreError> {
        let Some(wiring) = &self.wiring else {
            return Ok(0);
        };
        if pending.is_empty() {
            return Ok(0);
        }
        // Rows acknowledged since (or before) the query may still wait for the acker and
        // look pending: have it write them now, so that the read below skips them.
        match ractor::call_t!(wiring.acker, AckerMsg::Flush, 10_000) {
            Ok(true) => {}
            _ => {
                debug!("Acker could not flush; rescan postponed.");
                self.rescan_requested = true;
                return Ok(0);
            }
        }
        let mut known: HashSet<i64> = self
            .queues
            .aggs
            .values()
            .filter_map(|a| a.in_flight.as_ref().map(|r| r.id))
            .collect();
        known.extend(self.with_retry.keys().copied());
        known.extend(
            self.queues
                .aggs
                .values()
                .flat_map(|a| a.queue.iter().map(|r| r.id)),
        );
        known.extend(
            self.queues
                .aggs
                .values()
                .flat_map(|a| a.deferred.iter().map(|d| d.id)),
        );
        let missing: Vec<i64> = pending
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let rows = self.ctx.store.fetch_ids(&missing).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let gap_rows = rows.iter().filter(|r| self.reader.found(r.id)).count();
        info!(
            rows = rows.len(),
            in_gaps = gap_rows,
            "Rescan found pending rows to publish."
        );
        let mut loaded = 0;
        for row in rows {
            loaded += self.load(row, true);
        }
        Ok(loaded)
    }
}
