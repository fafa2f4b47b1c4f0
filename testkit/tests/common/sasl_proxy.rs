//! A SASL front for a broker that speaks no SASL (Tansu): it answers a connection's SASL
//! exchange itself — `PLAIN`, or `SCRAM-SHA-256` / `SCRAM-SHA-512` (RFC 5802, the server
//! side: salted password, client proof checked, server signature sent) — for one user and
//! password, and then passes the bytes through. So librdkafka's SASL paths run against
//! something that really refuses a wrong password. It advertises SaslHandshake and
//! SaslAuthenticate by adding them to the broker's ApiVersions answer.
//!
//! Kafka framing: every request and response is a 4-byte length and a body. A request
//! header is api_key (i16), api_version (i16), correlation_id (i32), client_id (i16-length
//! string), then, for flexible versions, tagged fields; a response starts with the
//! correlation id (ApiVersions responses never carry header tagged fields).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;

/// A running front; stops when dropped.
pub struct SaslProxy {
    /// `host:port` for clients.
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SaslProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SaslProxy {
    /// Listens on `listen` in front of `broker`, accepting `user` / `password` with
    /// `mechanism` (`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`) only.
    pub async fn start(
        listen: &str,
        broker: &str,
        mechanism: &str,
        user: &str,
        password: &str,
    ) -> SaslProxy {
        let listener = TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().unwrap().to_string();
        let account = Account {
            mechanism: mechanism.to_string(),
            user: user.to_string(),
            password: password.to_string(),
        };
        let broker = broker.to_string();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (broker, account) = (broker.clone(), account.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &broker, &account).await;
                });
            }
        });
        SaslProxy { addr, task }
    }
}

/// Who may connect, and how.
#[derive(Clone)]
struct Account {
    mechanism: String,
    user: String,
    password: String,
}

/// The HMAC of a SCRAM mechanism.
fn hmac(mechanism: &str, key: &[u8], data: &[u8]) -> Vec<u8> {
    if mechanism == "SCRAM-SHA-512" {
        let mut m = hmac::Hmac::<sha2::Sha512>::new_from_slice(key).expect("any key");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
}

/// The hash of a SCRAM mechanism.
fn hash(mechanism: &str, data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    if mechanism == "SCRAM-SHA-512" {
        sha2::Sha512::digest(data).to_vec()
    } else {
        sha2::Sha256::digest(data).to_vec()
    }
}

/// RFC 5802 `Hi()`: PBKDF2 with the mechanism's HMAC.
fn salted_password(mechanism: &str, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let key = password.as_bytes();
    let mut u = hmac(mechanism, key, &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(mechanism, key, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// The server side of one SCRAM exchange.
struct Scram {
    client_first_bare: String,
    server_first: String,
    user: String,
}

impl Scram {
    const SALT: &'static [u8] = b"outboxd-test-salt";
    const ITERATIONS: u32 = 4096;

    /// From `n,,n=user,r=nonce`: the server's `r=nonce+ours,s=salt,i=iterations`.
    fn first(client_first: &str) -> Option<Scram> {
        let bare = client_first.strip_prefix("n,,")?.to_string();
        let attr = |k: &str| {
            bare.split(',')
                .find_map(|a| a.strip_prefix(k).map(str::to_string))
        };
        let (user, nonce) = (attr("n=")?, attr("r=")?);
        let server_first = format!(
            "r={nonce}server-nonce-7,s={},i={}",
            B64.encode(Self::SALT),
            Self::ITERATIONS
        );
        Some(Scram {
            client_first_bare: bare,
            server_first,
            user,
        })
    }

    /// Checks `c=…,r=…,p=proof` against the account; the server's final message if right.
    fn last(&self, account: &Account, client_final: &str) -> Option<String> {
        let (without_proof, proof) = client_final.rsplit_once(",p=")?;
        let proof = B64.decode(proof).ok()?;
        let m = account.mechanism.as_str();
        let salted = salted_password(m, &account.password, Self::SALT, Self::ITERATIONS);
        let client_key = hmac(m, &salted, b"Client Key");
        let auth = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(m, &hash(m, &client_key), auth.as_bytes());
        let expected: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if self.user != account.user || proof != expected {
            return None;
        }
        let server_key = hmac(m, &salted, b"Server Key");
        Some(format!(
            "v={}",
            B64.encode(hmac(m, &server_key, auth.as_bytes()))
        ))
    }
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let n = s.read_i32().await? as usize;
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    s.write_i32(body.len() as i32).await?;
    s.write_all(body).await
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn uvarint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Moves `at` past a tagged-field section (flexible versions).
fn skip_tagged_fields(b: &[u8], at: &mut usize) {
    for _ in 0..uvarint(b, at) {
        let _tag = uvarint(b, at);
        *at += uvarint(b, at) as usize;
    }
}

/// The request body's offset: after the header (and its tagged fields when flexible).
fn body_offset(req: &[u8], flexible: bool) -> usize {
    let client_id = i16_at(req, 8).max(0) as usize;
    let mut at = 10 + client_id;
    if flexible {
        skip_tagged_fields(req, &mut at);
    }
    at
}

/// The broker's ApiVersions response with SaslHandshake v0–1 and SaslAuthenticate v0–1
/// added (or put in place of what the broker said about them).
fn with_sasl_apis(resp: &[u8], version: i16) -> Vec<u8> {
    let flexible = version >= 3;
    // correlation id, error code
    let mut at = 6;
    let mut entries: Vec<(i16, i16, i16)> = Vec::new();
    let count = if flexible {
        uvarint(resp, &mut at).saturating_sub(1) as usize
    } else {
        let n = i32_at(resp, at) as usize;
        at += 4;
        n
    };
    for _ in 0..count {
        let e = (i16_at(resp, at), i16_at(resp, at + 2), i16_at(resp, at + 4));
        at += 6;
        if flexible {
            skip_tagged_fields(resp, &mut at);
        }
        if e.0 != SASL_HANDSHAKE && e.0 != SASL_AUTHENTICATE {
            entries.push(e);
        }
    }
    entries.push((SASL_HANDSHAKE, 0, 1));
    entries.push((SASL_AUTHENTICATE, 0, 1));
    let mut out = resp[..6].to_vec();
    if flexible {
        put_uvarint(&mut out, entries.len() as u64 + 1);
    } else {
        out.extend((entries.len() as i32).to_be_bytes());
    }
    for (key, min, max) in entries {
        out.extend(key.to_be_bytes());
        out.extend(min.to_be_bytes());
        out.extend(max.to_be_bytes());
        if flexible {
            out.push(0);
        }
    }
    out.extend(&resp[at..]);
    out
}

/// A SaslAuthenticate response (v0–1): error code and message, auth bytes, and from v1 no
/// session lifetime.
fn authenticate_response(
    correlation: i32,
    version: i16,
    error: Option<&str>,
    auth: &[u8],
) -> Vec<u8> {
    let mut resp = correlation.to_be_bytes().to_vec();
    match error {
        None => {
            resp.extend(0i16.to_be_bytes());
            resp.extend((-1i16).to_be_bytes());
        }
        Some(msg) => {
            resp.extend(SASL_AUTHENTICATION_FAILED.to_be_bytes());
            resp.extend((msg.len() as i16).to_be_bytes());
            resp.extend(msg.as_bytes());
        }
    }
    resp.extend((auth.len() as i32).to_be_bytes());
    resp.extend(auth);
    if version >= 1 {
        resp.extend(0i64.to_be_bytes());
    }
    resp
}

/// Answers ApiVersions (through the broker) and the SASL exchange, then passes bytes.
async fn serve(mut client: TcpStream, broker: &str, account: &Account) -> std::io::Result<()> {
    const REFUSED: &str = "Authentication failed: Invalid username or password";
    let mut upstream = TcpStream::connect(broker).await?;
    let mut scram: Option<Scram> = None;
    loop {
        let req = read_frame(&mut client).await?;
        let (key, version, correlation) = (i16_at(&req, 0), i16_at(&req, 2), i32_at(&req, 4));
        match key {
            API_VERSIONS => {
                write_frame(&mut upstream, &req).await?;
                let resp = read_frame(&mut upstream).await?;
                write_frame(&mut client, &with_sasl_apis(&resp, version)).await?;
            }
            SASL_HANDSHAKE => {
                let at = body_offset(&req, false);
                let len = i16_at(&req, at) as usize;
                let mechanism = String::from_utf8_lossy(&req[at + 2..at + 2 + len]).to_string();
                let error = if mechanism == account.mechanism {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                let mut resp = correlation.to_be_bytes().to_vec();
                resp.extend(error.to_be_bytes());
                resp.extend(1i32.to_be_bytes());
                resp.extend((account.mechanism.len() as i16).to_be_bytes());
                resp.extend(account.mechanism.as_bytes());
                write_frame(&mut client, &resp).await?;
                if error != 0 {
                    return Ok(());
                }
            }
            SASL_AUTHENTICATE => {
                let at = body_offset(&req, false);
                let len = i32_at(&req, at) as usize;
                let auth = &req[at + 4..at + 4 + len];
                let (reply, accepted): (Vec<u8>, Option<bool>) = if account.mechanism == "PLAIN" {
                    // authzid NUL user NUL password
                    let parts: Vec<&[u8]> = auth.split(|b| *b == 0).collect();
                    let ok = parts.len() == 3
                        && parts[1] == account.user.as_bytes()
                        && parts[2] == account.password.as_bytes();
                    (Vec::new(), Some(ok))
                } else {
                    let text = String::from_utf8_lossy(auth).to_string();
                    match scram.take() {
                        None => match Scram::first(&text) {
                            Some(exchange) => {
                                let first = exchange.server_first.clone().into_bytes();
                                scram = Some(exchange);
                                (first, None)
                            }
                            None => (Vec::new(), Some(false)),
                        },
                        Some(exchange) => match exchange.last(account, &text) {
                            Some(server_final) => (server_final.into_bytes(), Some(true)),
                            None => (Vec::new(), Some(false)),
                        },
                    }
                };
                let error = (accepted == Some(false)).then_some(REFUSED);
                let resp = authenticate_response(correlation, version, error, &reply);
                write_frame(&mut client, &resp).await?;
                match accepted {
                    // The SCRAM exchange goes on.
                    None => {}
                    Some(false) => return Ok(()),
                    Some(true) => {
                        // Authenticated: from here on the broker's own traffic.
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
                        return Ok(());
                    }
                }
            }
            _ => {
                // A client that skipped SASL: the broker would have refused it.
                return Ok(());
            }
        }
    }
}
