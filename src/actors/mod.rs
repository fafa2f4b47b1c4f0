//! The relay's actors (ractor on tokio), one per file:
//!
//! - [`supervisor`] — holds the lease, starts the others, restarts crashed ones with
//!   back-off, stops the relay past a restart budget, drives graceful shutdown;
//! - [`poller`] — reads pending rows (NOTIFY-woken), keeps per-aggregate order, hands rows
//!   to publishers, applies back-pressure and rate limits;
//! - [`publisher`] — `relay.partitions` of them; hand rows to the sink (Kafka, Redis
//!   Streams, NATS JetStream: [`crate::sink`]) in pipelined batches;
//! - [`acker`] — marks acknowledged rows published (delete or mark), in batches;
//! - [`retry`] — classifies failures: back-off and retry, or dead-letter;
//! - [`cleanup`] — deletes old published rows and resolved dead letters.

pub mod acker;
pub mod cleanup;
pub mod flow;
pub mod lease;
pub mod messages;
pub mod poller;
pub mod publisher;
pub mod retry;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;

use crate::health::Health;
use crate::ratelimit::RateLimits;
use crate::sink::Sink;
use crate::store::{Fence, Store};

use messages::SupervisorMsg;

pub use crate::store::Row;
pub use flow::Flow;
pub use messages::{Delivered, DeliveredHook, Hooks, ReadHook, ReadTimes};

/// Actor names (suffixed with the relay's instance tag, so several relays can share a
/// process in tests).
pub mod names {
    /// The supervisor.
    pub const SUPERVISOR: &str = "outboxd-supervisor";
    /// The poller.
    pub const POLLER: &str = "outboxd-poller";
    /// Publisher `i` is `outboxd-publisher-{i}`.
    pub const PUBLISHER: &str = "outboxd-publisher";
    /// The acker.
    pub const ACKER: &str = "outboxd-acker";
    /// The retry / dead-letter actor.
    pub const RETRY: &str = "outboxd-retry";
    /// The cleanup actor.
    pub const CLEANUP: &str = "outboxd-cleanup";
}

/// What every actor of one pipeline incarnation knows: its ports and what it answers to.
/// Built by the supervisor when the lease or the sink changes; nothing in it changes
/// afterwards (the coordination counters are [`Flow`]'s, each actor's settings its own
/// section, handed over at spawn).
pub struct Context {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Where rows are published.
    pub sink: Arc<dyn Sink>,
    /// Readiness facts.
    pub health: Arc<Health>,
    /// The lease every write is checked against.
    pub fence: Fence,
    /// Publish rate limits.
    pub limits: RateLimits,
    /// Embedding callbacks.
    pub hooks: Hooks,
    /// The supervisor, told about lost leases and fatal sink errors.
    pub supervisor: ActorRef<SupervisorMsg>,
}

/// The publisher partition of an aggregate: FNV-1a of the id, modulo the partition count.
/// Stable across restarts and versions (the `status` command computes the same).
pub fn partition_of(aggregate_id: &str, partitions: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in aggregate_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as usize
}

/// Exponential back-off: `initial × 2^(n-1)`, capped at `max` (n ≥ 1).
pub fn exponential(initial: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u64 << n.saturating_sub(1).min(30);
    initial
        .saturating_mul(factor.min(u32::MAX as u64) as u32)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_spread() {
        assert_eq!(partition_of("o-42", 8), partition_of("o-42", 8));
        // Fixed values: changing the hash would reorder rows across an upgrade.
        assert_eq!(partition_of("", 8), (0xcbf2_9ce4_8422_2325u64 % 8) as usize);
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[partition_of(&format!("agg-{i}"), 8)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(60);
        assert_eq!(exponential(i, m, 1), Duration::from_millis(100));
        assert_eq!(exponential(i, m, 2), Duration::from_millis(200));
        assert_eq!(exponential(i, m, 5), Duration::from_millis(1600));
        assert_eq!(exponential(i, m, 12), m);
        assert_eq!(exponential(i, m, 200), m);
    }
}
