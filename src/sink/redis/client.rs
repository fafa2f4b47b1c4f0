//! The Redis sink's client: connection, sending, classification.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError, Value};

use super::config::RedisConfig;
use crate::health::Health;
use crate::outbox::SinkKind;
use crate::sink::api::{Batch, FailureKind, PublishFailure, Sink};
use crate::sink::message::Message;
use crate::sink::tls::read_pem;
use crate::store::OutboxRow;

/// Pipelines in flight at once; batches handed over meanwhile wait and go together.
pub const PIPELINES_IN_FLIGHT: usize = 4;

/// Commands in one pipeline, at most (more batches wait for the next).
pub const PIPELINE_ROWS: usize = 5_000;

/// The Redis Streams sink.
pub struct RedisSink {
    /// To the writer task.
    batches: tokio::sync::mpsc::UnboundedSender<Arc<Batch>>,
    conn: ConnectionManager,
    config: RedisConfig,
    health: Arc<Health>,
    tls: bool,
    user: String,
}

const IDMP_UNKNOWN: u8 = 0;
const IDMP_NO: u8 = 1;
const IDMP_YES: u8 = 2;

/// The server's version, from what `INFO server` says.
fn redis_version(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
}

/// Whether a server whose `INFO server` says `info` takes `XADD … IDMP` (Redis 8.6+).
pub fn supports_idmp(info: &str) -> bool {
    let Some(version) = redis_version(info) else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (8, 6)
}

impl RedisSink {
    /// Prepares the connection; it is opened on first use, and again after it drops.
    pub fn new(cfg: &RedisConfig, health: Arc<Health>) -> anyhow::Result<Self> {
        let client = client(cfg)?;
        let user = client
            .get_connection_info()
            .redis_settings()
            .username()
            .unwrap_or("default")
            .to_string();
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(cfg.timeout_ms)))
            .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
        let idmp = Arc::new(AtomicU8::new(if cfg.idmp { IDMP_UNKNOWN } else { IDMP_NO }));
        let sender = Sender {
            conn: conn.clone(),
            health: health.clone(),
            config: cfg.clone(),
            idmp,
        };
        let batches =
            crate::sink::api::coalescing(PIPELINES_IN_FLIGHT, PIPELINE_ROWS, move |batches| {
                sender.clone().pipeline(batches)
            });
        Ok(Self {
            batches,
            conn,
            config: cfg.clone(),
            health,
            tls: cfg.url.starts_with("rediss://"),
            user,
        })
    }

    /// The `XADD` for one message; with `idmp`, idempotent under `event_id`.
    fn xadd(config: &RedisConfig, message: &Message<'_>, idmp: Option<&str>) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(message.topic);
        if let Some(event_id) = idmp {
            cmd.arg("IDMP").arg("outboxd").arg(event_id);
        }
        if config.maxlen > 0 {
            cmd.arg("MAXLEN").arg("~").arg(config.maxlen);
        } else if config.min_age_secs > 0 {
            let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
            let min = now_ms.saturating_sub(config.min_age_secs * 1_000);
            cmd.arg("MINID").arg("~").arg(format!("{min}-0"));
        }
        cmd.arg("*").arg("payload").arg(message.payload);
        for (k, v) in &message.headers {
            // `payload` is the message's own field: a row's header of that name is dropped.
            if k != "payload" {
                cmd.arg(k.as_ref()).arg(v.as_ref());
            }
        }
        cmd
    }

    /// The message for a row, or why the row cannot be sent.
    fn message<'a>(
        config: &RedisConfig,
        row: &'a OutboxRow,
    ) -> Result<Message<'a>, PublishFailure> {
        if row.topic.is_empty() {
            return Err(PublishFailure::invalid_destination(
                SinkKind::Redis,
                &row.topic,
                "empty",
            ));
        }
        let message = Message::from_row(row, SinkKind::Redis)?;
        if message.payload.len() as u64 > config.max_payload_bytes {
            return Err(PublishFailure::new(
                FailureKind::Permanent,
                "record_too_large",
                format!(
                    "payload of {} bytes is over redis.max_payload_bytes ({})",
                    message.payload.len(),
                    config.max_payload_bytes
                ),
            ));
        }
        Ok(message)
    }
}

/// The client for `[redis]`: the URL, with the user, password file and certificates of
/// the section applied.
fn client(cfg: &RedisConfig) -> anyhow::Result<Client> {
    let shown = crate::secrets::redact(&cfg.url);
    let mut info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| anyhow::anyhow!("redis.url: {shown:?} is not a Redis URL: {e}"))?;
    let mut settings = info.redis_settings().clone();
    if !cfg.username.is_empty() {
        settings = settings.set_username(&cfg.username);
    }
    if !cfg.password_file.is_empty() {
        let password = crate::secrets::read_file(&cfg.password_file)
            .map_err(|e| anyhow::anyhow!("redis.password_file: {e}"))?;
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    let tls = cfg.url.starts_with("rediss://");
    if !tls {
        if !(cfg.ca_file.is_empty() && cfg.cert_file.is_empty() && cfg.key_file.is_empty()) {
            anyhow::bail!(
                "redis.ca_file / cert_file / key_file are set but redis.url {shown:?} is not rediss://"
            );
        }
        return Client::open(info).map_err(|e| anyhow::anyhow!("redis.url: {e}"));
    }
    let root_cert = (!cfg.ca_file.is_empty())
        .then(|| read_pem("redis.ca_file", &cfg.ca_file))
        .transpose()?;
    let client_tls = match (cfg.cert_file.is_empty(), cfg.key_file.is_empty()) {
        (true, true) => None,
        (false, false) => Some(redis::ClientTlsConfig {
            client_cert: read_pem("redis.cert_file", &cfg.cert_file)?,
            client_key: read_pem("redis.key_file", &cfg.key_file)?,
        }),
        _ => anyhow::bail!("redis.cert_file and redis.key_file go together: set both or neither"),
    };
    Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| anyhow::anyhow!("redis TLS: {e}"))
}

/// Every problem with `[redis]`, by key.
pub fn check_config(cfg: &RedisConfig) -> Vec<String> {
    let mut e = Vec::new();
    if !(cfg.url.starts_with("redis://") || cfg.url.starts_with("rediss://")) {
        e.push(format!(
            "redis.url: {:?} is not a Redis URL (redis://host:6379 or rediss://host:6380)",
            crate::secrets::redact(&cfg.url)
        ));
    }
    for (key, value, min, max) in [
        ("redis.timeout_ms", cfg.timeout_ms, 1, 3_600_000),
        (
            "redis.connect_timeout_ms",
            cfg.connect_timeout_ms,
            1,
            600_000,
        ),
        (
            "redis.max_payload_bytes",
            cfg.max_payload_bytes,
            1,
            512 * 1024 * 1024,
        ),
    ] {
        if value < min || value > max {
            e.push(format!("{key}: {value} is out of range ({min}..={max})"));
        }
    }
    if cfg.maxlen > 0 && cfg.min_age_secs > 0 {
        e.push("redis.maxlen and redis.min_age_secs: choose one way of trimming".into());
    }
    e.extend(crate::sink::tls::unreadable_files(&[
        ("redis.password_file", &cfg.password_file),
        ("redis.ca_file", &cfg.ca_file),
        ("redis.cert_file", &cfg.cert_file),
        ("redis.key_file", &cfg.key_file),
    ]));
    if e.is_empty()
        && let Err(err) = client(cfg)
    {
        e.push(err.to_string());
    }
    e
}

/// What the writer needs to send a pipeline.
#[derive(Clone)]
struct Sender {
    conn: ConnectionManager,
    health: Arc<Health>,
    config: RedisConfig,
    /// Whether the server takes `XADD IDMP`: [`IDMP_UNKNOWN`] until read.
    idmp: Arc<AtomicU8>,
}

impl Sender {
    /// One pipeline for `batches`: an `XADD` per row that can be sent, each reply settling
    /// its row.
    async fn pipeline(mut self, batches: Vec<Arc<Batch>>) {
        let mut idmp = self.idmp.load(Ordering::Relaxed);
        if idmp == IDMP_UNKNOWN {
            idmp = learn_idmp(&mut self.conn, &self.idmp).await;
        }
        // What this pipeline learned or found, not what another one changed it to since.
        let idmp = idmp == IDMP_YES;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::new();
        for batch in &batches {
            for (i, row) in batch.rows().iter().enumerate() {
                match RedisSink::message(&self.config, row) {
                    Ok(m) => {
                        let event_id = idmp.then(|| row.event_id.to_string());
                        pipe.add_command(RedisSink::xadd(&self.config, &m, event_id.as_deref()));
                        sent.push((batch, i));
                    }
                    Err(f) => batch.failed(i, f),
                }
            }
        }
        if sent.is_empty() {
            return;
        }
        match pipe.query_async::<Vec<Value>>(&mut self.conn).await {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                let mut added = 0;
                let mut refused = None;
                for (batch, i) in sent {
                    match replies.next() {
                        Some(Value::ServerError(e)) => {
                            let f = classify_code(e.code(), e.to_string());
                            server_failure(&self.health, &f);
                            if idmp && e.code() == "ERR" {
                                // A server that does not know IDMP reads it as the entry
                                // id ("Invalid stream ID"): after a failover to an older
                                // server. Ask the server again before the next pipeline.
                                self.idmp.store(IDMP_UNKNOWN, Ordering::Relaxed);
                            }
                            if f.kind == FailureKind::Transient && refused.is_none() {
                                refused = Some(f.message.clone());
                            }
                            batch.failed(i, f);
                        }
                        Some(_) => {
                            added += 1;
                            batch.acked(i);
                        }
                        None => batch.failed(
                            i,
                            PublishFailure::new(
                                FailureKind::Transient,
                                "transient",
                                "Redis sent fewer replies than commands",
                            ),
                        ),
                    }
                }
                if added == 0
                    && let Some(words) = refused
                {
                    refuses_every_write(&self.health, &words);
                }
            }
            Err(e) => {
                let f = classify(&e);
                server_failure(&self.health, &f);
                if f.class == "broker_unavailable" {
                    // The connection is re-made, maybe to another server (a failover
                    // behind the same address): learn again whether it takes IDMP.
                    self.idmp.store(IDMP_UNKNOWN, Ordering::Relaxed);
                }
                for batch in &batches {
                    batch.fail_rest(&f);
                }
            }
        }
    }
}

/// Reads whether the server takes `XADD IDMP` (again after a refusal or a lost
/// connection) and returns it; leaves it unknown if the server did not answer (the next
/// batch asks again).
async fn learn_idmp(conn: &mut ConnectionManager, idmp: &AtomicU8) -> u8 {
    match redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(conn)
        .await
    {
        Ok(info) => {
            let yes = supports_idmp(&info);
            let learned = if yes { IDMP_YES } else { IDMP_NO };
            // Batches sent before the first answer all ask; one says it.
            if idmp.swap(learned, Ordering::Relaxed) == learned {
                return learned;
            }
            tracing::info!(
                idempotent = yes,
                "Redis {}: XADD {}.",
                redis_version(&info).unwrap_or("?"),
                if yes {
                    "with IDMP (resends add nothing)"
                } else {
                    "without IDMP (Redis 8.6+ has it; resends are duplicates consumers drop by event_id)"
                }
            );
            learned
        }
        Err(e) if e.code() == Some("NOPERM") => {
            idmp.store(IDMP_NO, Ordering::Relaxed);
            IDMP_NO
        }
        Err(_) => IDMP_UNKNOWN,
    }
}

/// Classifies a Redis error, once, for the whole sink.
pub fn classify(error: &RedisError) -> PublishFailure {
    let message = error.to_string();
    if let Some(code) = error.code() {
        return classify_code(code, message);
    }
    let (kind, class) = if error.is_timeout() {
        (FailureKind::Transient, "timeout")
    } else if error.kind() == redis::ErrorKind::AuthenticationFailed {
        (FailureKind::Destination, "not_authenticated")
    } else if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        (FailureKind::Transient, "broker_unavailable")
    } else {
        (FailureKind::Transient, "transient")
    };
    PublishFailure::new(kind, class, message)
}

/// Classifies a server error reply by its code (the reply's first word).
pub fn classify_code(code: &str, message: String) -> PublishFailure {
    let (kind, class) = match code {
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "MISCONF" => {
            (FailureKind::Transient, "server_busy")
        }
        "OOM" => (FailureKind::Transient, "out_of_memory"),
        "READONLY" => (FailureKind::Transient, "read_only"),
        "WRONGTYPE" => (FailureKind::Destination, "wrong_type"),
        "NOPERM" => (FailureKind::Destination, "not_authorized"),
        "NOAUTH" | "WRONGPASS" => (FailureKind::Destination, "not_authenticated"),
        // A Redis Cluster node that does not serve the key's slot: this sink talks to one
        // node, so the row waits (never dead-lettered) until the operator points
        // redis.url at a single server.
        "MOVED" | "ASK" | "CROSSSLOT" => {
            return PublishFailure::new(
                FailureKind::Destination,
                "cluster_redirect",
                format!(
                    "{message} — this Redis is a cluster node and the key's slot is served by \
                     another node; the Redis sink talks to one server: point redis.url at a \
                     standalone Redis (or a Sentinel-managed master)"
                ),
            );
        }
        _ => (FailureKind::Transient, "transient"),
    };
    PublishFailure::new(kind, class, message)
}

/// What an operator should do about a connection failure, in words.
fn security_hint(failure: &PublishFailure) -> Option<(&'static str, String)> {
    if failure.class == "not_authenticated" {
        return Some((
            "authentication",
            "Redis refused the credentials: check the user and password (redis.url, redis.username, redis.password_file)".into(),
        ));
    }
    crate::sink::tls::tls_hint("redis", &failure.message)
}

/// A pipeline of which the server took nothing, for a reason that is not the rows' own
/// (`OOM`, `READONLY`, `LOADING`, a command it does not know): nothing can be published
/// until it changes, so readiness says so, with the server's words, and the log says it
/// once; the next delivery clears it. Rows stay pending and spend no attempts meanwhile.
fn refuses_every_write(health: &Health, words: &str) {
    health.set_broker_up(false);
    if health.set_broker_problem(Some((
        "refuses writes",
        format!("Redis refuses every XADD: {words}"),
    ))) {
        tracing::error!(error = %words, "Redis refuses every XADD; rows stay pending until it takes them again.");
    }
}

/// Health bookkeeping for a failure that concerns the whole server.
fn server_failure(health: &Health, failure: &PublishFailure) {
    if failure.class == "broker_unavailable" || failure.class == "not_authenticated" {
        let changed = health.set_broker_up(false);
        if let Some((kind, hint)) = security_hint(failure) {
            let words = format!("{hint} ({})", failure.message);
            if health.set_broker_problem(Some((kind, words.clone()))) {
                tracing::error!(problem = %words, "Cannot use Redis; rows stay pending until this is fixed.");
            }
        } else if changed {
            tracing::warn!(error = %failure.message, "Redis is unreachable; sends are retried.");
        }
    }
}

impl Sink for RedisSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Redis
    }

    fn send(&self, batch: Arc<Batch>) {
        crate::sink::api::enqueue(&self.batches, batch);
    }

    fn copy_dead_letter(&self, row: &OutboxRow, topic: &str, class: &str, reason: &str) {
        let message = Message::dead_letter(row, SinkKind::Redis, topic, class, reason);
        let cmd = Self::xadd(&self.config, &message, None);
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            if let Err(e) = cmd.query_async::<Value>(&mut conn).await {
                tracing::warn!(error = %e, "Could not copy a dead letter to the DLQ stream.");
            }
        });
    }

    fn probe(&self, timeout: Duration) -> BoxFuture<'static, Result<String, String>> {
        let mut conn = self.conn.clone();
        let tls = if self.tls { "TLS" } else { "no TLS" };
        let user = self.user.clone();
        let health = self.health.clone();
        Box::pin(async move {
            let info = tokio::time::timeout(
                timeout,
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn),
            )
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?;
            let version = match info {
                Ok(text) => redis_version(&text)
                    .map(|v| format!("Redis {v}"))
                    .unwrap_or_else(|| "Redis".into()),
                // An ACL user may not run INFO; PING tells that the server answers.
                Err(e) if e.code() == Some("NOPERM") => {
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    "Redis (version not visible to this user)".into()
                }
                Err(e) => {
                    let f = classify(&e);
                    return Err(match security_hint(&f) {
                        Some((_, hint)) => format!("{hint} ({e})"),
                        None => e.to_string(),
                    });
                }
            };
            let _ = health.set_broker_up(true);
            Ok(format!("{version}, {tls}, as user {user}"))
        })
    }

    fn describe(&self) -> String {
        "redis-rs 1 (rustls)".into()
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'static, ()> {
        // Nothing is queued in the client: every pipeline is a task whose outcome the
        // poller waits for.
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_redirect_holds_the_row_and_says_what_to_do() {
        for code in ["MOVED", "ASK", "CROSSSLOT"] {
            let f = classify_code(code, format!("{code} 3999 127.0.0.1:7001"));
            assert_eq!(
                (f.kind, f.class),
                (FailureKind::Destination, "cluster_redirect"),
                "{code}"
            );
            assert!(f.message.contains("redis.url"), "{}", f.message);
        }
    }

    #[test]
    fn idmp_is_used_from_redis_8_6_on() {
        assert!(supports_idmp(
            "# Server\r\nredis_version:8.6.0\r\nredis_mode:standalone\r\n"
        ));
        assert!(supports_idmp("redis_version:9.0.1\r\n"));
        assert!(!supports_idmp("redis_version:8.4.2\r\n"));
        assert!(!supports_idmp("redis_version:7.0.15\r\n"));
        assert!(!supports_idmp("# Server\r\n"));
    }

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn an_idempotent_xadd_names_the_producer_and_the_event_before_trimming_and_the_id() {
        let cfg = RedisConfig {
            maxlen: 1_000,
            ..RedisConfig::default()
        };
        let m = Message {
            topic: "user:events",
            payload: b"{}",
            headers: vec![("event_id".into(), "e-1".into())],
        };
        let idempotent = args(&RedisSink::xadd(&cfg, &m, Some("e-1")));
        assert_eq!(
            idempotent,
            [
                "XADD",
                "user:events",
                "IDMP",
                "outboxd",
                "e-1",
                "MAXLEN",
                "~",
                "1000",
                "*",
                "payload",
                "{}",
                "event_id",
                "e-1"
            ]
        );
        let plain = args(&RedisSink::xadd(&cfg, &m, None));
        assert_eq!(plain[..3], ["XADD", "user:events", "MAXLEN"]);
    }
}
