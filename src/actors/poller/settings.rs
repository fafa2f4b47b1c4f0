//! What the poller is told at spawn: its ports, the counters it shares, and its part of
//! the configuration.

use std::sync::Arc;

use crate::actors::{Context, Flow};
use crate::config::{Config, DeadLetterPolicy, PollerConfig};

/// What the poller is told at spawn: `[poller]` and the relay's limits on order and memory.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[poller]`: interval, batch size, coalescing window, rescan interval.
    pub poller: PollerConfig,
    /// `relay.partitions`: the publishers rows are spread over.
    pub partitions: usize,
    /// `relay.max_in_flight`: rows in memory and unmarked, at most.
    pub max_in_flight: usize,
    /// `relay.max_rows_per_aggregate`: one aggregate's share of that, at most.
    pub max_rows_per_aggregate: usize,
    /// `relay.dead_letter_policy`: whether a dead letter holds its aggregate.
    pub dead_letter_policy: DeadLetterPolicy,
    /// `metrics.topic_labels`: how many topics get a label of their own on the published
    /// counter (the rest are "other").
    pub topic_labels: u32,
}

impl Settings {
    /// The poller's part of the configuration.
    pub fn of(config: &Config) -> Self {
        Self {
            poller: config.poller.clone(),
            partitions: config.relay.partitions as usize,
            max_in_flight: config.relay.max_in_flight as usize,
            max_rows_per_aggregate: config.relay.max_rows_per_aggregate.max(1) as usize,
            dead_letter_policy: config.relay.dead_letter_policy,
            topic_labels: config.metrics.topic_labels,
        }
    }
}

/// Start-up arguments.
pub struct PollerArgs {
    /// The incarnation's ports.
    pub ctx: Arc<Context>,
    /// The counters it shares with the publishers, the acker and the supervisor.
    pub flow: Arc<Flow>,
    /// Its settings.
    pub settings: Settings,
}
