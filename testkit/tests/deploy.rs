//! The operations pack against a live relay: every metric the Grafana dashboard and the
//! Prometheus rules in `deploy/` use is on `outboxd run`'s `/metrics`, with the type and
//! labels they expect. (The rules' logic is `promtool test rules`, in deploy/check.sh.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{RelayProcess, TestDb, brokers, eventually, free_port, http_get, topic};

/// Every `outboxd_…` name in a file of the pack.
fn metric_names(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(testkit::repository().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("outboxd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_on_a_live_relays_metrics() {
    let dashboard = metric_names("deploy/grafana/outboxd.json");
    let rules = metric_names("deploy/prometheus/outboxd.rules.yml");
    assert!(dashboard.len() >= 15, "{dashboard:?}");
    assert!(rules.len() >= 6, "{rules:?}");

    let db = TestDb::new().await;
    let good = topic("deploy");
    // Fifty events that publish, and one whose topic Kafka refuses: a dead letter and a
    // failure of a class, as the dead-letter and failure panels expect.
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         SELECT 'order', 'o-' || g, 'order.created', $1, '{}' FROM generate_series(1, 50) g",
    )
    .bind(&good)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload) \
         VALUES ('order', 'o-bad', 'order.created', 'not a topic!', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let _relay = RelayProcess::spawn(&[
        ("OUTBOXD__DATABASE__URL", db.url.clone()),
        ("OUTBOXD__KAFKA__BROKERS", brokers()),
        ("OUTBOXD__METRICS__LISTEN", listen.clone()),
    ]);
    assert!(
        eventually(Duration::from_secs(60), || async {
            db.pending().await == 0
        })
        .await,
        "the relay drained the outbox"
    );
    // The backlog gauges are measured every 10 s; the first measurement is at start.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exposed = loop {
        let body = http_get(&listen, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        if body.contains("outboxd_dead_letters_total{") || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let series: BTreeSet<&str> = exposed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = dashboard
        .union(&rules)
        .filter(|name| !series.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used by deploy/ but not exported: {missing:?}\n{exposed}"
    );

    // What the panels and rules group by is there, and nothing unbounded is.
    assert!(
        exposed.contains(&format!(
            "outboxd_events_published_total{{sink=\"kafka\",topic=\"{good}\"}} 50"
        )),
        "{exposed}"
    );
    assert!(
        exposed.contains("outboxd_dead_letters_total{sink=\"kafka\",class=\"invalid_topic\"} 1"),
        "{exposed}"
    );
    assert!(
        exposed.contains("outboxd_commit_to_ack_seconds_bucket{sink=\"kafka\",le=\"0.005\"}"),
        "{exposed}"
    );
    assert!(
        exposed.contains("outboxd_publish_attempts_count{sink=\"kafka\"} 50"),
        "{exposed}"
    );
    assert!(
        exposed.contains("outboxd_actor_restarts_total{actor=\"publisher\"} 0"),
        "{exposed}"
    );
    assert!(!exposed.contains("o-1"), "no aggregate id as a label");
    for line in exposed
        .lines()
        .filter(|l| l.starts_with("# TYPE") && l.ends_with(" counter"))
    {
        assert!(line.contains("_total "), "counters end in _total: {line}");
    }
}
