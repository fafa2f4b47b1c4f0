//! TLS to PostgreSQL, written the way libpq users write it: `sslmode` (and the certificate
//! files) in the URL, or the `[database]` keys, which win over the URL. Against the machine's
//! cluster (TLS on, a self-signed certificate) and against a throwaway cluster whose server
//! and client certificates come from a CA the test set-up made and which accepts only TLS
//! connections with a client certificate (`scripts/pg-tls-cluster.sh`, run by
//! `scripts/setup.sh`).

mod common;

use common::{admin_url, pki as file};
use outboxd::config::DatabaseConfig;

/// The throwaway cluster's port.
fn tls_port() -> u16 {
    std::fs::read_to_string(file("port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The machine's cluster, with `query` added to its URL.
fn local(query: &str) -> DatabaseConfig {
    let url = admin_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    DatabaseConfig {
        url: format!("{url}{sep}{query}"),
        ..Default::default()
    }
}

/// The throwaway cluster as `user`, with `query` added to its URL.
fn tls_cluster(user: &str, query: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: format!(
            "postgres://{user}@127.0.0.1:{}/postgres?{query}",
            tls_port()
        ),
        ..Default::default()
    }
}

/// Connects and says whether the session uses TLS, and the client certificate's DN.
async fn session(cfg: &DatabaseConfig) -> anyhow::Result<(bool, Option<String>)> {
    let pool = outboxd::db::connect(cfg, 1).await?;
    let row: (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok(row)
}

#[tokio::test]
async fn sslmode_require_in_the_url_uses_tls_and_disable_does_not() {
    assert!(session(&local("sslmode=require")).await.unwrap().0);
    assert!(!session(&local("sslmode=disable")).await.unwrap().0);
    // libpq's default, prefer, takes TLS when the server offers it.
    assert!(session(&local("sslmode=prefer")).await.unwrap().0);
}

#[tokio::test]
async fn the_sslmode_key_wins_over_the_url() {
    let mut cfg = local("sslmode=disable");
    cfg.sslmode = "require".into();
    assert!(session(&cfg).await.unwrap().0);
}

#[tokio::test]
async fn verify_full_refuses_a_server_whose_certificate_the_ca_did_not_sign() {
    // The machine's cluster has a self-signed certificate; this CA signed nothing.
    let mut cfg = local("sslmode=verify-full");
    cfg.sslrootcert = file("other-ca.crt");
    let err = format!("{:#}", session(&cfg).await.unwrap_err());
    assert!(
        err.contains("not signed by the CA in database.sslrootcert"),
        "{err}"
    );
    // The same through the URL alone.
    let url = local(&format!(
        "sslmode=verify-full&sslrootcert={}",
        file("other-ca.crt")
    ));
    let err = format!("{:#}", session(&url).await.unwrap_err());
    assert!(err.contains("not signed by the CA"), "{err}");
}

/// libpq's verify-ca trusts only sslrootcert; the client built in also trusts the public
/// roots, so verify-ca (no host-name check) would take any publicly issued certificate:
/// refused, as is require with a root certificate (libpq would verify the chain).
#[tokio::test]
async fn verify_ca_and_require_with_a_root_certificate_are_refused_naming_verify_full() {
    let mut cfg = tls_cluster("postgres", "sslmode=verify-ca");
    cfg.sslrootcert = file("ca.crt");
    let err = format!("{:#}", session(&cfg).await.unwrap_err());
    assert!(
        err.contains("verify-ca is not supported") && err.contains("use verify-full"),
        "{err}"
    );
    let url = tls_cluster(
        "postgres",
        &format!("sslmode=require&sslrootcert={}", file("ca.crt")),
    );
    let err = format!("{:#}", session(&url).await.unwrap_err());
    assert!(
        err.contains("require with database.url (sslrootcert)"),
        "{err}"
    );
    // The machine's cluster has a self-signed certificate that no CA here signed: require
    // with a root certificate would have connected without verifying it.
    let mut cfg = local("sslmode=require");
    cfg.sslrootcert = file("other-ca.crt");
    assert!(session(&cfg).await.is_err());
}

#[tokio::test]
async fn verify_full_with_a_client_certificate_connects() {
    // Through the URL, as libpq users write it.
    let q = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        file("ca.crt"),
        file("client.crt"),
        file("client.key")
    );
    let (tls, dn) = session(&tls_cluster("postgres", &q)).await.unwrap();
    assert!(tls);
    assert_eq!(dn.as_deref(), Some("/CN=postgres"));
    // Through the keys.
    let mut cfg = tls_cluster("postgres", "");
    cfg.sslmode = "verify-full".into();
    cfg.sslrootcert = file("ca.crt");
    cfg.sslcert = file("client.crt");
    cfg.sslkey = file("client.key");
    assert!(session(&cfg).await.unwrap().0);
}

#[tokio::test]
async fn a_server_that_wants_a_client_certificate_says_so() {
    let mut cfg = tls_cluster("postgres", "sslmode=verify-full");
    cfg.sslrootcert = file("ca.crt");
    let err = format!("{:#}", session(&cfg).await.unwrap_err());
    assert!(
        err.contains("set database.sslcert and database.sslkey")
            || err.contains("did not accept the client certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn password_file_wins_over_the_url_password_which_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let url_password = "url-secret-4711";
    let mut cfg = DatabaseConfig {
        url: format!(
            "postgres://outboxd_pw:{url_password}@127.0.0.1:{}/postgres?sslmode=require",
            tls_port()
        ),
        ..Default::default()
    };
    // The URL's password is wrong; the error names the fix and shows no password.
    let err = format!("{:#}", session(&cfg).await.unwrap_err());
    assert!(err.contains("wrong password"), "{err}");
    assert!(!err.contains(url_password), "{err}");

    // A file with the right one (and the newline `echo` leaves) wins.
    let right = dir.path().join("right");
    std::fs::write(&right, "correct-horse-battery-staple\n").unwrap();
    cfg.password_file = right.to_string_lossy().into_owned();
    assert!(session(&cfg).await.unwrap().0);

    // A file with a wrong one is not shown either.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "file-secret-0815").unwrap();
    cfg.password_file = wrong.to_string_lossy().into_owned();
    let err = format!("{:#}", session(&cfg).await.unwrap_err());
    assert!(err.contains("wrong password"), "{err}");
    assert!(
        !err.contains("file-secret-0815") && !err.contains(url_password),
        "{err}"
    );
}
