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
    drain_with(rows, sink, None).await
}

/// A drain with `database.sslmode` set (`disable`, `require`, …), or left at the default.
pub(crate) async fn drain_with(
    rows: u64,
    sink: SinkKind,
    sslmode: Option<&str>,
) -> anyhow::Result<Drain> {
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
        .envs(sslmode.map(|m| ("OUTBOXD__DATABASE__SSLMODE", m)))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let what = sslmode.map_or(String::new(), |m| format!(", sslmode={m}"));
    let b = bar(rows, &format!("drain into {sink} by outboxd run{what}"));
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

/// A drain with TLS to PostgreSQL on or off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsDrain {
    /// `database.sslmode`.
    pub sslmode: String,
    /// The drain.
    pub drain: Drain,
}

impl TlsDrain {
    /// PostgreSQL's CPU per event (every process of the cluster), µs.
    pub fn pg_cpu_us_per_event(&self) -> f64 {
        let d = &self.drain;
        let cores = d
            .cpu
            .as_ref()
            .and_then(|c| c.cores.get("PostgreSQL").copied())
            .unwrap_or(0.0);
        cores * d.seconds * 1e6 / d.rows.max(1) as f64
    }
}

/// The TLS table: per `sslmode`, medians of the drains, and the ratio to `disable`.
pub fn tls_table(drains: &[TlsDrain]) -> String {
    if drains.is_empty() {
        return String::new();
    }
    let med = |v: Vec<f64>| crate::stats::Stat::of(v).median;
    let of =
        |mode: &str| -> Vec<&TlsDrain> { drains.iter().filter(|d| d.sslmode == mode).collect() };
    let plain = of("disable");
    let mut s = String::from(
        "\nDrains with TLS to PostgreSQL off and on (taking turns; medians, ratio to `disable` in brackets):\n\n\
         | sslmode | runs | events/s (each run) | relay CPU µs/event | PostgreSQL CPU µs/event | statements /1,000 |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut modes: Vec<&str> = drains.iter().map(|d| d.sslmode.as_str()).collect();
    modes.sort_unstable();
    modes.dedup();
    for mode in modes {
        let these = of(mode);
        let m = |f: fn(&TlsDrain) -> f64| med(these.iter().map(|d| f(d)).collect());
        let base = |f: fn(&TlsDrain) -> f64| {
            (mode != "disable" && !plain.is_empty())
                .then(|| med(plain.iter().map(|d| f(d)).collect()))
        };
        let cell = |f: fn(&TlsDrain) -> f64, digits: usize| {
            crate::stats::with_ratio(m(f), base(f), digits)
        };
        let each = these
            .iter()
            .map(|d| format!("{:.0}", d.drain.events_per_sec))
            .collect::<Vec<_>>()
            .join(" / ");
        s.push_str(&format!(
            "| {mode} | {} | {} ({each}) | {} | {} | {} |\n",
            these.len(),
            cell(|d| d.drain.events_per_sec, 0),
            cell(|d| d.drain.cpu_us_per_event, 2),
            cell(TlsDrain::pg_cpu_us_per_event, 2),
            cell(|d| d.drain.db_round_trips_per_1000, 1),
        ));
    }
    s
}
