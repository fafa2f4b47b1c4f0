//! Connecting to PostgreSQL.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseConfig;

/// Connection options from the configuration, with `application_name = outboxd`.
pub fn connect_options(cfg: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    let opts: PgConnectOptions = cfg
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    Ok(opts.application_name("outboxd"))
}

/// A pool that connects lazily: the relay starts (and says so) even while the database
/// is down, and every operation reports and retries the outage.
pub fn lazy_pool(cfg: &DatabaseConfig, max: u32) -> anyhow::Result<sqlx::PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .connect_lazy_with(connect_options(cfg)?))
}

/// Connects now, failing with the reason if the database cannot be reached.
pub async fn connect(cfg: &DatabaseConfig, max: u32) -> anyhow::Result<sqlx::PgPool> {
    let opts = connect_options(cfg)?;
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .connect_with(opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {}: {e}", redact(&cfg.url)))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(super::redact("postgres://u@h/d"), "postgres://u@h/d");
    }
}
