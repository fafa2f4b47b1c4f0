//! The Kafka sink (feature `kafka`): librdkafka's idempotent producer.
//!
//! - [`config`] — the `[kafka]` section (in every build);
//! - `producer` — the shared producer and its delivery reports;
//! - `record` — a row as a Kafka record (design.md §4);
//! - `classify` — Kafka's failures, classified once for the whole relay;
//! - `check` — `[kafka]` checked before anything connects, and `outboxd check`'s words;
//! - `durability` — each topic's replication factor and `min.insync.replicas`, judged once.

pub mod config;

#[cfg(feature = "kafka")]
mod check;
#[cfg(feature = "kafka")]
mod classify;
#[cfg(feature = "kafka")]
mod durability;
#[cfg(feature = "kafka")]
mod producer;
#[cfg(feature = "kafka")]
mod record;
#[cfg(all(test, feature = "kafka"))]
mod tests;

#[cfg(feature = "kafka")]
pub use check::{
    SASL_MECHANISMS, builtin_features, check_brokers, check_config, check_options,
    connection_description, is_secret, probe_tls_version, uses_tls,
};
#[cfg(feature = "kafka")]
pub use classify::{classify, security_hint};
#[cfg(feature = "kafka")]
pub use producer::{
    KafkaSink, PRODUCER_DEFAULTS, RelayContext, RelayProducer, create_producer, fetch_metadata,
    producer_config,
};
#[cfg(feature = "kafka")]
pub use record::{DeliveryTarget, DeliveryToken, Record, build_record, build_record_with};

/// The Kafka sink in the registry.
#[cfg(feature = "kafka")]
pub const SPEC: crate::sink::api::SinkSpec = crate::sink::api::SinkSpec {
    kind: crate::outbox::SinkKind::Kafka,
    create: |config, health| {
        let section = config.kafka.clone();
        Box::pin(async move {
            let sink: std::sync::Arc<dyn crate::sink::api::Sink> =
                std::sync::Arc::new(KafkaSink::new(&section, health)?);
            Ok(sink)
        })
    },
    check: |config| check_config(&config.kafka),
    location: |config| config.kafka.brokers.clone(),
};
