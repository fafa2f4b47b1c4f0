//! The Kafka sink itself: librdkafka's idempotent producer, shared by every publisher,
//! and the delivery reports that settle each row.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};

use futures::future::BoxFuture;

use super::check::{
    builtin_features, connection_description, hide_secrets, probe_tls_version, uses_tls,
};
use super::classify::{classify, security_hint, without_timing};
use super::config::KafkaConfig;
use super::durability::Durability;
use super::record::{DeliveryTarget, DeliveryToken, Record, build_record_with};
use crate::health::Health;
use crate::outbox::SinkKind;
use crate::sink::api::{Batch, FailureKind, Sink};
use crate::sink::message::Message;
use crate::store::OutboxRow;

/// The producer every publisher shares. Deliveries are reported through
/// [`DeliveryTarget`]s from librdkafka's polling thread, without a future per record.
pub type RelayProducer = ThreadedProducer<RelayContext>;

/// librdkafka options outboxd sets unless `[kafka.producer]` says otherwise (the
/// guarantees-bearing ones, `enable.idempotence` and `acks`, cannot be changed).
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "outboxd"),
    // Small: a NOTIFY-woken row should not wait long for company (commit→ack latency);
    // under load librdkafka batches anyway while requests are in flight.
    ("linger.ms", "1"),
    // A broker outage shorter than this is retried inside librdkafka, in order; a longer
    // one surfaces as a transient failure that the retry actor backs off.
    ("message.timeout.ms", "60000"),
    ("queue.buffering.max.messages", "1000000"),
    ("queue.buffering.max.kbytes", "1048576"),
];

/// Client context: routes librdkafka logs to `tracing` and broker-level errors to health.
pub struct RelayContext {
    health: Arc<Health>,
    /// Produce requests librdkafka had sent at its last statistics report.
    produce_requests: AtomicI64,
}

impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // TLS and SASL failures repeat on every connection attempt; `client_error` reports
        // each once, with what to do about it.
        let level = if security_hint(log_message).is_some() {
            RDKafkaLogLevel::Debug
        } else {
            level
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::warn!(facility = fac, "librdkafka: {log_message}"),
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(facility = fac, "librdkafka: {log_message}")
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client_error(error, reason);
    }

    /// Only called when `statistics.interval.ms` is set under `[kafka.producer]` (off by
    /// default: librdkafka then builds a JSON document every interval).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let produce: i64 = statistics
            .brokers
            .values()
            .filter_map(|b| b.req.get("Produce"))
            .sum();
        // librdkafka counts from the producer's start; a replaced producer starts again at 0.
        let before = self.produce_requests.swap(produce, Ordering::Relaxed);
        if produce > before {
            metrics::counter!("outboxd_kafka_produce_requests_total")
                .increment((produce - before) as u64);
        }
    }
}

impl ProducerContext for RelayContext {
    type DeliveryOpaque = Box<DeliveryToken>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<DeliveryToken>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        token.target.delivered(token.index, outcome);
    }
}

impl RelayContext {
    fn client_error(&self, error: KafkaError, reason: &str) {
        use RDKafkaErrorCode as C;
        // With TLS 1.3 a refused client certificate arrives after the handshake, as a
        // transport failure: the words say what it is.
        let security = security_hint(reason).is_some();
        match error.rdkafka_error_code() {
            Some(C::AllBrokersDown) if !security => {
                if self.health.set_broker_up(false) {
                    tracing::warn!(%reason, "All brokers are down; sends wait and are retried.");
                }
            }
            Some(
                C::SSL
                | C::Authentication
                | C::SaslAuthenticationFailed
                | C::ClusterAuthorizationFailed
                | C::UnsupportedSASLMechanism
                | C::IllegalSASLState,
            ) => self.security_problem(reason),
            _ if security => self.security_problem(reason),
            _ => tracing::warn!(%error, %reason, "Kafka client error."),
        }
    }

    /// The broker cannot be trusted or does not take our credentials: nothing can be
    /// published until an operator fixes the configuration. Rows stay pending.
    fn security_problem(&self, reason: &str) {
        let reason = without_timing(reason);
        let (kind, problem) = match security_hint(reason) {
            Some(hint) => (hint, format!("{hint} ({reason})")),
            None => (reason, reason.to_string()),
        };
        self.health.set_broker_up(false);
        if self
            .health
            .set_broker_problem(Some((kind, problem.clone())))
        {
            tracing::error!(%problem, "Cannot connect to the broker; rows stay pending until this is fixed.");
        }
    }
}

/// The full librdkafka configuration for the relay's producer, secrets read from their
/// files (`[kafka.secret_files]`).
pub fn producer_config(cfg: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in PRODUCER_DEFAULTS {
        cc.set(*k, *v);
    }
    for (k, v) in &cfg.producer {
        cc.set(k, v);
    }
    for (k, path) in &cfg.secret_files {
        let value = crate::secrets::read_file(path)
            .map_err(|e| anyhow::anyhow!("kafka.secret_files.\"{k}\": {e}"))?;
        cc.set(k, value);
    }
    cc.set("enable.idempotence", "true");
    cc.set("acks", "all");
    Ok(cc)
}

/// Builds the shared idempotent producer (`enable.idempotence=true`, `acks=all`).
pub fn create_producer(cfg: &KafkaConfig, health: Arc<Health>) -> anyhow::Result<RelayProducer> {
    let cc = producer_config(cfg)?;
    cc.create_with_context(RelayContext {
        health,
        produce_requests: AtomicI64::new(0),
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot create the Kafka producer: {}",
            hide_secrets(&e.to_string(), &cc)
        )
    })
}

/// The Kafka sink: one idempotent producer shared by every publisher.
pub struct KafkaSink {
    producer: RelayProducer,
    config: KafkaConfig,
    durability: Arc<Durability>,
}

impl KafkaSink {
    /// Creates the producer (it connects in the background).
    pub fn new(cfg: &KafkaConfig, health: Arc<Health>) -> anyhow::Result<Self> {
        Ok(Self {
            producer: create_producer(cfg, health)?,
            config: cfg.clone(),
            durability: Durability::new(&producer_config(cfg)?, Duration::from_secs(10)),
        })
    }

    /// The producer, for tests and tools that use librdkafka directly.
    pub fn producer(&self) -> &RelayProducer {
        &self.producer
    }
}

impl DeliveryTarget for Batch {
    fn delivered(&self, index: usize, result: Result<(), KafkaError>) {
        match result {
            Ok(()) => self.acked(index),
            Err(e) => self.failed(index, classify(&e)),
        }
    }
}

impl Sink for KafkaSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Kafka
    }

    fn send(&self, batch: Arc<Batch>) {
        let target: Arc<dyn DeliveryTarget> = batch.clone();
        // Rows of a batch mostly share a topic: check its name once per run of equal topics.
        let mut valid_topic: Option<&str> = None;
        for (i, row) in batch.rows().iter().enumerate() {
            let topic_checked = valid_topic == Some(row.topic.as_str());
            let record = match build_record_with(row, topic_checked) {
                Ok(r) => r,
                Err(f) => {
                    batch.failed(i, f);
                    continue;
                }
            };
            if !topic_checked {
                self.durability.sending_to(&row.topic);
            }
            valid_topic = Some(row.topic.as_str());
            let token = Box::new(DeliveryToken {
                target: target.clone(),
                index: i,
            });
            if let Err((e, _)) = self.producer.send(record.into_base_record(token)) {
                let f = classify(&e);
                if f.kind != FailureKind::Permanent {
                    tracing::warn!(error = %e, "Producer refused a record.");
                }
                batch.failed(i, f);
            }
        }
    }

    fn copy_dead_letter(&self, row: &OutboxRow, topic: &str, class: &str, reason: &str) {
        // The same copy as on every sink: the row's message (or, for a row that cannot be
        // one, its payload and built-in headers), where it was going and why it was not.
        let message = Message::dead_letter(row, SinkKind::Kafka, topic, class, reason);
        let record = Record::from_message(&message, row.aggregate_id.as_bytes());
        let token = Box::new(DeliveryToken {
            target: Arc::new(DlqCopy),
            index: 0,
        });
        if let Err((e, _)) = self.producer.send(record.into_base_record(token)) {
            tracing::warn!(error = %e, "Could not copy a dead letter to the DLQ topic.");
        }
    }

    fn probe(&self, timeout: Duration) -> BoxFuture<'static, Result<String, String>> {
        let producer = self.producer.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let n = tokio::task::spawn_blocking(move || fetch_metadata(&producer, timeout))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let tls = if uses_tls(&config) {
                let brokers = config.brokers.clone();
                let version =
                    tokio::task::spawn_blocking(move || probe_tls_version(&brokers, timeout))
                        .await
                        .ok()
                        .flatten();
                format!(
                    ", TLS {}",
                    version.as_deref().unwrap_or("(version not known)")
                )
            } else {
                String::new()
            };
            Ok(format!(
                "{n} broker(s) in the cluster, {}{tls}",
                connection_description(&config)
            ))
        })
    }

    fn describe(&self) -> String {
        format!(
            "librdkafka {} with {}",
            rdkafka::util::get_rdkafka_version().1,
            builtin_features()
        )
    }

    fn stall_timeout(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.config.stall_timeout_ms))
    }

    fn discard(&self) {
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'static, ()> {
        let producer = self.producer.clone();
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        })
    }
}

/// Logs a DLQ copy that failed (the dead-letter table is the record).
struct DlqCopy;

impl DeliveryTarget for DlqCopy {
    fn delivered(&self, _index: usize, result: Result<(), KafkaError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "Could not copy a dead letter to the DLQ topic.");
        }
    }
}

/// Asks the brokers for cluster metadata; the error says which brokers could not be reached.
pub fn fetch_metadata(producer: &RelayProducer, timeout: Duration) -> anyhow::Result<usize> {
    let md = producer
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(md.brokers().len())
}
