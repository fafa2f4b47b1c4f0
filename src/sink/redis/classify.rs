//! What a Redis error means for a row: the one place that classifies them (the table is
//! in the module's documentation).

use redis::RedisError;

use crate::sink::api::{FailureKind, PublishFailure};

/// Classifies a Redis error, once, for the whole sink; `cluster` when the sink talks to
/// a Redis Cluster (redirects are then the topology changing, not a misconfiguration).
pub fn classify(error: &RedisError, cluster: bool) -> PublishFailure {
    let message = error.to_string();
    if let Some(code) = error.code() {
        return classify_code(code, message, cluster);
    }
    node_scoped(cluster, classify_io(error, message))
}

/// In a cluster, a failure of the node serving a slot (unreachable, failing over, not yet
/// replicated) concerns the streams of that slot only, while the other masters take
/// their rows: it holds the rows as a destination problem, which spends no attempts,
/// instead of counting against them as a transient failure the others do not share.
fn node_scoped(cluster: bool, f: PublishFailure) -> PublishFailure {
    const NODE: [&str; 6] = [
        "timeout",
        "broker_unavailable",
        "server_busy",
        "read_only",
        "cluster_redirect",
        "not_replicated",
    ];
    if cluster && f.kind == FailureKind::Transient && NODE.contains(&f.class) {
        PublishFailure::new(FailureKind::Destination, f.class, f.message)
    } else {
        f
    }
}

/// Not-replicated rows: `WAIT` said fewer replicas than `redis.wait_replicas`.
pub fn not_replicated(message: String, cluster: bool) -> PublishFailure {
    node_scoped(
        cluster,
        PublishFailure::new(FailureKind::Transient, "not_replicated", message),
    )
}

fn classify_io(error: &RedisError, message: String) -> PublishFailure {
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
pub fn classify_code(code: &str, message: String, cluster: bool) -> PublishFailure {
    node_scoped(cluster, classify_reply(code, message, cluster))
}

fn classify_reply(code: &str, message: String, cluster: bool) -> PublishFailure {
    let (kind, class) = match code {
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "MISCONF" => {
            (FailureKind::Transient, "server_busy")
        }
        "OOM" => (FailureKind::Transient, "out_of_memory"),
        "READONLY" => (FailureKind::Transient, "read_only"),
        "WRONGTYPE" => (FailureKind::Destination, "wrong_type"),
        "NOPERM" => (FailureKind::Destination, "not_authorized"),
        "NOAUTH" | "WRONGPASS" => (FailureKind::Destination, "not_authenticated"),
        // The cluster client follows redirects itself; one that still reaches the sink
        // came while slots moved faster than its retries: sent again later.
        "MOVED" | "ASK" if cluster => (FailureKind::Transient, "cluster_redirect"),
        // A Redis Cluster node that does not serve the key's slot, with the sink talking
        // to one server: the row waits (never dead-lettered) until the operator says so.
        "MOVED" | "ASK" | "CROSSSLOT" => {
            return PublishFailure::new(
                FailureKind::Destination,
                "cluster_redirect",
                format!(
                    "{message} — this Redis is a cluster node and the key's slot is served by \
                     another node: set redis.cluster = true (redis.url may list several \
                     nodes, comma-separated)"
                ),
            );
        }
        _ => (FailureKind::Transient, "transient"),
    };
    PublishFailure::new(kind, class, message)
}

/// What an operator should do about a connection failure, in words.
pub(super) fn security_hint(failure: &PublishFailure) -> Option<(&'static str, String)> {
    if failure.class == "not_authenticated" {
        return Some((
            "authentication",
            "Redis refused the credentials: check the user and password (redis.url, redis.username, redis.password_file)".into(),
        ));
    }
    crate::sink::tls::tls_hint("redis", &failure.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_redirect_to_a_single_server_sink_holds_the_row_and_says_what_to_do() {
        for code in ["MOVED", "ASK", "CROSSSLOT"] {
            let f = classify_code(code, format!("{code} 3999 127.0.0.1:7001"), false);
            assert_eq!(
                (f.kind, f.class),
                (FailureKind::Destination, "cluster_redirect"),
                "{code}"
            );
            assert!(f.message.contains("redis.cluster = true"), "{}", f.message);
        }
    }

    #[test]
    fn in_a_cluster_a_nodes_redirects_and_failovers_hold_its_rows_without_spending_attempts() {
        for code in [
            "MOVED",
            "ASK",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "READONLY",
            "MASTERDOWN",
        ] {
            let f = classify_code(code, format!("{code} 3999 127.0.0.1:7001"), true);
            assert_eq!(f.kind, FailureKind::Destination, "{code}");
            // On one server the same replies are the whole server's: transient.
            let f = classify_code(code, format!("{code} 3999 127.0.0.1:7001"), false);
            let single = if code == "MOVED" || code == "ASK" {
                FailureKind::Destination
            } else {
                FailureKind::Transient
            };
            assert_eq!(f.kind, single, "{code}");
        }
        assert_eq!(
            not_replicated("WAIT 0".into(), true).kind,
            FailureKind::Destination
        );
        assert_eq!(
            not_replicated("WAIT 0".into(), false).kind,
            FailureKind::Transient
        );
        // A row's own problem stays its own.
        let f = classify_code("WRONGTYPE", "WRONGTYPE".into(), true);
        assert_eq!((f.kind, f.class), (FailureKind::Destination, "wrong_type"));
        let f = classify_code("ERR", "ERR something".into(), true);
        assert_eq!(f.kind, FailureKind::Transient);
        // Cross-slot commands are the sink's own mistake: held, not retried blindly.
        let f = classify_code("CROSSSLOT", "CROSSSLOT Keys".into(), true);
        assert_eq!(f.kind, FailureKind::Destination);
    }
}
