//! Kafka over TLS, end to end against the real broker: a private Tansu behind a TLS
//! terminator (`socat OPENSSL-LISTEN` with a certificate for 127.0.0.1 from the test CA of
//! `scripts/pg-tls-cluster.sh`), Tansu advertising the TLS port, the relay as `outboxd run`.
//! SASL against a front that checks a PLAIN password before passing traffic to Tansu
//! (`common::sasl_proxy`: Tansu itself speaks no SASL). And secrets: known secret values,
//! every command and the relay at trace level, nothing printed or served may contain them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use testkit::broker::{LocalBroker, reachable};

/// Tansu on a plaintext port, reachable only through a TLS terminator on another.
struct TlsBroker {
    _broker: LocalBroker,
    socat: Child,
    /// The TLS `host:port` (what clients use).
    tls: String,
}

/// `socat` terminating TLS on `tls_port` (the test CA's certificate for 127.0.0.1) and
/// forwarding to `target`; with `client_certificates` it takes only clients showing a
/// certificate from the test CA.
fn tls_terminator(tls_port: u16, target: &str, client_certificates: bool) -> Child {
    let verify = if client_certificates {
        format!("verify=1,cafile={}", pki("ca.crt"))
    } else {
        "verify=0".into()
    };
    let socat = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,{verify},cert={},key={}",
            pki("server.crt"),
            pki("server.key")
        ))
        .arg(format!("TCP:{target}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (scripts/setup.sh installs it)");
    let tls = format!("127.0.0.1:{tls_port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reachable(&tls) {
        assert!(std::time::Instant::now() < deadline, "socat did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    socat
}

impl TlsBroker {
    fn start() -> TlsBroker {
        TlsBroker::start_with(false)
    }

    /// With `client_certificates`, the terminator accepts only clients that show a
    /// certificate signed by the test CA (mutual TLS).
    fn start_with(client_certificates: bool) -> TlsBroker {
        let (plain_port, tls_port) = (free_port(), free_port());
        let plain = format!("127.0.0.1:{plain_port}");
        let tls = format!("127.0.0.1:{tls_port}");
        let log = std::env::temp_dir().join(format!("outboxd-tls-tansu-{tls_port}.log"));
        // Tansu advertises the TLS port: every connection a client opens goes through socat.
        let broker = LocalBroker::start(&plain, &tls, &log).expect("tansu");
        let socat = tls_terminator(tls_port, &plain, client_certificates);
        TlsBroker {
            _broker: broker,
            socat,
            tls,
        }
    }

    /// Options for a client that trusts the test CA.
    fn client_options() -> Vec<(&'static str, String)> {
        vec![
            ("security.protocol", "ssl".into()),
            ("ssl.ca.location", pki("ca.crt")),
        ]
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

fn relay_env(db: &TestDb, brokers: &str, ca: &str, metrics: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OUTBOXD__DATABASE__URL", db.url.clone()),
        ("OUTBOXD__KAFKA__BROKERS", brokers.to_string()),
        ("OUTBOXD__KAFKA__PRODUCER__SECURITY.PROTOCOL", "ssl".into()),
        ("OUTBOXD__KAFKA__PRODUCER__SSL.CA.LOCATION", ca.to_string()),
        ("OUTBOXD__METRICS__LISTEN", metrics.to_string()),
        ("OUTBOXD__RELAY__LEASE_TTL_MS", "3000".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_every_row_arrives_in_order_and_a_wrong_ca_holds_rows_until_fixed() {
    let broker = TlsBroker::start();
    let db = TestDb::new().await;
    let t = topic("tls");
    let aggs: Vec<String> = (0..5).map(|i| format!("t-{i}")).collect();
    let mut written = insert_sql(&db.pool, &t, &aggs, 10).await;

    // A CA that did not sign the broker's certificate: not ready, says why, loses nothing.
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut relay =
        RelayProcess::spawn(&relay_env(&db, &broker.tls, &pki("other-ca.crt"), &metrics));
    let refused = eventually(Duration::from_secs(20), || async {
        matches!(http_get(&metrics, "/readyz").await, Some((503, body)) if body.contains("not signed by the CA in ssl.ca.location"))
    })
    .await;
    assert!(refused, "readyz names the CA\n{}", relay.output());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db.pending().await, 50, "nothing published, nothing lost");
    let output = relay.output();
    assert_eq!(
        output.matches("Cannot connect to the broker").count(),
        1,
        "logged once, not per attempt:\n{output}"
    );
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_for(Duration::from_secs(15)).is_some());

    // The right CA: every held row arrives, in order, and more after it.
    written.extend(insert_seqs(&db.pool, &t, &aggs, 11..=20).await);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut relay = RelayProcess::spawn(&relay_env(&db, &broker.tls, &pki("ca.crt"), &metrics));
    assert!(
        drained(&db, Duration::from_secs(30)).await,
        "{}",
        relay.output()
    );
    assert!(matches!(
        http_get(&metrics, "/readyz").await,
        Some((200, _))
    ));
    let opts = TlsBroker::client_options();
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let records = read_back_with(&broker.tls, &opts, &[&t], 100, Duration::from_secs(30)).await;
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_for(Duration::from_secs(15)).is_some());
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0);

    // `check` says why it cannot connect, in words, and how it connects once it can.
    let out = Command::new(bin())
        .arg("check")
        .current_dir(std::env::temp_dir())
        .envs(relay_env(&db, &broker.tls, &pki("other-ca.crt"), ""))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("broker: UNREACHABLE")
            && text.contains("not signed by the CA in ssl.ca.location"),
        "{text}"
    );
    let out = Command::new(bin())
        .arg("check")
        .current_dir(std::env::temp_dir())
        .envs(relay_env(&db, &broker.tls, &pki("ca.crt"), ""))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("security.protocol=ssl"), "{text}");
    assert!(
        text.contains(", TLS TLSv1."),
        "says the TLS version: {text}"
    );
    assert!(
        text.contains("ssl") && text.contains("sasl_scram"),
        "builtin features: {text}"
    );
}

/// Secret values that must never be printed or served.
const SECRETS: &[&str] = &[
    "pg-secret-3141",
    "sasl-secret-2718",
    "keypass-secret-1618",
    "client-secret-1414",
];

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows {s}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_output_log_metric_or_readiness_at_trace_level() {
    let broker = TlsBroker::start();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sasl_file = dir.path().join("sasl");
    std::fs::write(&sasl_file, format!("{}\n", SECRETS[1])).unwrap();
    // A URL password (trust auth ignores it), SASL over TLS (Tansu speaks no SASL: the
    // handshake fails), a key password and an OAUTHBEARER configuration that librdkafka takes.
    let url = db
        .url
        .replacen("postgres@", &format!("postgres:{}@", SECRETS[0]), 1);
    let metrics = format!("127.0.0.1:{}", free_port());
    let env: Vec<(&str, String)> = vec![
        ("OUTBOXD__DATABASE__URL", url),
        ("OUTBOXD__KAFKA__BROKERS", broker.tls.clone()),
        (
            "OUTBOXD__KAFKA__PRODUCER__SECURITY.PROTOCOL",
            "sasl_ssl".into(),
        ),
        (
            "OUTBOXD__KAFKA__PRODUCER__SASL.MECHANISM",
            "SCRAM-SHA-512".into(),
        ),
        ("OUTBOXD__KAFKA__PRODUCER__SASL.USERNAME", "relay".into()),
        (
            "OUTBOXD__KAFKA__SECRET_FILES__SASL.PASSWORD",
            sasl_file.to_string_lossy().into(),
        ),
        ("OUTBOXD__KAFKA__PRODUCER__SSL.CA.LOCATION", pki("ca.crt")),
        (
            "OUTBOXD__KAFKA__PRODUCER__SSL.KEY.PASSWORD",
            SECRETS[2].into(),
        ),
        (
            "OUTBOXD__KAFKA__PRODUCER__SASL.OAUTHBEARER.CONFIG",
            format!("principal={}", SECRETS[3]),
        ),
        ("OUTBOXD__KAFKA__PRODUCER__DEBUG", "all".into()),
        ("OUTBOXD__METRICS__LISTEN", metrics.clone()),
        ("RUST_LOG", "trace".into()),
    ];
    insert_sql(&db.pool, &topic("secret"), &["s".to_string()], 3).await;

    // The relay at trace level, librdkafka's own debug logs included.
    let mut relay = RelayProcess::spawn(&env);
    let refused = eventually(Duration::from_secs(20), || async {
        matches!(http_get(&metrics, "/readyz").await, Some((503, body)) if body.contains("broker: down"))
    })
    .await;
    assert!(refused, "{}", relay.output());
    let (_, ready) = http_get(&metrics, "/readyz").await.unwrap();
    let (_, served) = http_get(&metrics, "/metrics").await.unwrap();
    relay.signal(Signal::SIGTERM);
    relay.wait_for(Duration::from_secs(15));
    assert_no_secret("/readyz", &ready);
    assert_no_secret("/metrics", &served);
    assert_no_secret("the relay's log", &relay.output());
    assert!(relay.output().contains("TRACE"), "trace level was on");
    assert!(
        !relay.output().contains('\u{1b}'),
        "no colour codes in a log written to a file"
    );

    // Every one-shot command, also when it fails.
    for args in [
        vec!["check"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["dead-letters", "list"],
        vec!["migrate"],
    ] {
        let out = Command::new(bin())
            .args(&args)
            .current_dir(std::env::temp_dir())
            .envs(env.clone())
            .output()
            .unwrap();
        assert_no_secret(
            &format!("{args:?} stdout"),
            &String::from_utf8_lossy(&out.stdout),
        );
        assert_no_secret(
            &format!("{args:?} stderr"),
            &String::from_utf8_lossy(&out.stderr),
        );
    }
    // A configuration error about a secret-bearing key shows the key, not the value.
    let out = Command::new(bin())
        .arg("check")
        .current_dir(std::env::temp_dir())
        .envs(env.clone())
        .env(
            "OUTBOXD__DATABASE__URL",
            format!("postgres://u:{}@h:notaport/db", SECRETS[0]),
        )
        .env("OUTBOXD__KAFKA__PRODUCER__SASL.MECHANISM", "SCRAM-MD5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("database.url") && err.contains("sasl.mechanism"),
        "{err}"
    );
    assert_no_secret("a configuration error", &err);
}

/// A relay authenticating with `mechanism` (over TLS with `tls`) to a front that checks
/// the password: with `wrong` first a wrong password (rows held, readyz says why), then the
/// right one (every row arrives, in order).
async fn sasl_round(mechanism: &str, tls: bool, wrong: bool) {
    use common::sasl_proxy::SaslProxy;
    let plain = format!("127.0.0.1:{}", free_port());
    let proxy = SaslProxy::start(
        "127.0.0.1:0",
        &plain,
        mechanism,
        "relay",
        "right-password-77",
    )
    .await;
    // With TLS, socat in front of the SASL front: sasl_ssl.
    let tls_port = free_port();
    let (protocol, addr, socat) = if tls {
        let socat = tls_terminator(tls_port, &proxy.addr, false);
        ("sasl_ssl", format!("127.0.0.1:{tls_port}"), Some(socat))
    } else {
        ("sasl_plaintext", proxy.addr.clone(), None)
    };
    let log = std::env::temp_dir().join(format!("outboxd-sasl-tansu-{}.log", free_port()));
    // Tansu advertises the outermost front: every connection a client opens authenticates.
    let _broker = LocalBroker::start(&plain, &addr, &log).expect("tansu");
    let db = TestDb::new().await;
    let t = topic("sasl");
    let aggs: Vec<String> = (0..4).map(|i| format!("s-{i}")).collect();
    let written = insert_sql(&db.pool, &t, &aggs, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki("ca.crt");
    let env = |password: &str, metrics: &str| -> Vec<(&'static str, String)> {
        let file = dir.path().join(format!("pw-{}", free_port()));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        vec![
            ("OUTBOXD__DATABASE__URL", db.url.clone()),
            ("OUTBOXD__KAFKA__BROKERS", addr.clone()),
            (
                "OUTBOXD__KAFKA__PRODUCER__SECURITY.PROTOCOL",
                protocol.into(),
            ),
            ("OUTBOXD__KAFKA__PRODUCER__SASL.MECHANISM", mechanism.into()),
            ("OUTBOXD__KAFKA__PRODUCER__SASL.USERNAME", "relay".into()),
            ("OUTBOXD__KAFKA__PRODUCER__SSL.CA.LOCATION", ca.clone()),
            (
                "OUTBOXD__KAFKA__SECRET_FILES__SASL.PASSWORD",
                file.to_string_lossy().into(),
            ),
            ("OUTBOXD__METRICS__LISTEN", metrics.to_string()),
            ("OUTBOXD__RELAY__LEASE_TTL_MS", "3000".into()),
        ]
    };

    if wrong {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut relay = RelayProcess::spawn(&env("wrong-password-13", &metrics));
        let refused = eventually(Duration::from_secs(20), || async {
            matches!(http_get(&metrics, "/readyz").await, Some((503, body)) if body.contains("refused the SASL credentials"))
        })
        .await;
        assert!(
            refused,
            "{mechanism}: readyz says the password was refused\n{}",
            relay.output()
        );
        assert_eq!(db.pending().await, 20, "nothing published, nothing lost");
        assert!(!relay.output().contains("wrong-password-13"));
        relay.signal(Signal::SIGTERM);
        assert!(relay.wait_for(Duration::from_secs(15)).is_some());
    }

    let metrics = format!("127.0.0.1:{}", free_port());
    let mut relay = RelayProcess::spawn(&env("right-password-77", &metrics));
    assert!(
        drained(&db, Duration::from_secs(30)).await,
        "{mechanism}: {}",
        relay.output()
    );
    let opts = [
        ("security.protocol", protocol),
        ("sasl.mechanism", mechanism),
        ("sasl.username", "relay"),
        ("sasl.password", "right-password-77"),
        ("ssl.ca.location", ca.as_str()),
    ];
    let records = read_back_with(&addr, &opts, &[&t], 20, Duration::from_secs(30)).await;
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_for(Duration::from_secs(15)).is_some());
    assert!(!relay.output().contains("right-password-77"));
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{mechanism}: {:?}", ledger.missing());
    assert_eq!(report.reordered, 0, "{mechanism}");
    drop(socat.map(|mut s| {
        let _ = s.kill();
        s.wait()
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_publishes_with_the_right_password_and_holds_rows_with_a_wrong_one() {
    sasl_round("PLAIN", false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_512_over_tls_publishes_and_a_wrong_password_holds_rows() {
    sasl_round("SCRAM-SHA-512", true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_256_publishes() {
    sasl_round("SCRAM-SHA-256", false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_an_encrypted_client_key_publishes_and_without_a_certificate_says_so() {
    let broker = TlsBroker::start_with(true);
    let db = TestDb::new().await;
    let t = topic("mtls");
    let aggs: Vec<String> = (0..3).map(|i| format!("m-{i}")).collect();
    let written = insert_sql(&db.pool, &t, &aggs, 5).await;

    // No client certificate: refused by the broker, said in words, nothing lost.
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut relay = RelayProcess::spawn(&relay_env(&db, &broker.tls, &pki("ca.crt"), &metrics));
    let refused = eventually(Duration::from_secs(20), || async {
        matches!(http_get(&metrics, "/readyz").await, Some((503, body)) if body.contains("wants a client certificate"))
    })
    .await;
    assert!(
        refused,
        "readyz asks for a client certificate\n{}",
        relay.output()
    );
    assert_eq!(db.pending().await, 15);
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_for(Duration::from_secs(15)).is_some());

    // The client certificate, its key encrypted, the key's password from a file.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.enc.key");
    let status = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:keypass-6626", "-in"])
        .arg(pki("client.key"))
        .arg("-out")
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let pass = dir.path().join("keypass");
    std::fs::write(&pass, "keypass-6626\n").unwrap();
    let mut env = relay_env(&db, &broker.tls, &pki("ca.crt"), "");
    env.push((
        "OUTBOXD__KAFKA__PRODUCER__SSL.CERTIFICATE.LOCATION",
        pki("client.crt"),
    ));
    env.push((
        "OUTBOXD__KAFKA__PRODUCER__SSL.KEY.LOCATION",
        key.to_string_lossy().into(),
    ));
    env.push((
        "OUTBOXD__KAFKA__SECRET_FILES__SSL.KEY.PASSWORD",
        pass.to_string_lossy().into(),
    ));
    let mut relay = RelayProcess::spawn(&env);
    assert!(
        drained(&db, Duration::from_secs(30)).await,
        "{}",
        relay.output()
    );
    let key_path = key.to_string_lossy().into_owned();
    let (ca, cert) = (pki("ca.crt"), pki("client.crt"));
    let opts = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key_path.as_str()),
        ("ssl.key.password", "keypass-6626"),
    ];
    let records = read_back_with(&broker.tls, &opts, &[&t], 15, Duration::from_secs(30)).await;
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_for(Duration::from_secs(15)).is_some());
    assert!(!relay.output().contains("keypass-6626"));
    let (report, ledger) = check_ledger(&written, &records);
    assert_eq!(report.lost, 0, "{:?}", ledger.missing());
    assert_eq!(report.reordered, 0);
}
