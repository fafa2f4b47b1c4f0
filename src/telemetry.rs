//! Logs (`tracing`, text or JSON), Prometheus metrics and the `/healthz` `/readyz` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::health::Health;

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

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): then ours stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listen: SocketAddr, health: Arc<Health>) -> anyhow::Result<()> {
    let handle = metrics_handle();
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
                    let mut body = format!(
                        "database: {}\nbroker: {broker}\nlease: {:?}\n",
                        up(h.db_up()),
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
