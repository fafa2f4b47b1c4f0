//! `[database]`: the connection, and the checks of its TLS settings against what libpq
//! means by them.

use serde::{Deserialize, Serialize};

/// `[database]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL.
    pub url: String,
    /// Connections in the relay's pool.
    pub max_connections: u32,
    /// Timeout for opening a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// TLS, as libpq's `sslmode`: `disable`, `prefer`, `require`, `verify-ca` or
    /// `verify-full`; empty = the URL's `sslmode` (libpq's default, `prefer`, without one).
    pub sslmode: String,
    /// CA certificate(s) the server's certificate may be signed by (PEM file), trusted
    /// besides the public web roots built in; empty = the URL's `sslrootcert`. Only with
    /// `verify-full`: `verify-ca`, and `require` / `prefer` with a root certificate (which
    /// libpq verifies against it alone), are refused, as their libpq meaning cannot be had.
    pub sslrootcert: String,
    /// Client certificate for mutual TLS (PEM file); empty = the URL's `sslcert`.
    pub sslcert: String,
    /// The client certificate's private key (PEM file); empty = the URL's `sslkey`.
    pub sslkey: String,
    /// A file whose content is the password (a Kubernetes secret mounted as a file; one
    /// trailing newline is ignored); when set it wins over a password in the URL.
    pub password_file: String,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::secrets::fmt_section("DatabaseConfig", self, f)
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            max_connections: 10,
            connect_timeout_ms: 5_000,
            sslmode: String::new(),
            sslrootcert: String::new(),
            sslcert: String::new(),
            sslkey: String::new(),
            password_file: String::new(),
        }
    }
}

pub(super) fn check_database_url(url: &str) -> Result<(), String> {
    let shown = crate::secrets::redact(url);
    let parsed = match crate::db::Backend::of(url) {
        Some(crate::db::Backend::Postgres) => match crate::db::pg_hosts::split(url) {
            Ok(one) => one
                .single
                .parse::<sqlx::postgres::PgConnectOptions>()
                .map(|_| ()),
            Err(why) => return Err(why),
        },
        Some(crate::db::Backend::MySql) => url::Url::parse(url)
            .map(|_| ())
            .map_err(|e| sqlx::Error::Configuration(e.to_string().into())),
        None => {
            return Err(format!(
                "{shown:?} is not a PostgreSQL URL (postgres://user@host:port/database) \
                 nor a MariaDB/MySQL one (mariadb:// or mysql://user@host:port/database)"
            ));
        }
    };
    parsed
        // An unknown sslmode is reported by check_database_tls, naming the mode.
        .or_else(|err| {
            if err.to_string().contains("ssl_mode") {
                Ok(())
            } else {
                Err(err)
            }
        })
        .map_err(|err| {
            format!(
                "{shown:?} is not a valid URL: {}",
                crate::secrets::redact(&err.to_string())
            )
        })
}

/// libpq's `sslmode` values.
pub const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The MySQL clients' `ssl-mode` values (written in any case, `-` or `_`).
pub const MYSQL_SSL_MODES: &[&str] = &[
    "DISABLED",
    "PREFERRED",
    "REQUIRED",
    "VERIFY_CA",
    "VERIFY_IDENTITY",
];

/// A MySQL `ssl-mode` as sqlx reads it (`verify_identity`), from any of its spellings.
pub fn mysql_ssl_mode(mode: &str) -> String {
    mode.to_ascii_lowercase().replace('-', "_")
}

/// A TLS mode in the database's own vocabulary: known or not, and which mode it is as
/// the checks below name them (libpq's words).
fn normalized_mode(db: &DatabaseConfig, mode: &str) -> Option<&'static str> {
    if crate::db::backend(db) == crate::db::Backend::MySql {
        match mysql_ssl_mode(mode).as_str() {
            "disabled" => Some("disable"),
            "preferred" => Some("prefer"),
            "required" => Some("require"),
            "verify_ca" => Some("verify-ca"),
            "verify_identity" => Some("verify-full"),
            _ => None,
        }
    } else {
        SSL_MODES.iter().find(|m| **m == mode).copied()
    }
}

/// The strict modes' names for this database, for messages.
fn mode_names(db: &DatabaseConfig) -> (&'static str, &'static str, &'static str) {
    if crate::db::backend(db) == crate::db::Backend::MySql {
        ("VERIFY_CA", "VERIFY_IDENTITY", "ssl-ca")
    } else {
        ("verify-ca", "verify-full", "sslrootcert")
    }
}

/// TLS settings of `[database]` and of its URL: known modes, files that exist and can be
/// read, a client certificate together with its key.
pub(super) fn check_database_tls(db: &DatabaseConfig) -> Vec<String> {
    let mut e = Vec::new();
    let pick = tls_settings(db);
    if let Some((key, mode)) = pick("sslmode", &db.sslmode, &["sslmode", "ssl-mode"])
        && normalized_mode(db, &mode).is_none()
    {
        let modes = if crate::db::backend(db) == crate::db::Backend::MySql {
            MYSQL_SSL_MODES
        } else {
            SSL_MODES
        };
        e.push(format!(
            "{key}: {mode:?} is not a TLS mode (one of {})",
            modes.join(", ")
        ));
    }
    let root = pick(
        "sslrootcert",
        &db.sslrootcert,
        &["sslrootcert", "ssl-root-cert", "ssl-ca", "sslca"],
    );
    e.extend(unsupported_tls(db));
    let cert = pick("sslcert", &db.sslcert, &["sslcert", "ssl-cert"]);
    let key = pick("sslkey", &db.sslkey, &["sslkey", "ssl-key"]);
    for (what, setting) in [
        ("the CA certificate", &root),
        ("the client certificate", &cert),
        ("the client key", &key),
    ] {
        if let Some((name, path)) = setting
            && let Err(why) = readable(path)
        {
            e.push(format!("{name}: cannot read {what} {path:?}: {why}"));
        }
    }
    match (&cert, &key) {
        (Some((name, _)), None) => e.push(format!(
            "{name}: a client certificate needs its key (database.sslkey)"
        )),
        (None, Some((name, _))) => e.push(format!(
            "{name}: a client key needs its certificate (database.sslcert)"
        )),
        _ => {}
    }
    if !db.password_file.is_empty()
        && let Err(why) = readable(&db.password_file)
    {
        e.push(format!(
            "database.password_file: cannot read {:?}: {why}",
            db.password_file
        ));
    }
    e
}

/// A lookup of `[database]` TLS settings: `pick(key, value, url_names)` is the key's
/// value when set, else the URL query's (under any of libpq's or sqlx's names), each with
/// the name to report it by.
fn tls_settings(db: &DatabaseConfig) -> impl Fn(&str, &str, &[&str]) -> Option<(String, String)> {
    // A multi-host URL is parsed as its first host's (the query is the same).
    let one = match crate::db::Backend::of(&db.url) {
        Some(crate::db::Backend::Postgres) => {
            crate::db::pg_hosts::split(&db.url).map_or_else(|_| db.url.clone(), |u| u.single)
        }
        _ => db.url.clone(),
    };
    let query: Vec<(String, String)> = url::Url::parse(&one)
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    move |key, value, names| {
        if value.is_empty() {
            query
                .iter()
                .find(|(k, _)| names.contains(&k.as_str()))
                .map(|(k, v)| (format!("database.url ({k})"), v.clone()))
        } else {
            Some((format!("database.{key}"), value.to_string()))
        }
    }
}

/// The `sslmode` / `sslrootcert` combinations whose libpq meaning the TLS client built
/// in (rustls through sqlx) cannot give, refused rather than silently weakened. It
/// trusts `sslrootcert` *in addition to* the public web roots, and `require` never
/// verifies. libpq, in contrast, trusts only `sslrootcert`, so its `verify-ca` (chain
/// only, no host name) is safe there but here would take any publicly issued certificate
/// for any host; and with `sslrootcert` set, libpq verifies the chain in `require` and
/// `prefer` as well. `verify-full` checks the host name too, which keeps it safe here.
///
/// MariaDB / MySQL by the MySQL clients' names: `VERIFY_CA` like `verify-ca`, and
/// `PREFERRED` / `REQUIRED` with `ssl-ca` (which the MySQL clients verify against) like
/// libpq's; `VERIFY_IDENTITY` like `verify-full`.
pub fn unsupported_tls(db: &DatabaseConfig) -> Option<String> {
    let pick = tls_settings(db);
    let (key, mode) = pick("sslmode", &db.sslmode, &["sslmode", "ssl-mode"])?;
    let root = pick(
        "sslrootcert",
        &db.sslrootcert,
        &["sslrootcert", "ssl-root-cert", "ssl-ca", "sslca"],
    );
    let (ca_mode, full_mode, root_name) = mode_names(db);
    let (trusts, verifies) = if crate::db::backend(db) == crate::db::Backend::MySql {
        ("the MySQL clients trust", "the MySQL clients then verify")
    } else {
        ("libpq trusts", "libpq then verifies")
    };
    match (normalized_mode(db, &mode)?, root) {
        ("verify-ca", _) => Some(format!(
            "{key}: {ca_mode} is not supported: {trusts} only {root_name}, this relay \
             also trusts the public web roots, so {ca_mode} (no host-name check) would accept \
             any publicly issued certificate; use {full_mode} (checks the host name too)"
        )),
        ("allow" | "prefer" | "require", Some((root_key, _))) => Some(format!(
            "{key}: {mode} with {root_key} set: {verifies} the server's certificate \
             chain, which this relay does only with {full_mode}; use {full_mode}, or remove \
             {root_key} to encrypt without verifying"
        )),
        _ => None,
    }
}

/// Whether a file can be opened for reading, or why not.
fn readable(path: &str) -> Result<(), String> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sslmode_is_what_libpq_means_or_refused() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca = ca.path().to_str().unwrap().to_string();
        let base = "postgres://u@h/d";
        let problems = |url: String, mode: &str, root: &str| {
            check_database_tls(&DatabaseConfig {
                url,
                sslmode: mode.into(),
                sslrootcert: root.into(),
                ..Default::default()
            })
        };
        // Accepted: what the built-in client does as libpq does.
        for (mode, root) in [
            ("disable", ""),
            ("allow", ""),
            ("prefer", ""),
            ("require", ""),
            ("verify-full", ""),
            ("verify-full", ca.as_str()),
        ] {
            assert_eq!(
                problems(base.into(), mode, root),
                Vec::<String>::new(),
                "{mode} {root}"
            );
        }
        // Refused, naming verify-full: verify-ca in any form; require / prefer / allow with
        // a root certificate (libpq would verify the chain against it).
        for (url, mode, root) in [
            (base.to_string(), "verify-ca", ""),
            (base.to_string(), "verify-ca", ca.as_str()),
            (format!("{base}?sslmode=verify-ca"), "", ""),
            (base.to_string(), "require", ca.as_str()),
            (base.to_string(), "prefer", ca.as_str()),
            (base.to_string(), "allow", ca.as_str()),
            (format!("{base}?sslmode=require&sslrootcert={ca}"), "", ""),
        ] {
            let p = problems(url.clone(), mode, root);
            assert_eq!(p.len(), 1, "{url} {mode} {root}: {p:?}");
            assert!(p[0].contains("use verify-full"), "{p:?}");
        }
        // A key wins over the URL: verify-full in the key makes the URL's require safe.
        assert!(
            problems(
                format!("{base}?sslmode=require&sslrootcert={ca}"),
                "verify-full",
                ""
            )
            .is_empty()
        );
    }

    #[test]
    fn mariadb_ssl_modes_are_the_mysql_clients_and_refused_alike() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca = ca.path().to_str().unwrap().to_string();
        let problems = |url: String, mode: &str, root: &str| {
            check_database_tls(&DatabaseConfig {
                url,
                sslmode: mode.into(),
                sslrootcert: root.into(),
                ..Default::default()
            })
        };
        let base = "mariadb://u@h/d";
        for (mode, root) in [
            ("DISABLED", ""),
            ("preferred", ""),
            ("REQUIRED", ""),
            ("verify_identity", ""),
            ("VERIFY-IDENTITY", ca.as_str()),
        ] {
            assert_eq!(
                problems(base.into(), mode, root),
                Vec::<String>::new(),
                "{mode}"
            );
        }
        assert!(
            problems(
                format!("{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
                "",
                ""
            )
            .is_empty()
        );
        for (url, mode, root) in [
            (base.to_string(), "VERIFY_CA", ""),
            (base.to_string(), "REQUIRED", ca.as_str()),
            (format!("{base}?ssl-mode=PREFERRED&ssl-ca={ca}"), "", ""),
        ] {
            let p = problems(url.clone(), mode, root);
            assert_eq!(p.len(), 1, "{url} {mode}: {p:?}");
            assert!(p[0].contains("use VERIFY_IDENTITY"), "{p:?}");
        }
        // libpq's words are not MySQL's.
        let p = problems(base.into(), "verify-full", "");
        assert!(
            p[0].contains("not a TLS mode") && p[0].contains("VERIFY_IDENTITY"),
            "{p:?}"
        );
    }
}
