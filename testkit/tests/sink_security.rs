//! Redis and NATS over TLS and with every way of authenticating the relay offers, against
//! private `redis-server` / `nats-server` processes configured here (certificates from the
//! test CA of `scripts/pg-tls-cluster.sh`): rows arrive, `outboxd check` says how it
//! connected, a wrong CA, a missing client certificate or a wrong secret is named by the
//! key to fix, and no secret appears in any output, log (at trace level) or served page.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::sinks::*;
use common::*;
use nix::sys::signal::Signal;
use outboxd::sink::SinkKind;
use testkit::verify::{create_nats_stream_on, read_nats_on, read_redis};

/// Secret values that must never be printed, logged or served.
const SECRETS: &[&str] = &[
    "redis-secret-2236",
    "nats-secret-1732",
    "nats-token-5772",
    // The user's nkey seed of the credentials test is checked separately (it is made
    // per run).
];

fn assert_no_secret(what: &str, text: &str, extra: &[&str]) {
    for s in SECRETS.iter().chain(extra) {
        assert!(!text.contains(s), "{what} shows {s}:\n{text}");
    }
}

/// Writes `value` (and a newline, as editors do) to a file in `dir`; returns its path.
fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

/// `outboxd check` with `env`; (exit code, stdout, stderr).
fn check(env: &[(&str, String)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check").current_dir(std::env::temp_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOXD") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.envs(env.iter().cloned()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `outboxd run` with `env` at trace level until `rows` are published, then stops it;
/// checks that its log, `/readyz` and `/metrics` hold no secret. Returns the log.
async fn relay_delivers(db: &TestDb, env: &[(&str, String)], extra_secrets: &[&str]) -> String {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env = env.to_vec();
    env.push(("OUTBOXD__METRICS__LISTEN", metrics.clone()));
    env.push(("RUST_LOG", "trace".into()));
    let mut relay = RelayProcess::spawn(&env);
    let done = drained(db, Duration::from_secs(30)).await;
    // Both must answer: "no secret in /readyz" means nothing if /readyz never answered.
    let (ready_status, ready) = http_get(&metrics, "/readyz")
        .await
        .expect("/readyz answers");
    let (metrics_status, served) = http_get(&metrics, "/metrics")
        .await
        .expect("/metrics answers");
    relay.signal(Signal::SIGTERM);
    relay.wait_for(Duration::from_secs(15));
    let log = relay.output();
    assert!(done, "rows were not published:\n{log}");
    assert!(log.contains("TRACE"), "trace level was on");
    assert!(
        ready_status == 200 || ready_status == 503,
        "/readyz: {ready_status}"
    );
    assert_eq!(metrics_status, 200, "/metrics");
    assert!(
        served.contains("outboxd_events_published_total"),
        "/metrics served the relay's metrics: {served}"
    );
    assert_no_secret("/readyz", &ready, extra_secrets);
    assert_no_secret("/metrics", &served, extra_secrets);
    assert_no_secret("the relay's log", &log, extra_secrets);
    log
}

/// Redis with TLS on its TLS port (client certificates from the test CA required), a
/// plaintext port for the test's own reader, and the default user off: only the ACL user
/// `relay` may connect.
fn tls_redis(plain: u16) -> PrivateServer {
    PrivateServer::start_with(SinkKind::Redis, true, |port, _| {
        [
            "--port",
            &plain.to_string(),
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &pki("server.crt"),
            "--tls-key-file",
            &pki("server.key"),
            "--tls-ca-cert-file",
            &pki("ca.crt"),
            "--tls-auth-clients",
            "yes",
            "--user",
            "default",
            "off",
            "--user",
            "relay",
            "on",
            &format!(">{}", SECRETS[0]),
            "~*",
            "+@all",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
    .expect("private server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_as_an_acl_user_delivers_and_a_wrong_ca_or_certificate_is_named() {
    let plain = free_port();
    let server = tls_redis(plain);
    let db = TestDb::new().await;
    let stream = unique("tls:events:");
    let written = write_events(&db, &stream, &aggregates(3), 20).await;
    let password = secret_file(server.dir(), "password", SECRETS[0]);
    let env: Vec<(&str, String)> = vec![
        ("OUTBOXD__DATABASE__URL", db.url.clone()),
        ("OUTBOXD__SINK__KIND", "redis".into()),
        ("OUTBOXD__REDIS__URL", server.url()),
        ("OUTBOXD__REDIS__USERNAME", "relay".into()),
        ("OUTBOXD__REDIS__PASSWORD_FILE", password),
        ("OUTBOXD__REDIS__CA_FILE", pki("ca.crt")),
        ("OUTBOXD__REDIS__CERT_FILE", pki("client.crt")),
        ("OUTBOXD__REDIS__KEY_FILE", pki("client.key")),
    ];

    let (code, out, err) = check(&env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("broker: ok (redis at rediss://127.0.0.1")
            && out.contains("TLS, as user relay"),
        "{out}"
    );
    assert_no_secret("check", &(out + &err), &[]);

    relay_delivers(&db, &env, &[]).await;
    let reader = format!("redis://relay:{}@127.0.0.1:{plain}", SECRETS[0]);
    let records = read_redis(
        &reader,
        &[&stream],
        Duration::from_secs(10),
        Duration::from_millis(500),
        every_event(written.len()),
    )
    .await
    .unwrap();
    assert_whole_and_in_order(&written, &records);

    // A CA that did not sign the server's certificate; no client certificate; a wrong
    // password: each refused, named by what to change, without the password.
    for (key, value, needle) in [
        (
            "OUTBOXD__REDIS__CA_FILE",
            pki("other-ca.crt"),
            "redis.ca_file",
        ),
        (
            "OUTBOXD__REDIS__CERT_FILE",
            String::new(),
            "client certificate",
        ),
        (
            "OUTBOXD__REDIS__PASSWORD_FILE",
            secret_file(server.dir(), "wrong", "not-the-password"),
            "redis.password_file",
        ),
    ] {
        let mut env = env.clone();
        env.retain(|(k, _)| *k != key && !(value.is_empty() && *k == "OUTBOXD__REDIS__KEY_FILE"));
        if !value.is_empty() {
            env.push((key, value));
        }
        let (code, out, err) = check(&env);
        let text = out + &err;
        assert_ne!(code, Some(0), "{key}: {text}");
        assert!(text.contains(needle), "{key}: want {needle:?} in\n{text}");
        assert_no_secret(key, &text, &[]);
    }
}

/// NATS with TLS required, client certificates from the test CA and a user/password.
fn tls_nats() -> PrivateServer {
    PrivateServer::start_with(SinkKind::Nats, false, |_, _| {
        [
            "--tls",
            "--tlscert",
            &pki("server.crt"),
            "--tlskey",
            &pki("server.key"),
            "--tlsverify",
            "--tlscacert",
            &pki("ca.crt"),
            "--user",
            "relay",
            "--pass",
            SECRETS[1],
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
    .expect("private server")
}

/// Creates the stream `name` for `subject` with the client `options`, writes 3 × 20
/// events, runs the relay with `env` (plus the database and sink) and reads the stream back.
async fn nats_round_trip(
    url: &str,
    options: impl Fn() -> async_nats::ConnectOptions,
    env: &[(&str, String)],
    extra_secrets: &[&str],
) -> String {
    let db = TestDb::new().await;
    let name = unique("SEC");
    let subject = format!("{}.events", name.to_lowercase());
    let client = options().connect(url).await.expect("test client");
    create_nats_stream_on(client, &name, &[&subject], Duration::from_secs(120))
        .await
        .unwrap();
    let written = write_events(&db, &subject, &aggregates(3), 20).await;
    let mut env = env.to_vec();
    env.push(("OUTBOXD__DATABASE__URL", db.url.clone()));
    env.push(("OUTBOXD__SINK__KIND", "nats".into()));
    env.push(("OUTBOXD__NATS__URL", url.to_string()));
    let (code, out, err) = check(&env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_no_secret("check", &format!("{out}{err}"), extra_secrets);
    let log = relay_delivers(&db, &env, extra_secrets).await;
    let client = options().connect(url).await.expect("test client");
    let records = read_nats_on(
        client,
        &name,
        Duration::from_secs(10),
        Duration::from_millis(500),
        every_event(written.len()),
    )
    .await
    .unwrap();
    assert_whole_and_in_order(&written, &records);
    format!("{out}\n{log}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_a_password_delivers_and_a_wrong_ca_or_password_is_named() {
    let server = tls_nats();
    let url = server.url();
    let password = secret_file(server.dir(), "password", SECRETS[1]);
    let env: Vec<(&str, String)> = vec![
        ("OUTBOXD__NATS__TLS_REQUIRED", "true".into()),
        ("OUTBOXD__NATS__CA_FILE", pki("ca.crt")),
        ("OUTBOXD__NATS__CERT_FILE", pki("client.crt")),
        ("OUTBOXD__NATS__KEY_FILE", pki("client.key")),
        ("OUTBOXD__NATS__USER", "relay".into()),
        ("OUTBOXD__NATS__PASSWORD_FILE", password),
    ];
    let options = || {
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(pki("ca.crt").into())
            .add_client_certificate(pki("client.crt").into(), pki("client.key").into())
            .user_and_password("relay".into(), SECRETS[1].into())
    };
    let out = nats_round_trip(&url, options, &env, &[]).await;
    assert!(out.contains(", TLS, max_payload"), "{out}");

    let db = TestDb::new().await;
    let base: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([
            ("OUTBOXD__DATABASE__URL", db.url.clone()),
            ("OUTBOXD__SINK__KIND", "nats".into()),
            ("OUTBOXD__NATS__URL", url.clone()),
            ("OUTBOXD__NATS__CONNECT_TIMEOUT_MS", "2000".into()),
        ])
        .collect();
    for (key, value, needle) in [
        (
            "OUTBOXD__NATS__CA_FILE",
            pki("other-ca.crt"),
            "nats.ca_file",
        ),
        (
            "OUTBOXD__NATS__PASSWORD_FILE",
            secret_file(server.dir(), "wrong", "not-the-password"),
            "nats.password_file",
        ),
    ] {
        let mut env = base.clone();
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
        let (code, out, err) = check(&env);
        let text = out + &err;
        assert_ne!(code, Some(0), "{key}: {text}");
        assert!(text.contains(needle), "{key}: want {needle:?} in\n{text}");
        assert_no_secret(key, &text, &[]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_token_delivers() {
    let server = PrivateServer::start_with(SinkKind::Nats, false, |_, _| {
        vec!["--auth".into(), SECRETS[2].into()]
    })
    .expect("private server");
    let token = secret_file(server.dir(), "token", SECRETS[2]);
    let env = vec![("OUTBOXD__NATS__TOKEN_FILE", token)];
    let options = || async_nats::ConnectOptions::with_token(SECRETS[2].into());
    nats_round_trip(&server.url(), options, &env, &[]).await;
}

/// A NATS JWT (`nats-io/jwt` v2): claims about `subject` signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": "outboxd-test",
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_credentials_file_delivers() {
    // Decentralised auth as `nsc` sets it up: an operator, an account with JetStream, a
    // user; the server trusts the operator and knows the account from a preload.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}},
            "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2}),
    );
    // JetStream needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        serde_json::json!({"type": "account", "version": 2}),
    );
    let seed = user.seed().unwrap();
    let server = PrivateServer::start_with(SinkKind::Nats, false, |_, dir| {
        let conf = dir.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {}: \"{account_jwt}\"\n  {sys}: \"{system_jwt}\"\n}}\n",
                account.public_key(),
                sys = system.public_key(),
            ),
        )
        .unwrap();
        vec!["-c".into(), conf.to_string_lossy().into_owned()]
    })
    .expect("private server");
    let creds = server.dir().join("relay.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let creds_path = creds.to_string_lossy().into_owned();
    let env = vec![("OUTBOXD__NATS__CREDENTIALS_FILE", creds_path.clone())];
    let options = || {
        async_nats::ConnectOptions::with_credentials(&std::fs::read_to_string(&creds).unwrap())
            .unwrap()
    };
    nats_round_trip(&server.url(), options, &env, &[&seed]).await;

    // Without the credentials the server refuses the relay, and check says which keys.
    let db = TestDb::new().await;
    let (code, out, err) = check(&[
        ("OUTBOXD__DATABASE__URL", db.url.clone()),
        ("OUTBOXD__SINK__KIND", "nats".into()),
        ("OUTBOXD__NATS__URL", server.url()),
        ("OUTBOXD__NATS__CONNECT_TIMEOUT_MS", "2000".into()),
    ]);
    let text = out + &err;
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("nats.credentials_file"), "{text}");
}
