//! Files and TLS words the sinks share: unreadable certificate files named by their key,
//! hints for TLS failures, PEM reading.

/// A problem for each configured file (`(key, path)`, empty path = not set) that cannot
/// be opened, naming its key.
pub fn unreadable_files(files: &[(&str, &String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, path)| !path.is_empty())
        .filter_map(|(key, path)| {
            std::fs::File::open(path)
                .err()
                .map(|err| format!("{key}: cannot read {path:?}: {err}"))
        })
        .collect()
}

/// What to change when a TLS connection to a Redis or NATS server fails, read from the
/// client library's words (rustls's): `(kind, hint)`, the hint naming the keys of
/// `section`.
pub fn tls_hint(section: &str, words: &str) -> Option<(&'static str, String)> {
    let m = words.to_ascii_lowercase();
    if m.contains("certificaterequired") || m.contains("certificate required") {
        Some((
            "certificate",
            format!(
                "the server wants a client certificate: set {section}.cert_file and {section}.key_file"
            ),
        ))
    } else if m.contains("badcertificate") || m.contains("unknownca") || m.contains("decrypterror")
    {
        Some((
            "certificate",
            format!(
                "the server refused the client certificate in {section}.cert_file (not signed by a CA it trusts, or expired)"
            ),
        ))
    } else if m.contains("unknownissuer")
        || m.contains("invalid peer certificate")
        || m.contains("notvalidforname")
        || m.contains("expired")
    {
        Some((
            "certificate",
            format!(
                "the server's certificate is not signed by the CA in {section}.ca_file (or has expired, or is not issued for this host name)"
            ),
        ))
    } else if m.contains("handshake")
        || m.contains("corrupt message")
        || m.contains("invalid content type")
        || m.contains("tls")
    {
        Some((
            "tls",
            format!(
                "TLS failed: check that the server speaks TLS on this port and {section}.ca_file / cert_file / key_file"
            ),
        ))
    } else {
        None
    }
}

/// `path`'s content, for a certificate or key named in the configuration; the error
/// names the key to fix.
pub fn read_pem(key: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{key}: cannot read {path:?}: {e}"))
}
