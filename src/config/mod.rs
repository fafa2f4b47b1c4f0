//! Configuration: a TOML file (`--config PATH`, default `config/outboxd.toml`) overlaid by
//! environment variables `OUTBOXD__SECTION__KEY`, checked all at once.
//!
//! This module is the configuration's shape: one struct per section, with its defaults.
//! Each sink's section belongs to the sink's folder (`crate::sink::kafka::config`, …);
//! the database's is in `database.rs`. Loading and checking are in `load`.

mod database;
mod load;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::sink::kafka::config::KafkaConfig;
pub use crate::sink::nats::config::NatsConfig;
pub use crate::sink::redis::config::RedisConfig;
pub use database::{DatabaseConfig, MYSQL_SSL_MODES, SSL_MODES, mysql_ssl_mode, unsupported_tls};

/// The default path of the configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/outboxd.toml";
/// Prefix of environment overrides; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "OUTBOXD__";

/// The whole configuration, one struct per subsystem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PostgreSQL connection.
    pub database: DatabaseConfig,
    /// Which broker the relay publishes to.
    pub sink: SinkConfig,
    /// Kafka producer (`sink.kind = "kafka"`).
    pub kafka: KafkaConfig,
    /// Redis Streams (`sink.kind = "redis"`).
    pub redis: RedisConfig,
    /// NATS JetStream (`sink.kind = "nats"`).
    pub nats: NatsConfig,
    /// The relay pipeline as a whole.
    pub relay: RelayConfig,
    /// How pending rows are found.
    pub poller: PollerConfig,
    /// Back-off for transient publish failures.
    pub retry: RetryConfig,
    /// Where rows go that cannot be published.
    pub dead_letter: DeadLetterConfig,
    /// Removal of published rows and old dead letters.
    pub cleanup: CleanupConfig,
    /// Publish rate limits.
    pub rate_limit: RateLimitConfig,
    /// Restart policy of crashed actors.
    pub supervisor: SupervisorConfig,
    /// Prometheus metrics and health endpoints.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[sink]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `kafka` (the default), `redis` or `nats`; only that sink's section is used.
    pub kind: crate::outbox::SinkKind,
    /// A row whose destination does not exist (a Kafka topic, a NATS stream capturing
    /// the subject): `hold` it until the destination is created (the default, on every
    /// sink), or `dead_letter` it.
    pub missing_destination: MissingDestination,
}

/// What happens to a row whose destination does not exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingDestination {
    /// Held (not dead-lettered, no attempts spent) and reported on `/readyz` until an
    /// operator creates the destination.
    #[default]
    Hold,
    /// Dead-lettered at once, like a row the broker can never take.
    DeadLetter,
}

/// What the relay does with a row once the broker acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPublish {
    /// Delete the row (the default: no index churn, about 1.8× the drain rate of `mark`).
    Delete,
    /// Set `published_at`; the cleanup actor deletes it after `cleanup.published_retention_secs`.
    Mark,
}

/// What happens to an aggregate's later rows once one of its rows is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterPolicy {
    /// Hold the aggregate until an operator replays or discards the dead letter (the
    /// default: no consumer ever sees an event whose predecessor is missing).
    Hold,
    /// Carry on with the aggregate's next row.
    Continue,
}

/// `[relay]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Publisher actors; a row goes to `hash(aggregate_id) % partitions`.
    pub partitions: u32,
    /// Rows read from the database and not yet marked published, at most (back-pressure;
    /// also the most rows a crash can send twice).
    pub max_in_flight: u32,
    /// Rows of one aggregate held in memory, at most; of a longer backlog only the ids are
    /// kept and the rows are read again as they come due, so that one aggregate cannot
    /// fill `max_in_flight` and starve the others.
    pub max_rows_per_aggregate: u32,
    /// `delete` or `mark` published rows.
    pub on_publish: OnPublish,
    /// `hold` or `continue` an aggregate after one of its rows is dead-lettered.
    pub dead_letter_policy: DeadLetterPolicy,
    /// Name of this instance in the lease table; empty = the host name (in Kubernetes the
    /// pod's name), stable across restarts so that a restarted process reclaims its own
    /// lease at once. Instances sharing a host need a name each.
    pub instance_id: String,
    /// How long a lease lasts without renewal, in milliseconds.
    pub lease_ttl_ms: u64,
    /// On SIGTERM/SIGINT, how long to wait for in-flight sends, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Threads of the async runtime that runs the actors (and the metrics endpoint).
    /// librdkafka has threads of its own; with one, the actors wake one another without
    /// crossing threads: at 1,000 events/s that took a tenth less CPU than two, and
    /// draining a backlog was as fast (docs/performance.md). More only if the relay's own
    /// logic fills a core.
    pub worker_threads: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            max_in_flight: 5_000,
            max_rows_per_aggregate: 100,
            on_publish: OnPublish::Delete,
            dead_letter_policy: DeadLetterPolicy::Hold,
            instance_id: String::new(),
            lease_ttl_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            worker_threads: 1,
        }
    }
}

/// `[poller]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollerConfig {
    /// Rows read per query.
    pub batch_size: u32,
    /// Fallback poll when no NOTIFY arrives, in milliseconds.
    pub interval_ms: u64,
    /// MariaDB / MySQL (no NOTIFY): how often the relay looks for new rows while it waits
    /// for them, in milliseconds (one statement reading the end of two indexes).
    pub watch_ms: u64,
    /// How long an id gap may stay unexplained before the poller asks the database whether
    /// the transaction that could fill it has ended, in milliseconds.
    pub gap_grace_ms: u64,
    /// Full re-read of pending rows below the read position, a safety net, in milliseconds.
    /// It walks every index entry below the cursor, dead ones included until vacuum
    /// removes them: every few minutes is plenty.
    pub rescan_interval_ms: u64,
    /// Group commit for reads, in milliseconds: while rows of the latest dispatch are with
    /// the broker, a wake-up waits for their acknowledgement — this long at most — and
    /// everything committed meanwhile goes in the same read. 0 (the default) reads on every
    /// wake-up: under load `gather_ms` spaces the reads, and waiting for the broker's round
    /// trip at moderate rates only adds latency (about 1 ms at 1,000 events/s on Tansu).
    pub coalesce_ms: u64,
    /// Gathering under load, in milliseconds: after a read that found rows, the next read
    /// waits so that the events committed meanwhile share one read, one produce request
    /// per partition and one delete. The window grows with the square of the arrival rate
    /// up to this, reached at `gather_full_rate`; a read after a quiet spell goes at once. Under steady load the poller reads on this cadence by itself and stops
    /// listening for NOTIFY. 0 turns gathering off.
    pub gather_ms: u64,
    /// The arrival rate, events/s, from which the gathering window is `gather_ms` (half
    /// the rate: a quarter of it).
    pub gather_full_rate: u32,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            interval_ms: 250,
            watch_ms: 10,
            gap_grace_ms: 1_000,
            rescan_interval_ms: 300_000,
            coalesce_ms: 0,
            gather_ms: 10,
            gather_full_rate: 2_000,
        }
    }
}

/// `[retry]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First back-off after a transient failure, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Longest back-off, in milliseconds.
    pub max_backoff_ms: u64,
    /// Attempts before a row is dead-lettered.
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 100,
            max_backoff_ms: 60_000,
            max_attempts: 12,
        }
    }
}

/// `[dead_letter]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Optional DLQ topic that also receives dead letters; empty = table only.
    pub topic: String,
}

/// `[cleanup]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Seconds between cleanup runs.
    pub interval_secs: u64,
    /// With `relay.on_publish = "mark"`: keep published rows this long, in seconds.
    pub published_retention_secs: u64,
    /// Keep replayed or discarded dead letters this long, in seconds; open ones are kept.
    pub dead_letter_retention_secs: u64,
    /// Rows deleted per statement.
    pub batch_size: u32,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            published_retention_secs: 86_400,
            dead_letter_retention_secs: 14 * 86_400,
            batch_size: 5_000,
        }
    }
}

/// `[rate_limit]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Global publish limit in events per second; 0 = unlimited.
    pub events_per_second: u32,
    /// Per-topic limits in events per second (`orders = 500`).
    pub topics: BTreeMap<String, u32>,
}

/// `[supervisor]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Crashes tolerated within `restart_window_secs`; one more stops the relay (exit 1).
    pub max_restarts: u32,
    /// The window for `max_restarts`, in seconds.
    pub restart_window_secs: u64,
    /// First restart delay, in milliseconds; doubles with each crash in the window.
    pub initial_backoff_ms: u64,
    /// Longest restart delay, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window_secs: 60,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving `/metrics`, `/healthz`, `/readyz`; empty = off.
    pub listen: String,
    /// How many topics get a `topic` label of their own on
    /// `outboxd_events_published_total`: the first this many published; the rest are
    /// counted under `topic="other"`, so that a topic (or NATS subject) per entity cannot
    /// make a series per entity. 0 = every topic is `other`.
    pub topic_labels: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            topic_labels: 100,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `outboxd=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Every problem found in a configuration, in the order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The TOML file, if any.
    pub path: Option<PathBuf>,
    /// Whether a missing file is an error (true when the path was given explicitly).
    pub required: bool,
}

impl ConfigSource {
    /// The file named on the command line, or the default path if it exists.
    pub fn from_cli(path: Option<&Path>) -> Self {
        match path {
            Some(p) => Self {
                path: Some(p.to_path_buf()),
                required: true,
            },
            None => Self {
                path: Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
                required: false,
            },
        }
    }
}
