//! The binary's command line: configuration errors (exit 2, every problem at once),
//! `check` against a running and a stopped broker, `--help` everywhere.

mod common;

use std::io::Write;
use std::process::Command;

use common::{TestDb, bin, brokers};

fn outboxd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOXD__") {
            c.env_remove(k);
        }
    }
    c
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn config_errors_are_all_reported_at_once_with_exit_code_2() {
    let f = config_file("[relay]\npartitions = 0\nworkers = 3\n[database]\nurl = \"not a url\"\n");
    let out = outboxd(&["--config", f.path().to_str().unwrap(), "check"])
        .env("OUTBOXD__POLLER__BATCH_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 problems"), "{err}");
    assert!(err.contains("relay.partitions: 0 is out of range"), "{err}");
    assert!(err.contains("relay.workers: unknown key"), "{err}");
    assert!(err.contains("database.url"), "{err}");
    assert!(
        err.contains("poller.batch_size") && err.contains("OUTBOXD__POLLER__BATCH_SIZE"),
        "{err}"
    );
}

#[test]
fn a_missing_explicit_config_file_is_a_config_error() {
    let out = outboxd(&["--config", "/nonexistent/outboxd.toml", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[tokio::test]
async fn check_passes_against_the_running_broker_and_database() {
    let db = TestDb::new().await;
    let out = outboxd(&["check"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &db.url)
        .env("OUTBOXD__DATABASE__SSLMODE", "require")
        .env("OUTBOXD__KAFKA__BROKERS", brokers())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text.contains("database: ok"), "{text}");
    assert!(
        text.contains(", TLS TLSv1."),
        "says how it connected: {text}"
    );
    assert!(text.contains("schema migrated"), "{text}");
    assert!(text.contains("broker: ok"), "{text}");
}

/// libpq (and sqlx) take a password in the URL's query too: `check` and `run`'s
/// start-up line must hide it as they hide the user-info one.
#[tokio::test]
async fn a_password_in_the_url_query_is_never_printed() {
    let db = TestDb::new().await;
    // Trust authentication here: any password connects.
    let url = format!("{}?password=hunter2query&application_name=x", db.url);
    let url = url.replacen(
        "postgres://postgres@",
        "postgres://postgres:hunter2info@",
        1,
    );
    let out = outboxd(&["check"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &url)
        .env("OUTBOXD__KAFKA__BROKERS", brokers())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("database: ok"), "{text}");
    assert!(text.contains("password=***"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let mut relay = common::RelayProcess::spawn(&[
        ("OUTBOXD__DATABASE__URL", url),
        ("OUTBOXD__KAFKA__BROKERS", brokers()),
        ("OUTBOXD__METRICS__LISTEN", String::new()),
    ]);
    let started = common::eventually(std::time::Duration::from_secs(20), || {
        let log = relay.output();
        async move { log.contains("Starting outboxd") }
    })
    .await;
    relay.signal(nix::sys::signal::Signal::SIGTERM);
    relay.wait_for(std::time::Duration::from_secs(15));
    let log = relay.output();
    assert!(started, "{log}");
    assert!(log.contains("password=***"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

/// The service manager's pre-start step: the configuration alone, so that a database
/// down at boot does not become a restart loop (run waits for it).
#[test]
fn check_config_only_connects_to_nothing() {
    let out = outboxd(&["check", "--config-only"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", "postgres://u@127.0.0.1:1/db")
        .env("OUTBOXD__KAFKA__BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config: ok");
    let out = outboxd(&["check", "--config-only"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__RELAY__PARTITIONS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `run` against a database without the tables says so once, not every second, and
/// starts by itself once they exist.
#[tokio::test]
async fn run_without_the_schema_says_so_once() {
    let db = TestDb::empty().await;
    let mut relay = common::RelayProcess::spawn(&[
        ("OUTBOXD__DATABASE__URL", db.url.clone()),
        ("OUTBOXD__KAFKA__BROKERS", brokers()),
        ("OUTBOXD__METRICS__LISTEN", String::new()),
    ]);
    let said = |log: &str| log.matches("run `outboxd migrate` first").count();
    assert!(
        common::eventually(std::time::Duration::from_secs(20), || {
            let n = said(&relay.output());
            async move { n >= 1 }
        })
        .await,
        "{}",
        relay.output()
    );
    // Five more tries at taking the lease (one a second).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let log = relay.output();
    assert_eq!(said(&log), 1, "{log}");
    outboxd::MIGRATOR.run(&db.pool).await.unwrap();
    assert!(
        common::eventually(std::time::Duration::from_secs(20), || {
            let log = relay.output();
            async move { log.contains("Lease acquired") }
        })
        .await,
        "{}",
        relay.output()
    );
    relay.signal(nix::sys::signal::Signal::SIGTERM);
    relay.wait_for(std::time::Duration::from_secs(15));
}

#[tokio::test]
async fn check_names_a_stopped_broker_and_exits_3() {
    let db = TestDb::new().await;
    // A port nobody listens on: a stopped broker.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = outboxd(&["check"])
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &db.url)
        .env("OUTBOXD__KAFKA__BROKERS", format!("127.0.0.1:{port}"))
        .env("OUTBOXD__DATABASE__CONNECT_TIMEOUT_MS", "2000")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(text.contains("database: ok"), "{text}");
    assert!(
        text.contains(&format!("broker: UNREACHABLE — 127.0.0.1:{port}")),
        "{text}"
    );
}

#[test]
fn check_names_an_unreachable_database_and_exits_3() {
    let out = outboxd(&["check"])
        .current_dir(std::env::temp_dir())
        .env(
            "OUTBOXD__DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/nope",
        )
        .env("OUTBOXD__KAFKA__BROKERS", brokers())
        .env("OUTBOXD__DATABASE__CONNECT_TIMEOUT_MS", "1000")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(text.contains("database: UNREACHABLE"), "{text}");
    assert!(text.contains("broker: ok"), "{text}");
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["migrate", "--help"],
        vec!["check", "--help"],
        vec!["status", "--help"],
        vec!["dead-letters", "--help"],
        vec!["dead-letters", "list", "--help"],
        vec!["dead-letters", "replay", "--help"],
        vec!["dead-letters", "discard", "--help"],
    ] {
        let out = outboxd(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: outboxd"),
            "{args:?}"
        );
    }
}

/// Invalid configurations, each alone: exit 2 and a message naming the key.
#[test]
fn each_invalid_configuration_names_its_key_and_exits_2() {
    // (what, TOML, environment, text the message must contain)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        // (what, TOML, environment, text the message must contain)
        (
            "unknown key",
            "[relay]\npartition = 8\n",
            &[],
            "relay.partition: unknown key",
        ),
        (
            "unknown section",
            "[kafkaa]\nbrokers = \"x:1\"\n",
            &[],
            "kafkaa: unknown key",
        ),
        (
            "wrong type",
            "[poller]\ninterval_ms = \"soon\"\n",
            &[],
            "poller.interval_ms",
        ),
        (
            "wrong type from env",
            "",
            &[("OUTBOXD__RELAY__PARTITIONS", "eight")],
            "relay.partitions",
        ),
        (
            "table expected",
            "relay = 3\n",
            &[],
            "relay: expected a table",
        ),
        (
            "zero partitions",
            "[relay]\npartitions = 0\n",
            &[],
            "relay.partitions: 0 is out of range",
        ),
        (
            "absurd partitions",
            "[relay]\npartitions = 100000\n",
            &[],
            "relay.partitions: 100000 is out of range",
        ),
        (
            "no runtime threads",
            "",
            &[("OUTBOXD__RELAY__WORKER_THREADS", "0")],
            "relay.worker_threads: 0 is out of range",
        ),
        (
            "negative",
            "[retry]\nmax_attempts = -1\n",
            &[],
            "retry.max_attempts",
        ),
        (
            "zero batch",
            "[poller]\nbatch_size = 0\n",
            &[],
            "poller.batch_size: 0 is out of range",
        ),
        (
            "zero in flight",
            "[relay]\nmax_in_flight = 0\n",
            &[],
            "relay.max_in_flight",
        ),
        (
            "aggregate cap above the memory bound",
            "[relay]\nmax_in_flight = 100\nmax_rows_per_aggregate = 200\n",
            &[],
            "relay.max_rows_per_aggregate: 200 is above relay.max_in_flight (100)",
        ),
        (
            "backoff inverted",
            "[retry]\ninitial_backoff_ms = 5000\nmax_backoff_ms = 10\n",
            &[],
            "retry.max_backoff_ms",
        ),
        (
            "bad enum",
            "[relay]\ndead_letter_policy = \"skip\"\n",
            &[],
            "relay.dead_letter_policy",
        ),
        (
            "bad url scheme",
            "[database]\nurl = \"sqlite://root@h/db\"\n",
            &[],
            "database.url",
        ),
        (
            "bad MariaDB url",
            "[database]\nurl = \"mariadb://h:notaport/db\"\n",
            &[],
            "database.url",
        ),
        (
            "bad MariaDB ssl-mode",
            "[database]\nurl = \"mariadb://h/db?ssl-mode=verify-full\"\n",
            &[],
            "VERIFY_IDENTITY",
        ),
        (
            "bad url",
            "[database]\nurl = \"postgres://h:notaport/db\"\n",
            &[],
            "database.url",
        ),
        (
            "broker without port",
            "[kafka]\nbrokers = \"localhost\"\n",
            &[],
            "kafka.brokers",
        ),
        (
            "no broker",
            "[kafka]\nbrokers = \"\"\n",
            &[],
            "kafka.brokers",
        ),
        (
            "idempotence off",
            "[kafka.producer]\n\"enable.idempotence\" = \"false\"\n",
            &[],
            "enable.idempotence",
        ),
        (
            "bad DLQ topic",
            "[dead_letter]\ntopic = \"dead letters\"\n",
            &[],
            "dead_letter.topic",
        ),
        (
            "zero topic limit",
            "[rate_limit.topics]\norders = 0\n",
            &[],
            "rate_limit.topics.\"orders\"",
        ),
        (
            "bad listen",
            "[metrics]\nlisten = \"everywhere\"\n",
            &[],
            "metrics.listen",
        ),
        (
            "bad log level",
            "[log]\nlevel = \"outboxd=loud\"\n",
            &[],
            "log.level",
        ),
        (
            "bad log format",
            "[log]\nformat = \"xml\"\n",
            &[],
            "log.format",
        ),
        (
            "unknown TLS mode",
            "[database]\nsslmode = \"required\"\n",
            &[],
            "database.sslmode: \"required\" is not a TLS mode",
        ),
        (
            "unknown TLS mode in the URL",
            "[database]\nurl = \"postgres://u@h/db?sslmode=strict\"\n",
            &[],
            "database.url (sslmode): \"strict\" is not a TLS mode",
        ),
        (
            "missing CA file",
            "[database]\nsslmode = \"verify-full\"\nsslrootcert = \"/nonexistent/ca.crt\"\n",
            &[],
            "database.sslrootcert: cannot read the CA certificate \"/nonexistent/ca.crt\"",
        ),
        (
            "missing CA file in the URL",
            "[database]\nurl = \"postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\n",
            &[],
            "database.url (sslrootcert): cannot read the CA certificate",
        ),
        (
            "verify-ca (weaker here than libpq's)",
            "[database]\nurl = \"postgres://u@h/db?sslmode=verify-ca\"\n",
            &[],
            "database.url (sslmode): verify-ca is not supported",
        ),
        (
            "require with a root certificate (libpq would verify)",
            "[database]\nsslmode = \"require\"\nsslrootcert = \"/etc/hostname\"\n",
            &[],
            "database.sslmode: require with database.sslrootcert set",
        ),
        (
            "client certificate without its key",
            "[database]\nsslcert = \"/etc/hostname\"\n",
            &[],
            "database.sslcert: a client certificate needs its key",
        ),
        (
            "missing password file",
            "",
            &[("OUTBOXD__DATABASE__PASSWORD_FILE", "/nonexistent/pw")],
            "database.password_file: cannot read \"/nonexistent/pw\"",
        ),
        ("TOML syntax", "[relay\n", &[], "TOML parse error"),
    ];
    for (what, toml, env, needle) in cases {
        let f = config_file(toml);
        // `check`, not `run`: a case that wrongly passed must not hang the test.
        let mut cmd = outboxd(&["--config", f.path().to_str().unwrap(), "check"]);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(needle), "{what}: want {needle:?} in\n{err}");
        assert!(
            err.contains("invalid configuration (1 problem)") || *what == "TOML syntax",
            "{what}: {err}"
        );
    }
}

/// Unreachable servers are not configuration errors: `check` exits 3 naming what it could
/// not reach (`run` keeps retrying instead; see tests/operations.rs).
#[test]
fn unreachable_hosts_exit_3_naming_the_host() {
    for (db, broker, needle) in [
        (
            "postgres://postgres@127.0.0.1:1/x",
            brokers(),
            "database: UNREACHABLE",
        ),
        (
            "postgres://postgres@no-such-host.invalid/x",
            brokers(),
            "database: UNREACHABLE",
        ),
        (
            "postgres://postgres@127.0.0.1:5432/postgres",
            "no-such-host.invalid:9092".to_string(),
            "broker: UNREACHABLE — no-such-host.invalid:9092",
        ),
    ] {
        let out = outboxd(&["check"])
            .current_dir(std::env::temp_dir())
            .env("OUTBOXD__DATABASE__URL", db)
            .env("OUTBOXD__KAFKA__BROKERS", &broker)
            .env("OUTBOXD__DATABASE__CONNECT_TIMEOUT_MS", "1500")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "{db} {broker}: {text}");
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
}
