//! Logs (`tracing`, text or JSON), Prometheus metrics and the `/healthz` `/readyz` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::actors::messages::Delivered;
use crate::config::{LogConfig, LogFormat};
use crate::health::Health;
use crate::task::AbortOnDrop;

/// Installs the global `tracing` subscriber; `RUST_LOG` wins over `log.level` when set.
pub fn init_logs(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Colour only on a terminal: a file or journald would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Buckets of `outboxd_commit_to_ack_seconds`: 1 ms to 10 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];
/// Buckets of `outboxd_publish_attempts`.
const ATTEMPT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("outboxd_commit_to_ack_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("outboxd_publish_attempts".into()),
                        ATTEMPT_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): then ours stays empty.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

/// The help text and unit of every metric, shown by `/metrics` (`# HELP`).
fn describe() {
    use metrics::{
        describe_counter as counter, describe_gauge as gauge, describe_histogram as histogram,
    };
    histogram!(
        "outboxd_commit_to_ack_seconds",
        Unit::Seconds,
        "From an event's created_at (its writing transaction's start) to the sink's acknowledgement."
    );
    histogram!(
        "outboxd_publish_attempts",
        Unit::Count,
        "Sends it took to publish an event, the successful one included."
    );
    gauge!(
        "outboxd_poller_gather_seconds",
        Unit::Seconds,
        "The poller's gathering window: after a read that found rows, the next waits this long (it grows with the arrival rate, up to poller.gather_ms)."
    );
    counter!(
        "outboxd_events_published_total",
        Unit::Count,
        "Events the sink acknowledged, by sink and topic."
    );
    counter!(
        "outboxd_publish_failures_total",
        Unit::Count,
        "Failed sends, by sink and failure class."
    );
    counter!(
        "outboxd_dead_letters_total",
        Unit::Count,
        "Rows moved to outbox_dead_letter, by sink and failure class."
    );
    counter!(
        "outboxd_publish_batches_total",
        Unit::Count,
        "Batches handed to the sink."
    );
    counter!(
        "outboxd_rows_read_total",
        Unit::Count,
        "Outbox rows read by the poller."
    );
    counter!(
        "outboxd_rows_marked_total",
        Unit::Count,
        "Published rows deleted or marked."
    );
    counter!(
        "outboxd_late_rows_total",
        Unit::Count,
        "Rows that committed after rows with higher ids were read (late commits)."
    );
    counter!(
        "outboxd_db_queries_total",
        Unit::Count,
        "Statements the relay sent to its database (PostgreSQL or MariaDB / MySQL)."
    );
    counter!(
        "outboxd_cleanup_deleted_total",
        Unit::Count,
        "Rows deleted by the cleanup actor."
    );
    counter!(
        "outboxd_actor_restarts_total",
        Unit::Count,
        "Actors restarted by the supervisor after a crash, by actor."
    );
    counter!(
        "outboxd_lease_acquisitions_total",
        Unit::Count,
        "Times this instance took the relay lease."
    );
    counter!(
        "outboxd_producer_replacements_total",
        Unit::Count,
        "Wedged Kafka producers replaced."
    );
    counter!(
        "outboxd_kafka_produce_requests_total",
        Unit::Count,
        "Kafka produce requests (with statistics.interval.ms set)."
    );
    gauge!(
        "outboxd_ready",
        "1 when the database and the broker are reachable (/readyz answers 200)."
    );
    gauge!(
        "outboxd_database_up",
        "1 when the last database operation succeeded."
    );
    gauge!(
        "outboxd_broker_up",
        "1 when the sink's broker was reachable last time the relay heard."
    );
    gauge!(
        "outboxd_lease_active",
        "1 on the instance holding the relay lease (publishing), 0 on one standing by."
    );
    gauge!(
        "outboxd_restart_budget",
        "supervisor.max_restarts: crashes tolerated within supervisor.restart_window_secs."
    );
    gauge!(
        "outboxd_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the oldest row not yet published."
    );
    gauge!(
        "outboxd_backlog_rows",
        "Rows waiting to be published (counted up to 100,000 every 10 s)."
    );
    gauge!(
        "outboxd_dead_letters_open",
        "Dead letters not replayed or discarded yet."
    );
    gauge!(
        "outboxd_destinations_blocked",
        "Destinations held back by a problem only an operator can fix."
    );
    gauge!(
        "outboxd_rows_in_flight",
        "Rows handed to the sink and not yet acknowledged."
    );
    gauge!(
        "outboxd_rows_in_memory",
        "Rows the relay holds (queued, in flight or waiting to be marked)."
    );
    gauge!(
        "outboxd_rows_deferred",
        "Rows read but kept waiting behind an earlier row of their aggregate."
    );
}

/// Records a batch of acknowledged rows: commit-to-acknowledgement latency and sends per
/// event (histograms), events per topic (counter). One handle per batch, one counter
/// update per topic in it.
pub fn record_delivered(sink: &'static str, topic_labels: u32, delivered: &[Delivered]) {
    let (wall, now) = (chrono::Utc::now(), std::time::Instant::now());
    let latency = metrics::histogram!("outboxd_commit_to_ack_seconds", "sink" => sink);
    let attempts = metrics::histogram!("outboxd_publish_attempts", "sink" => sink);
    let mut per_topic: Vec<(&str, u64)> = Vec::new();
    for d in delivered {
        let since_ack = now.saturating_duration_since(d.acked_at);
        let micros = (wall - d.row.created_at)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        // Clocks of the database and the relay may differ a little: never below zero.
        let seconds = (micros as f64 / 1e6 - since_ack.as_secs_f64()).max(0.0);
        latency.record(seconds);
        attempts.record(f64::from(d.row.tries.max(d.row.attempts.max(0) as u32) + 1));
        match per_topic.iter_mut().find(|(t, _)| *t == d.row.topic) {
            Some((_, n)) => *n += 1,
            None => per_topic.push((&d.row.topic, 1)),
        }
    }
    let labels = TopicLabels::global(topic_labels);
    for (topic, n) in per_topic {
        metrics::counter!("outboxd_events_published_total", "sink" => sink, "topic" => labels.label(topic))
            .increment(n);
    }
}

/// The `topic` label values: the first `limit` topics published have their own, every
/// later one is `other` — a topic or NATS subject per entity would otherwise make a
/// series per entity, without bound.
pub struct TopicLabels {
    limit: usize,
    labeled: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl TopicLabels {
    /// Labels for at most `limit` topics.
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit as usize,
            labeled: Default::default(),
        }
    }

    /// The process's labels (the limit of the first relay that publishes).
    fn global(limit: u32) -> &'static TopicLabels {
        static LABELS: std::sync::OnceLock<TopicLabels> = std::sync::OnceLock::new();
        LABELS.get_or_init(|| TopicLabels::new(limit))
    }

    /// The label for `topic`.
    pub fn label(&self, topic: &str) -> String {
        let mut labeled = self.labeled.lock().expect("topic labels");
        if labeled.contains(topic) {
            return topic.to_owned();
        }
        if labeled.len() < self.limit {
            labeled.insert(topic.to_owned());
            return topic.to_owned();
        }
        "other".to_owned()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listen: SocketAddr, health: Arc<Health>) -> anyhow::Result<()> {
    let handle = metrics_handle();
    // Histogram samples wait in the recorder until drained: drain them even when nobody
    // scrapes, so that memory stays bounded.
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let _stop_upkeep = AbortOnDrop(upkeep);
    let ready_health = health.clone();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = ready_health.clone();
                async move {
                    let broker = match h.broker_problem() {
                        Some(problem) if !h.broker_up() => format!("down — {problem}"),
                        _ => up(h.broker_up()).to_string(),
                    };
                    let database = match h.db_problem() {
                        Some(problem) => format!("down — {problem}"),
                        None => up(h.db_up()).to_string(),
                    };
                    let mut body = format!(
                        "database: {database}\nbroker: {broker}\nlease: {:?}\n",
                        h.lease()
                    );
                    // Not a readiness failure (other destinations flow), but the first
                    // place an operator looks.
                    for (destination, class, words) in h.destination_problems() {
                        body.push_str(&format!(
                            "destination {destination:?}: held — {class}: {words}\n"
                        ));
                    }
                    let code = if h.ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, body)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (metrics.listen): {e}"))?;
    tracing::info!(%listen, "Serving /metrics, /healthz and /readyz.");
    axum::serve(listener, app).await?;
    Ok(())
}

fn up(b: bool) -> &'static str {
    if b { "up" } else { "down" }
}

#[cfg(test)]
mod tests {
    use super::TopicLabels;

    #[test]
    fn only_the_first_topics_get_a_label_of_their_own() {
        let labels = TopicLabels::new(2);
        let got: Vec<String> = [
            "orders", "users.42", "users.43", "orders", "users.42", "users.44",
        ]
        .iter()
        .map(|t| labels.label(t))
        .collect();
        assert_eq!(
            got,
            ["orders", "users.42", "other", "orders", "users.42", "other"]
        );
        assert_eq!(TopicLabels::new(0).label("orders"), "other");
    }
}
