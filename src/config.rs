//! Configuration: a TOML file (`--config PATH`, default `config/outboxd.toml`) overlaid by
//! environment variables `OUTBOXD__SECTION__KEY`, checked all at once.
//!
//! Loading reads the file and the environment with `figment`, then checks every key on its
//! own against the built-in defaults, so one run reports every unknown key, every value of
//! the wrong type and every value out of range, each naming the key and where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Provider;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// `[database]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL.
    pub url: String,
    /// Connections in the relay's pool.
    pub max_connections: u32,
    /// Timeout for opening a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// TLS, as libpq's `sslmode`: `disable`, `prefer`, `require`, `verify-ca` or
    /// `verify-full`; empty = the URL's `sslmode` (libpq's default, `prefer`, without one).
    pub sslmode: String,
    /// CA certificate(s) the server's certificate may be signed by (PEM file), trusted
    /// besides the public web roots built in; empty = the URL's `sslrootcert`. Only with
    /// `verify-full`: `verify-ca`, and `require` / `prefer` with a root certificate (which
    /// libpq verifies against it alone), are refused, as their libpq meaning cannot be had.
    pub sslrootcert: String,
    /// Client certificate for mutual TLS (PEM file); empty = the URL's `sslcert`.
    pub sslcert: String,
    /// The client certificate's private key (PEM file); empty = the URL's `sslkey`.
    pub sslkey: String,
    /// A file whose content is the password (a Kubernetes secret mounted as a file; one
    /// trailing newline is ignored); when set it wins over a password in the URL.
    pub password_file: String,
}

/// `Debug` for the sections that hold secrets: every URL with its credentials hidden
/// ([`crate::secrets::redact`]) and the values of secret librdkafka options as `***`, so
/// that `{:?}` of a configuration never shows a password.
macro_rules! debug_without_secrets {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
                hide_secrets(&mut v);
                write!(f, "{} {v}", stringify!($t))
            }
        }
    )*};
}
debug_without_secrets!(DatabaseConfig, KafkaConfig, RedisConfig, NatsConfig);

fn hide_secrets(v: &mut serde_json::Value) {
    let Some(map) = v.as_object_mut() else {
        return;
    };
    for (k, v) in map.iter_mut() {
        match (k.as_str(), v) {
            ("url", serde_json::Value::String(s)) => *s = crate::secrets::redact(s),
            ("producer", serde_json::Value::Object(options)) => {
                for (option, value) in options.iter_mut() {
                    if crate::secrets::is_secret_option(option) {
                        *value = "***".into();
                    }
                }
            }
            _ => {}
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            max_connections: 10,
            connect_timeout_ms: 5_000,
            sslmode: String::new(),
            sslrootcert: String::new(),
            sslcert: String::new(),
            sslkey: String::new(),
            password_file: String::new(),
        }
    }
}

/// `[kafka]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated `host:port`.
    pub brokers: String,
    /// Raw librdkafka options, passed through (`"linger.ms" = "5"`), TLS and SASL
    /// included. Values of secret-bearing options (passwords, secrets, keys) are never
    /// shown.
    pub producer: BTreeMap<String, String>,
    /// librdkafka options whose value is read from a file at start-up (Kubernetes secrets
    /// mounted as files): `"sasl.password" = "/run/secrets/kafka-password"`. One trailing
    /// newline is ignored.
    pub secret_files: BTreeMap<String, String>,
    /// Rows waiting on the producer, nothing acknowledged for this long, yet the broker
    /// answers: the producer is wedged (e.g. its idempotence state was lost in a broker
    /// restart) and is replaced, in milliseconds.
    pub stall_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            producer: BTreeMap::new(),
            secret_files: BTreeMap::new(),
            stall_timeout_ms: 30_000,
        }
    }
}

/// `[sink]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `kafka` (the default), `redis` or `nats`; only that sink's section is used.
    pub kind: crate::sink::SinkKind,
}

/// `[redis]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://` for TLS. An ACL user
    /// and password may be given here or as `username` / `password_file`.
    pub url: String,
    /// ACL user name (wins over the URL's); empty = the URL's, or `default`.
    pub username: String,
    /// A file whose content is the password (one trailing newline ignored); wins over a
    /// password in the URL.
    pub password_file: String,
    /// CA certificate(s) (PEM) the server's certificate must be signed by, for
    /// `rediss://`; empty = the public web roots built in.
    pub ca_file: String,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: String,
    /// The client certificate's private key (PEM).
    pub key_file: String,
    /// A command not answered within this many milliseconds has an unknown outcome: it
    /// fails as a transient `timeout` and is sent again with the same `event_id`.
    pub timeout_ms: u64,
    /// Opening a connection gives up after this many milliseconds (and is tried again).
    pub connect_timeout_ms: u64,
    /// `XADD … MAXLEN ~ N`: keep about this many entries per stream; 0 = no trimming
    /// (the default: trimming can drop entries no consumer has read).
    pub maxlen: u64,
    /// `XADD … MINID ~`: drop entries older than this many seconds; 0 = no trimming.
    pub min_age_secs: u64,
    /// The largest payload sent, in bytes: a bigger one is dead-lettered as
    /// `record_too_large`. Set it to the server's `proto-max-bulk-len` if you changed
    /// that (a bigger argument makes Redis close the connection).
    pub max_payload_bytes: u64,
    /// Idempotent `XADD` (`IDMP outboxd <event_id>`) when the server is Redis 8.6 or
    /// later, so that a resend of an event the stream already holds adds nothing; older
    /// servers get a plain `XADD` (resends are duplicates consumers drop by `event_id`).
    /// `false`: never.
    pub idmp: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            username: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            maxlen: 0,
            min_age_secs: 0,
            max_payload_bytes: 512 * 1024 * 1024,
            idmp: true,
        }
    }
}

/// `[nats]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Servers, comma separated: `nats://host:4222`, `tls://host:4222` for TLS.
    pub url: String,
    /// User name (user/password authentication).
    pub user: String,
    /// A file whose content is the password.
    pub password_file: String,
    /// A file whose content is the authentication token.
    pub token_file: String,
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes them.
    pub credentials_file: String,
    /// Require TLS even with `nats://` URLs.
    pub tls_required: bool,
    /// CA certificate(s) (PEM) the server's certificate must be signed by; empty = the
    /// public web roots built in.
    pub ca_file: String,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: String,
    /// The client certificate's private key (PEM).
    pub key_file: String,
    /// A publish not acknowledged (PubAck) within this many milliseconds has an unknown
    /// outcome: it fails as a transient `timeout` and is sent again with the same
    /// `Nats-Msg-Id`, which the stream drops if the first copy arrived.
    pub timeout_ms: u64,
    /// Opening a connection gives up after this many milliseconds (and is tried again).
    pub connect_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            user: String::new(),
            password_file: String::new(),
            token_file: String::new(),
            credentials_file: String::new(),
            tls_required: false,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
        }
    }
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
    /// How long an id gap may stay unexplained before the poller asks Postgres whether the
    /// transaction that could fill it has ended, in milliseconds.
    pub gap_grace_ms: u64,
    /// Full re-read of pending rows below the read position, a safety net, in milliseconds.
    /// It walks every index entry below the cursor, dead ones included until vacuum
    /// removes them: every few minutes is plenty.
    pub rescan_interval_ms: u64,
    /// Group commit for reads, in milliseconds: while rows of the latest dispatch are with
    /// the broker, a wake-up waits for their acknowledgement — this long at most — and
    /// everything committed meanwhile goes in the same read. 0 reads on every wake-up.
    pub coalesce_ms: u64,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            interval_ms: 250,
            gap_grace_ms: 1_000,
            rescan_interval_ms: 300_000,
            coalesce_ms: 5,
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

/// Maps whose keys are the user's own (not checked against a list of known keys).
const FREE_MAPS: &[&str] = &["kafka.producer", "kafka.secret_files", "rate_limit.topics"];

/// librdkafka options outboxd sets itself; overriding them would break a guarantee.
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

impl Config {
    /// Where the configured sink is, for logs and `status`: Kafka's bootstrap brokers, or
    /// the Redis / NATS URL without its password.
    pub fn sink_location(&self) -> String {
        match self.sink.kind {
            crate::sink::SinkKind::Kafka => self.kafka.brokers.clone(),
            crate::sink::SinkKind::Redis => crate::db::redact(&self.redis.url),
            crate::sink::SinkKind::Nats => crate::db::redact(&self.nats.url),
        }
    }

    /// Loads the file (if any) and the `OUTBOXD__…` environment, and checks everything.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_from(source, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        source: &ConfigSource,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut layers: Vec<(String, Value)> = Vec::new();

        if let Some(path) = &source.path {
            if path.exists() {
                match provider_value(Toml::file_exact(path)) {
                    Ok(v) => layers.push((format!("in {}", path.display()), v)),
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                }
            } else if source.required {
                errors.push(format!("config file {} does not exist", path.display()));
            }
        }

        // Each variable on its own, so that problems name the variable. Values are typed
        // the way figment's `Env` provider types them ("8" is a number, "true" a boolean).
        for (name, raw) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                layers.push((
                    format!("from environment variable {name}"),
                    env_value(rest, raw),
                ));
            }
        }

        let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
        let mut merged = defaults.clone();
        for (origin, layer) in &layers {
            overlay(&defaults, &mut merged, layer, "", origin, &mut errors);
        }

        let config: Config = match serde_json::from_value(merged) {
            Ok(c) => c,
            Err(e) => {
                // Every leaf was checked on its own; this only happens for combinations.
                errors.push(format!("configuration: {e}"));
                return Err(ConfigErrors(errors));
            }
        };
        errors.extend(config.validate());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Range and format checks that types alone do not express; every problem is returned.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        let mut range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                e.push(format!("{key}: {value} is out of range ({min}..={max})"));
            }
        };
        range(
            "database.max_connections",
            self.database.max_connections.into(),
            4,
            1_000,
        );
        range(
            "database.connect_timeout_ms",
            self.database.connect_timeout_ms,
            1,
            600_000,
        );
        range("relay.partitions", self.relay.partitions.into(), 1, 1_024);
        range(
            "metrics.topic_labels",
            self.metrics.topic_labels.into(),
            0,
            10_000,
        );
        range(
            "relay.max_in_flight",
            self.relay.max_in_flight.into(),
            1,
            10_000_000,
        );
        range(
            "relay.max_rows_per_aggregate",
            self.relay.max_rows_per_aggregate.into(),
            1,
            10_000_000,
        );
        range(
            "relay.lease_ttl_ms",
            self.relay.lease_ttl_ms,
            500,
            3_600_000,
        );
        range(
            "relay.shutdown_timeout_ms",
            self.relay.shutdown_timeout_ms,
            0,
            3_600_000,
        );
        range(
            "relay.worker_threads",
            self.relay.worker_threads.into(),
            1,
            256,
        );
        range(
            "poller.batch_size",
            self.poller.batch_size.into(),
            1,
            100_000,
        );
        range("poller.interval_ms", self.poller.interval_ms, 1, 3_600_000);
        range(
            "poller.gap_grace_ms",
            self.poller.gap_grace_ms,
            10,
            3_600_000,
        );
        range(
            "poller.rescan_interval_ms",
            self.poller.rescan_interval_ms,
            100,
            86_400_000,
        );
        range("poller.coalesce_ms", self.poller.coalesce_ms, 0, 1_000);
        range(
            "retry.initial_backoff_ms",
            self.retry.initial_backoff_ms,
            1,
            3_600_000,
        );
        range(
            "retry.max_backoff_ms",
            self.retry.max_backoff_ms,
            1,
            86_400_000,
        );
        range(
            "retry.max_attempts",
            self.retry.max_attempts.into(),
            1,
            1_000,
        );
        range(
            "cleanup.interval_secs",
            self.cleanup.interval_secs,
            1,
            86_400,
        );
        range(
            "cleanup.batch_size",
            self.cleanup.batch_size.into(),
            1,
            1_000_000,
        );
        range(
            "supervisor.max_restarts",
            self.supervisor.max_restarts.into(),
            0,
            1_000,
        );
        range(
            "supervisor.restart_window_secs",
            self.supervisor.restart_window_secs,
            1,
            86_400,
        );
        range(
            "supervisor.initial_backoff_ms",
            self.supervisor.initial_backoff_ms,
            1,
            600_000,
        );
        range(
            "supervisor.max_backoff_ms",
            self.supervisor.max_backoff_ms,
            1,
            3_600_000,
        );
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            e.push(format!(
                "retry.max_backoff_ms: {} is below retry.initial_backoff_ms ({})",
                self.retry.max_backoff_ms, self.retry.initial_backoff_ms
            ));
        }
        if self.relay.max_in_flight >= 1
            && self.relay.max_rows_per_aggregate > self.relay.max_in_flight
        {
            e.push(format!(
                "relay.max_rows_per_aggregate: {} is above relay.max_in_flight ({})",
                self.relay.max_rows_per_aggregate, self.relay.max_in_flight
            ));
        }
        if self.supervisor.max_backoff_ms < self.supervisor.initial_backoff_ms {
            e.push(format!(
                "supervisor.max_backoff_ms: {} is below supervisor.initial_backoff_ms ({})",
                self.supervisor.max_backoff_ms, self.supervisor.initial_backoff_ms
            ));
        }
        if let Err(why) = check_database_url(&self.database.url) {
            e.push(format!("database.url: {why}"));
        }
        e.extend(check_database_tls(&self.database));
        e.extend(crate::sink::check_config(self));
        let kind = self.sink.kind;
        if !self.dead_letter.topic.is_empty()
            && let Err(why) = kind.validate_destination(&self.dead_letter.topic)
        {
            e.push(format!(
                "dead_letter.topic: {:?} is not a {kind} {}: {why}",
                self.dead_letter.topic,
                kind.destination_word()
            ));
        }
        for (topic, limit) in &self.rate_limit.topics {
            if let Err(why) = kind.validate_destination(topic) {
                e.push(format!("rate_limit.topics.\"{topic}\": {why}"));
            }
            if *limit == 0 {
                e.push(format!(
                    "rate_limit.topics.\"{topic}\": 0 is not a limit (remove the key for none)"
                ));
            }
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            e.push(format!(
                "metrics.listen: {:?} is not an address like 127.0.0.1:9464",
                self.metrics.listen
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            e.push(format!(
                "log.level: {:?} is not a filter: {err}",
                self.log.level
            ));
        }
        e
    }
}

fn check_database_url(url: &str) -> Result<(), String> {
    let shown = crate::db::redact(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{shown:?} is not a PostgreSQL URL (postgres://user@host:port/database)"
        ));
    }
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map(|_| ())
        // An unknown sslmode is reported by check_database_tls, naming the mode.
        .or_else(|err| {
            if err.to_string().contains("ssl_mode") {
                Ok(())
            } else {
                Err(err)
            }
        })
        .map_err(|err| {
            format!(
                "{shown:?} is not a valid URL: {}",
                crate::db::redact(&err.to_string())
            )
        })
}

/// libpq's `sslmode` values.
pub const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// TLS settings of `[database]` and of its URL: known modes, files that exist and can be
/// read, a client certificate together with its key.
fn check_database_tls(db: &DatabaseConfig) -> Vec<String> {
    let mut e = Vec::new();
    let pick = tls_settings(db);
    if let Some((key, mode)) = pick("sslmode", &db.sslmode, &["sslmode", "ssl-mode"])
        && !SSL_MODES.contains(&mode.as_str())
    {
        e.push(format!(
            "{key}: {mode:?} is not a TLS mode (one of {})",
            SSL_MODES.join(", ")
        ));
    }
    let root = pick(
        "sslrootcert",
        &db.sslrootcert,
        &["sslrootcert", "ssl-root-cert", "ssl-ca"],
    );
    e.extend(unsupported_tls(db));
    let cert = pick("sslcert", &db.sslcert, &["sslcert", "ssl-cert"]);
    let key = pick("sslkey", &db.sslkey, &["sslkey", "ssl-key"]);
    for (what, setting) in [
        ("the CA certificate", &root),
        ("the client certificate", &cert),
        ("the client key", &key),
    ] {
        if let Some((name, path)) = setting
            && let Err(why) = readable(path)
        {
            e.push(format!("{name}: cannot read {what} {path:?}: {why}"));
        }
    }
    match (&cert, &key) {
        (Some((name, _)), None) => e.push(format!(
            "{name}: a client certificate needs its key (database.sslkey)"
        )),
        (None, Some((name, _))) => e.push(format!(
            "{name}: a client key needs its certificate (database.sslcert)"
        )),
        _ => {}
    }
    if !db.password_file.is_empty()
        && let Err(why) = readable(&db.password_file)
    {
        e.push(format!(
            "database.password_file: cannot read {:?}: {why}",
            db.password_file
        ));
    }
    e
}

/// A lookup of `[database]` TLS settings: `pick(key, value, url_names)` is the key's
/// value when set, else the URL query's (under any of libpq's or sqlx's names), each with
/// the name to report it by.
fn tls_settings(db: &DatabaseConfig) -> impl Fn(&str, &str, &[&str]) -> Option<(String, String)> {
    let query: Vec<(String, String)> = url::Url::parse(&db.url)
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    move |key, value, names| {
        if value.is_empty() {
            query
                .iter()
                .find(|(k, _)| names.contains(&k.as_str()))
                .map(|(k, v)| (format!("database.url ({k})"), v.clone()))
        } else {
            Some((format!("database.{key}"), value.to_string()))
        }
    }
}

/// The `sslmode` / `sslrootcert` combinations whose libpq meaning the TLS client built
/// in (rustls through sqlx) cannot give, refused rather than silently weakened. It
/// trusts `sslrootcert` *in addition to* the public web roots, and `require` never
/// verifies. libpq, in contrast, trusts only `sslrootcert`, so its `verify-ca` (chain
/// only, no host name) is safe there but here would take any publicly issued certificate
/// for any host; and with `sslrootcert` set, libpq verifies the chain in `require` and
/// `prefer` as well. `verify-full` checks the host name too, which keeps it safe here.
pub fn unsupported_tls(db: &DatabaseConfig) -> Option<String> {
    let pick = tls_settings(db);
    let (key, mode) = pick("sslmode", &db.sslmode, &["sslmode", "ssl-mode"])?;
    let root = pick(
        "sslrootcert",
        &db.sslrootcert,
        &["sslrootcert", "ssl-root-cert", "ssl-ca"],
    );
    match (mode.as_str(), root) {
        ("verify-ca", _) => Some(format!(
            "{key}: verify-ca is not supported: libpq trusts only sslrootcert, this relay \
             also trusts the public web roots, so verify-ca (no host-name check) would accept \
             any publicly issued certificate; use verify-full (checks the host name too)"
        )),
        ("allow" | "prefer" | "require", Some((root_key, _))) => Some(format!(
            "{key}: {mode} with {root_key} set: libpq then verifies the server's certificate \
             chain, which this relay does only with verify-full; use verify-full, or remove \
             {root_key} to encrypt without verifying"
        )),
        _ => None,
    }
}

/// Whether a file can be opened for reading, or why not.
fn readable(path: &str) -> Result<(), String> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Reads one figment provider into a JSON tree.
fn provider_value(provider: impl Provider) -> Result<Value, String> {
    let data = provider.data().map_err(|e| e.to_string())?;
    let dict = data.into_values().next().unwrap_or_default();
    serde_json::to_value(dict).map_err(|e| e.to_string())
}

/// One environment variable (`SECTION__KEY` after the prefix) as a JSON tree, with the
/// value typed the way figment's `Env` provider types it.
fn env_value(rest: &str, raw: &str) -> Value {
    let leaf = match raw.trim().parse::<figment::value::Value>() {
        Ok(v) => serde_json::to_value(v).unwrap_or_else(|_| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    };
    rest.split("__")
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .fold(leaf, |acc, part| {
            let mut m = Map::new();
            m.insert(part.to_ascii_lowercase(), acc);
            Value::Object(m)
        })
}

/// Lays `layer` over `merged`, checking each key against `defaults` on its own.
fn overlay(
    defaults: &Value,
    merged: &mut Value,
    layer: &Value,
    prefix: &str,
    origin: &str,
    errors: &mut Vec<String>,
) {
    let Value::Object(entries) = layer else {
        return;
    };
    for (key, value) in entries {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let free = FREE_MAPS.contains(&prefix);
        let Some(default_child) =
            pointer(defaults, &path).or(if free { Some(&Value::Null) } else { None })
        else {
            let hint = suggestion(defaults, prefix, key)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            errors.push(format!("{path}: unknown key ({origin}){hint}"));
            continue;
        };
        let is_table = default_child.is_object();
        if is_table && !FREE_MAPS.contains(&path.as_str()) {
            if value.is_object() {
                overlay(defaults, merged, value, &path, origin, errors);
            } else {
                errors.push(format!(
                    "{path}: expected a table [{path}], found {} ({origin})",
                    describe(value)
                ));
            }
            continue;
        }
        if is_table {
            // A free map: every entry is a leaf of the map's value type.
            if let Value::Object(_) = value {
                overlay(defaults, merged, value, &path, origin, errors);
            } else {
                errors.push(format!(
                    "{path}: expected a table, found {} ({origin})",
                    describe(value)
                ));
            }
            continue;
        }
        match accept_leaf(merged, &path, value) {
            Ok(()) => {}
            Err(why) => errors.push(format!("{path}: {why} ({origin})")),
        }
    }
}

/// Sets one leaf if the whole configuration still deserializes with it (trying the usual
/// coercions of environment strings), and otherwise says why not.
fn accept_leaf(merged: &mut Value, path: &str, value: &Value) -> Result<(), String> {
    let mut first_err = None;
    for candidate in coercions(value) {
        let mut trial = merged.clone();
        set_pointer(&mut trial, path, candidate.clone());
        match serde_json::from_value::<Config>(trial) {
            Ok(_) => {
                set_pointer(merged, path, candidate);
                return Ok(());
            }
            Err(e) => {
                first_err.get_or_insert_with(|| clean_serde_error(&e.to_string(), value));
            }
        }
    }
    Err(first_err.unwrap_or_else(|| "invalid value".into()))
}

fn coercions(value: &Value) -> Vec<Value> {
    let mut out = vec![value.clone()];
    match value {
        Value::Number(n) => out.push(Value::String(n.to_string())),
        Value::Bool(b) => out.push(Value::String(b.to_string())),
        Value::String(s) => {
            if let Ok(n) = s.trim().parse::<u64>() {
                out.push(Value::from(n));
            }
            if let Ok(b) = s.trim().parse::<bool>() {
                out.push(Value::Bool(b));
            }
        }
        _ => {}
    }
    out
}

fn clean_serde_error(msg: &str, value: &Value) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    format!("{msg}, found {}", describe(value))
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Number(n) => format!("number {n}"),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "a table".into(),
        Value::Null => "nothing".into(),
    }
}

fn pointer<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, part| v.as_object()?.get(part))
}

fn set_pointer(value: &mut Value, path: &str, leaf: Value) {
    let mut parts: Vec<&str> = Vec::new();
    // Free-map keys may contain dots ("linger.ms"): split only the known prefix.
    let mut rest = path;
    for free in FREE_MAPS {
        if let Some(key) = path.strip_prefix(&format!("{free}.")) {
            parts.extend(free.split('.'));
            parts.push(key);
            rest = "";
            break;
        }
    }
    if !rest.is_empty() {
        parts.extend(rest.split('.'));
    }
    let mut cur = value;
    for part in &parts[..parts.len() - 1] {
        cur = cur
            .as_object_mut()
            .expect("parent is a table")
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    cur.as_object_mut()
        .expect("parent is a table")
        .insert(parts[parts.len() - 1].to_string(), leaf);
}

fn suggestion(defaults: &Value, prefix: &str, key: &str) -> Option<String> {
    let siblings = if prefix.is_empty() {
        defaults.as_object()?
    } else {
        pointer(defaults, prefix)?.as_object()?
    };
    siblings
        .keys()
        .map(|k| (strsim::levenshtein(k, key), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| {
            if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            }
        })
}

// The defaults publish to Kafka: a build without it refuses them (sink::tests).
#[cfg(all(test, feature = "kafka"))]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(
            &ConfigSource {
                path: Some(file.path().to_path_buf()),
                required: true,
            },
            &env,
        )
    }

    #[test]
    fn each_sslmode_is_what_libpq_means_or_refused() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca = ca.path().to_str().unwrap().to_string();
        let base = "postgres://u@h/d";
        let problems = |url: String, mode: &str, root: &str| {
            check_database_tls(&DatabaseConfig {
                url,
                sslmode: mode.into(),
                sslrootcert: root.into(),
                ..Default::default()
            })
        };
        // Accepted: what the built-in client does as libpq does.
        for (mode, root) in [
            ("disable", ""),
            ("allow", ""),
            ("prefer", ""),
            ("require", ""),
            ("verify-full", ""),
            ("verify-full", ca.as_str()),
        ] {
            assert_eq!(
                problems(base.into(), mode, root),
                Vec::<String>::new(),
                "{mode} {root}"
            );
        }
        // Refused, naming verify-full: verify-ca in any form; require / prefer / allow with
        // a root certificate (libpq would verify the chain against it).
        for (url, mode, root) in [
            (base.to_string(), "verify-ca", ""),
            (base.to_string(), "verify-ca", ca.as_str()),
            (format!("{base}?sslmode=verify-ca"), "", ""),
            (base.to_string(), "require", ca.as_str()),
            (base.to_string(), "prefer", ca.as_str()),
            (base.to_string(), "allow", ca.as_str()),
            (format!("{base}?sslmode=require&sslrootcert={ca}"), "", ""),
        ] {
            let p = problems(url.clone(), mode, root);
            assert_eq!(p.len(), 1, "{url} {mode} {root}: {p:?}");
            assert!(p[0].contains("use verify-full"), "{p:?}");
        }
        // A key wins over the URL: verify-full in the key makes the URL's require safe.
        assert!(
            problems(
                format!("{base}?sslmode=require&sslrootcert={ca}"),
                "verify-full",
                ""
            )
            .is_empty()
        );
    }

    #[test]
    fn debug_of_a_configuration_shows_no_secret() {
        let mut c = Config::default();
        c.database.url = "postgres://u:dbpw1@h/d?password=dbpw2".into();
        c.kafka
            .producer
            .insert("sasl.password".into(), "kafkapw".into());
        c.kafka.producer.insert("linger.ms".into(), "5".into());
        c.redis.url = "rediss://relay:redispw@h:6380".into();
        c.nats.url = "nats://natstoken@h:4222,nats://u:natspw@h2:4222".into();
        let shown = format!("{c:?}");
        for secret in [
            "dbpw1",
            "dbpw2",
            "kafkapw",
            "redispw",
            "natstoken",
            "natspw",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("linger.ms"), "{shown}");
        assert!(shown.contains("postgres://u:***@h/d"), "{shown}");
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(load("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn shipped_config_file_is_valid_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let config = Config::load_from(
            &ConfigSource {
                path: Some(path),
                required: true,
            },
            &[],
        )
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load(
            "[relay]\npartitions = 4\n[kafka]\nbrokers = \"a:1\"\n",
            &[
                ("OUTBOXD__RELAY__PARTITIONS", "16"),
                ("OUTBOXD__DATABASE__URL", "postgres://u@h:1/db"),
                ("OUTBOXD__KAFKA__PRODUCER__LINGER.MS", "7"),
                ("OUTBOXD__RATE_LIMIT__TOPICS__ORDERS", "500"),
                ("OUTBOXD__RELAY__ON_PUBLISH", "mark"),
            ],
        )
        .unwrap();
        assert_eq!(c.relay.partitions, 16);
        assert_eq!(c.database.url, "postgres://u@h:1/db");
        assert_eq!(c.kafka.brokers, "a:1");
        assert_eq!(
            c.kafka.producer.get("linger.ms").map(String::as_str),
            Some("7")
        );
        assert_eq!(c.rate_limit.topics.get("orders"), Some(&500));
        assert_eq!(c.relay.on_publish, OnPublish::Mark);
    }

    #[test]
    fn producer_options_keep_dotted_keys_and_accept_numbers() {
        let c = load(
            "[kafka.producer]\n\"linger.ms\" = 5\n\"batch.size\" = \"100000\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.kafka.producer["linger.ms"], "5");
        assert_eq!(c.kafka.producer["batch.size"], "100000");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            "[relay]\npartitons = 3\npartitions = 0\n[database]\nurl = \"mysql://x\"\n[poller]\nbatch_size = \"many\"\n",
            &[("OUTBOXD__RETRY__MAX_ATTEMPTS", "lots"), ("OUTBOXD__NOPE__X", "1")],
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 6, "{text}");
        assert!(text.contains("relay.partitons: unknown key"), "{text}");
        assert!(text.contains("did you mean `relay.partitions`"), "{text}");
        assert!(
            text.contains("relay.partitions: 0 is out of range"),
            "{text}"
        );
        assert!(text.contains("database.url"), "{text}");
        assert!(text.contains("poller.batch_size"), "{text}");
        assert!(
            text.contains("retry.max_attempts") && text.contains("OUTBOXD__RETRY__MAX_ATTEMPTS"),
            "{text}"
        );
        assert!(text.contains("nope: unknown key"), "{text}");
    }

    #[test]
    fn bad_enum_value_names_the_key_and_the_choices() {
        let err = load("[relay]\non_publish = \"archive\"\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("relay.on_publish"), "{text}");
        assert!(text.contains("delete") && text.contains("mark"), "{text}");
    }

    #[test]
    fn guarantees_cannot_be_switched_off_through_producer_options() {
        let err = load(
            "[kafka.producer]\n\"enable.idempotence\" = \"false\"\nacks = \"1\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let missing = ConfigSource {
            path: Some(PathBuf::from("/nonexistent/outboxd.toml")),
            required: true,
        };
        assert!(Config::load_from(&missing, &[]).is_err());
        let optional = ConfigSource {
            path: Some(PathBuf::from("/nonexistent/outboxd.toml")),
            required: false,
        };
        assert_eq!(
            Config::load_from(&optional, &[]).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn toml_syntax_error_is_reported_with_the_file() {
        let err = load("[relay\npartitions = 1", &[]).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].contains(".toml"), "{err}");
    }

    #[test]
    fn broker_list_is_checked() {
        assert!(crate::sink::kafka::check_brokers("a:1,b:2").is_ok());
        assert!(crate::sink::kafka::check_brokers("").is_err());
        assert!(crate::sink::kafka::check_brokers("localhost").is_err());
        assert!(crate::sink::kafka::check_brokers("h:0").is_err());
    }
}
