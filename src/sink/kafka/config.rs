//! `[kafka]`: the Kafka sink's configuration section (compiled in every build: a
//! configuration names every sink's section).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::secrets::fmt_section("KafkaConfig", self, f)
    }
}
