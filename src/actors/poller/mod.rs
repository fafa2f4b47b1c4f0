//! Poller: finds pending rows and hands them out, one row per aggregate at a time.
//!
//! In: `Wake` (a NOTIFY from the insert trigger), `ReadDue` (a coalesced read's window
//! ended), `Tick` (`poller.interval_ms` fallback), `Reports` (publishers' batch outcomes),
//! `RetryDue` / `DeadLettered` (from the retry actor), `Rescan` (`dead-letters
//! replay|discard`, or every `poller.rescan_interval_ms`).
//! Out: `Publish(rows)` to publisher `hash(aggregate_id) % partitions`; acknowledged ids to
//! the acker; failures to the retry actor.
//!
//! When it reads (`pace.rs`). At most one read at a time. A lone event is read at once;
//! after a read that found rows the next one waits a gathering window that grows with the
//! arrival rate (up to `poller.gather_ms`), so that everything committed meanwhile shares
//! one read, one dispatch, one produce request per partition and one report. A backlog (a
//! read cut by `poller.batch_size`) is read on at once. Under steady load the poller reads
//! on that cadence by itself and turns the store's row wake-ups off (PostgreSQL:
//! `UNLISTEN`) until reads find nothing again.
//!
//! How rows are found. Through the store's reader ([`crate::store::PendingReader`]):
//! oldest first, never skipping a row whose transaction commits late (on PostgreSQL by
//! tracking id gaps until the snapshot horizon passes them). A periodic full rescan is a
//! second safety net.
//!
//! Order. An aggregate has at most one row in flight, failing or waiting for a retry;
//! its next row goes only after the broker acknowledged the previous one (or it was
//! dead-lettered with `dead_letter_policy = "continue"`). Other aggregates never wait for
//! it. Rows in memory — read, in flight, or acknowledged and not yet marked — are bounded
//! by `relay.max_in_flight` (back-pressure). An aggregate holds at most
//! `relay.max_rows_per_aggregate` of them: of a longer backlog only the ids are kept
//! (*deferred*), and its rows are read again by id as its queue empties, so that one busy
//! or failing aggregate cannot fill the memory bound and starve the others.
//!
//! Failure: database errors are retried with back-off (readiness goes down); a crash loses
//! only in-memory state, which the supervisor rebuilds from the table.
//!
//! The bookkeeping is pure and has its own file and tests: `queues.rs` (each aggregate's
//! queue, deferred ids and row in flight, and who goes next). This file is the actor:
//! messages, reads, and what it sends.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rustc_hash::FxHashMap as HashMap;
use tracing::{debug, info, warn};

use super::messages::{
    AckerMsg, Completion, PollerMsg, PollerStats, PublisherMsg, RetryMsg, Wiring,
};
use super::{Context, Flow};
use crate::config::DeadLetterPolicy;
use crate::store::{OutboxRow, PendingReader, Row, StoreError, Wakeup};
use crate::task::AbortOnDrop;

mod pace;
mod queues;
mod rescan;
mod settings;

use pace::Pace;
use queues::Queues;
pub use settings::{PollerArgs, Settings};

/// The poller behaviour.
pub struct Poller;

/// What the poller owns.
pub struct PollerState {
    ctx: Arc<Context>,
    flow: Arc<Flow>,
    settings: Settings,
    wiring: Option<Wiring>,
    generations: Vec<u64>,
    /// Finds pending rows, late committers included.
    reader: Box<dyn PendingReader>,
    /// Every aggregate's rows in memory.
    queues: Queues,
    /// When the oldest pending age was last published.
    oldest_reported_at: Option<Instant>,
    /// Reused per dispatch: one batch per publisher.
    batches: Vec<Vec<Row>>,
    /// Rows the retry actor has: being decided, or waiting out their back-off. Their
    /// aggregates send nothing meanwhile.
    with_retry: HashMap<i64, Row>,
    held: HashSet<String>,
    held_loaded: bool,
    claiming: bool,
    more: bool,
    wake_flag: Arc<AtomicBool>,
    dispatch_armed: bool,
    /// The store's wake-up task (PostgreSQL: LISTEN, which holds a pool connection): it
    /// must die with the poller, also when the poller panics (then `post_stop` does not
    /// run, but the state is dropped).
    _watcher: Option<AbortOnDrop>,
    next_rescan: Instant,
    rescan_requested: bool,
    /// The rescan's query, running beside the poller (it walks the whole pending index,
    /// which takes seconds while vacuum is held back): aborted with the poller.
    rescan_task: Option<AbortOnDrop>,
    db_failures: u32,
    db_retry_at: Option<Instant>,
    /// The latest dispatch round (every dispatch that sends rows starts one).
    round: u64,
    /// Rows of the latest round still with the producer.
    round_pending: usize,
    /// When the latest round was dispatched.
    round_started: Instant,
    /// A read is wanted (a wake-up, or the poller's own cadence) and waits for its time.
    read_wanted: bool,
    /// The earliest `ReadDue` scheduled.
    read_due_at: Option<Instant>,
    /// When reads may go; whether row wake-ups are wanted.
    pace: Pace,
    /// Tells the store's watcher whether row wake-ups are wanted.
    row_wakeups: tokio::sync::watch::Sender<bool>,
}

impl Actor for Poller {
    type Msg = PollerMsg;
    type State = PollerState;
    type Arguments = PollerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        PollerArgs {
            ctx,
            flow,
            settings,
        }: PollerArgs,
    ) -> Result<PollerState, ActorProcessingErr> {
        let wake_flag = Arc::new(AtomicBool::new(false));
        let (row_wakeups, wanted) = tokio::sync::watch::channel(true);
        let watcher = ctx
            .store
            .watch(wake_fn(myself.clone(), wake_flag.clone()), wanted)
            .map(AbortOnDrop);
        let pace = Pace::new(
            Duration::from_millis(settings.poller.gather_ms),
            settings.poller.gather_full_rate,
            Duration::from_millis(settings.poller.coalesce_ms),
        );
        let reader = ctx.store.reader();
        let interval = Duration::from_millis(settings.poller.interval_ms);
        myself.send_interval(interval, || PollerMsg::Tick);
        let partitions = settings.partitions;
        let max_rows_per_aggregate = settings.max_rows_per_aggregate;
        let rescan = Duration::from_millis(settings.poller.rescan_interval_ms);
        Ok(PollerState {
            ctx,
            flow,
            settings,
            wiring: None,
            generations: vec![0; partitions],
            reader,
            queues: Queues::new(partitions, max_rows_per_aggregate),
            oldest_reported_at: None,
            batches: vec![Vec::new(); partitions],
            with_retry: HashMap::default(),
            held: HashSet::new(),
            held_loaded: false,
            claiming: true,
            more: true,
            wake_flag,
            dispatch_armed: false,
            _watcher: watcher,
            next_rescan: Instant::now() + rescan,
            rescan_requested: false,
            rescan_task: None,
            db_failures: 0,
            db_retry_at: None,
            round: 0,
            round_pending: 0,
            round_started: Instant::now(),
            read_wanted: false,
            read_due_at: None,
            pace,
            row_wakeups,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PollerMsg,
        st: &mut PollerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PollerMsg::Wire(w) => {
                st.wiring = Some(w);
                st.cycle(&myself).await;
            }
            PollerMsg::Wake => st.want_read(&myself).await,
            PollerMsg::ReadDue => {
                if st.read_due_at.is_some_and(|t| t <= Instant::now()) {
                    st.read_due_at = None;
                }
                if st.read_wanted {
                    st.want_read(&myself).await;
                }
            }
            PollerMsg::Tick => {
                st.cycle(&myself).await;
                st.report_oldest();
            }
            PollerMsg::Dispatch => {
                st.dispatch_armed = false;
                st.dispatch(&myself);
            }
            PollerMsg::Rescan => {
                st.rescan_requested = true;
                st.cycle(&myself).await;
            }
            PollerMsg::RescanFound(found) => {
                st.rescan_task = None;
                match found {
                    Ok(pending) => match st.rescan_found(pending).await {
                        Ok(n) => metrics::counter!("outboxd_rows_read_total").increment(n as u64),
                        Err(e) => {
                            warn!(error = %e, "Rescan could not read the rows it found; retrying.");
                            st.rescan_requested = true;
                        }
                    },
                    Err(e) => {
                        warn!(error = %e, "Rescan failed; retrying.");
                        st.rescan_requested = true;
                    }
                }
                st.dispatch(&myself);
            }
            PollerMsg::Reports => {
                for c in st.flow.take_reports() {
                    st.completed(c);
                }
                st.dispatch(&myself);
                let batch = st.settings.poller.batch_size as usize;
                let want_rows = st.more || !st.queues.refills.is_empty();
                if want_rows {
                    if st.room() >= batch.min(st.max_in_memory() / 2).max(1) {
                        st.cycle(&myself).await;
                    } else {
                        st.want_room();
                    }
                } else if st.read_wanted {
                    st.want_read(&myself).await;
                }
            }
            PollerMsg::RetryDue { row } => {
                // A row of an earlier incarnation's (or already settled) is not ours.
                if st.with_retry.remove(&row.id).is_some() {
                    st.queues.retry_due(row);
                }
                st.dispatch(&myself);
            }
            PollerMsg::DeadLettered { row, hold } => {
                st.dead_lettered(row, hold);
                st.dispatch(&myself);
            }
            PollerMsg::PublisherRestarted {
                partition,
                generation,
                publisher,
            } => st.publisher_restarted(partition, generation, publisher),
            PollerMsg::StopClaiming(reply) => {
                st.claiming = false;
                info!(in_flight = st.queues.in_flight, "Stopped claiming rows.");
                let _ = reply.send(());
            }
            PollerMsg::InFlight(reply) => {
                let _ = reply.send(st.queues.in_flight);
            }
            PollerMsg::Stats(reply) => {
                let _ = reply.send(PollerStats {
                    in_memory: st.queues.in_memory,
                    in_flight: st.queues.in_flight,
                    deferred: st.queues.deferred,
                    deferred_total: st.queues.deferred_total,
                    held: st.held.len(),
                    oldest_pending_age_secs: st.oldest_pending().map(age_secs),
                });
            }
            PollerMsg::PollNow(reply) => {
                let n = st.cycle(&myself).await;
                let _ = reply.send(n);
            }
        }
        st.flow.set_in_flight(st.queues.in_flight);
        metrics::gauge!("outboxd_rows_in_flight").set(st.queues.in_flight as f64);
        metrics::gauge!("outboxd_rows_in_memory").set(st.queues.in_memory as f64);
        metrics::gauge!("outboxd_rows_deferred").set(st.queues.deferred as f64);
        Ok(())
    }
}

impl PollerState {
    fn max_in_memory(&self) -> usize {
        self.settings.max_in_flight
    }

    /// Rows that may be read now: the memory bound less the rows held, including those
    /// acknowledged and waiting for the acker (so that a crash re-sends at most
    /// `relay.max_in_flight` rows).
    fn room(&self) -> usize {
        self.max_in_memory()
            .saturating_sub(self.queues.in_memory + self.flow.unmarked())
    }

    /// Rows are waiting to be read but the memory bound is used up: when part of it is
    /// acknowledged rows the acker has not marked yet, ask it to write them now rather than
    /// at the end of its gathering window, and to wake the poller after.
    fn want_room(&self) {
        self.flow.want_room();
        if self.flow.room_wanted()
            && let Some(w) = &self.wiring
        {
            let _ = w.acker.send_message(AckerMsg::FlushNow);
        }
    }

    /// The oldest pending row the poller knows of: queued, in flight, waiting for a retry,
    /// or deferred. (Rows of held aggregates are not read; the dead-letter gauges count
    /// them. Rows not read yet are newer than every row read.) Computed from memory: the
    /// `ORDER BY id LIMIT 1` query it replaces walks every dead index entry while a long
    /// transaction holds vacuum back — seconds per call at a few million.
    fn oldest_pending(&self) -> Option<DateTime<Utc>> {
        let waiting = self.with_retry.values().map(|r| r.created_at).min();
        self.queues.oldest().into_iter().chain(waiting).min()
    }

    /// Publishes the oldest pending row's age, at most once a second.
    fn report_oldest(&mut self) {
        let now = Instant::now();
        if self
            .oldest_reported_at
            .is_some_and(|t| now < t + Duration::from_secs(1))
        {
            return;
        }
        self.oldest_reported_at = Some(now);
        let age = self.oldest_pending().map_or(0.0, age_secs);
        metrics::gauge!("outboxd_oldest_pending_age_seconds").set(age);
    }

    /// Deferred ids are small, but not free: past this many, reading waits for them.
    fn max_deferred(&self) -> usize {
        self.max_in_memory().saturating_mul(100)
    }

    /// Reads what there is to read (if allowed), then hands out what is ready.
    async fn cycle(&mut self, myself: &ActorRef<PollerMsg>) -> usize {
        if !self.claiming || self.wiring.is_none() {
            return 0;
        }
        let mut loaded = 0;
        let mut read = false;
        let db_ready = self.db_retry_at.is_none_or(|t| Instant::now() >= t);
        if db_ready && self.flow.lease_valid() {
            match self.read(myself).await {
                Ok(n) => {
                    loaded = n;
                    read = true;
                    if self.db_failures > 0 {
                        info!(
                            after_failures = self.db_failures,
                            "Reading the outbox again."
                        );
                    }
                    self.db_failures = 0;
                    self.db_retry_at = None;
                    self.ctx.health.set_db_up(true);
                }
                Err(e) => {
                    self.db_failures += 1;
                    self.ctx.health.set_db_up(false);
                    let pause = super::exponential(
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                        self.db_failures,
                    );
                    if self.db_failures == 1 || self.db_failures.is_multiple_of(20) {
                        warn!(error = %e, failures = self.db_failures, "Cannot read the outbox; retrying.");
                    }
                    self.db_retry_at = Some(Instant::now() + pause);
                    myself.send_after(pause, || PollerMsg::Tick);
                }
            }
        }
        self.dispatch(myself);
        if read && self.pace.paced() && !self.more && !self.read_wanted {
            // No wake-ups come: the poller's next read is its own. (After a failed read
            // the database back-off's Tick reads again.)
            self.read_wanted = true;
            if let Some(at) = self.pace.read_at(self.latest_round()) {
                self.read_due(myself, at);
            }
        }
        loaded
    }

    /// One read: late rows in gaps, new rows after the cursor, and the rescan when due.
    async fn read(&mut self, myself: &ActorRef<PollerMsg>) -> Result<usize, StoreError> {
        let store = self.ctx.store.clone();
        let batch = self.settings.poller.batch_size as i64;
        let mut loaded = 0;

        if self.settings.dead_letter_policy == DeadLetterPolicy::Hold && !self.held_loaded {
            self.held = store.held_aggregates().await?.into_iter().collect();
            self.held_loaded = true;
        }

        loaded += self.refill().await?;
        let room = if self.queues.deferred >= self.max_deferred() {
            0
        } else {
            self.room() as i64
        };
        if room < batch {
            self.want_room();
        }
        if room > 0 {
            let read = self.reader.read(batch.min(room)).await?;
            self.note_read(&read.rows, read.started);
            if let Some(wanted) = self.pace.read(read.started, read.rows.len()) {
                debug!(wanted, "Row wake-ups switched.");
                self.row_wakeups.send_replace(wanted);
            }
            metrics::gauge!("outboxd_poller_gather_seconds").set(self.pace.gather().as_secs_f64());
            let mut late = 0;
            for row in read.rows {
                // Rows at or below the cursor committed late: they go in id order among
                // the rows of their aggregate already held.
                let is_late = row.id <= read.cursor_before;
                late += usize::from(is_late);
                loaded += self.load(row, is_late);
            }
            if late > 0 {
                metrics::counter!("outboxd_late_rows_total").increment(late as u64);
            }
            self.more = read.full;
            if self.more {
                // More is waiting: read again right after handing these out.
                if !self.wake_flag.swap(true, Ordering::AcqRel) {
                    let _ = myself.send_message(PollerMsg::Wake);
                }
            }
        } else {
            self.more = true;
        }

        if (self.rescan_requested || Instant::now() >= self.next_rescan)
            && self.rescan_task.is_none()
        {
            self.start_rescan(myself).await?;
        }
        metrics::counter!("outboxd_rows_read_total").increment(loaded as u64);
        Ok(loaded)
    }

    /// Tells the read hook (demo, benchmark) about rows a query started at `started`
    /// returned.
    fn note_read(&self, rows: &[OutboxRow], started: Instant) {
        if let Some(hook) = &self.ctx.hooks.on_read
            && !rows.is_empty()
        {
            let returned = Instant::now();
            hook(rows, super::ReadTimes { started, returned });
        }
    }

    /// Takes a row in: into its aggregate's queue (in id order when `sorted`), or, past
    /// `relay.max_rows_per_aggregate`, only its id into the aggregate's deferred list.
    /// Returns 1 when the row was taken in (queued or deferred), 0 when it was already
    /// known or its aggregate is held.
    fn load(&mut self, row: OutboxRow, sorted: bool) -> usize {
        if self.held.contains(&row.aggregate_id) {
            return 0;
        }
        self.queues.load(row, sorted)
    }

    /// Reads again, by id, the deferred rows of aggregates whose queue runs low: as many
    /// as the memory bound allows, in one statement. Rows no longer pending (published or
    /// dead-lettered meanwhile) simply do not come back.
    async fn refill(&mut self) -> Result<usize, StoreError> {
        if self.queues.refills.is_empty() {
            return Ok(0);
        }
        let (ids, taken) = self.queues.refill_plan(self.room());
        // Nothing else runs until the rows are back (one actor, one message at a time), so
        // the ids stay in the lists until then: a failed read changes nothing.
        let rows = if ids.is_empty() {
            Vec::new()
        } else {
            let started = Instant::now();
            let rows = self.ctx.store.fetch_ids(&ids).await?;
            self.note_read(&rows, started);
            rows
        };
        // Rows of an aggregate held meanwhile are not loaded.
        let rows = rows
            .into_iter()
            .filter(|r| !self.held.contains(&r.aggregate_id))
            .collect();
        let loaded = self.queues.refilled(taken, rows);
        if !ids.is_empty() {
            debug!(asked = ids.len(), loaded, "Read deferred rows again.");
        }
        Ok(loaded)
    }

    /// Hands the head row of every ready aggregate to its publisher.
    fn dispatch(&mut self, myself: &ActorRef<PollerMsg>) {
        if !self.claiming {
            return;
        }
        let Some(wiring) = &self.wiring else {
            return;
        };
        if !self.flow.lease_valid() {
            self.arm_dispatch(myself, Duration::from_millis(100));
            return;
        }
        let mut batches = std::mem::take(&mut self.batches);
        let limits = &self.ctx.limits;
        let limited = limits.any();
        let round = self.round + 1;
        let (sent, wait) = self.queues.hand_out(round, &mut batches, |row| {
            if limited {
                limits.check(&row.topic)
            } else {
                Ok(())
            }
        });
        if sent > 0 {
            self.round = round;
            self.round_pending = sent;
            self.round_started = Instant::now();
        }
        for (p, batch) in batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                metrics::counter!("outboxd_publish_batches_total").increment(1);
                let rows = std::mem::replace(batch, Vec::with_capacity(batch.len()));
                // A dead publisher is being restarted: its rows stay in flight and are
                // sent again to the new one.
                let _ = wiring.publishers[p].send_message(PublisherMsg::Publish(rows));
            }
        }
        self.batches = batches;
        if let Some(w) = wait {
            self.arm_dispatch(myself, w.max(Duration::from_millis(1)));
        }
    }

    fn arm_dispatch(&mut self, myself: &ActorRef<PollerMsg>, after: Duration) {
        if !self.dispatch_armed {
            self.dispatch_armed = true;
            myself.send_after(after, || PollerMsg::Dispatch);
        }
    }

    /// The aggregate's in-flight row is done: its next row may go, and its deferred rows
    /// are read again once its queue is down to half the cap.
    fn release(&mut self, row: &Row) {
        self.queues.release(row);
    }

    fn completed(&mut self, c: Completion) {
        if self.wiring.is_none() {
            return;
        }
        // A report from a publisher that crashed: its rows were sent again to the new one,
        // which decides; what this one delivered is still marked.
        let stale = self.generations.get(c.partition) != Some(&c.generation);
        let mut ids = Vec::with_capacity(c.delivered.len());
        for d in &c.delivered {
            ids.push(d.row.id);
            if !stale && self.take_in_flight(&d.row).is_some() {
                self.queues.in_memory -= 1;
                self.release(&d.row);
            }
        }
        let wiring = self.wiring.as_ref().expect("wired");
        if !ids.is_empty() {
            if let Some(hook) = &self.ctx.hooks.on_delivered {
                hook(&c.delivered);
            }
            crate::telemetry::record_delivered(
                self.ctx.sink.kind().name(),
                self.settings.topic_labels,
                &c.delivered,
            );
            // Held against the memory bound until the acker has marked them.
            self.flow.add_unmarked(ids.len());
            let _ = wiring.acker.send_message(AckerMsg::Delivered(ids));
        }
        if stale {
            return;
        }
        for (row, failure) in c.failed {
            if self.take_in_flight(&row).is_some() {
                self.with_retry.insert(row.id, row.clone());
                let wiring = self.wiring.as_ref().expect("wired");
                let _ = wiring.retry.send_message(RetryMsg::Failed {
                    row,
                    failure,
                    sent_at: c.sent_at,
                });
            }
        }
    }

    /// The aggregate's in-flight row, if it is this one; counts it out.
    fn take_in_flight(&mut self, row: &Row) -> Option<Row> {
        let (taken, round) = self.queues.take_in_flight(row)?;
        if round == self.round {
            self.round_pending = self.round_pending.saturating_sub(1);
        }
        Some(taken)
    }

    fn dead_lettered(&mut self, row: Row, hold: bool) {
        if self.with_retry.remove(&row.id).is_none() {
            return;
        }
        self.queues.in_memory -= 1;
        if hold {
            // Later rows stay pending in the table until an operator acts.
            self.queues.forget(&row.aggregate_id);
            info!(aggregate = %row.aggregate_id, "Holding the aggregate until its dead letter is replayed or discarded.");
            self.held.insert(row.aggregate_id.clone());
        } else {
            self.release(&row);
        }
    }

    fn publisher_restarted(
        &mut self,
        partition: usize,
        generation: u64,
        publisher: ActorRef<PublisherMsg>,
    ) {
        let Some(wiring) = &mut self.wiring else {
            return;
        };
        self.generations[partition] = generation;
        let rows = self.queues.in_flight_of(partition);
        info!(
            partition,
            generation,
            resent = rows.len(),
            "Publisher restarted; sending its rows again."
        );
        if !rows.is_empty() {
            let _ = publisher.send_message(PublisherMsg::Publish(rows));
        }
        wiring.publishers[partition] = publisher;
    }
}

/// Seconds since `t` (0 for a time in the future: clocks of the database and the relay
/// may differ a little).
fn age_secs(t: DateTime<Utc>) -> f64 {
    (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
}

/// What the store's watcher calls: a wake-up (at most one queued at a time: the flag
/// stays set until the poller reads) or a rescan. False once the poller is gone.
fn wake_fn(poller: ActorRef<PollerMsg>, flag: Arc<AtomicBool>) -> crate::store::WakeFn {
    Arc::new(move |what| match what {
        Wakeup::Rescan => poller.send_message(PollerMsg::Rescan).is_ok(),
        Wakeup::Rows => {
            flag.swap(true, Ordering::AcqRel) || poller.send_message(PollerMsg::Wake).is_ok()
        }
    })
}
