//! The Redis sink: its rows as `XADD`s, and the `Sink` the relay talks to.

use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::Value;

use super::classify::{classify, security_hint};
use super::command::{IDMP_NO, IDMP_UNKNOWN, redis_version, xadd};
use super::config::RedisConfig;
use super::conn::Conn;
use super::send::{Queues, Sender};
use crate::health::Health;
use crate::outbox::SinkKind;
use crate::sink::api::{Batch, Sink};
use crate::sink::message::Message;
use crate::store::OutboxRow;

/// The Redis Streams sink.
pub struct RedisSink {
    /// To the writer task(s).
    queues: Queues,
    conn: Conn,
    config: RedisConfig,
    health: Arc<Health>,
    tls: bool,
    user: String,
}

impl RedisSink {
    /// Prepares the connection; it is opened on first use, and again after it drops.
    pub fn new(cfg: &RedisConfig, health: Arc<Health>) -> anyhow::Result<Self> {
        let (conn, user) = super::connect::connect(cfg)?;
        let idmp = Arc::new(AtomicU8::new(if cfg.idmp { IDMP_UNKNOWN } else { IDMP_NO }));
        let sender = Sender {
            conn: conn.clone(),
            health: health.clone(),
            config: cfg.clone(),
            idmp,
        };
        Ok(Self {
            queues: Queues::new(sender),
            conn,
            config: cfg.clone(),
            health,
            tls: cfg.url.starts_with("rediss://"),
            user,
        })
    }
}

impl Sink for RedisSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Redis
    }

    fn send(&self, batch: Arc<Batch>) {
        self.queues.send(batch);
    }

    fn copy_dead_letter(&self, row: &OutboxRow, topic: &str, class: &str, reason: &str) {
        let message = Message::dead_letter(row, SinkKind::Redis, topic, class, reason);
        let cmd = xadd(&self.config, &message, None);
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
        let cluster = self.config.cluster;
        let topology = if cluster {
            String::new()
        } else if self.config.sentinels.is_empty() {
            ", one server".to_string()
        } else {
            format!(
                ", master {:?} found through {} sentinel(s)",
                self.config.master_name,
                self.config.sentinels.len()
            )
        };
        Box::pin(async move {
            let info = tokio::time::timeout(timeout, conn.info_server())
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
                    let f = classify(&e, cluster);
                    return Err(match security_hint(&f) {
                        Some((_, hint)) => format!("{hint} ({e})"),
                        None => e.to_string(),
                    });
                }
            };
            let topology = match conn.cluster_state().await {
                Some(state) => format!(", a cluster ({state})"),
                None => topology,
            };
            let _ = health.set_broker_up(true);
            Ok(format!("{version}{topology}, {tls}, as user {user}"))
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
