//! Connecting to the database: PostgreSQL, or MariaDB / MySQL, chosen by the URL's scheme.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::DatabaseConfig;

pub mod pg_hosts;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://`, `postgresql://`.
    Postgres,
    /// `mysql://`, `mariadb://`: MariaDB >= 10.6 or MySQL >= 8.0.
    MySql,
}

impl Backend {
    /// By the URL's scheme; `None` for any other.
    pub fn of(url: &str) -> Option<Backend> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::MySql),
            _ => None,
        }
    }

    /// As operators call it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MariaDB/MySQL",
        }
    }
}

/// The configured database's kind (the configuration was checked: the URL has a known
/// scheme).
pub fn backend(cfg: &DatabaseConfig) -> Backend {
    Backend::of(&cfg.url).unwrap_or(Backend::Postgres)
}

/// Connection options for MariaDB / MySQL: the URL as the MySQL clients and sqlx read it
/// (`ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key`), each `[database]` TLS key that is set
/// winning over the URL's, `database.password_file` over the URL's password; sessions in
/// UTC (sqlx's default, which `TIMESTAMP` columns rely on) and reporting matched rows.
pub fn mysql_connect_options(cfg: &DatabaseConfig) -> anyhow::Result<MySqlConnectOptions> {
    if let Some(why) = crate::config::unsupported_tls(cfg) {
        anyhow::bail!(why);
    }
    let url = match cfg.url.split_once("://") {
        Some((_, rest)) => format!("mysql://{rest}"),
        None => cfg.url.clone(),
    };
    let mut opts: MySqlConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| anyhow::anyhow!("database.url: {}", redact(&e.to_string())))?;
    if !cfg.sslmode.is_empty() {
        let mode: MySqlSslMode = crate::config::mysql_ssl_mode(&cfg.sslmode)
            .parse()
            .map_err(|_| {
                anyhow::anyhow!("database.sslmode: {:?} is not a TLS mode", cfg.sslmode)
            })?;
        opts = opts.ssl_mode(mode);
    }
    let keys = Overrides::of(cfg)?;
    if let Some(root) = keys.root {
        opts = opts.ssl_ca(root);
    }
    if let Some(cert) = keys.cert {
        opts = opts.ssl_client_cert(cert);
    }
    if let Some(key) = keys.key {
        opts = opts.ssl_client_key(key);
    }
    if let Some(password) = &keys.password {
        opts = opts.password(password);
    }
    Ok(opts.found_rows(true))
}

/// A MariaDB / MySQL pool that connects lazily.
pub fn lazy_mysql_pool(cfg: &DatabaseConfig, max: u32) -> anyhow::Result<sqlx::MySqlPool> {
    Ok(MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .connect_lazy_with(mysql_connect_options(cfg)?))
}

/// Connects to MariaDB / MySQL now, failing with the reason if it cannot be reached or is
/// too old.
pub async fn connect_mysql(cfg: &DatabaseConfig, max: u32) -> anyhow::Result<sqlx::MySqlPool> {
    let opts = mysql_connect_options(cfg)?;
    let pool = MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .connect_with(opts)
        .await
        .map_err(|e| unreachable(cfg, &e))?;
    let version = mysql_version(&pool)
        .await
        .map_err(|e| unreachable(cfg, &e))?;
    check_mysql_version(&version)?;
    Ok(pool)
}

/// The MariaDB / MySQL server's version string, as [`check_mysql_version`] reads it.
pub async fn mysql_version(pool: &sqlx::MySqlPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT VERSION()").fetch_one(pool).await
}

fn unreachable(cfg: &DatabaseConfig, e: &sqlx::Error) -> anyhow::Error {
    let hint = explain(&e.to_string())
        .map(|h| format!(" — {h}"))
        .unwrap_or_default();
    anyhow::anyhow!(
        "cannot connect to {} at {}: {}{hint}",
        backend(cfg).name(),
        redact(&cfg.url),
        redact(&e.to_string())
    )
}

/// Refuses a server older than MariaDB 10.6 or MySQL 8.0 (no `SKIP LOCKED`, no
/// `JSON_TABLE`, no expression defaults), naming its version.
pub fn check_mysql_version(version: &str) -> anyhow::Result<()> {
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    // MariaDB before 11 may report itself behind MySQL 5.5.5 for old clients.
    let number = version.strip_prefix("5.5.5-").unwrap_or(version);
    let mut parts = number
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let (ok, need) = if mariadb {
        ((major, minor) >= (10, 6), "MariaDB 10.6")
    } else {
        (major >= 8, "MySQL 8.0")
    };
    if ok {
        Ok(())
    } else {
        anyhow::bail!(
            "the database server is {} {version}; outboxd needs {need} or later",
            if mariadb { "MariaDB" } else { "MySQL" }
        )
    }
}

/// Connection options from the configuration, with `application_name = outboxd`, for the
/// first host the URL names (see [`pg_host_options`] for all of them). The URL is read as libpq
/// reads it (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` in its query, several
/// comma-separated hosts); each `[database]` TLS key that is set wins over the URL's, and
/// `database.password_file` wins over a password in the URL. A TLS set-up whose libpq
/// meaning cannot be had is refused ([`crate::config::unsupported_tls`]).
pub fn connect_options(cfg: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    Ok(pg_host_options(cfg)?.swap_remove(0).1)
}

/// Each host of the URL (`postgres://u@h1:5432,h2:5432/db`, libpq's multi-host form) in
/// its order, named `host:port`, with its connection options as [`connect_options`] makes
/// them; one for a one-host URL.
pub fn pg_host_options(cfg: &DatabaseConfig) -> anyhow::Result<Vec<(String, PgConnectOptions)>> {
    if let Some(why) = crate::config::unsupported_tls(cfg) {
        anyhow::bail!(why);
    }
    let url = pg_hosts::split(&cfg.url).map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let mut opts: PgConnectOptions = url
        .single
        .parse()
        .map_err(|e: sqlx::Error| anyhow::anyhow!("database.url: {}", redact(&e.to_string())))?;
    if !cfg.sslmode.is_empty() {
        let mode: PgSslMode = cfg.sslmode.parse().map_err(|_| {
            anyhow::anyhow!("database.sslmode: {:?} is not a TLS mode", cfg.sslmode)
        })?;
        opts = opts.ssl_mode(mode);
    }
    let keys = Overrides::of(cfg)?;
    if let Some(root) = keys.root {
        opts = opts.ssl_root_cert(root);
    }
    if let Some(cert) = keys.cert {
        opts = opts.ssl_client_cert(cert);
    }
    if let Some(key) = keys.key {
        opts = opts.ssl_client_key(key);
    }
    if let Some(password) = &keys.password {
        opts = opts.password(password);
    }
    let opts = opts.application_name("outboxd");
    if url.hosts.is_empty() {
        let name = format!("{}:{}", opts.get_host(), opts.get_port());
        return Ok(vec![(name, opts)]);
    }
    Ok(url
        .hosts
        .into_iter()
        .map(|(host, port)| {
            let name = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            (name, opts.clone().host(&host).port(port))
        })
        .collect())
}

/// The `[database]` keys that win over the URL's: TLS files and the password file's
/// content, each when set.
struct Overrides<'a> {
    root: Option<&'a str>,
    cert: Option<&'a str>,
    key: Option<&'a str>,
    password: Option<String>,
}

impl<'a> Overrides<'a> {
    fn of(cfg: &'a DatabaseConfig) -> anyhow::Result<Self> {
        let set = |v: &'a String| (!v.is_empty()).then_some(v.as_str());
        let password = match set(&cfg.password_file) {
            Some(file) => Some(
                crate::secrets::read_file(file)
                    .map_err(|e| anyhow::anyhow!("database.password_file: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            root: set(&cfg.sslrootcert),
            cert: set(&cfg.sslcert),
            key: set(&cfg.sslkey),
            password,
        })
    }
}

/// Connects now, failing with the reason if the database cannot be reached. With several
/// hosts in the URL, to the first that takes read-write sessions (as libpq's
/// `target_session_attrs=read-write`), failing with what each answered when none does.
pub async fn connect(cfg: &DatabaseConfig, max: u32) -> anyhow::Result<sqlx::PgPool> {
    let hosts = pg_host_options(cfg)?;
    let pool = |opts: PgConnectOptions| {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .connect_with(opts)
    };
    if hosts.len() == 1 {
        let (_, opts) = hosts.into_iter().next().expect("one host");
        return pool(opts).await.map_err(|e| unreachable(cfg, &e));
    }
    let patience = Duration::from_millis(cfg.connect_timeout_ms);
    match find_primary(&hosts, 0..hosts.len(), patience, 0).await {
        Ok((i, _)) => pool(hosts[i].1.clone())
            .await
            .map_err(|e| unreachable(cfg, &e)),
        Err(answers) => anyhow::bail!(
            "no read-write primary among the hosts of {}: {answers}",
            redact(&cfg.url)
        ),
    }
}

/// The first of `hosts` (taken in `order`, each probe bounded by `patience`) that takes
/// read-write sessions and is not on a timeline behind `seen` (a primary of an unknown
/// timeline, 0, cannot be judged and is taken): its index and timeline. Else what each
/// host answered, for an operator.
pub async fn find_primary(
    hosts: &[(String, PgConnectOptions)],
    order: impl Iterator<Item = usize>,
    patience: Duration,
    seen: u32,
) -> Result<(usize, u32), String> {
    let mut answers = Vec::new();
    for i in order {
        let (name, opts) = &hosts[i];
        match tokio::time::timeout(patience, pg_hosts::probe(opts)).await {
            Ok(Ok(pg_hosts::Role::Primary(timeline))) if timeline == 0 || timeline >= seen => {
                return Ok((i, timeline));
            }
            Ok(Ok(pg_hosts::Role::Primary(timeline))) => answers.push(format!(
                "{name} is a primary on timeline {timeline}, behind timeline {seen} seen \
                 before: a former primary that was not rejoined (split brain), not used"
            )),
            Ok(Ok(pg_hosts::Role::Standby(why))) => answers.push(format!("{name} {why}")),
            Ok(Err(e)) => {
                let hint = explain(&e.to_string())
                    .map(|h| format!(" — {h}"))
                    .unwrap_or_default();
                answers.push(format!("{name}: {}{hint}", redact(&e.to_string())));
            }
            Err(_) => answers.push(format!(
                "{name}: no answer within {} ms",
                patience.as_millis()
            )),
        }
    }
    Err(answers.join("; "))
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
        // MariaDB / MySQL (1045) say the same for all three.
        (
            "Access denied for user",
            "the server refused this user: a wrong password (database.password_file wins over the URL's password when set), a server or user that takes only TLS (ssl-mode=REQUIRED or VERIFY_IDENTITY), a user that needs a client certificate (set database.sslcert and database.sslkey), or one not allowed from this host",
        ),
        (
            "does not support TLS",
            "the server does not offer TLS: turn TLS on at the server, or ask for less (PostgreSQL: sslmode=prefer or disable; MariaDB/MySQL: ssl-mode=PREFERRED or DISABLED)",
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

/// How a MariaDB / MySQL connection is protected: `TLS TLSv1.3 (cipher)` or `no TLS`.
pub async fn mysql_tls_description(pool: &sqlx::MySqlPool) -> String {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let get = |name: &str| {
        rows.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    match (get("Ssl_version"), get("Ssl_cipher")) {
        (version, cipher) if !version.is_empty() => format!("TLS {version} ({cipher})"),
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
            (
                "error returned from database: 1045 (28000): Access denied for user 'outboxd_x509'@'127.0.0.1' (using password: NO)",
                "set database.sslcert and database.sslkey",
            ),
            (
                "error returned from database: 1045 (28000): Access denied for user 'u'@'127.0.0.1' (using password: YES)",
                "takes only TLS (ssl-mode=REQUIRED",
            ),
        ] {
            assert!(
                super::explain(error).is_some_and(|h| h.contains(hint)),
                "{error}"
            );
        }
        assert_eq!(super::explain("connection refused"), None);
    }

    #[test]
    fn old_servers_are_refused_by_version() {
        for ok in [
            "10.11.19-MariaDB-0+deb12u1",
            "10.6.1-MariaDB",
            "11.4.2-MariaDB-log",
            "8.0.36",
            "8.4.0",
            "5.5.5-10.11.2-MariaDB",
            "9.1.0-commercial",
        ] {
            assert!(super::check_mysql_version(ok).is_ok(), "{ok}");
        }
        for old in [
            "10.5.23-MariaDB",
            "5.5.5-10.3.39-MariaDB",
            "5.7.44-log",
            "5.6.51",
        ] {
            let e = super::check_mysql_version(old).unwrap_err().to_string();
            assert!(e.contains(old) && e.contains("or later"), "{e}");
        }
    }

    #[test]
    fn the_scheme_chooses_the_database() {
        use super::Backend;
        assert_eq!(Backend::of("postgres://u@h/d"), Some(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://h"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://u@h/d"), Some(Backend::MySql));
        assert_eq!(Backend::of("MariaDB://u@h/d"), Some(Backend::MySql));
        assert_eq!(Backend::of("sqlite://x"), None);
        assert_eq!(Backend::of("h:5432"), None);
    }
}
