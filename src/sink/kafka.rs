//! The Kafka sink: librdkafka's idempotent producer, record building (design.md §4) and
//! the one place where Kafka's publish failures are classified.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use futures::future::BoxFuture;

use super::{Batch, FailureKind, PublishFailure, Sink, SinkKind};
use crate::config::KafkaConfig;
use crate::health::Health;
use crate::outbox::validate_topic;
use crate::store::OutboxRow;

/// The producer every publisher shares. Deliveries are reported through
/// [`DeliveryTarget`]s from librdkafka's polling thread, without a future per record.
pub type RelayProducer = ThreadedProducer<RelayContext>;

/// Receives the outcome of records it sent, by index.
pub trait DeliveryTarget: Send + Sync {
    /// Record `index` was acknowledged (`Ok`) or failed for good (`Err`).
    fn delivered(&self, index: usize, result: Result<(), KafkaError>);
}

/// What rides with each record through librdkafka and comes back with its delivery report.
pub struct DeliveryToken {
    /// Who wants to know.
    pub target: Arc<dyn DeliveryTarget>,
    /// Which of its records this is.
    pub index: usize,
}

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

/// librdkafka ends connection errors with how long the attempt took; without it the same
/// problem reads the same on every attempt (logged once).
fn without_timing(reason: &str) -> &str {
    reason.rfind(" (after ").map_or(reason, |i| &reason[..i])
}

/// What an operator should do about a TLS or SASL failure, in words.
pub fn security_hint(reason: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "certificate verify failed",
            "the broker's certificate is not signed by the CA in ssl.ca.location (or has expired, or is not issued for this host name)",
        ),
        (
            "broker certificate could not be verified",
            "the broker's certificate is not signed by the CA in ssl.ca.location",
        ),
        (
            "certificate required",
            "the broker wants a client certificate: set ssl.certificate.location and ssl.key.location",
        ),
        (
            "client SSL authentication might be required",
            "the broker wants a client certificate: set ssl.certificate.location and ssl.key.location",
        ),
        (
            "wrong version number",
            "the broker does not speak TLS on this port: check security.protocol and kafka.brokers",
        ),
        (
            "Authentication failed",
            "the broker refused the SASL credentials: check sasl.username and sasl.password",
        ),
        (
            "Unsupported SASL mechanism",
            "the broker does not offer this sasl.mechanism",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| reason.contains(needle))
        .map(|(_, hint)| *hint)
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
        let value = crate::db::read_secret(path)
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
}

impl KafkaSink {
    /// Creates the producer (it connects in the background).
    pub fn new(cfg: &KafkaConfig, health: Arc<Health>) -> anyhow::Result<Self> {
        Ok(Self {
            producer: create_producer(cfg, health)?,
            config: cfg.clone(),
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
        let fallback_value = row
            .payload
            .as_deref()
            .or(row.payload_bytes.as_deref())
            .unwrap_or_default();
        // A row that cannot become a record (bad headers) still gets a copy, with the ids.
        let base = build_record(row).unwrap_or_else(|_| {
            Record {
                topic,
                key: row.aggregate_id.as_bytes(),
                value: fallback_value,
                headers: OwnedHeaders::new(),
            }
            .with_header("event_id", &row.event_id.to_string())
            .with_header("outbox_id", &row.id.to_string())
        });
        let record = Record { topic, ..base }
            .with_header("original_topic", &row.topic)
            .with_header("dead_letter_class", class)
            .with_header("dead_letter_reason", reason);
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

/// librdkafka options outboxd sets itself; overriding them would break a guarantee.
const RESERVED_PRODUCER_OPTIONS: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.brokers instead"),
    (
        "enable.idempotence",
        "outboxd needs the idempotent producer for per-aggregate order",
    ),
    (
        "acks",
        "outboxd needs acks=all so an acknowledged row is durable",
    ),
];

/// Every problem with `[kafka]`, by key.
pub fn check_config(cfg: &KafkaConfig) -> Vec<String> {
    let mut e = Vec::new();
    if !(1_000..=3_600_000).contains(&cfg.stall_timeout_ms) {
        e.push(format!(
            "kafka.stall_timeout_ms: {} is out of range (1000..=3600000)",
            cfg.stall_timeout_ms
        ));
    }
    e.extend(check_options(cfg));
    if let Err(why) = check_brokers(&cfg.brokers) {
        e.push(format!("kafka.brokers: {why}"));
    }
    for (key, why) in RESERVED_PRODUCER_OPTIONS {
        if let Some(v) = cfg.producer.get(*key) {
            let allowed = matches!(
                (*key, v.as_str()),
                ("enable.idempotence", "true") | ("acks", "all" | "-1")
            );
            if !allowed {
                e.push(format!("kafka.producer.\"{key}\": cannot be set ({why})"));
            }
        }
    }
    e
}

/// Checks `kafka.brokers`: comma-separated `host:port`.
pub fn check_brokers(brokers: &str) -> Result<(), String> {
    let list: Vec<&str> = brokers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err("no broker given (host:port, comma separated)".into());
    }
    for broker in list {
        let b = broker
            .strip_prefix("PLAINTEXT://")
            .or_else(|| broker.strip_prefix("SSL://"))
            .unwrap_or(broker);
        let Some((host, port)) = b.rsplit_once(':') else {
            return Err(format!("{broker:?} has no port (host:port)"));
        };
        if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return Err(format!("{broker:?} is not host:port"));
        }
    }
    Ok(())
}

pub use crate::secrets::is_secret_option as is_secret;

/// `text` with the value of every secret option of `cc` replaced by `***`.
fn hide_secrets(text: &str, cc: &ClientConfig) -> String {
    let mut out = text.to_string();
    for (k, v) in cc.config_map() {
        if is_secret(k) && !v.is_empty() {
            out = out.replace(v, "***");
        }
    }
    out
}

/// SASL mechanisms this build of librdkafka offers (OpenSSL built in; no Cyrus SASL, so
/// no GSSAPI; `OAUTHBEARER` with librdkafka's unsecured JWT or a token refresh callback,
/// not OIDC, which needs libcurl).
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// Options naming a file (or directory) librdkafka reads when the producer starts.
const FILE_OPTIONS: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.crl.location",
    "ssl.keystore.location",
];

/// Every problem with `[kafka.producer]` and `[kafka.secret_files]`, by key: options
/// librdkafka does not know or whose value it refuses, unreadable files, SASL mechanisms
/// this build does not offer. A secret's value is never part of a message.
pub fn check_options(cfg: &KafkaConfig) -> Vec<String> {
    let mut e = Vec::new();
    for (key, path) in &cfg.secret_files {
        let name = format!("kafka.secret_files.\"{key}\"");
        if cfg.producer.contains_key(key) {
            e.push(format!("{name}: also set under [kafka.producer]; keep one"));
        }
        if let Err(err) = crate::db::read_secret(path) {
            e.push(format!("{name}: {err}"));
        }
    }
    for (key, value) in &cfg.producer {
        let name = format!("kafka.producer.\"{key}\"");
        if let Err(err) = ClientConfig::new().set(key, value).create_native_config() {
            let said = match &err {
                KafkaError::ClientConfig(_, desc, _, _) => desc.clone(),
                other => other.to_string(),
            };
            let said = if is_secret(key) && !value.is_empty() {
                said.replace(value.as_str(), "***")
            } else {
                said
            };
            e.push(format!("{name}: librdkafka refuses it: {said}"));
            continue;
        }
        if FILE_OPTIONS.contains(&key.as_str())
            && !(key == "ssl.ca.location" && value == "probe")
            && let Err(err) = std::fs::File::open(value)
        {
            e.push(format!("{name}: cannot read {value:?}: {err}"));
        }
        if (key == "sasl.mechanism" || key == "sasl.mechanisms")
            && !SASL_MECHANISMS.contains(&value.to_ascii_uppercase().as_str())
        {
            e.push(format!(
                "{name}: {value:?} is not a SASL mechanism this build offers ({})",
                SASL_MECHANISMS.join(", ")
            ));
        }
    }
    e
}

/// Whether `security.protocol` asks for TLS.
pub fn uses_tls(cfg: &KafkaConfig) -> bool {
    cfg.producer
        .get("security.protocol")
        .is_some_and(|p| p.eq_ignore_ascii_case("ssl") || p.eq_ignore_ascii_case("sasl_ssl"))
}

/// The TLS version the first bootstrap broker negotiates (`TLSv1.3`), for `outboxd
/// check`: librdkafka does not tell. The probe only looks at the version: it takes any
/// certificate (librdkafka's own connection is the one that verifies it, and `check` makes
/// that first), shows none and sends nothing but a handshake.
pub fn probe_tls_version(brokers: &str, timeout: Duration) -> Option<String> {
    use std::net::ToSocketAddrs;
    let first = brokers.split(',').next()?.trim();
    let first = first
        .strip_prefix("SSL://")
        .or_else(|| first.strip_prefix("SASL_SSL://"))
        .unwrap_or(first);
    let (host, _) = first.rsplit_once(':')?;
    let addr = first.to_socket_addrs().ok()?.next()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let mut socket = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    socket.set_read_timeout(Some(timeout)).ok()?;
    socket.set_write_timeout(Some(timeout)).ok()?;
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).ok()?;
    }
    Some(match tls.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    })
}

/// Takes any server certificate: for [`probe_tls_version`] only, which reads the version.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What this build of librdkafka can do (`builtin.features`: `ssl`, `sasl_scram`, …).
pub fn builtin_features() -> String {
    ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .unwrap_or_default()
}

/// How the producer is configured to connect, for `outboxd check`: security protocol,
/// SASL mechanism and user (never a secret).
pub fn connection_description(cfg: &KafkaConfig) -> String {
    let get = |k: &str| cfg.producer.get(k).map(String::as_str);
    let protocol = get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    let mut out = format!("security.protocol={protocol}");
    if protocol.starts_with("sasl") {
        let mechanism = get("sasl.mechanism")
            .or(get("sasl.mechanisms"))
            .unwrap_or("GSSAPI");
        out.push_str(&format!(", SASL {mechanism}"));
        if let Some(user) = get("sasl.username") {
            out.push_str(&format!(" as {user}"));
        }
    }
    out
}

/// Asks the brokers for cluster metadata; the error says which brokers could not be reached.
pub fn fetch_metadata(producer: &RelayProducer, timeout: Duration) -> anyhow::Result<usize> {
    let md = producer
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(md.brokers().len())
}

/// Classifies a Kafka error, once, for the whole relay.
pub fn classify(error: &KafkaError) -> PublishFailure {
    use RDKafkaErrorCode as C;
    let message = error.to_string();
    let code = error.rdkafka_error_code();
    let (kind, class) = match code {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            (FailureKind::Permanent, "record_too_large")
        }
        Some(C::InvalidTopic) => (FailureKind::Permanent, "invalid_topic"),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            (FailureKind::Permanent, "unknown_topic")
        }
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed,
        ) => (FailureKind::Permanent, "not_authorized"),
        Some(
            C::InvalidMessage
            | C::BadMessage
            | C::InvalidRecord
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation
            | C::InvalidTimestamp,
        ) => (FailureKind::Permanent, "invalid_record"),
        Some(C::Fatal | C::GaplessGuarantee | C::InvalidProducerEpoch) => {
            (FailureKind::Fatal, "producer_fatal")
        }
        Some(C::QueueFull) => (FailureKind::Transient, "queue_full"),
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue) => {
            (FailureKind::Transient, "timeout")
        }
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::Resolve,
        ) => (FailureKind::Transient, "broker_unavailable"),
        _ => (FailureKind::Transient, "transient"),
    };
    PublishFailure {
        kind,
        class,
        message,
    }
}

/// A row turned into a Kafka record (design.md §4): borrowed key and value, headers
/// already handed to librdkafka.
pub struct Record<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// `aggregate_id`.
    pub key: &'a [u8],
    /// JSON text or raw bytes.
    pub value: &'a [u8],
    /// Built-in headers first, then the row's own.
    pub headers: OwnedHeaders,
}

impl<'a> Record<'a> {
    /// Adds a header after the others.
    pub fn with_header(mut self, key: &str, value: &str) -> Self {
        self.headers = self.headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
        self
    }

    /// The record as librdkafka takes it, with the token its delivery report brings back.
    pub fn into_base_record(
        self,
        token: Box<DeliveryToken>,
    ) -> BaseRecord<'a, [u8], [u8], Box<DeliveryToken>> {
        BaseRecord::with_opaque_to(self.topic, token)
            .key(self.key)
            .payload(self.value)
            .headers(self.headers)
    }

    /// The headers as (name, value) pairs, in order.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        use rdkafka::message::Headers;
        self.headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("key", &String::from_utf8_lossy(self.key))
            .field("value_len", &self.value.len())
            .field("headers", &self.header_pairs())
            .finish()
    }
}

/// `created_at` as RFC 3339 with microseconds in UTC, written into `buf` (no allocation).
fn rfc3339_micros<'b>(t: &chrono::DateTime<chrono::Utc>, buf: &'b mut [u8; 27]) -> &'b str {
    use chrono::{Datelike, Timelike};
    // The naive UTC value once: each getter on `DateTime<Utc>` would apply the (zero)
    // offset again, seven times per record.
    let t = t.naive_utc();
    fn put(buf: &mut [u8], mut v: u32, width: usize) {
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let year = t.year().clamp(0, 9999) as u32;
    put(&mut buf[0..4], year, 4);
    buf[4] = b'-';
    put(&mut buf[5..7], t.month(), 2);
    buf[7] = b'-';
    put(&mut buf[8..10], t.day(), 2);
    buf[10] = b'T';
    put(&mut buf[11..13], t.hour(), 2);
    buf[13] = b':';
    put(&mut buf[14..16], t.minute(), 2);
    buf[16] = b':';
    put(&mut buf[17..19], t.second(), 2);
    buf[19] = b'.';
    put(&mut buf[20..26], t.nanosecond().min(999_999_999) / 1_000, 6);
    buf[26] = b'Z';
    std::str::from_utf8(buf).expect("ASCII")
}

/// Builds the record for a row, or says why the row cannot be published (a permanent,
/// `malformed_row` or `invalid_topic` failure). Built-in headers are written straight into
/// librdkafka's header list, without intermediate strings.
pub fn build_record(row: &OutboxRow) -> Result<Record<'_>, PublishFailure> {
    build_record_with(row, false)
}

/// [`build_record`], skipping the topic-name check when the caller already made it for
/// this topic (`topic_checked`).
pub fn build_record_with(
    row: &OutboxRow,
    topic_checked: bool,
) -> Result<Record<'_>, PublishFailure> {
    if !topic_checked && let Err(why) = validate_topic(&row.topic) {
        return Err(PublishFailure::invalid_destination(
            SinkKind::Kafka,
            &row.topic,
            &why.to_string(),
        ));
    }
    let value: &[u8] = match (&row.payload, &row.payload_bytes) {
        (Some(text), None) => text,
        (None, Some(bytes)) => bytes,
        _ => {
            return Err(PublishFailure::malformed(
                "row must have exactly one of payload and payload_bytes",
            ));
        }
    };
    let user = super::user_headers(row, SinkKind::Kafka)?;
    let mut id_buf = uuid::Uuid::encode_buffer();
    let event_id = row.event_id.hyphenated().encode_lower(&mut id_buf);
    let mut outbox_id = itoa::Buffer::new();
    let mut ts_buf = [0u8; 27];
    let created_at = rfc3339_micros(&row.created_at, &mut ts_buf);
    let builtins: [(&str, &str); 6] = [
        ("event_id", event_id),
        ("event_type", &row.event_type),
        ("aggregate_type", &row.aggregate_type),
        ("aggregate_id", &row.aggregate_id),
        ("outbox_id", outbox_id.format(row.id)),
        ("created_at", created_at),
    ];
    let extra = user.as_ref().map_or(0, |u| u.len());
    let mut headers = OwnedHeaders::new_with_capacity(builtins.len() + extra);
    for (key, v) in builtins {
        headers = headers.insert(Header {
            key,
            value: Some(v.as_bytes()),
        });
    }
    // A row's own header never has a built-in's name (refused by `user_headers`).
    for (key, v) in user.iter().flatten() {
        headers = headers.insert(Header {
            key,
            value: Some(v.as_bytes()),
        });
    }
    Ok(Record {
        topic: &row.topic,
        key: row.aggregate_id.as_bytes(),
        value,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    fn row() -> OutboxRow {
        OutboxRow {
            id: 7,
            aggregate_type: "order".into(),
            aggregate_id: "o-42".into(),
            event_type: "order.created".into(),
            topic: "orders".into(),
            payload: Some(br#"{"total": 12}"#.to_vec()),
            payload_bytes: None,
            headers: r#"{"traceparent": "00-abc"}"#.into(),
            event_id: uuid::Uuid::nil(),
            created_at: chrono::Utc
                .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
                .unwrap(),
            attempts: 0,
            tries: 0,
        }
    }

    #[test]
    fn record_carries_key_value_and_every_header_with_builtins_first() {
        let r = row();
        let rec = build_record(&r).unwrap();
        assert_eq!(rec.topic, "orders");
        assert_eq!(rec.key, b"o-42");
        assert_eq!(rec.value, br#"{"total": 12}"#);
        let headers = rec.header_pairs();
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "event_type",
                "aggregate_type",
                "aggregate_id",
                "outbox_id",
                "created_at",
                "traceparent"
            ]
        );
        assert_eq!(headers[0].1, "00000000-0000-0000-0000-000000000000");
        assert_eq!(headers[1].1, "order.created");
        // A row's own header named like a built-in is refused, never dropped or sent.
        let mut spoofed = row();
        spoofed.headers = r#"{"traceparent": "00-abc", "event_type": "spoofed"}"#.into();
        assert_eq!(build_record(&spoofed).unwrap_err().class, "reserved_header");
        assert_eq!(headers[4].1, "7");
        assert_eq!(headers[5].1, "2026-11-22T12:00:00.000000Z");
    }

    #[test]
    fn created_at_is_rfc3339_with_microseconds_like_chrono() {
        let t = chrono::Utc
            .with_ymd_and_hms(987, 1, 2, 3, 4, 5)
            .unwrap()
            .with_nanosecond(123_456_789)
            .unwrap();
        let mut buf = [0u8; 27];
        assert_eq!(
            rfc3339_micros(&t, &mut buf),
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }

    #[test]
    fn binary_payload_is_sent_as_is() {
        let mut r = row();
        r.payload = None;
        r.payload_bytes = Some(vec![0, 159, 146, 150]);
        assert_eq!(build_record(&r).unwrap().value, &[0, 159, 146, 150]);
    }

    #[test]
    fn headers_that_are_not_a_string_map_make_a_malformed_row() {
        for bad in [r#"{"n": 1}"#, r#"[1, 2]"#, r#""text""#] {
            let mut r = row();
            r.headers = bad.into();
            let f = build_record(&r).unwrap_err();
            assert_eq!(
                (f.kind, f.class),
                (FailureKind::Permanent, "malformed_row"),
                "{bad}"
            );
        }
    }

    #[test]
    fn invalid_topic_is_permanent() {
        let mut r = row();
        r.topic = "bad topic!".into();
        let f = build_record(&r).unwrap_err();
        assert_eq!((f.kind, f.class), (FailureKind::Permanent, "invalid_topic"));
    }

    #[test]
    fn oversized_record_goes_to_dead_letter() {
        let f = classify(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        assert_eq!(
            (f.kind, f.class),
            (FailureKind::Permanent, "record_too_large")
        );
    }

    #[test]
    fn broker_trouble_is_transient_and_idempotence_loss_is_fatal() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
        ] {
            let f = classify(&KafkaError::MessageProduction(code));
            assert_eq!(f.kind, FailureKind::Transient, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            let f = classify(&KafkaError::MessageProduction(code));
            assert_eq!(f.kind, FailureKind::Permanent, "{code:?}");
        }
        assert_eq!(
            classify(&KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)).kind,
            FailureKind::Fatal
        );
    }

    #[test]
    fn this_build_offers_tls_and_scram_and_oauthbearer() {
        let features = builtin_features();
        for f in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
            assert!(features.split(',').any(|x| x == f), "{f} in {features}");
        }
    }

    #[test]
    fn secret_bearing_options_are_recognised() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in [
            "sasl.username",
            "ssl.ca.location",
            "security.protocol",
            "linger.ms",
        ] {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn bad_producer_options_name_their_key_and_never_a_secret_value() {
        let mut cfg = KafkaConfig::default();
        for (k, v) in [
            ("security.protocol", "tls"),
            ("sasl.mechanism", "SCRAM-MD5"),
            ("ssl.ca.location", "/nonexistent/ca.pem"),
            ("no.such.option", "1"),
            ("sasl.password", "hunter2-secret"),
        ] {
            cfg.producer.insert(k.into(), v.into());
        }
        cfg.secret_files
            .insert("ssl.key.password".into(), "/nonexistent/keypass".into());
        let problems = check_options(&cfg).join("\n");
        for needle in [
            "kafka.producer.\"security.protocol\": librdkafka refuses it",
            "kafka.producer.\"sasl.mechanism\": \"SCRAM-MD5\" is not a SASL mechanism",
            "kafka.producer.\"ssl.ca.location\": cannot read",
            "kafka.producer.\"no.such.option\": librdkafka refuses it",
            "kafka.secret_files.\"ssl.key.password\": cannot read",
        ] {
            assert!(problems.contains(needle), "{needle} in\n{problems}");
        }
        assert!(!problems.contains("hunter2-secret"), "{problems}");
        assert_eq!(problems.lines().count(), 5, "{problems}");
    }

    #[test]
    fn tls_and_sasl_failures_get_words_an_operator_acts_on() {
        let reason = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured (after 3ms in state SSL_HANDSHAKE)";
        assert_eq!(
            security_hint(reason),
            Some(
                "the broker's certificate is not signed by the CA in ssl.ca.location (or has expired, or is not issued for this host name)"
            )
        );
        assert!(!without_timing(reason).contains("after 3ms"));
        assert!(
            security_hint(
                "SASL authentication error: Authentication failed: Invalid username or password"
            )
            .unwrap()
            .contains("sasl.password")
        );
    }

    #[test]
    fn guarantees_are_forced_on_the_producer() {
        let mut cfg = KafkaConfig::default();
        cfg.producer.insert("linger.ms".into(), "9".into());
        let cc = producer_config(&cfg).unwrap();
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("linger.ms"), Some("9"));
    }
}
