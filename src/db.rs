//! Connecting to PostgreSQL.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::DatabaseConfig;

/// Connection options from the configuration, with `application_name = outboxd`. The
/// URL is read as libpq reads it (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` in its
/// query); each `[database]` TLS key that is set wins over the URL's, and
/// `database.password_file` wins over a password in the URL. A TLS set-up whose libpq
/// meaning cannot be had is refused ([`crate::config::unsupported_tls`]).
pub fn connect_options(cfg: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    if let Some(why) = crate::config::unsupported_tls(cfg) {
        anyhow::bail!(why);
    }
    let mut opts: PgConnectOptions = cfg
        .url
        .parse()
        .map_err(|e: sqlx::Error| anyhow::anyhow!("database.url: {}", redact(&e.to_string())))?;
    if !cfg.sslmode.is_empty() {
        let mode: PgSslMode = cfg.sslmode.parse().map_err(|_| {
            anyhow::anyhow!("database.sslmode: {:?} is not a TLS mode", cfg.sslmode)
        })?;
        opts = opts.ssl_mode(mode);
    }
    if !cfg.sslrootcert.is_empty() {
        opts = opts.ssl_root_cert(&cfg.sslrootcert);
    }
    if !cfg.sslcert.is_empty() {
        opts = opts.ssl_client_cert(&cfg.sslcert);
    }
    if !cfg.sslkey.is_empty() {
        opts = opts.ssl_client_key(&cfg.sslkey);
    }
    if !cfg.password_file.is_empty() {
        let password = crate::secrets::read_file(&cfg.password_file)
            .map_err(|e| anyhow::anyhow!("database.password_file: {e}"))?;
        opts = opts.password(&password);
    }
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
        .map_err(|e| {
            let hint = explain(&e.to_string())
                .map(|h| format!(" — {h}"))
                .unwrap_or_default();
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {}: {}{hint}",
                redact(&cfg.url),
                redact(&e.to_string())
            )
        })
}

/// What an operator should do about a connection error, in words, when it is one of the
/// usual TLS or authentication mistakes.
pub fn explain(error: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "UnknownIssuer",
            "the server's certificate is not signed by the CA in database.sslrootcert (or the URL's sslrootcert)",
        ),
        // rustls's own words (its `Display`), not its variant names.
        (
            "certificate not valid for name",
            "the server's certificate is not issued for this host name: connect by the name in the certificate (or an address in its subject alternative names)",
        ),
        (
            "certificate expired",
            "the server's certificate has expired",
        ),
        (
            "certificate not valid yet",
            "the server's certificate is not valid yet (check the clocks)",
        ),
        (
            "requires a valid client certificate",
            "the server wants a client certificate: set database.sslcert and database.sslkey",
        ),
        (
            "certificate authentication failed",
            "the server did not accept the client certificate for this user (its CN must be the user name)",
        ),
        (
            "no pg_hba.conf entry",
            "the server refuses this user, database or address, or wants TLS (sslmode=require)",
        ),
        (
            "password authentication failed",
            "wrong password for the user in database.url (database.password_file wins over the URL's password when set)",
        ),
        (
            "does not support TLS",
            "the server does not offer TLS: turn ssl on in PostgreSQL, or use sslmode=prefer or disable",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| error.contains(needle))
        .map(|(_, hint)| *hint)
}

/// How this connection is protected, for `outboxd check`: `TLS TLSv1.3 (cipher)` or `no TLS`.
pub async fn tls_description(pool: &sqlx::PgPool) -> String {
    let row: Option<(bool, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
    match row {
        Some((true, version, cipher)) => format!(
            "TLS {} ({})",
            version.unwrap_or_default(),
            cipher.unwrap_or_default()
        ),
        _ => "no TLS".into(),
    }
}

use crate::secrets::redact;

#[cfg(test)]
mod tests {
    #[test]
    fn connection_errors_get_words_an_operator_acts_on() {
        // As sqlx and rustls print them.
        for (error, hint) in [
            (
                "error communicating with database: invalid peer certificate: UnknownIssuer",
                "not signed by the CA in database.sslrootcert",
            ),
            (
                "error communicating with database: invalid peer certificate: certificate not valid for name \"127.0.0.1\"; certificate is only valid for DnsName(\"localhost\")",
                "not issued for this host name",
            ),
            (
                "invalid peer certificate: certificate expired: verification time 1800000000 (UNIX), but certificate is not valid after 1700000000 (100000000 seconds ago)",
                "has expired",
            ),
            (
                "error returned from database: password authentication failed for user \"outboxd_pw\"",
                "wrong password",
            ),
        ] {
            assert!(
                super::explain(error).is_some_and(|h| h.contains(hint)),
                "{error}"
            );
        }
        assert_eq!(super::explain("connection refused"), None);
    }
}
