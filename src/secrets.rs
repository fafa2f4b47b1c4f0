//! Keeping secrets out of logs, errors, command output and `Debug`: every URL has its
//! credentials replaced by `***` (the password of its user info, a NATS token given as a
//! bare user, and secret-bearing query keys such as libpq's `password`), and the values of
//! secret-bearing librdkafka options are never shown.

/// Query keys whose value is a secret, in any URL (libpq reads `password` and
/// `sslpassword` from the query; NATS and Redis clients take tokens and keys).
const SECRET_QUERY_KEYS: &[&str] = &[
    "password",
    "sslpassword",
    "pass",
    "passwd",
    "token",
    "auth_token",
    "secret",
    "nkey",
    "jwt",
];

/// URL schemes whose bare user info (`nats://s3cr3t@host`) is a token, not a user name.
const TOKEN_AS_USER_SCHEMES: &[&str] = &["nats", "tls", "ws", "wss"];

/// `text` with the credentials of every URL in it replaced by `***`: a configured URL
/// (`postgres://u:***@h/d?password=***`), or URLs quoted inside an error message.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let start = rest[..sep]
            .rfind(|c: char| !is_scheme_char(c))
            .map_or(0, |p| p + 1);
        let end = url_end(&rest[sep + 3..]) + sep + 3;
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Where a URL that starts before `after` (the text following its `://`) ends: at white
/// space, a quote or bracket, or a comma that starts the next URL of a list
/// (`nats://a:4222,nats://b:4222`); a comma between hosts (`h1:5432,h2:5432`) does not end it.
fn url_end(after: &str) -> usize {
    for (i, c) in after.char_indices() {
        if c.is_whitespace() || "\"'<>`()[]{}".contains(c) {
            return i;
        }
        if c == ',' {
            let next = &after[i + 1..];
            let scheme_len = next
                .find(|c: char| !is_scheme_char(c))
                .unwrap_or(next.len());
            if scheme_len > 0 && next[scheme_len..].starts_with("://") {
                return i;
            }
        }
    }
    after.len()
}

/// A character of a URL scheme (RFC 3986: letters, digits, `+`, `.`, `-`).
fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+.-".contains(c)
}

fn is_secret_key(key: &str) -> bool {
    SECRET_QUERY_KEYS.contains(&key.to_ascii_lowercase().as_str())
}

/// One URL with its credentials replaced. Parsed with the `url` crate; a URL it cannot
/// parse (libpq's multi-host `h1:5432,h2:5432`) is split by hand into the same parts.
fn redact_url(raw: &str) -> String {
    if let Ok(mut url) = url::Url::parse(raw)
        && url.has_host()
    {
        let token_as_user =
            !url.username().is_empty() && TOKEN_AS_USER_SCHEMES.contains(&url.scheme());
        let secret_query = url.query_pairs().any(|(k, _)| is_secret_key(&k));
        if url.password().is_none() && !token_as_user && !secret_query {
            // Nothing to hide: shown as written (the parser would normalize it).
            return raw.to_string();
        }
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        } else if token_as_user {
            let _ = url.set_username("***");
        }
        if secret_query {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret_key(&k) {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return url.to_string();
    }
    redact_by_parts(raw)
}

/// `scheme://[userinfo@]hosts[/path][?query][#fragment]`, taken apart without a parser.
fn redact_by_parts(raw: &str) -> String {
    let Some(sep) = raw.find("://") else {
        return raw.to_string();
    };
    let (scheme, after) = (&raw[..sep], &raw[sep + 3..]);
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, tail) = after.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((info, hosts)) => match info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None if TOKEN_AS_USER_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
                format!("***@{hosts}")
            }
            None => format!("{info}@{hosts}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            let mut t = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                t.push('#');
                t.push_str(f);
            }
            t
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Whether a librdkafka option carries a secret; its value is never shown.
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "oauthbearer.config",
        "jaas",
        "token",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A secret kept in a file: its content without one trailing newline (`echo` and
/// Kubernetes secrets written from the command line end with one).
pub fn read_file(path: &str) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path:?}: {e}"))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// `Debug` for a configuration section that holds secrets: every URL with its credentials
/// hidden ([`redact`]) and the values of secret librdkafka options as `***`, so that `{:?}`
/// of a configuration never shows a password.
pub(crate) fn fmt_section<T: serde::Serialize>(
    name: &str,
    section: &T,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    let mut v = serde_json::to_value(section).map_err(|_| std::fmt::Error)?;
    if let Some(map) = v.as_object_mut() {
        for (k, v) in map.iter_mut() {
            match (k.as_str(), v) {
                ("url", serde_json::Value::String(s)) => *s = redact(s),
                ("sentinels", serde_json::Value::Array(urls)) => {
                    for url in urls {
                        if let serde_json::Value::String(s) = url {
                            *s = redact(s);
                        }
                    }
                }
                ("producer", serde_json::Value::Object(options)) => {
                    for (option, value) in options.iter_mut() {
                        if is_secret_option(option) {
                            *value = "***".into();
                        }
                    }
                }
                _ => {}
            }
        }
    }
    write!(f, "{name} {v}")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn every_form_of_credential_in_a_url_is_hidden() {
        for (url, shown) in [
            ("postgres://u:secret@h:5432/d", "postgres://u:***@h:5432/d"),
            ("postgres://u@h/d", "postgres://u@h/d"),
            (
                "postgres://u@h/d?sslmode=require&password=secret",
                "postgres://u@h/d?sslmode=require&password=***",
            ),
            (
                "postgres://u@h/d?PASSWORD=secret&application_name=x",
                "postgres://u@h/d?PASSWORD=***&application_name=x",
            ),
            (
                "postgres://u:pw@h1:5432,h2:5432/d?target_session_attrs=read-write&password=x",
                "postgres://u:***@h1:5432,h2:5432/d?target_session_attrs=read-write&password=***",
            ),
            ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://relay:secret@h:6380", "rediss://relay:***@h:6380"),
            ("redis://h:6379", "redis://h:6379"),
            // Nothing to hide: exactly as written, not as a parser would normalize it.
            ("http://x", "http://x"),
            ("postgres://u@HOST/d", "postgres://u@HOST/d"),
            ("nats://s3cr3t-token@h:4222", "nats://***@h:4222"),
            ("tls://u:pw@h:4222", "tls://u:***@h:4222"),
            ("nats://h:4222?token=abc", "nats://h:4222?token=***"),
            (
                "nats://a:pw@h1:4222,nats://tok@h2:4222",
                "nats://a:***@h1:4222,nats://***@h2:4222",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_inside_messages_are_hidden_too() {
        let msg = "cannot connect to \"postgres://u:hunter2@db/app?password=hunter3\": refused";
        let shown = redact(msg);
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.starts_with("cannot connect to \"postgres://u:***@db/app"));
        assert!(shown.ends_with("\": refused"));
        assert_eq!(redact("no url here"), "no url here");
    }
}
