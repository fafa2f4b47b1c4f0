//! An aggregate's rows in memory: the queue of rows not yet handed out, the ids deferred
//! past `relay.max_rows_per_aggregate`, and the one row in flight. The poller keeps one
//! [`Agg`] per aggregate with rows in memory; an aggregate is busy from the moment a row
//! is handed out until that row is settled, so its next row never overtakes it. Pure
//! bookkeeping, no I/O.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap as HashMap;

use crate::actors::{Row, partition_of};
use crate::ratelimit::Throttled;
use crate::store::OutboxRow;

/// A row known by id only (see [`Agg::deferred`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deferred {
    pub(super) id: i64,
    pub(super) created_at: DateTime<Utc>,
}

/// An aggregate's rows in memory.
pub(super) struct Agg {
    /// Not yet handed out, ascending ids.
    pub(super) queue: VecDeque<Row>,
    /// Its pending rows beyond `relay.max_rows_per_aggregate`, by id (ascending, every one
    /// above every id in `queue`) with their `created_at`: read again by id when the queue
    /// runs low.
    pub(super) deferred: VecDeque<Deferred>,
    /// A row of this aggregate is in flight, failing, or waiting for a retry.
    pub(super) busy: bool,
    /// The row with the producer now, if any.
    pub(super) in_flight: Option<Row>,
    /// Its publisher, computed once.
    pub(super) partition: usize,
    /// The dispatch round that sent `in_flight`.
    pub(super) round: u64,
}

impl Agg {
    pub(super) fn new(aggregate_id: &str, partitions: usize) -> Agg {
        Agg {
            queue: VecDeque::new(),
            deferred: VecDeque::new(),
            busy: false,
            in_flight: None,
            partition: partition_of(aggregate_id, partitions),
            round: 0,
        }
    }

    /// Takes the in-flight row if it is the one with this id; with the round that sent it.
    pub(super) fn take_in_flight(&mut self, id: i64) -> Option<(Row, u64)> {
        if self.in_flight.as_ref().is_some_and(|r| r.id == id) {
            self.in_flight.take().map(|r| (r, self.round))
        } else {
            None
        }
    }
}

/// Every aggregate's rows in memory, and the counts the poller's bounds are made of.
pub(super) struct Queues {
    pub(super) aggs: HashMap<String, Agg>,
    /// Aggregates (by one of their rows) that may have a row to hand out.
    pub(super) runnable: VecDeque<Row>,
    /// Aggregates whose queue runs low while they have deferred ids.
    pub(super) refills: HashSet<String>,
    /// Rows held in memory: queued, in flight, waiting for a retry or a decision.
    pub(super) in_memory: usize,
    /// Ids held in the aggregates' `deferred` lists.
    pub(super) deferred: usize,
    /// Rows deferred since start.
    pub(super) deferred_total: u64,
    /// Rows with the producer now (each also in its aggregate's `in_flight`).
    pub(super) in_flight: usize,
    /// Publishers (`relay.partitions`).
    partitions: usize,
    /// `relay.max_rows_per_aggregate`: rows of one aggregate held as rows; beyond, ids.
    cap: usize,
}

impl Queues {
    pub(super) fn new(partitions: usize, cap: usize) -> Queues {
        Queues {
            aggs: HashMap::default(),
            runnable: VecDeque::new(),
            refills: HashSet::new(),
            in_memory: 0,
            deferred: 0,
            deferred_total: 0,
            in_flight: 0,
            partitions,
            cap: cap.max(1),
        }
    }

    /// Takes a row read from the table into its aggregate's queue, in id order (`sorted`:
    /// it may belong before rows already queued — a late commit, a refill); past the cap
    /// the highest rows give up their memory and keep only their ids. Returns 1 if the row
    /// is new here, 0 if it was already held.
    pub(super) fn load(&mut self, row: OutboxRow, sorted: bool) -> usize {
        // Not `entry()`: that would allocate the key for every row, most of which find
        // their aggregate already here.
        if !self.aggs.contains_key(&row.aggregate_id) {
            let agg = Agg::new(&row.aggregate_id, self.partitions);
            self.aggs.insert(row.aggregate_id.clone(), agg);
        }
        let agg = self
            .aggs
            .get_mut(&row.aggregate_id)
            .expect("inserted above");
        // Every deferred id is above every queued one: a row above the first deferred id
        // is deferred too, in order.
        if let Some(first) = agg.deferred.front()
            && row.id >= first.id
        {
            let pos = agg.deferred.partition_point(|d| d.id < row.id);
            if agg.deferred.get(pos).is_some_and(|d| d.id == row.id) {
                return 0;
            }
            agg.deferred.insert(
                pos,
                Deferred {
                    id: row.id,
                    created_at: row.created_at,
                },
            );
            self.deferred += 1;
            self.deferred_total += 1;
            return 1;
        }
        let was_idle = !agg.busy && agg.queue.is_empty();
        let row = Arc::new(row);
        if sorted {
            let pos = agg.queue.partition_point(|r| r.id < row.id);
            if agg.queue.get(pos).is_some_and(|r| r.id == row.id) {
                return 0;
            }
            agg.queue.insert(pos, row.clone());
        } else {
            agg.queue.push_back(row.clone());
        }
        self.in_memory += 1;
        while agg.queue.len() > self.cap {
            let last = agg.queue.pop_back().expect("over the cap");
            agg.deferred.push_front(Deferred {
                id: last.id,
                created_at: last.created_at,
            });
            self.in_memory -= 1;
            self.deferred += 1;
            self.deferred_total += 1;
        }
        if was_idle && !agg.queue.is_empty() {
            self.runnable.push_back(row);
        }
        1
    }

    /// Hands out the head row of every aggregate that is not busy, into its publisher's
    /// batch, marking it in flight in `round`. `admit` is the rate limiter: a topic limit
    /// skips that aggregate, the global limit stops; either way the aggregate stays first
    /// in line. Returns the rows handed out and, when a limit stopped some, how long until
    /// the limiter lets the next one go.
    pub(super) fn hand_out(
        &mut self,
        round: u64,
        batches: &mut [Vec<Row>],
        mut admit: impl FnMut(&Row) -> Result<(), Throttled>,
    ) -> (usize, Option<Duration>) {
        let mut held_back = Vec::new();
        let mut wait: Option<Duration> = None;
        let mut sent = 0;
        while let Some(key) = self.runnable.pop_front() {
            let Some(agg) = self.aggs.get_mut(&key.aggregate_id) else {
                continue;
            };
            if agg.busy {
                continue;
            }
            let Some(head) = agg.queue.front() else {
                continue;
            };
            match admit(head) {
                Ok(()) => {}
                Err(Throttled::Topic(w)) => {
                    wait = Some(wait.map_or(w, |x| x.min(w)));
                    held_back.push(key);
                    continue;
                }
                Err(Throttled::Global(w)) => {
                    wait = Some(wait.map_or(w, |x| x.min(w)));
                    held_back.push(key);
                    break;
                }
            }
            let row = agg.queue.pop_front().expect("head exists");
            agg.busy = true;
            agg.in_flight = Some(row.clone());
            agg.round = round;
            self.in_flight += 1;
            sent += 1;
            batches[agg.partition].push(row);
        }
        for key in held_back.into_iter().rev() {
            self.runnable.push_front(key);
        }
        (sent, wait)
    }

    /// The aggregate's in-flight row is settled (published, or dead-lettered with policy
    /// `continue`): its next row may go, and its deferred rows are read again once its
    /// queue is down to half the cap. An aggregate with nothing left is forgotten.
    pub(super) fn release(&mut self, row: &Row) {
        if let Some(agg) = self.aggs.get_mut(&row.aggregate_id) {
            agg.busy = false;
            if agg.queue.is_empty() && agg.deferred.is_empty() {
                self.aggs.remove(&row.aggregate_id);
                return;
            }
            if !agg.queue.is_empty() {
                self.runnable.push_back(row.clone());
            }
            if !agg.deferred.is_empty() && agg.queue.len() <= self.cap / 2 {
                self.refills.insert(row.aggregate_id.clone());
            }
        }
    }

    /// The aggregate's in-flight row if it is this one, with the round that sent it;
    /// counted out of the rows in flight.
    pub(super) fn take_in_flight(&mut self, row: &Row) -> Option<(Row, u64)> {
        let taken = self
            .aggs
            .get_mut(&row.aggregate_id)?
            .take_in_flight(row.id)?;
        self.in_flight -= 1;
        Some(taken)
    }

    /// A row whose retry back-off is over goes back to the head of its aggregate, first
    /// in line.
    pub(super) fn retry_due(&mut self, row: Row) {
        let agg = self
            .aggs
            .entry(row.aggregate_id.clone())
            .or_insert_with(|| Agg::new(&row.aggregate_id, self.partitions));
        agg.queue.push_front(row.clone());
        agg.busy = false;
        self.runnable.push_front(row);
    }

    /// Drops everything held of an aggregate (it is held by a dead letter: its rows stay
    /// in the table until an operator acts).
    pub(super) fn forget(&mut self, aggregate_id: &str) {
        if let Some(agg) = self.aggs.remove(aggregate_id) {
            self.in_memory -= agg.queue.len();
            self.deferred -= agg.deferred.len();
        }
        self.refills.remove(aggregate_id);
    }

    /// The rows in flight with one publisher, by id (sent again to its replacement).
    pub(super) fn in_flight_of(&self, partition: usize) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .aggs
            .values()
            .filter(|a| a.partition == partition)
            .filter_map(|a| a.in_flight.clone())
            .collect();
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// Which deferred ids to read again: for aggregates whose queue ran low, their first
    /// deferred ids up to the cap, at most `room` in all. Returns the ids and, per
    /// aggregate, how many of its ids were asked for (for [`Queues::refilled`]).
    pub(super) fn refill_plan(&self, mut room: usize) -> (Vec<i64>, Vec<(String, usize)>) {
        let mut ids = Vec::new();
        let mut taken = Vec::new();
        for key in &self.refills {
            if room == 0 {
                break;
            }
            let take = self.aggs.get(key).map_or(0, |agg| {
                let take = self
                    .cap
                    .saturating_sub(agg.queue.len())
                    .min(room)
                    .min(agg.deferred.len());
                ids.extend(agg.deferred.iter().take(take).map(|d| d.id));
                take
            });
            room -= take;
            taken.push((key.clone(), take));
        }
        (ids, taken)
    }

    /// The rows asked for by [`Queues::refill_plan`] were read (`rows`, those still
    /// pending): their ids leave the deferred lists, the rows are loaded, and an aggregate
    /// none of whose rows came back asks again for its next ones, or is forgotten when it
    /// has none. Returns the rows loaded.
    pub(super) fn refilled(&mut self, taken: Vec<(String, usize)>, rows: Vec<OutboxRow>) -> usize {
        let mut touched = Vec::with_capacity(taken.len());
        for (key, take) in taken {
            self.refills.remove(&key);
            if let Some(agg) = self.aggs.get_mut(&key) {
                agg.deferred.drain(..take);
                self.deferred -= take;
                touched.push(key);
            }
        }
        let mut loaded = 0;
        for row in rows {
            loaded += self.load(row, true);
        }
        for key in touched {
            if let Some(agg) = self.aggs.get(&key)
                && !agg.busy
                && agg.queue.is_empty()
            {
                if agg.deferred.is_empty() {
                    self.aggs.remove(&key);
                } else {
                    self.refills.insert(key);
                }
            }
        }
        loaded
    }

    /// The oldest `created_at` held: in flight, at a queue's head, or deferred.
    pub(super) fn oldest(&self) -> Option<DateTime<Utc>> {
        self.aggs
            .values()
            .flat_map(|a| {
                a.in_flight
                    .iter()
                    .map(|r| r.created_at)
                    .chain(a.queue.front().map(|r| r.created_at))
                    .chain(a.deferred.front().map(|d| d.created_at))
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::OutboxRow;

    fn row(id: i64, aggregate_id: &str) -> Row {
        Arc::new(OutboxRow {
            id,
            aggregate_type: "order".into(),
            aggregate_id: aggregate_id.into(),
            event_type: "order.created".into(),
            topic: "orders".into(),
            payload: Some(b"{}".to_vec()),
            payload_bytes: None,
            headers: String::new(),
            event_id: uuid::Uuid::new_v4(),
            created_at: Utc::now(),
            attempts: 0,
            tries: 0,
        })
    }

    fn outbox_row(id: i64, aggregate_id: &str) -> OutboxRow {
        Arc::unwrap_or_clone(row(id, aggregate_id))
    }

    /// Everything `hand_out` gives now, as (partition, id), admitting every row.
    fn hand_out_all(q: &mut Queues, round: u64) -> Vec<(usize, i64)> {
        let mut batches = vec![Vec::new(); 4];
        q.hand_out(round, &mut batches, |_| Ok(()));
        batches
            .iter()
            .enumerate()
            .flat_map(|(p, b)| b.iter().map(move |r| (p, r.id)))
            .collect()
    }

    #[test]
    fn an_aggregate_hands_out_one_row_at_a_time_in_id_order() {
        let mut q = Queues::new(4, 100);
        // Rows of o-1 arrive out of order (a late commit read after later rows).
        assert_eq!(q.load(outbox_row(3, "o-1"), true), 1);
        assert_eq!(q.load(outbox_row(1, "o-1"), true), 1);
        assert_eq!(q.load(outbox_row(2, "o-2"), true), 1);
        assert_eq!(q.load(outbox_row(1, "o-1"), true), 0, "already held");
        assert_eq!(q.in_memory, 3);

        let first = hand_out_all(&mut q, 1);
        let ids: Vec<i64> = first.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.len(), 2, "one row per aggregate: {first:?}");
        assert!(ids.contains(&1) && ids.contains(&2));
        assert_eq!(q.in_flight, 2);
        assert!(hand_out_all(&mut q, 2).is_empty(), "both aggregates busy");

        // o-1's row 1 is acknowledged: its row 3 goes next, to the same publisher.
        let (r1, round) = q.take_in_flight(&row(1, "o-1")).unwrap();
        assert_eq!(round, 1);
        q.release(&r1);
        let next = hand_out_all(&mut q, 3);
        assert_eq!(next, [(partition_of("o-1", 4), 3)]);
    }

    #[test]
    fn rows_past_the_cap_keep_only_their_ids_and_are_asked_for_again_at_half() {
        let mut q = Queues::new(4, 4);
        for id in 1..=10 {
            q.load(outbox_row(id, "o-1"), false);
        }
        assert_eq!((q.in_memory, q.deferred, q.deferred_total), (4, 6, 6));
        // A late row above the first deferred id is deferred too, in order.
        q.load(outbox_row(7, "o-1"), true);
        assert_eq!(q.deferred, 6, "7 was deferred already");

        // Hand out and settle rows 1..=2: the queue is at 2 = half the cap.
        for round in 1..=2 {
            let out = hand_out_all(&mut q, round);
            let (r, _) = q.take_in_flight(&row(out[0].1, "o-1")).unwrap();
            q.in_memory -= 1;
            q.release(&r);
        }
        assert!(q.refills.contains("o-1"));
        let (ids, taken) = q.refill_plan(100);
        assert_eq!(ids, [5, 6], "up to the cap: 4 - 2 queued");
        // Row 5 was published meanwhile by someone else: only 6 comes back.
        assert_eq!(q.refilled(taken, vec![outbox_row(6, "o-1")]), 1);
        assert_eq!(q.deferred, 4);
        assert!(q.refills.is_empty());
        let (ids, _) = q.refill_plan(1);
        assert!(ids.is_empty(), "not asked for again until it runs low");
    }

    #[test]
    fn a_throttled_topic_waits_first_in_line_and_others_go_on() {
        let mut q = Queues::new(4, 100);
        let mut orders = outbox_row(1, "o-1");
        orders.topic = "slow".into();
        q.load(orders, false);
        q.load(outbox_row(2, "o-2"), false);
        let mut batches = vec![Vec::new(); 4];
        let (sent, wait) = q.hand_out(1, &mut batches, |r| {
            if r.topic == "slow" {
                Err(Throttled::Topic(Duration::from_millis(30)))
            } else {
                Ok(())
            }
        });
        assert_eq!((sent, wait), (1, Some(Duration::from_millis(30))));
        assert_eq!(
            hand_out_all(&mut q, 2),
            [(partition_of("o-1", 4), 1)],
            "o-1 next, once admitted"
        );

        // The global limit stops the round at once.
        let mut q = Queues::new(4, 100);
        q.load(outbox_row(1, "a"), false);
        q.load(outbox_row(2, "b"), false);
        let (sent, _) = q.hand_out(1, &mut vec![Vec::new(); 4], |_| {
            Err(Throttled::Global(Duration::from_millis(5)))
        });
        assert_eq!(sent, 0);
        let ids: Vec<i64> = hand_out_all(&mut q, 2).iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.len(), 2, "both still in line");
    }

    #[test]
    fn a_retried_row_goes_first_and_a_forgotten_aggregate_gives_back_its_memory() {
        let mut q = Queues::new(4, 2);
        for id in 1..=4 {
            q.load(outbox_row(id, "o-1"), false);
        }
        let out = hand_out_all(&mut q, 1);
        let (r1, _) = q.take_in_flight(&row(out[0].1, "o-1")).unwrap();
        q.retry_due(r1);
        assert_eq!(
            hand_out_all(&mut q, 2),
            [(partition_of("o-1", 4), 1)],
            "the retried row first"
        );
        assert_eq!(
            q.in_flight_of(partition_of("o-1", 4))
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(
            q.oldest(),
            q.in_flight_of(partition_of("o-1", 4))[0].created_at.into()
        );

        q.forget("o-1");
        // The row in flight is the caller's to count; queued and deferred are gone.
        assert_eq!((q.in_memory, q.deferred), (2 - 1, 0));
        assert!(q.oldest().is_none());
        assert!(!q.aggs.contains_key("o-1"));
    }

    #[test]
    fn only_the_row_in_flight_is_taken_back_with_the_round_that_sent_it() {
        let mut agg = Agg::new("o-1", 4);
        assert!(agg.take_in_flight(1).is_none(), "nothing in flight");
        agg.in_flight = Some(row(1, "o-1"));
        agg.round = 42;
        assert!(agg.take_in_flight(2).is_none(), "another row's report");
        let (taken, round) = agg.take_in_flight(1).expect("the row in flight");
        assert_eq!((taken.id, round), (1, 42));
        assert!(agg.in_flight.is_none());
        assert!(agg.take_in_flight(1).is_none(), "taken once");
    }
}
