//! The relay's side of the test helpers: relay configurations, read-back and ledger
//! checks, the proxied broker.

use std::time::Duration;

use outboxd::config::Config;

use super::{TestDb, eventually, free_port};

/// The real broker.
pub fn brokers() -> String {
    std::env::var("OUTBOXD_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Relay logs in the test output when `RUST_LOG` is set.
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A configuration for a relay on `db`, quick to react, without the metrics port.
pub fn config(db: &TestDb) -> Config {
    config_for(&db.url)
}

/// As [`config`], on the database at `url` (a MariaDB one, say).
pub fn config_for(url: &str) -> Config {
    logs();
    let mut c = Config::default();
    c.database.url = url.into();
    c.kafka.brokers = brokers();
    c.metrics.listen = String::new();
    c.relay.lease_ttl_ms = 3_000;
    c.relay.partitions = 4;
    c.poller.interval_ms = 100;
    c.poller.gap_grace_ms = 200;
    c.retry.initial_backoff_ms = 50;
    c.retry.max_backoff_ms = 1_000;
    c
}

/// Reads `topics` from the beginning until `expected` distinct event ids arrived (or
/// nothing new came for 5 s, or `timeout`).
pub async fn read_back(
    topics: &[&str],
    expected: usize,
    timeout: Duration,
) -> Vec<testkit::verify::Consumed> {
    read_back_from(&brokers(), topics, expected, timeout).await
}

/// Starts a relay and waits until it holds the lease and runs its pipeline.
pub async fn start_active(cfg: Config) -> outboxd::Relay {
    let relay = outboxd::Relay::start(cfg, outboxd::RelayOptions::default())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            relay.info().await.unwrap().active
        })
        .await,
        "the relay took the lease"
    );
    relay
}

/// Waits until no row is pending.
pub async fn drained(db: &TestDb, timeout: Duration) -> bool {
    eventually(timeout, || async { db.pending().await == 0 }).await
}

/// Inserts `n` events per aggregate with plain SQL (design.md's smallest insert), payload
/// `{"seq": k}` for k = 1..=n, interleaved across aggregates; returns (aggregate, seq)s.
pub async fn insert_sql(
    pool: &sqlx::PgPool,
    topic: &str,
    aggregates: &[String],
    per_aggregate: u64,
) -> Vec<(String, u64)> {
    insert_seqs(pool, topic, aggregates, 1..=per_aggregate).await
}

/// As [`insert_sql`], for the sequence numbers `seqs` only.
pub async fn insert_seqs(
    pool: &sqlx::PgPool,
    topic: &str,
    aggregates: &[String],
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for seq in seqs {
        for a in aggregates {
            out.push((a.clone(), seq));
        }
    }
    let aggs: Vec<&str> = out.iter().map(|(a, _)| a.as_str()).collect();
    let seqs: Vec<i64> = out.iter().map(|(_, s)| *s as i64).collect();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         SELECT 'test', a, 'test.happened', $3, jsonb_build_object('seq', s) \
         FROM UNNEST($1::text[], $2::int8[]) AS u(a, s)",
    )
    .bind(&aggs)
    .bind(&seqs)
    .bind(topic)
    .execute(pool)
    .await
    .expect("insert");
    out
}

/// Checks records against what was written: every (aggregate, seq) arrived, first
/// sightings in order. Returns the ledger's report.
pub fn check_ledger(
    written: &[(String, u64)],
    records: &[testkit::verify::Consumed],
) -> (testkit::verify::LedgerReport, testkit::verify::Ledger) {
    let mut ledger = testkit::verify::Ledger::default();
    for (a, s) in written {
        ledger.written(a, *s);
    }
    for r in records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
        if let Some(seq) = v.get("seq").and_then(serde_json::Value::as_u64) {
            ledger.seen(&r.key, seq);
        }
    }
    (ledger.report(), ledger)
}

/// A broker of this test's own behind a proxy: clients reach the broker only through the
/// proxy (Tansu advertises the proxy's address), so the proxy can cut them off.
pub struct ProxiedBroker {
    /// The proxy clients use (`brokers` for the relay and the readers).
    pub proxy: testkit::chaos::TcpProxy,
    /// The broker process.
    pub broker: testkit::broker::LocalBroker,
}

impl ProxiedBroker {
    /// Starts the proxy and a fresh in-memory Tansu behind it.
    pub async fn start() -> ProxiedBroker {
        let broker_port = free_port();
        let proxy_port = free_port();
        let target: std::net::SocketAddr = format!("127.0.0.1:{broker_port}").parse().unwrap();
        let proxy = testkit::chaos::TcpProxy::start(&format!("127.0.0.1:{proxy_port}"), target)
            .await
            .unwrap();
        let log = std::env::temp_dir().join(format!("tansu-{broker_port}.log"));
        let broker = tokio::task::spawn_blocking(move || {
            testkit::broker::LocalBroker::start(
                &format!("127.0.0.1:{broker_port}"),
                &format!("127.0.0.1:{proxy_port}"),
                &log,
            )
        })
        .await
        .unwrap()
        .expect("start a private Tansu");
        ProxiedBroker { proxy, broker }
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        self.proxy.addr().to_string()
    }
}

/// As [`read_back`], from another broker.
pub async fn read_back_from(
    brokers: &str,
    topics: &[&str],
    expected: usize,
    timeout: Duration,
) -> Vec<testkit::verify::Consumed> {
    read_back_with(brokers, &[], topics, expected, timeout).await
}

/// As [`read_back_from`], with more librdkafka options for the reader (TLS).
pub async fn read_back_with(
    brokers: &str,
    options: &[(&str, &str)],
    topics: &[&str],
    expected: usize,
    timeout: Duration,
) -> Vec<testkit::verify::Consumed> {
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let options: Vec<(String, String)> = options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let opts: Vec<(&str, &str)> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let reader = testkit::verify::Reader::with_options(&brokers, &refs, &opts).expect("reader");
        let mut seen = std::collections::HashSet::new();
        let mut counted = 0;
        reader.read_until(timeout, Duration::from_secs(5), |rs| {
            for r in &rs[counted..] {
                seen.insert(r.header("event_id").unwrap_or_default().to_string());
            }
            counted = rs.len();
            seen.len() >= expected
        })
    })
    .await
    .unwrap()
}
