//! Connecting as `[redis]` says: to one server, to a Redis Cluster through seed nodes, or
//! to the master named by sentinels; and every problem with the section, by key.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates,
};

use super::config::RedisConfig;
use super::conn::{Conn, Lazy, Make};
use crate::sink::tls::read_pem;

/// The client `[redis]` asks for (nothing is connected yet).
enum Clients {
    Single(Client),
    Cluster(ClusterClient),
    Sentinel(SentinelClient),
}

/// The connection `[redis]` asks for, made on first use, and the ACL user it logs in as.
pub fn connect(cfg: &RedisConfig) -> anyhow::Result<(Conn, String)> {
    let (clients, user) = clients(cfg)?;
    let response = Some(Duration::from_millis(cfg.timeout_ms));
    let connect = Some(Duration::from_millis(cfg.connect_timeout_ms));
    let conn = match clients {
        Clients::Cluster(client) => {
            let make: Make<_> = Box::new(move || {
                let client = client.clone();
                async move { client.get_async_connection().await }.boxed()
            });
            Conn::Cluster(Arc::new(Lazy::new(make)))
        }
        Clients::Sentinel(sentinel) => {
            let sentinel = Arc::new(tokio::sync::Mutex::new(sentinel));
            let config = AsyncConnectionConfig::new()
                .set_response_timeout(response)
                .set_connection_timeout(connect);
            let make: Make<_> = Box::new(move || {
                let sentinel = sentinel.clone();
                let config = config.clone();
                async move {
                    let client = sentinel.lock().await.async_get_client().await?;
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                }
                .boxed()
            });
            Conn::Sentinel(Arc::new(Lazy::new(make)))
        }
        Clients::Single(client) => {
            let manager = ConnectionManagerConfig::new()
                .set_response_timeout(response)
                .set_connection_timeout(connect)
                .set_min_delay(Duration::from_millis(100))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(3);
            let conn = ConnectionManager::new_lazy_with_config(client, manager)
                .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
            Conn::Single(conn)
        }
    };
    Ok((conn, user))
}

/// The client for `[redis]` (nothing connected), and the ACL user it logs in as.
fn clients(cfg: &RedisConfig) -> anyhow::Result<(Clients, String)> {
    let s = settings(cfg)?;
    let user = s.redis.username().unwrap_or("default").to_string();
    if cfg.cluster {
        // A few quick retries (redirects after a slot moved), then the row fails and the
        // relay's back-off takes over: the crate's defaults (16 retries from 1.28 s
        // apart) would keep a dead master's rows, and so their batches, out for minutes.
        let mut b = ClusterClientBuilder::new(s.nodes.clone())
            .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .response_timeout(Duration::from_millis(cfg.timeout_ms))
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(500);
        if let Some(u) = s.redis.username() {
            b = b.username(u);
        }
        if let Some(p) = s.redis.password() {
            b = b.password(p);
        }
        if let Some(certs) = s.certs.clone() {
            b = b.certs(certs);
        }
        let client = b
            .build()
            .map_err(|e| anyhow::anyhow!("redis.url (cluster seeds): {e}"))?;
        return Ok((Clients::Cluster(client), user));
    }
    if !cfg.sentinels.is_empty() {
        let mut sentinels = Vec::new();
        let mut sentinel_auth = None;
        for url in &cfg.sentinels {
            let info = url.as_str().into_connection_info().map_err(|e| {
                anyhow::anyhow!(
                    "redis.sentinels: {:?} is not a Redis URL: {e}",
                    crate::secrets::redact(url)
                )
            })?;
            if sentinel_auth.is_none() && info.redis_settings().password().is_some() {
                sentinel_auth = Some(info.redis_settings().clone());
            }
            sentinels.push(info.addr().clone());
        }
        let mut b =
            SentinelClientBuilder::new(sentinels, &cfg.master_name, SentinelServerType::Master)
                .map_err(|e| anyhow::anyhow!("redis.sentinels: {e}"))?
                .set_client_to_redis_db(s.redis.db());
        if let Some(u) = s.redis.username() {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = s.redis.password() {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(a) = &sentinel_auth {
            if let Some(u) = a.username() {
                b = b.set_client_to_sentinel_username(u);
            }
            if let Some(p) = a.password() {
                b = b.set_client_to_sentinel_password(p);
            }
        }
        if let Some(certs) = s.certs.clone() {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_certificates(certs);
        }
        let sentinel = b
            .build()
            .map_err(|e| anyhow::anyhow!("redis.sentinels: {e}"))?;
        return Ok((Clients::Sentinel(sentinel), user));
    }
    let client = match s.certs {
        None => Client::open(s.nodes[0].clone()),
        Some(certs) => Client::build_with_tls(s.nodes[0].clone(), certs),
    }
    .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
    Ok((Clients::Single(client), user))
}

/// What the section says about where and how to connect.
struct Settings {
    /// `redis.url`'s node(s), each with the section's user and password.
    nodes: Vec<ConnectionInfo>,
    /// The user, password and database.
    redis: RedisConnectionInfo,
    /// For `rediss://`: the CA and client certificate, if given.
    certs: Option<TlsCertificates>,
}

/// The URL(s), with the user, password file and certificates of the section applied.
fn settings(cfg: &RedisConfig) -> anyhow::Result<Settings> {
    let shown = crate::secrets::redact(&cfg.url);
    let mut pieces = cfg.url.split(',').map(str::trim);
    let first = pieces.next().unwrap_or_default();
    let info = first
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
    let tls = cfg.url.starts_with("rediss://");
    let scheme = if tls { "rediss" } else { "redis" };
    let mut nodes = vec![info.set_redis_settings(settings.clone())];
    for piece in pieces {
        if !cfg.cluster {
            anyhow::bail!(
                "redis.url: {shown:?} lists several servers; that is for a Redis Cluster \
                 (redis.cluster = true) — for Sentinel use redis.sentinels"
            );
        }
        let url = if piece.contains("://") {
            piece.to_string()
        } else {
            format!("{scheme}://{piece}")
        };
        let node = url.as_str().into_connection_info().map_err(|e| {
            anyhow::anyhow!("redis.url: {piece:?} in {shown:?} is not a Redis node: {e}")
        })?;
        nodes.push(node.set_redis_settings(settings.clone()));
    }
    if !tls {
        if !(cfg.ca_file.is_empty() && cfg.cert_file.is_empty() && cfg.key_file.is_empty()) {
            anyhow::bail!(
                "redis.ca_file / cert_file / key_file are set but redis.url {shown:?} is not rediss://"
            );
        }
        return Ok(Settings {
            nodes,
            redis: settings,
            certs: None,
        });
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
    Ok(Settings {
        nodes,
        redis: settings,
        certs: Some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    })
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
    if cfg.cluster && !cfg.sentinels.is_empty() {
        e.push(
            "redis.cluster and redis.sentinels: a Redis Cluster has no sentinels; choose one"
                .into(),
        );
    }
    if !cfg.sentinels.is_empty() && cfg.master_name.is_empty() {
        e.push(
            "redis.master_name: empty, but redis.sentinels is set; give the name the \
             sentinels monitor the master under (sentinel monitor <name> …)"
                .into(),
        );
    }
    if cfg.sentinels.is_empty() && !cfg.master_name.is_empty() {
        e.push("redis.master_name is set but redis.sentinels is empty: list the sentinels".into());
    }
    for url in &cfg.sentinels {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            e.push(format!(
                "redis.sentinels: {:?} is not a sentinel's URL (redis://host:26379)",
                crate::secrets::redact(url)
            ));
        }
    }
    if cfg.wait_replicas > 0 && cfg.wait_timeout_ms >= cfg.timeout_ms {
        e.push(format!(
            "redis.wait_timeout_ms: {} must be below redis.timeout_ms ({}), or every WAIT \
             that waits its full time is taken for a lost reply",
            cfg.wait_timeout_ms, cfg.timeout_ms
        ));
    }
    for (key, value, min, max) in [
        ("redis.timeout_ms", cfg.timeout_ms, 1, 3_600_000),
        ("redis.wait_timeout_ms", cfg.wait_timeout_ms, 1, 600_000),
        ("redis.wait_replicas", u64::from(cfg.wait_replicas), 0, 64),
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
        && let Err(err) = clients(cfg)
    {
        e.push(err.to_string());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(edit: impl FnOnce(&mut RedisConfig)) -> Vec<String> {
        let mut cfg = RedisConfig::default();
        edit(&mut cfg);
        check_config(&cfg)
    }

    #[test]
    fn a_seed_list_is_for_a_cluster_only() {
        let e = problems(|c| c.url = "redis://a:7000,b:7001".into());
        assert!(e[0].contains("redis.cluster = true"), "{e:?}");
        assert!(
            problems(|c| {
                c.url = "redis://a:7000,b:7001,redis://c:7002".into();
                c.cluster = true;
            })
            .is_empty()
        );
    }

    #[test]
    fn seeds_share_the_first_nodes_scheme_and_credentials() {
        let cfg = RedisConfig {
            url: "redis://relay:pw@a:7000, b:7001".into(),
            cluster: true,
            ..RedisConfig::default()
        };
        let s = settings(&cfg).unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.nodes[1].addr().to_string(), "b:7001");
        assert_eq!(s.nodes[1].redis_settings().username(), Some("relay"));
        assert_eq!(s.nodes[1].redis_settings().password(), Some("pw"));
    }

    #[test]
    fn sentinel_and_cluster_settings_are_checked_by_key() {
        let e = problems(|c| c.sentinels = vec!["redis://s:26379".into()]);
        assert!(
            e.iter().any(|e| e.starts_with("redis.master_name")),
            "{e:?}"
        );
        let e = problems(|c| c.master_name = "m".into());
        assert!(
            e.iter().any(|e| e.contains("redis.sentinels is empty")),
            "{e:?}"
        );
        let e = problems(|c| {
            c.sentinels = vec!["http://s:26379".into()];
            c.master_name = "m".into();
        });
        assert!(e.iter().any(|e| e.starts_with("redis.sentinels:")), "{e:?}");
        let e = problems(|c| {
            c.sentinels = vec!["redis://s:26379".into()];
            c.master_name = "m".into();
            c.cluster = true;
        });
        assert!(e.iter().any(|e| e.contains("choose one")), "{e:?}");
        let e = problems(|c| {
            c.wait_replicas = 1;
            c.wait_timeout_ms = c.timeout_ms;
        });
        assert!(
            e.iter().any(|e| e.starts_with("redis.wait_timeout_ms")),
            "{e:?}"
        );
        assert!(
            problems(|c| {
                c.sentinels = vec!["redis://:secret@s:26379".into()];
                c.master_name = "m".into();
                c.wait_replicas = 1;
            })
            .is_empty()
        );
    }

    #[test]
    fn a_sentinels_password_stays_out_of_the_debug_form() {
        let cfg = RedisConfig {
            sentinels: vec!["redis://:sentinel-secret@s:26379".into()],
            ..RedisConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("sentinel-secret"));
    }
}
