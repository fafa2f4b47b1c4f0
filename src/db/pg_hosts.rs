//! libpq's multi-host PostgreSQL URLs (`postgres://u@h1:5432,h2:5432/db?
//! target_session_attrs=read-write`), which sqlx does not read: the URL is split into its
//! host list and a one-host URL that sqlx parses, whose options then go to each host; and
//! what a host is (primary or standby).

use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

/// The port libpq takes when a host names none.
const DEFAULT_PORT: u16 = 5432;

/// A PostgreSQL URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The URL with only its first host and without `target_session_attrs`: what sqlx
    /// parses.
    pub single: String,
    /// The hosts in the URL's order, with their ports; empty when the URL names no host
    /// (a Unix socket, or libpq's defaults).
    pub hosts: Vec<(String, u16)>,
}

/// Splits a `postgres://` URL into its hosts and a one-host URL. `target_session_attrs`
/// may be `read-write`, `primary` or `any`: the relay writes, so it always connects to the
/// host that takes read-write sessions; the standby-seeking values are refused.
pub fn split(url: &str) -> Result<PgUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(PgUrl {
            single: url.into(),
            hosts: Vec::new(),
        });
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_list) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let mut hosts = Vec::new();
    if !host_list.is_empty() {
        for entry in host_list.split(',') {
            hosts.push(host_port(entry)?);
        }
    }
    let tail = without_session_attrs(tail)?;
    let first = match hosts.first() {
        Some((host, port)) if host.contains(':') => format!("[{host}]:{port}"),
        Some((host, port)) => format!("{host}:{port}"),
        None => String::new(),
    };
    Ok(PgUrl {
        single: format!("{scheme}://{userinfo}{first}{tail}"),
        hosts,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(entry: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!("host {entry:?} lacks its closing ']'"));
        };
        (host, after.strip_prefix(':'))
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err(format!(
            "an empty host in the host list ({entry:?}); separate hosts by single commas"
        ));
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse()
            .map_err(|_| format!("the port of host {host:?} ({p:?}) is not a port number"))?,
    };
    Ok((host.to_string(), port))
}

/// The URL's path and query without `target_session_attrs`, after checking its value.
fn without_session_attrs(tail: &str) -> Result<String, String> {
    let Some((path, query)) = tail.split_once('?') else {
        return Ok(tail.into());
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, format!("#{f}")),
        None => (query, String::new()),
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => match value {
                "read-write" | "primary" | "any" => {}
                other => {
                    return Err(format!(
                        "target_session_attrs={other}: outboxd writes (marks, leases, dead \
                         letters), so it always connects to the read-write primary; use \
                         read-write or leave it out"
                    ));
                }
            },
            _ => kept.push(pair),
        }
    }
    Ok(if kept.is_empty() {
        format!("{path}{fragment}")
    } else {
        format!("{path}?{}{fragment}", kept.join("&"))
    })
}

/// What a host is, as a probe finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Takes read-write sessions, on this timeline (0: unknown, where the server does not
    /// offer `pg_current_wal_lsn()` to this user, as some managed services do not).
    Primary(u32),
    /// In recovery, or every session read-only.
    Standby(&'static str),
}

/// What the host of this session is.
pub async fn role(conn: &mut sqlx::PgConnection) -> Result<Role, sqlx::Error> {
    let answer: Result<(bool, String, Option<String>), sqlx::Error> = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), \
         CASE WHEN pg_is_in_recovery() THEN NULL \
         ELSE pg_walfile_name(pg_current_wal_lsn()) END",
    )
    .fetch_one(&mut *conn)
    .await;
    let (recovery, read_only, wal) = match answer {
        // No such function, not allowed, not supported: without the timeline.
        Err(e)
            if e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42883" || c == "42501" || c == "0A000") =>
        {
            let (recovery, read_only): (bool, String) = sqlx::query_as(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')",
            )
            .fetch_one(conn)
            .await?;
            (recovery, read_only, None)
        }
        other => other?,
    };
    Ok(if recovery {
        Role::Standby("is a standby (in recovery)")
    } else if read_only == "on" {
        Role::Standby("takes only read-only transactions (default_transaction_read_only)")
    } else {
        // A WAL file name starts with its timeline, 8 hex digits.
        let timeline = wal
            .as_deref()
            .and_then(|w| w.get(..8))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .unwrap_or(0);
        Role::Primary(timeline)
    })
}

/// Connects to one host and asks what it is.
pub async fn probe(opts: &PgConnectOptions) -> Result<Role, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect_with(opts).await?;
    let role = role(&mut conn).await;
    let _ = conn.close().await;
    role
}

#[cfg(test)]
mod tests {
    use super::split;

    fn hosts(url: &str) -> Vec<(String, u16)> {
        split(url).unwrap().hosts
    }

    #[test]
    fn a_host_list_is_read_as_libpq_reads_it() {
        let u = split(
            "postgres://u:p%40ss@h1:5433,h2,[::1]:6000/db?sslmode=require&target_session_attrs=read-write&application_name=x",
        )
        .unwrap();
        assert_eq!(
            u.hosts,
            [
                ("h1".into(), 5433),
                ("h2".into(), 5432),
                ("::1".into(), 6000)
            ]
        );
        assert_eq!(
            u.single,
            "postgres://u:p%40ss@h1:5433/db?sslmode=require&application_name=x"
        );
        // One host, and none.
        assert_eq!(
            split("postgresql://h/db").unwrap().single,
            "postgresql://h:5432/db"
        );
        assert_eq!(hosts("postgres:///db?host=/run/postgresql"), []);
        assert_eq!(
            split("postgres://u@[::1]/d?target_session_attrs=primary")
                .unwrap()
                .single,
            "postgres://u@[::1]:5432/d"
        );
        // A password may hold what separates hosts once encoded; '@' only as %40.
        assert_eq!(hosts("postgres://u:a,b:c@h1,h2:1/d").len(), 2);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_its_reason() {
        for (url, words) in [
            (
                "postgres://h1,h2/d?target_session_attrs=standby",
                "always connects to the read-write primary",
            ),
            (
                "postgres://h1,h2/d?target_session_attrs=read-only",
                "use read-write",
            ),
            ("postgres://h1,,h2/d", "an empty host"),
            ("postgres://h1:54x2,h2/d", "is not a port number"),
            ("postgres://[::1:5432/d", "closing ']'"),
        ] {
            let e = split(url).unwrap_err();
            assert!(e.contains(words), "{url}: {e}");
        }
    }
}
