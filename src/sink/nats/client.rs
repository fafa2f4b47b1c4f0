//! The Nats sink's client: connection, sending, classification.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, Context};
use futures::future::BoxFuture;

use super::cluster::{NoResponders, warn_if_old};
use super::config::NatsConfig;
use crate::health::Health;
use crate::outbox::SinkKind;
use crate::sink::api::{Batch, FailureKind, PublishFailure, Sink};
use crate::sink::message::Message;
use crate::store::OutboxRow;

/// The NATS JetStream sink.
pub struct NatsSink {
    /// To the publishing task ([`super::coalescing`]).
    batches: tokio::sync::mpsc::UnboundedSender<Arc<Batch>>,
    client: async_nats::Client,
    js: Context,
    config: NatsConfig,
}

/// The connection options `[nats]` asks for: TLS, and the user/password, token or
/// credentials file.
async fn connect_options(cfg: &NatsConfig) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("outboxd")
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .require_tls(cfg.tls_required);
    if !cfg.user.is_empty() || !cfg.password_file.is_empty() {
        let password = crate::secrets::read_file(&cfg.password_file)
            .map_err(|e| anyhow::anyhow!("nats.password_file: {e}"))?;
        opts = opts.user_and_password(cfg.user.clone(), password);
    }
    if !cfg.token_file.is_empty() {
        let token = crate::secrets::read_file(&cfg.token_file)
            .map_err(|e| anyhow::anyhow!("nats.token_file: {e}"))?;
        opts = opts.token(token);
    }
    if !cfg.credentials_file.is_empty() {
        opts = opts
            .credentials_file(&cfg.credentials_file)
            .await
            .map_err(|e| anyhow::anyhow!("nats.credentials_file: {e}"))?;
    }
    if !cfg.ca_file.is_empty() {
        crate::sink::tls::read_pem("nats.ca_file", &cfg.ca_file)?;
        opts = opts.add_root_certificates(cfg.ca_file.clone().into());
    }
    match (cfg.cert_file.is_empty(), cfg.key_file.is_empty()) {
        (true, true) => {}
        (false, false) => {
            crate::sink::tls::read_pem("nats.cert_file", &cfg.cert_file)?;
            crate::sink::tls::read_pem("nats.key_file", &cfg.key_file)?;
            opts = opts
                .add_client_certificate(cfg.cert_file.clone().into(), cfg.key_file.clone().into());
        }
        _ => anyhow::bail!("nats.cert_file and nats.key_file go together: set both or neither"),
    }
    Ok(opts)
}

/// Publishes in flight at once (each a group of batches); batches handed over meanwhile
/// wait and go together.
pub const GROUPS_IN_FLIGHT: usize = 4;

/// Messages in one group, at most.
const GROUP_ROWS: usize = 5_000;

/// Publishes every row of `batches` in order, then waits for their PubAcks together; each
/// settles its row.
async fn publish(js: jetstream::Context, batches: Vec<Arc<Batch>>) {
    let mut acks = Vec::new();
    let mut no_responders = NoResponders::default();
    for batch in &batches {
        for (i, row) in batch.rows().iter().enumerate() {
            if let Err(why) = SinkKind::Nats.validate_destination(&row.topic) {
                batch.failed(
                    i,
                    PublishFailure::invalid_destination(SinkKind::Nats, &row.topic, &why),
                );
                continue;
            }
            let prepared =
                Message::from_row(row, SinkKind::Nats).and_then(|m| Ok((headers(&m)?, m.payload)));
            let (headers, payload) = match prepared {
                Ok(p) => p,
                Err(f) => {
                    batch.failed(i, f);
                    continue;
                }
            };
            let message = jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::copy_from_slice(payload))
                .headers(headers);
            match js.send_publish(row.topic.clone(), message).await {
                Ok(ack) => acks.push((batch, i, ack)),
                Err(e) => fail(&js, &mut no_responders, batch, i, &e).await,
            }
        }
    }
    let results = futures::future::join_all(
        acks.into_iter()
            .map(|(batch, i, ack)| async move { (batch, i, ack.await) }),
    )
    .await;
    for (batch, i, result) in results {
        match result {
            Ok(_) => batch.acked(i),
            Err(e) => fail(&js, &mut no_responders, batch, i, &e).await,
        }
    }
}

/// Row `i` of `batch` failed with `e`; "no responders" is told apart: a missing stream,
/// or one without a leader for now.
async fn fail(
    js: &jetstream::Context,
    no_responders: &mut NoResponders,
    batch: &Batch,
    i: usize,
    e: &PublishError,
) {
    let failure = if e.kind() == PublishErrorKind::StreamNotFound {
        no_responders.verdict(js, &batch.rows()[i].topic).await
    } else {
        classify(e)
    };
    batch.failed(i, failure);
}

/// The words for a refused connection, naming the keys to fix.
const REFUSED: &str = "NATS refused the credentials: check nats.user / nats.password_file, nats.token_file or nats.credentials_file";

/// Why a fresh connection to `[nats]` fails, in words naming what to fix: for `check`,
/// when the relay's own connection (which retries quietly) is not up.
async fn diagnose(cfg: &NatsConfig, timeout: Duration) -> String {
    let attempt = async {
        let opts = connect_options(cfg).await.map_err(|e| e.to_string())?;
        let servers = servers(&cfg.url).map_err(|e| e.to_string())?;
        match opts.connect(servers).await {
            Ok(client) => {
                let _ = client.drain().await;
                Ok(())
            }
            Err(e) => Err(match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => format!("{REFUSED} ({e})"),
                _ => match crate::sink::tls::tls_hint("nats", &e.to_string()) {
                    Some((_, hint)) => format!("{hint} ({e})"),
                    None => e.to_string(),
                },
            }),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Err(words)) => words,
        Ok(Ok(())) => "connected only now (the server was slow to answer)".into(),
        Err(_) => format!("no answer within {} ms", timeout.as_millis()),
    }
}

impl NatsSink {
    /// Connects in the background (a server that is down only delays publishing).
    pub async fn new(cfg: &NatsConfig, health: Arc<Health>) -> anyhow::Result<Self> {
        let mut opts = connect_options(cfg)
            .await?
            .retry_on_initial_connect()
            .max_reconnects(None);
        let events = health.clone();
        // The client, once made: each (re)connection may reach another server, whose
        // version is read then.
        let connected: Arc<std::sync::OnceLock<async_nats::Client>> = Arc::default();
        let said_old = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (on_connect, said) = (connected.clone(), said_old.clone());
        opts = opts.event_callback(move |event| {
            let health = events.clone();
            if matches!(event, async_nats::Event::Connected)
                && let Some(client) = on_connect.get()
            {
                let info = client.server_info();
                warn_if_old(&info.version, &info.server_name, &said);
            }
            async move { on_event(&health, event) }
        });
        let servers = servers(&cfg.url)?;
        let client = opts
            .connect(servers)
            .await
            .map_err(|e| anyhow::anyhow!("nats: {e}"))?;
        let _ = connected.set(client.clone());
        // The first connection may be up before the client was stored.
        let first = client.clone();
        tokio::spawn(async move {
            while first.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let info = first.server_info();
            warn_if_old(&info.version, &info.server_name, &said_old);
        });
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .max_ack_inflight(1 << 20)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let publisher = js.clone();
        let batches = crate::sink::api::coalescing(GROUPS_IN_FLIGHT, GROUP_ROWS, move |batches| {
            publish(publisher.clone(), batches)
        });
        Ok(Self {
            batches,
            client,
            js,
            config: cfg.clone(),
        })
    }
}

/// `nats.url`: comma-separated server URLs.
fn servers(url: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>().map_err(|e| {
                anyhow::anyhow!(
                    "nats.url: {:?} is not a NATS server URL: {e}",
                    crate::secrets::redact(s)
                )
            })
        })
        .collect()
}

/// The server refused the relay's credentials: down, and said once.
fn refused(health: &Health, words: &str) {
    health.set_broker_up(false);
    let words = format!("{REFUSED} ({words})");
    if health.set_broker_problem(Some(("authentication", words.clone()))) {
        tracing::error!(problem = %words, "Cannot use NATS; rows stay pending until this is fixed.");
    }
}

/// Connection events: reachability and authentication problems for `/readyz` and logs.
fn on_event(health: &Health, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            let _ = health.set_broker_up(true);
        }
        async_nats::Event::Disconnected => {
            if health.set_broker_up(false) {
                tracing::warn!("NATS connection lost; sends are retried.");
            }
        }
        async_nats::Event::ServerError(e) => {
            let words = e.to_string();
            let lower = words.to_ascii_lowercase();
            if lower.contains("authorization") || lower.contains("authentication") {
                refused(health, &words);
            } else {
                tracing::warn!(error = %words, "NATS server error.");
            }
        }
        // A refused CONNECT (credentials) arrives as a client error.
        async_nats::Event::ClientError(e) if e.to_string().contains("authorization") => {
            refused(health, &e.to_string());
        }
        async_nats::Event::ClientError(e) => {
            tracing::debug!(error = %e, "NATS client error.");
        }
        other => tracing::debug!(event = %other, "NATS connection event."),
    }
}

/// Every problem with `[nats]`, by key.
pub fn check_config(cfg: &NatsConfig) -> Vec<String> {
    let mut e = Vec::new();
    if let Err(err) = servers(&cfg.url) {
        e.push(err.to_string());
    } else if servers(&cfg.url).map(|s| s.is_empty()).unwrap_or(false) {
        e.push("nats.url: no server given (nats://host:4222, comma separated)".into());
    }
    for (key, value, min, max) in [
        ("nats.timeout_ms", cfg.timeout_ms, 1, 3_600_000),
        (
            "nats.connect_timeout_ms",
            cfg.connect_timeout_ms,
            1,
            600_000,
        ),
    ] {
        if value < min || value > max {
            e.push(format!("{key}: {value} is out of range ({min}..={max})"));
        }
    }
    e.extend(crate::sink::tls::unreadable_files(&[
        ("nats.password_file", &cfg.password_file),
        ("nats.token_file", &cfg.token_file),
        ("nats.credentials_file", &cfg.credentials_file),
        ("nats.ca_file", &cfg.ca_file),
        ("nats.cert_file", &cfg.cert_file),
        ("nats.key_file", &cfg.key_file),
    ]));
    if !cfg.password_file.is_empty() && cfg.user.is_empty() {
        e.push("nats.password_file: set nats.user too".into());
    }
    if cfg.cert_file.is_empty() != cfg.key_file.is_empty() {
        e.push("nats.cert_file and nats.key_file go together: set both or neither".into());
    }
    e
}

/// The headers of a message, and `Nats-Msg-Id` = the event id, set last so that nothing
/// replaces it (a row's own `Nats-` headers are refused before this, by
/// [`Message::from_row`]).
fn headers(message: &Message<'_>) -> Result<HeaderMap, PublishFailure> {
    let mut map = HeaderMap::new();
    let mut event_id = None;
    for (k, v) in &message.headers {
        let name = HeaderName::from_str(k).map_err(|e| {
            PublishFailure::malformed(format!("header {k:?} is not a valid NATS header name: {e}"))
        })?;
        let value = HeaderValue::from_str(v).map_err(|e| {
            PublishFailure::malformed(format!("header {k:?} has a value NATS cannot carry: {e}"))
        })?;
        if k == "event_id" {
            event_id = Some(value.clone());
        }
        map.insert(name, value);
    }
    let event_id = event_id.ok_or_else(|| PublishFailure::malformed("no event_id"))?;
    map.insert(async_nats::header::NATS_MESSAGE_ID, event_id);
    Ok(map)
}

/// Classifies a failed JetStream publish, once, for the whole sink.
pub fn classify(error: &PublishError) -> PublishFailure {
    let message = error.to_string();
    let (kind, class) = match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => (FailureKind::Permanent, "record_too_large"),
        PublishErrorKind::TimedOut => (FailureKind::Transient, "timeout"),
        PublishErrorKind::BrokenPipe => (FailureKind::Transient, "broker_unavailable"),
        PublishErrorKind::StreamNotFound => (FailureKind::Destination, "no_stream"),
        PublishErrorKind::MaxAckPending => (FailureKind::Transient, "queue_full"),
        _ => {
            let code = std::error::Error::source(error)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|e| e.error_code().0);
            return classify_code(code, message);
        }
    };
    PublishFailure::new(kind, class, message)
}

/// Classifies a JetStream API error by its code (`err_code`), or by its words when there
/// is none.
pub fn classify_code(code: Option<u64>, message: String) -> PublishFailure {
    let lower = message.to_ascii_lowercase();
    let (kind, class) = match code {
        Some(10054) => (FailureKind::Permanent, "record_too_large"),
        Some(10109) => (FailureKind::Destination, "stream_sealed"),
        Some(10076 | 10039) => (FailureKind::Destination, "jetstream_disabled"),
        Some(10077) if lower.contains("maximum") => (FailureKind::Destination, "stream_full"),
        Some(10023 | 10028 | 10047 | 10072 | 10002 | 10077) => (FailureKind::Transient, "storage"),
        _ if lower.contains("sealed") => (FailureKind::Destination, "stream_sealed"),
        _ if lower.contains("permissions violation") => {
            (FailureKind::Destination, "not_authorized")
        }
        _ if lower.contains("invalid subject") => (FailureKind::Permanent, "invalid_topic"),
        _ => (FailureKind::Transient, "transient"),
    };
    PublishFailure::new(kind, class, message)
}

impl Sink for NatsSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Nats
    }

    fn send(&self, batch: Arc<Batch>) {
        crate::sink::api::enqueue(&self.batches, batch);
    }

    fn copy_dead_letter(&self, row: &OutboxRow, topic: &str, class: &str, reason: &str) {
        let message = Message::dead_letter(row, SinkKind::Nats, topic, class, reason);
        let prepared = headers(&message).unwrap_or_default();
        let payload = bytes::Bytes::copy_from_slice(message.payload);
        let topic = topic.to_string();
        let js = self.js.clone();
        tokio::spawn(async move {
            let result = match js.publish_with_headers(topic, prepared, payload).await {
                Ok(ack) => ack.await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "Could not copy a dead letter to the DLQ subject.");
            }
        });
    }

    fn probe(&self, timeout: Duration) -> BoxFuture<'static, Result<String, String>> {
        let client = self.client.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            while client.connection_state() != async_nats::connection::State::Connected {
                if tokio::time::Instant::now() >= deadline {
                    // The relay's connection retries without saying why; one plain
                    // attempt tells.
                    return Err(diagnose(&config, timeout).await);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let info = client.server_info();
            // The account's JetStream information, read as plain JSON: the typed
            // `query_account` expects fields only newer servers send.
            let reply = tokio::time::timeout(timeout, client.request("$JS.API.INFO", "".into()))
                .await
                .map_err(|_| "JetStream did not answer".to_string())?
                .map_err(|e| {
                    format!("JetStream is not available (is the server run with -js?): {e}")
                })?;
            let account: serde_json::Value =
                serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
            if let Some(error) = account.get("error") {
                return Err(format!("JetStream is not available: {error}"));
            }
            let jetstream = format!(
                "JetStream on ({} stream(s))",
                account.get("streams").and_then(|v| v.as_u64()).unwrap_or(0)
            );
            let tls = if info.tls_required { "TLS" } else { "no TLS" };
            let old = if super::cluster::loses_on_leader_change(&info.version) {
                " — older than 2.11: JetStream can lose a message on a leader change; upgrade"
            } else {
                ""
            };
            Ok(format!(
                "NATS {} ({}), {jetstream}, {tls}, max_payload {} bytes{old}",
                info.version, info.server_name, info.max_payload
            ))
        })
    }

    fn describe(&self) -> String {
        "async-nats 0.51 (rustls)".into()
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'static, ()> {
        let client = self.client.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, client.flush()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_problems_hold_and_size_problems_dead_letter() {
        let c = |code, words: &str| {
            let f = classify_code(code, words.into());
            (f.kind, f.class)
        };
        assert_eq!(
            c(Some(10054), "message size exceeds maximum allowed"),
            (FailureKind::Permanent, "record_too_large")
        );
        assert_eq!(
            c(Some(10109), "invalid operation on sealed stream"),
            (FailureKind::Destination, "stream_sealed")
        );
        assert_eq!(
            c(Some(10077), "maximum messages exceeded"),
            (FailureKind::Destination, "stream_full")
        );
        assert_eq!(
            c(Some(10077), "disk I/O error"),
            (FailureKind::Transient, "storage")
        );
        assert_eq!(
            c(Some(10076), "jetstream not enabled"),
            (FailureKind::Destination, "jetstream_disabled")
        );
        assert_eq!(c(None, "what"), (FailureKind::Transient, "transient"));
    }

    #[test]
    fn the_event_id_is_the_message_id() {
        use chrono::TimeZone;
        let row = OutboxRow {
            id: 1,
            aggregate_type: "a".into(),
            aggregate_id: "1".into(),
            event_type: "e".into(),
            topic: "orders.created".into(),
            payload: Some(b"{}".to_vec()),
            payload_bytes: None,
            headers: r#"{"bad name": "x"}"#.into(),
            event_id: uuid::Uuid::nil(),
            created_at: chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            attempts: 0,
            tries: 0,
        };
        let mut ok = row.clone();
        ok.headers = "{}".into();
        let m = Message::from_row(&ok, SinkKind::Nats).unwrap();
        let h = headers(&m).unwrap();
        assert_eq!(
            h.get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some(uuid::Uuid::nil().to_string().as_str())
        );
        let m = Message::from_row(&row, SinkKind::Nats).unwrap();
        assert_eq!(headers(&m).unwrap_err().class, "malformed_row");
        // A row's own Nats-Msg-Id (any case) never reaches the server.
        for name in ["Nats-Msg-Id", "nats-msg-id", "Nats-Expected-Last-Sequence"] {
            let mut forged = ok.clone();
            forged.headers = format!(r#"{{"{name}": "fixed"}}"#);
            assert_eq!(
                Message::from_row(&forged, SinkKind::Nats)
                    .unwrap_err()
                    .class,
                "reserved_header",
                "{name}"
            );
        }
    }
}
