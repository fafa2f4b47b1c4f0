//! Reading a topic back and checking it: the demo's verification, the tests' and the
//! fault harness's ledger. Consumers use manual partition assignment from the beginning.
//!
//! Generic here (what was consumed, the ledger); per sink in `kafka`, `redis`, `nats`, each
//! built with its sink's feature.

use std::collections::{BTreeMap, HashMap, HashSet};

mod consumed;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;

pub use consumed::Consumed;
#[cfg(feature = "kafka")]
pub use kafka::{Reader, create_topic};
#[cfg(feature = "nats")]
pub use nats::{create_nats_stream, create_nats_stream_on, read_nats, read_nats_on};
#[cfg(feature = "redis")]
pub use redis::{read_redis, read_redis_cluster};

impl Consumed {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a ledger found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerReport {
    /// Events written (expected).
    pub expected: u64,
    /// Distinct expected events seen.
    pub delivered: u64,
    /// Expected events never seen.
    pub lost: u64,
    /// First sightings that came after a higher sequence number of the same aggregate.
    pub reordered: u64,
    /// Records seen more than once (resends).
    pub duplicates: u64,
    /// Records that belong to no written event.
    pub unexpected: u64,
    /// Events whose commit outcome was unknown (connection lost during COMMIT) and that
    /// did arrive; those that did not are not counted as lost.
    pub uncertain_delivered: u64,
}

/// Per-aggregate bookkeeping of sequence numbers: what was written, what was seen.
#[derive(Debug, Default)]
pub struct Ledger {
    written: HashMap<String, HashSet<u64>>,
    uncertain: HashMap<String, HashSet<u64>>,
    seen: HashMap<String, HashSet<u64>>,
    last_first: HashMap<String, u64>,
    duplicates: u64,
    reordered: u64,
    /// The first few reorders, for the report.
    pub reorder_examples: Vec<String>,
}

impl Ledger {
    /// Records that `seq` of `aggregate` was committed.
    pub fn written(&mut self, aggregate: &str, seq: u64) {
        self.written
            .entry(aggregate.to_string())
            .or_default()
            .insert(seq);
    }

    /// Records that `seq` of `aggregate` may have been committed: the connection broke
    /// during COMMIT. It may arrive; if it does not, it is not lost.
    pub fn uncertain(&mut self, aggregate: &str, seq: u64) {
        self.uncertain
            .entry(aggregate.to_string())
            .or_default()
            .insert(seq);
    }

    /// Records a sighting, in consumption order (per aggregate: per Kafka partition).
    pub fn seen(&mut self, aggregate: &str, seq: u64) {
        let seen = self.seen.entry(aggregate.to_string()).or_default();
        if !seen.insert(seq) {
            self.duplicates += 1;
            return;
        }
        let last = self.last_first.entry(aggregate.to_string()).or_insert(0);
        if seq < *last {
            self.reordered += 1;
            if self.reorder_examples.len() < 10 {
                self.reorder_examples
                    .push(format!("{aggregate}: seq {seq} first seen after {last}"));
            }
        } else {
            *last = seq;
        }
    }

    /// The verdict so far.
    pub fn report(&self) -> LedgerReport {
        let expected: u64 = self.written.values().map(|s| s.len() as u64).sum();
        let delivered: u64 = self
            .written
            .iter()
            .map(|(a, w)| {
                self.seen
                    .get(a)
                    .map_or(0, |s| w.iter().filter(|q| s.contains(q)).count() as u64)
            })
            .sum();
        let mut unexpected = 0;
        let mut uncertain_delivered = 0;
        for (a, s) in &self.seen {
            for q in s {
                if self.written.get(a).is_some_and(|w| w.contains(q)) {
                    continue;
                }
                if self.uncertain.get(a).is_some_and(|u| u.contains(q)) {
                    uncertain_delivered += 1;
                } else {
                    unexpected += 1;
                }
            }
        }
        LedgerReport {
            expected,
            delivered,
            lost: expected - delivered,
            reordered: self.reordered,
            duplicates: self.duplicates,
            unexpected,
            uncertain_delivered,
        }
    }

    /// Aggregates with events written but not seen, with the missing sequence numbers.
    pub fn missing(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out = BTreeMap::new();
        for (a, w) in &self.written {
            let s = self.seen.get(a);
            let mut m: Vec<u64> = w
                .iter()
                .filter(|q| !s.is_some_and(|s| s.contains(q)))
                .copied()
                .collect();
            if !m.is_empty() {
                m.sort();
                out.insert(a.clone(), m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_counts_loss_reorder_and_duplicates() {
        let mut l = Ledger::default();
        for s in 1..=4 {
            l.written("a", s);
        }
        l.written("b", 1);
        l.uncertain("b", 2);
        for s in [1, 3, 2, 3, 1] {
            l.seen("a", s);
        }
        l.seen("x", 9);
        l.seen("b", 2);
        let r = l.report();
        assert_eq!(r.expected, 5);
        assert_eq!(r.delivered, 3);
        assert_eq!(r.lost, 2);
        assert_eq!(r.reordered, 1, "2 after 3");
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.unexpected, 1);
        assert_eq!(r.uncertain_delivered, 1);
        assert_eq!(l.missing()["a"], vec![4]);
        assert_eq!(l.missing()["b"], vec![1]);
    }
}
