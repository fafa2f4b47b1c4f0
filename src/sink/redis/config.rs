//! `[redis]`: the Redis sink's configuration section (compiled in every build).

use serde::{Deserialize, Serialize};

/// `[redis]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://` for TLS. An ACL user
    /// and password may be given here or as `username` / `password_file`. With `cluster`,
    /// one or more seed nodes, comma-separated (`redis://u:p@h1:7000,h2:7001`: the scheme
    /// and credentials of the first apply to all). With `sentinels`, only the scheme,
    /// credentials and database are used: the sentinels name the master.
    pub url: String,
    /// A Redis Cluster: `XADD`s go to the node serving each stream key's slot, one
    /// pipeline per slot, and redirects (`MOVED`, `ASK`) and failovers are followed.
    pub cluster: bool,
    /// Redis Sentinel: the sentinels' URLs (`redis://host:26379`, with the sentinels' own
    /// user and password if they have them); the master is asked of them, and asked again
    /// after a failover (`READONLY`, a lost connection). Empty = no Sentinel.
    pub sentinels: Vec<String>,
    /// The master's name in the sentinels' configuration (`sentinel monitor <name> …`).
    pub master_name: String,
    /// Replication is asynchronous: a master that crashes loses writes no replica has
    /// yet. With N > 0 every pipeline ends with `WAIT N wait_timeout_ms`, and its rows
    /// count as published only once N replicas have them (else they are sent again).
    pub wait_replicas: u32,
    /// How long `WAIT` waits for `wait_replicas` replicas, in milliseconds.
    pub wait_timeout_ms: u64,
    /// ACL user name (wins over the URL's); empty = the URL's, or `default`.
    pub username: String,
    /// A file whose content is the password (one trailing newline ignored); wins over a
    /// password in the URL.
    pub password_file: String,
    /// CA certificate(s) (PEM) the server's certificate must be signed by, for
    /// `rediss://`; empty = the public web roots built in.
    pub ca_file: String,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: String,
    /// The client certificate's private key (PEM).
    pub key_file: String,
    /// A command not answered within this many milliseconds has an unknown outcome: it
    /// fails as a transient `timeout` and is sent again with the same `event_id`.
    pub timeout_ms: u64,
    /// Opening a connection gives up after this many milliseconds (and is tried again).
    pub connect_timeout_ms: u64,
    /// `XADD … MAXLEN ~ N`: keep about this many entries per stream; 0 = no trimming
    /// (the default: trimming can drop entries no consumer has read).
    pub maxlen: u64,
    /// `XADD … MINID ~`: drop entries older than this many seconds; 0 = no trimming.
    pub min_age_secs: u64,
    /// The largest payload sent, in bytes: a bigger one is dead-lettered as
    /// `record_too_large`. Set it to the server's `proto-max-bulk-len` if you changed
    /// that (a bigger argument makes Redis close the connection).
    pub max_payload_bytes: u64,
    /// Idempotent `XADD` (`IDMP outboxd <event_id>`) when the server is Redis 8.6 or
    /// later, so that a resend of an event the stream already holds adds nothing; older
    /// servers get a plain `XADD` (resends are duplicates consumers drop by `event_id`).
    /// `false`: never.
    pub idmp: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            sentinels: Vec::new(),
            master_name: String::new(),
            wait_replicas: 0,
            wait_timeout_ms: 1_000,
            username: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            maxlen: 0,
            min_age_secs: 0,
            max_payload_bytes: 512 * 1024 * 1024,
            idmp: true,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::secrets::fmt_section("RedisConfig", self, f)
    }
}
