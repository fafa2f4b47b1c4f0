//! TLS to MariaDB, written the way the MySQL clients write it: `ssl-mode` (and `ssl-ca`,
//! `ssl-cert`, `ssl-key`) in the URL, or the `[database]` keys, which win over the URL.
//! Against a throwaway MariaDB that accepts only TLS and shows a certificate for 127.0.0.1
//! and localhost signed by the test CA (`scripts/mariadb-tls.sh`, run by
//! `scripts/setup.sh`); 127.0.0.2 reaches the same server under a name the certificate
//! does not carry. The machine's own MariaDB has TLS off.

mod common;

use common::pki as file;
use outboxd::config::DatabaseConfig;

/// The TLS-only server's port.
fn tls_port() -> u16 {
    let dir = std::env::var("OUTBOXD_TEST_MARIADB_TLS_DIR")
        .unwrap_or_else(|_| "/var/lib/outboxd-tests/mariadb-tls".into());
    let path = std::path::Path::new(&dir).join("port");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run scripts/setup.sh (it starts the TLS MariaDB)",
                path.display()
            )
        })
        .trim()
        .parse()
        .unwrap()
}

const PASSWORD: &str = "correct-horse-battery-staple";

/// The TLS-only server at `host` as `user` (with `password`), with `query` in the URL.
fn server(host: &str, user: &str, query: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: format!("mariadb://{user}@{host}:{}/mysql?{query}", tls_port()),
        connect_timeout_ms: 5_000,
        ..Default::default()
    }
}

/// The password user, the password in the URL.
fn with_password(host: &str, query: &str) -> DatabaseConfig {
    server(host, &format!("outboxd_tls:{PASSWORD}"), query)
}

/// Connects as the relay does and says how the session is protected and who it is.
async fn session(cfg: &DatabaseConfig) -> anyhow::Result<(String, String)> {
    let pool = outboxd::db::connect_mysql(cfg, 1).await?;
    let tls = outboxd::db::mysql_tls_description(&pool).await;
    let user: String = sqlx::query_scalar("SELECT CURRENT_USER()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok((tls, user))
}

fn err(r: anyhow::Result<(String, String)>) -> String {
    format!(
        "{:#}",
        r.expect_err("the connection should have been refused")
    )
}

#[tokio::test]
async fn verify_identity_with_the_ca_connects_over_tls_from_the_url_or_the_keys() {
    let q = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", file("ca.crt"));
    let (tls, user) = session(&with_password("127.0.0.1", &q)).await.unwrap();
    assert!(tls.starts_with("TLS TLSv1."), "{tls}");
    assert!(user.starts_with("outboxd_tls@"), "{user}");
    // The same through the keys (any of the mode's spellings), and by the name localhost.
    let mut cfg = with_password("localhost", "");
    cfg.sslmode = "verify-identity".into();
    cfg.sslrootcert = file("ca.crt");
    assert!(session(&cfg).await.unwrap().0.starts_with("TLS "));
    // REQUIRED encrypts without verifying: this server's certificate is not in the
    // system's roots, and it still connects.
    let (tls, _) = session(&with_password("127.0.0.1", "ssl-mode=REQUIRED"))
        .await
        .unwrap();
    assert!(tls.starts_with("TLS "), "{tls}");
}

#[tokio::test]
async fn the_ssl_mode_key_wins_over_the_url() {
    // The URL says DISABLED, which this server refuses; the key turns TLS on.
    let mut cfg = with_password("127.0.0.1", "ssl-mode=DISABLED");
    assert!(session(&cfg).await.is_err());
    cfg.sslmode = "REQUIRED".into();
    assert!(session(&cfg).await.unwrap().0.starts_with("TLS "));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_the_ca_setting() {
    let q = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", file("other-ca.crt"));
    let e = err(session(&with_password("127.0.0.1", &q)).await);
    assert!(e.contains("not signed by the CA"), "{e}");
    assert!(!e.contains(PASSWORD), "{e}");
}

#[tokio::test]
async fn a_host_the_certificate_does_not_name_is_refused() {
    let q = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", file("ca.crt"));
    let e = err(session(&with_password("127.0.0.2", &q)).await);
    assert!(e.contains("not issued for this host name"), "{e}");
    assert!(!e.contains(PASSWORD), "{e}");
}

#[tokio::test]
async fn verify_ca_is_refused_naming_verify_identity() {
    let q = format!("ssl-mode=VERIFY_CA&ssl-ca={}", file("ca.crt"));
    let e = err(session(&with_password("127.0.0.2", &q)).await);
    assert!(
        e.contains("VERIFY_CA is not supported") && e.contains("VERIFY_IDENTITY"),
        "{e}"
    );
}

#[tokio::test]
async fn a_user_that_needs_a_client_certificate_connects_with_one_and_is_told_without() {
    let mut cfg = server("127.0.0.1", "outboxd_x509", "ssl-mode=VERIFY_IDENTITY");
    cfg.sslrootcert = file("ca.crt");
    let e = err(session(&cfg).await);
    assert!(e.contains("database.sslcert and database.sslkey"), "{e}");
    // Through the keys.
    cfg.sslcert = file("client.crt");
    cfg.sslkey = file("client.key");
    let (tls, user) = session(&cfg).await.unwrap();
    assert!(tls.starts_with("TLS "), "{tls}");
    assert!(user.starts_with("outboxd_x509@"), "{user}");
    // Through the URL, as the MySQL clients write it.
    let q = format!(
        "ssl-mode=VERIFY_IDENTITY&ssl-ca={}&ssl-cert={}&ssl-key={}",
        file("ca.crt"),
        file("client.crt"),
        file("client.key")
    );
    assert!(
        session(&server("127.0.0.1", "outboxd_x509", &q))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_plaintext_connection_to_a_tls_only_server_is_told_to_use_tls() {
    let e = err(session(&with_password("127.0.0.1", "ssl-mode=DISABLED")).await);
    assert!(e.contains("takes only TLS (ssl-mode=REQUIRED"), "{e}");
    assert!(!e.contains(PASSWORD), "{e}");
}

#[tokio::test]
async fn password_file_wins_over_the_url_password_which_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let url_password = "url-secret-4711";
    let mut cfg = server(
        "127.0.0.1",
        &format!("outboxd_tls:{url_password}"),
        "ssl-mode=REQUIRED",
    );
    let e = err(session(&cfg).await);
    assert!(e.contains("wrong password"), "{e}");
    assert!(!e.contains(url_password), "{e}");

    let right = dir.path().join("right");
    std::fs::write(&right, format!("{PASSWORD}\n")).unwrap();
    cfg.password_file = right.to_string_lossy().into_owned();
    assert!(session(&cfg).await.unwrap().0.starts_with("TLS "));

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "file-secret-0815").unwrap();
    cfg.password_file = wrong.to_string_lossy().into_owned();
    let e = err(session(&cfg).await);
    assert!(e.contains("wrong password"), "{e}");
    assert!(
        !e.contains("file-secret-0815") && !e.contains(url_password),
        "{e}"
    );
}

#[tokio::test]
async fn required_against_a_server_without_tls_says_so() {
    // The machine's MariaDB has TLS off.
    let url = std::env::var("OUTBOXD_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mariadb://outboxd_test:outboxd_test@127.0.0.1:3306".into());
    let cfg = DatabaseConfig {
        url: format!("{url}/mysql?ssl-mode=REQUIRED"),
        connect_timeout_ms: 5_000,
        ..Default::default()
    };
    match session(&cfg).await {
        // A server with TLS on (OUTBOXD_TEST_MYSQL_URL elsewhere) has nothing to show here.
        Ok((tls, _)) => assert!(tls.starts_with("TLS "), "{tls}"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.contains("does not offer TLS") && e.contains("ssl-mode=PREFERRED"),
                "{e}"
            );
            assert!(!e.contains("outboxd_test:outboxd_test"), "{e}");
        }
    }
}
