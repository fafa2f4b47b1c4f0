//! `[nats]`: the NATS sink's configuration section (compiled in every build).

use serde::{Deserialize, Serialize};

/// `[nats]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Servers, comma separated: `nats://host:4222`, `tls://host:4222` for TLS.
    pub url: String,
    /// User name (user/password authentication).
    pub user: String,
    /// A file whose content is the password.
    pub password_file: String,
    /// A file whose content is the authentication token.
    pub token_file: String,
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes them.
    pub credentials_file: String,
    /// Require TLS even with `nats://` URLs.
    pub tls_required: bool,
    /// CA certificate(s) (PEM) the server's certificate must be signed by; empty = the
    /// public web roots built in.
    pub ca_file: String,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: String,
    /// The client certificate's private key (PEM).
    pub key_file: String,
    /// A publish not acknowledged (PubAck) within this many milliseconds has an unknown
    /// outcome: it fails as a transient `timeout` and is sent again with the same
    /// `Nats-Msg-Id`, which the stream drops if the first copy arrived.
    pub timeout_ms: u64,
    /// Opening a connection gives up after this many milliseconds (and is tried again).
    pub connect_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            user: String::new(),
            password_file: String::new(),
            token_file: String::new(),
            credentials_file: String::new(),
            tls_required: false,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
        }
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::secrets::fmt_section("NatsConfig", self, f)
    }
}
