//! A row as the Redis command that adds it (`XADD`), and what decides its form: the
//! server's version (idempotent adds from Redis 8.6) and the section's trimming.

use super::config::RedisConfig;
use crate::outbox::SinkKind;
use crate::sink::api::{FailureKind, PublishFailure};
use crate::sink::message::Message;
use crate::store::OutboxRow;

/// Whether the server takes `XADD IDMP`: not known yet.
pub(super) const IDMP_UNKNOWN: u8 = 0;
/// It does not (or may not be asked).
pub(super) const IDMP_NO: u8 = 1;
/// It does (Redis 8.6+).
pub(super) const IDMP_YES: u8 = 2;

/// The server's version, from what `INFO server` says.
pub(super) fn redis_version(info: &str) -> Option<&str> {
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

/// The `XADD` for one message; with `idmp`, idempotent under `event_id`.
pub(super) fn xadd(config: &RedisConfig, message: &Message<'_>, idmp: Option<&str>) -> redis::Cmd {
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
pub(super) fn message<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let idempotent = args(&xadd(&cfg, &m, Some("e-1")));
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
        let plain = args(&xadd(&cfg, &m, None));
        assert_eq!(plain[..3], ["XADD", "user:events", "MAXLEN"]);
    }
}
