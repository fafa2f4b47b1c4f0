//! The drain: `outboxd run`, a separate process, empties a pre-filled backlog.

use std::time::{Duration, Instant};

use outboxd::sink::SinkKind;
use serde::{Deserialize, Serialize};
use testkit::process::free_port;

use crate::world::{World, bar, scrape};
use testkit::cpu::{CpuTicks, CpuUse, ProcCpu, proc_cpu_secs, proc_peak_rss_mb};

/// One drain by `outboxd run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drain {
    /// Rows drained.
    pub rows: u64,
    /// Seconds until the last was marked.
    pub seconds: f64,
    /// Events per second.
    pub events_per_sec: f64,
    /// Relay process CPU per event, µs.
    pub cpu_us_per_event: f64,
    /// Relay process peak RSS, MB.
    pub peak_rss_mb: f64,
    /// Statements the relay sent per 1,000 events.
    pub db_round_trips_per_1000: f64,
    /// Where the machine's CPU went meanwhile.
    #[serde(default)]
    pub cpu: Option<CpuUse>,
}

/// `outboxd run` drains a pre-filled backlog; measured from its start until its metrics say
/// every row was marked.
pub(crate) async fn drain(rows: u64, sink: SinkKind) -> anyhow::Result<Drain> {
    let w = World::for_sink(sink).await?;
    w.prefill(rows).await?;
    let metrics = format!("127.0.0.1:{}", free_port());
    let bin = testkit::process::find_outboxd()?;
    let mut child = std::process::Command::new(&bin)
        .arg("run")
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &w.url)
        .envs(w.sink_env())
        .env("OUTBOXD__METRICS__LISTEN", &metrics)
        .env("OUTBOXD__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let b = bar(rows, &format!("drain into {sink} by outboxd run"));
    let t = Instant::now();
    let ticks = CpuTicks::now();
    let procs = ProcCpu::now();
    let marked = loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let m = scrape(&metrics, "outboxd_rows_marked_total")
            .await
            .unwrap_or(0.0) as u64;
        b.set_position(m);
        if m >= rows {
            break m;
        }
        if t.elapsed() > Duration::from_secs(1_800) {
            anyhow::bail!("drain did not finish in 30 minutes");
        }
    };
    let secs = t.elapsed().as_secs_f64();
    ticks.note("drain");
    let cpu_use = procs.used_since();
    let cpu = proc_cpu_secs(pid);
    let rss = proc_peak_rss_mb(pid);
    let queries = scrape(&metrics, "outboxd_db_queries_total")
        .await
        .unwrap_or(0.0);
    b.finish_and_clear();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    w.close().await;
    Ok(Drain {
        rows: marked,
        seconds: secs,
        events_per_sec: marked as f64 / secs,
        cpu_us_per_event: cpu * 1e6 / marked as f64,
        peak_rss_mb: rss,
        db_round_trips_per_1000: queries * 1000.0 / marked as f64,
        cpu: Some(cpu_use),
    })
}
