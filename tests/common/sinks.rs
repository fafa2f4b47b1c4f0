//! Helpers for the sink tests: the machine's Redis and NATS, configurations, private
//! servers the tests start and stop themselves, and the order-and-completeness check.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outboxd::NewEvent;
use outboxd::config::Config;
use outboxd::enqueue_batch;
use outboxd::sink::SinkKind;
use outboxd::verify::Consumed;

use super::{TestDb, check_ledger, config, free_port};

pub fn redis_url() -> String {
    std::env::var("OUTBOXD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn nats_url() -> String {
    std::env::var("OUTBOXD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_config(db: &TestDb, url: &str) -> Config {
    let mut c = config(db);
    c.sink.kind = SinkKind::Redis;
    c.redis.url = url.to_string();
    c.redis.timeout_ms = 1_000;
    c.redis.connect_timeout_ms = 500;
    c
}

pub fn nats_config(db: &TestDb, url: &str) -> Config {
    let mut c = config(db);
    c.sink.kind = SinkKind::Nats;
    c.nats.url = url.to_string();
    c.nats.timeout_ms = 1_000;
    c.nats.connect_timeout_ms = 500;
    c
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Events `1..=n` for each aggregate, interleaved, with a header, every tenth payload
/// binary; returns (aggregate, seq)s.
pub async fn write_events(
    db: &TestDb,
    topic: &str,
    aggregates: &[String],
    n: u64,
) -> Vec<(String, u64)> {
    let mut written = Vec::new();
    let mut events = Vec::new();
    for seq in 1..=n {
        for a in aggregates {
            written.push((a.clone(), seq));
            let b = NewEvent::builder("user", a.clone())
                .event_type("user.changed")
                .topic(topic)
                .header("traceparent", format!("00-{seq:032x}-01"));
            let b = if seq % 10 == 0 {
                // Binary, and still JSON-readable by the ledger.
                b.bytes(format!(r#"{{"seq": {seq}}}"#).into_bytes())
            } else {
                b.json(&serde_json::json!({ "seq": seq }))
            };
            events.push(b.build().unwrap());
        }
    }
    for chunk in events.chunks(500) {
        let mut tx = db.pool.begin().await.unwrap();
        enqueue_batch(&mut *tx, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
    written
}

pub fn assert_whole_and_in_order(written: &[(String, u64)], records: &[Consumed]) {
    let (report, ledger) = check_ledger(written, records);
    if report.lost > 0 {
        let mut seen = std::collections::HashMap::new();
        for r in records {
            *seen
                .entry((
                    r.key.clone(),
                    String::from_utf8_lossy(&r.value).into_owned(),
                ))
                .or_insert(0) += 1;
        }
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        // Which events are missing and which came twice, and where in the stream their
        // neighbours are: for a failure's diagnosis.
        let position = |a: &str, seq: u64| -> Vec<usize> {
            records
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.key == a
                        && serde_json::from_slice::<serde_json::Value>(&r.value)
                            .ok()
                            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                            == Some(seq)
                })
                .map(|(i, _)| i)
                .collect()
        };
        for (a, seqs) in ledger.missing() {
            for seq in seqs {
                eprintln!(
                    "missing {a}/{seq}: previous at {:?}, next at {:?}",
                    position(&a, seq.saturating_sub(1)),
                    position(&a, seq + 1)
                );
            }
        }
        for ((a, v), _) in &dups {
            eprintln!(
                "duplicated {a} {v} at {:?}",
                records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| &r.key == a && String::from_utf8_lossy(&r.value) == v.as_str())
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>()
            );
        }
        eprintln!("{} records", records.len());
    }
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(
        report.reordered, 0,
        "{report:?} {:?}",
        ledger.reorder_examples
    );
    assert_eq!(report.unexpected, 0, "{report:?}");
    assert_eq!(report.delivered as usize, written.len(), "{report:?}");
}

pub fn aggregates(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u-{i}")).collect()
}

/// A server of the test's own on a free port, keeping its data in a directory of its own
/// across restarts: `redis-server` with an append-only file (so that a restart keeps what
/// it acknowledged), or `nats-server -js`.
pub struct PrivateServer {
    child: Child,
    port: u16,
    /// The server's data directory (also a place for the test's own files).
    pub dir: tempfile::TempDir,
    kind: SinkKind,
    extra: Vec<String>,
    tls: bool,
}

impl PrivateServer {
    pub fn start(kind: SinkKind) -> PrivateServer {
        PrivateServer::start_with(kind, false, |_, _| Vec::new())
    }

    /// With the arguments `extra(port, dir)` after the usual ones (they win); with `tls`,
    /// the port is Redis's TLS port (`--tls-port`) and the URL `rediss://`, or NATS's
    /// TLS-only client port.
    pub fn start_with(
        kind: SinkKind,
        tls: bool,
        extra: impl FnOnce(u16, &std::path::Path) -> Vec<String>,
    ) -> PrivateServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let extra = extra(port, dir.path());
        let child = Self::spawn(kind, dir.path(), port, &extra);
        PrivateServer {
            child,
            port,
            dir,
            kind,
            extra,
            tls,
        }
    }

    fn spawn(kind: SinkKind, dir: &std::path::Path, port: u16, extra: &[String]) -> Child {
        let port_s = port.to_string();
        let dir_s = dir.to_string_lossy().into_owned();
        let (program, args): (&str, Vec<&str>) = match kind {
            SinkKind::Redis => (
                "redis-server",
                vec![
                    "--port",
                    &port_s,
                    "--bind",
                    "127.0.0.1",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--dir",
                    &dir_s,
                ],
            ),
            SinkKind::Nats => (
                "nats-server",
                vec!["-js", "-a", "127.0.0.1", "-p", &port_s, "-sd", &dir_s],
            ),
            SinkKind::Kafka => unreachable!("Kafka faults are in scripts/torture.sh"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let child = Command::new(program)
            .args(args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} (scripts/setup.sh installs it): {e}"));
        if !wait_for_port(port) {
            panic!(
                "{program} did not listen on {port}:\n{}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        child
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = match (self.kind, self.tls) {
            (SinkKind::Redis, true) => "rediss",
            _ => self.kind.name(),
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.kind, self.dir.path(), self.port, &self.extra);
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_for_port(port: u16) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A reader's stop condition: `expected` distinct events (by `event_id`) have been read.
/// Counting records instead would stop short when resends are among them.
pub fn every_event(expected: usize) -> impl FnMut(&[Consumed]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut counted = 0;
    move |records: &[Consumed]| {
        for r in &records[counted..] {
            seen.insert(r.header("event_id").unwrap_or_default().to_string());
        }
        counted = records.len();
        seen.len() >= expected
    }
}
