//! Checking `[kafka]` before anything connects, and describing the connection for
//! `outboxd check`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use super::config::KafkaConfig;

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
pub(super) fn hide_secrets(text: &str, cc: &ClientConfig) -> String {
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
        if let Err(err) = crate::secrets::read_file(path) {
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
