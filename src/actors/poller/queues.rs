//! An aggregate's rows in memory: the queue of rows not yet handed out, the ids deferred
//! past `relay.max_rows_per_aggregate`, and the one row in flight. The poller keeps one
//! [`Agg`] per aggregate with rows in memory; an aggregate is busy from the moment a row
//! is handed out until that row is settled, so its next row never overtakes it. Pure
//! bookkeeping, no I/O.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use crate::actors::{Row, partition_of};

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbox::store::OutboxRow;

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
