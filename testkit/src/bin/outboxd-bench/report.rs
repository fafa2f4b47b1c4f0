//! Everything one run measured, and its report: `results.json`, `summary.md`,
//! `latency.svg`.

use serde::{Deserialize, Serialize};

use crate::bloat::BloatBurst;
use crate::ceilings::ProduceLatency;
use crate::drain::Drain;
use crate::plan::Plan;
use crate::stats::Stat;
use crate::sustained::{STAGE_NAMES, Stages, Sustained, verdict};
use crate::world::say;
use testkit::cpu::{CpuUse, Steal};

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// When.
    pub started: String,
    /// The machine.
    pub machine: serde_json::Value,
    /// The plan.
    pub plan: Plan,
    /// Raw PostgreSQL drain ceiling, rows/s.
    pub ceiling_postgres: Option<Stat>,
    /// Client CPU per row of the raw PostgreSQL drain (sqlx), µs.
    pub ceiling_postgres_cpu_us: Option<Stat>,
    /// Raw produce ceiling, records/s.
    pub ceiling_produce: Option<Stat>,
    /// CPU per record of raw produce (librdkafka and the loop feeding it), µs.
    pub ceiling_produce_cpu_us: Option<Stat>,
    /// A minimal relay: the same reads, records and deletes in one loop, without per-
    /// aggregate order, actors or gap tracking; rows/s.
    #[serde(default)]
    pub ceiling_minimal: Option<Stat>,
    /// Its CPU per row, µs.
    #[serde(default)]
    pub ceiling_minimal_cpu_us: Option<Stat>,
    /// The broker's own send → acknowledgement latency at the sustained rates (rdkafka
    /// alone), every run.
    #[serde(default)]
    pub produce_latency: Vec<ProduceLatency>,
    /// Each drain.
    pub drains: Vec<Drain>,
    /// Drain rate.
    pub drain_events_per_sec: Option<Stat>,
    /// Drain CPU.
    pub drain_cpu_us_per_event: Option<Stat>,
    /// Drain RSS.
    pub drain_peak_rss_mb: Option<Stat>,
    /// Drain round trips.
    pub drain_db_round_trips_per_1000: Option<Stat>,
    /// Sustained rates.
    pub sustained: Vec<Sustained>,
    /// The flat-backlog search's steps.
    pub search: Vec<Sustained>,
    /// Highest offered rate found with a flat backlog.
    pub max_flat_rate: Option<u32>,
    /// The rate actually written at that step.
    pub max_flat_achieved: Option<f64>,
    /// Bloat bursts.
    pub bloat: Vec<BloatBurst>,
    /// Drains with TLS to PostgreSQL off and on.
    #[serde(default)]
    pub tls: Vec<crate::drain::TlsDrain>,
    /// Single-event transactions, outboxd and the naive relay.
    #[serde(default)]
    pub single: Vec<crate::single::SingleRun>,
    /// Redis and NATS beside Kafka.
    #[serde(default)]
    pub sinks: Vec<crate::sinks::SinkResult>,
    /// Share of the machine's CPU time the hypervisor gave to other guests ("steal" in
    /// `/proc/stat`) during each measurement, %: how noisy the shared machine was.
    #[serde(default)]
    pub steal: Vec<Steal>,
    /// PostgreSQL and MariaDB side by side.
    #[serde(default)]
    pub databases: Option<crate::databases::Databases>,
}

/// Writes `summary.md` and `latency.svg` for results into `out` (and prints the summary).
pub fn write_report(r: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    let summary = summary(r);
    std::fs::write(out.join("summary.md"), &summary)?;
    let mut points: Vec<&Sustained> = r.sustained.iter().chain(r.search.iter()).collect();
    points.sort_by(|a, b| a.achieved.total_cmp(&b.achieved));
    crate::chart::latency_svg(&points, &out.join("latency.svg"))?;
    println!("{summary}");
    say(format!("results in {}", out.display()));
    Ok(())
}

/// Re-renders the summary and the chart of an earlier run's `results.json` into `out`.
pub fn render(results: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(results)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", results.display()))?;
    let r: Results = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a results file: {e}", results.display()))?;
    std::fs::create_dir_all(out)?;
    write_report(&r, out)
}

pub(crate) fn summary(r: &Results) -> String {
    let mut s = String::new();
    let f = |st: &Option<Stat>| {
        st.as_ref()
            .map(|s| {
                format!(
                    "{:.0} (min {:.0}, max {:.0}, n={})",
                    s.median,
                    s.min,
                    s.max,
                    s.runs.len()
                )
            })
            .unwrap_or_else(|| "-".into())
    };
    s.push_str(&format!("# outboxd benchmark ({} mode)\n\n", r.plan.mode));
    s.push_str(&format!("machine: {}\n\n", r.machine));
    if !r.steal.is_empty() {
        let st = Stat::of(r.steal.iter().map(|x| x.pct).collect());
        s.push_str(&format!(
            "CPU time stolen by the hypervisor during the measurements: median {:.1} % (min {:.1}, max {:.1}, n={}); per measurement in results.json.\n\n",
            st.median,
            st.min,
            st.max,
            st.runs.len()
        ));
    }
    s.push_str("| measure | median (spread) |\n|---|---|\n");
    s.push_str(&format!(
        "| ceiling: raw PostgreSQL drain, rows/s | {} |\n",
        f(&r.ceiling_postgres)
    ));
    s.push_str(&format!(
        "| ceiling: raw produce, records/s | {} |\n",
        f(&r.ceiling_produce)
    ));
    if let Some(c) = &r.ceiling_postgres_cpu_us {
        s.push_str(&format!(
            "| raw PostgreSQL drain client CPU per row (sqlx floor), µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    if let Some(c) = &r.ceiling_produce_cpu_us {
        s.push_str(&format!(
            "| raw produce CPU per record (librdkafka floor), µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    s.push_str(&format!(
        "| ceiling: minimal relay (same SQL and records, no ordering), rows/s | {} |\n",
        f(&r.ceiling_minimal)
    ));
    if let Some(c) = &r.ceiling_minimal_cpu_us {
        s.push_str(&format!(
            "| minimal relay CPU per row, µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    s.push_str(&format!(
        "| drain by `outboxd run`, events/s | {} |\n",
        f(&r.drain_events_per_sec)
    ));
    if let (Some(d), Some(m)) = (&r.drain_events_per_sec, &r.ceiling_minimal) {
        s.push_str(&format!(
            "| drain / minimal relay | {:.2} |\n",
            d.median / m.median.max(1e-9)
        ));
    }
    if let (Some(d), Some(pg), Some(k)) = (
        &r.drain_events_per_sec,
        &r.ceiling_postgres,
        &r.ceiling_produce,
    ) {
        let lower = pg.median.min(k.median);
        s.push_str(&format!(
            "| drain / lower ceiling | {:.2} (PostgreSQL {:.2}, produce {:.2}) |\n",
            d.median / lower,
            d.median / pg.median,
            d.median / k.median
        ));
    }
    if let Some(c) = &r.drain_cpu_us_per_event {
        s.push_str(&format!(
            "| relay CPU per event (drain), µs | {:.2} (min {:.2}, max {:.2}) |\n",
            c.median, c.min, c.max
        ));
    }
    if let Some(m) = &r.drain_peak_rss_mb {
        s.push_str(&format!(
            "| relay peak RSS (drain), MB | {:.1} (min {:.1}, max {:.1}) |\n",
            m.median, m.min, m.max
        ));
    }
    if let Some(q) = &r.drain_db_round_trips_per_1000 {
        s.push_str(&format!(
            "| database round trips per 1,000 events (drain) | {:.1} |\n",
            q.median
        ));
    }
    if let (Some(m), Some(a)) = (r.max_flat_rate, r.max_flat_achieved) {
        s.push_str(&format!(
            "| highest rate with a flat backlog, events/s | {a:.0} written (offered {m}) |\n"
        ));
    }
    // Where the CPU went: medians over the runs of each measurement.
    let mut cpu_rows: Vec<(String, Vec<&CpuUse>)> = Vec::new();
    let drains: Vec<&CpuUse> = r.drains.iter().filter_map(|d| d.cpu.as_ref()).collect();
    if !drains.is_empty() {
        cpu_rows.push(("drain".into(), drains));
    }
    let mut cpu_rates: Vec<u32> = r.sustained.iter().map(|x| x.offered).collect();
    cpu_rates.sort_unstable();
    cpu_rates.dedup();
    for rate in cpu_rates {
        let u: Vec<&CpuUse> = r
            .sustained
            .iter()
            .filter(|x| x.offered == rate)
            .filter_map(|x| x.cpu.as_ref())
            .collect();
        if !u.is_empty() {
            cpu_rows.push((format!("sustained {rate}/s"), u));
        }
    }
    if !cpu_rows.is_empty() {
        let mut kinds: Vec<String> = cpu_rows
            .iter()
            .flat_map(|(_, uses)| uses.iter().flat_map(|u| u.cores.keys().cloned()))
            .collect();
        kinds.sort();
        kinds.dedup();
        s.push_str("\nWhere the CPU went, in cores (medians over the runs):\n\n| measurement | machine busy % |");
        for k in &kinds {
            s.push_str(&format!(" {k} |"));
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---|".repeat(kinds.len()));
        s.push('\n');
        for (label, uses) in &cpu_rows {
            let busy = Stat::of(uses.iter().map(|u| u.busy_pct).collect()).median;
            s.push_str(&format!("| {label} | {busy:.0} |"));
            for k in &kinds {
                let v = Stat::of(
                    uses.iter()
                        .map(|u| u.cores.get(k).copied().unwrap_or(0.0))
                        .collect(),
                );
                s.push_str(&format!(" {:.2} |", v.median));
            }
            s.push('\n');
        }
    }
    // Sustained rates: medians over the runs, with the spread.
    let mut rates: Vec<u32> = r.sustained.iter().map(|x| x.offered).collect();
    rates.sort_unstable();
    rates.dedup();
    if !rates.is_empty() {
        s.push_str("\n| offered/s | runs | achieved/s | p50 ms | p99 ms | p99.9 ms | relay CPU µs/event | flat in every run |\n|---|---|---|---|---|---|---|---|\n");
    }
    for rate in rates {
        let runs: Vec<&Sustained> = r.sustained.iter().filter(|x| x.offered == rate).collect();
        let st = |f: fn(&Sustained) -> f64| Stat::of(runs.iter().map(|x| f(x)).collect());
        let spread = |v: Stat| format!("{:.1} ({:.1}–{:.1})", v.median, v.min, v.max);
        s.push_str(&format!(
            "| {rate} | {} | {:.0} | {} | {} | {} | {:.2} | {} |\n",
            runs.len(),
            st(|x| x.achieved).median,
            spread(st(|x| x.p50_ms)),
            spread(st(|x| x.p99_ms)),
            spread(st(|x| x.p999_ms)),
            st(|x| x.cpu_us_per_event).median,
            runs.iter().all(|x| x.flat)
        ));
    }
    s.push_str(&stage_table(&r.sustained, &r.produce_latency));
    s.push_str(&crate::single::table(&r.single));
    s.push_str(&crate::drain::tls_table(&r.tls));
    if let Some(d) = &r.databases {
        s.push_str(&crate::databases::table(d));
    }
    let mut all: Vec<&Sustained> = r.sustained.iter().chain(r.search.iter()).collect();
    if !all.is_empty() {
        s.push_str("\nEvery step, sustained runs and the flat-backlog search:\n");
        s.push_str("\n| offered/s | achieved/s | events/txn | p50 ms | p99 ms | p99.9 ms | max ms | backlog slope/s | verdict | relay CPU µs/event |\n|---|---|---|---|---|---|---|---|---|---|\n");
    }
    all.sort_by_key(|x| x.offered);
    for x in all {
        s.push_str(&format!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} |\n",
            x.offered,
            x.achieved,
            x.events_per_txn,
            x.p50_ms,
            x.p99_ms,
            x.p999_ms,
            x.max_ms,
            x.backlog_slope,
            verdict(x),
            x.cpu_us_per_event
        ));
    }
    if !r.bloat.is_empty() {
        let phase = |name: &str| {
            Stat::of(
                r.bloat
                    .iter()
                    .filter(|b| b.phase == name)
                    .map(|b| b.events_per_sec)
                    .collect(),
            )
        };
        let (before, during, after) = (phase("before"), phase("during"), phase("after"));
        s.push_str(&format!(
            "\nDrain while the xmin horizon is held: before {:.0}/s (median of {}), during {:.0}/s \
             (median of {}, worst {:.0}), after {:.0}/s. During / before: median {:.2}, worst {:.2}.\n",
            before.median,
            before.runs.len(),
            during.median,
            during.runs.len(),
            during.min,
            after.median,
            during.median / before.median.max(1e-9),
            during.min / before.median.max(1e-9),
        ));
        s.push_str("\n| bloat phase | at s | drain events/s | dead tuples |\n|---|---|---|---|\n");
        for b in &r.bloat {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} | {} |\n",
                b.phase, b.at_secs, b.events_per_sec, b.dead_tuples
            ));
        }
    }
    if !r.sinks.is_empty() {
        s.push_str(&sinks_table(r));
    }
    s
}

/// Where commit→ack latency went at each sustained rate: per stage, the median over the
/// runs of the stage's p50, p99 and mean over the slowest 1 % of events.
pub(crate) fn stage_table(sustained: &[Sustained], floor: &[ProduceLatency]) -> String {
    let mut rates: Vec<u32> = sustained
        .iter()
        .filter(|x| x.stages.is_some())
        .map(|x| x.offered)
        .collect();
    rates.sort_unstable();
    rates.dedup();
    if rates.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nWhere commit→ack latency went, stage by stage (ms; medians over the runs of each \
         stage's p50 / p99 / mean over the slowest 1 % of events):\n\n| offered/s | stage | p50 | p99 | slowest 1 % |\n|---|---|---|---|---|\n",
    );
    for rate in rates {
        let runs: Vec<&Stages> = sustained
            .iter()
            .filter(|x| x.offered == rate)
            .filter_map(|x| x.stages.as_ref())
            .collect();
        for (i, name) in STAGE_NAMES.iter().enumerate() {
            let med = |f: fn(&Stages) -> &Vec<f64>| {
                Stat::of(runs.iter().map(|x| f(x)[i]).collect()).median
            };
            s.push_str(&format!(
                "| {rate} | {name} | {:.2} | {:.2} | {:.2} |\n",
                med(|x| &x.p50_ms),
                med(|x| &x.p99_ms),
                med(|x| &x.tail_mean_ms)
            ));
        }
        let alone: Vec<&ProduceLatency> = floor.iter().filter(|l| l.rate == rate).collect();
        if !alone.is_empty() {
            let med = |f: fn(&ProduceLatency) -> f64| {
                Stat::of(alone.iter().map(|l| f(l)).collect()).median
            };
            s.push_str(&format!(
                "| {rate} | *the broker alone: rdkafka send → ack, no relay, no PostgreSQL* | {:.2} | {:.2} | p99.9 {:.2} |\n",
                med(|l| l.p50_ms),
                med(|l| l.p99_ms),
                med(|l| l.p999_ms)
            ));
        }
    }
    s
}

/// Kafka, Redis and NATS side by side: ceiling, drain and sustained latency of one run.
pub(crate) fn sinks_table(r: &Results) -> String {
    let at = |v: &[Sustained], rate: u32| {
        let runs: Vec<&Sustained> = v.iter().filter(|s| s.offered == rate).collect();
        if runs.is_empty() {
            return "-".to_string();
        }
        let p50 = Stat::of(runs.iter().map(|s| s.p50_ms).collect()).median;
        let p99 = Stat::of(runs.iter().map(|s| s.p99_ms).collect()).median;
        format!("{p50:.1} / {p99:.1}")
    };
    let mut s = String::from(
        "\n## Sinks side by side\n\n| sink | ceiling, events/s (what) | drain, events/s | drain / ceiling | relay CPU µs/event (drain) | peak RSS MB | 1k/s p50 / p99 ms | 10k/s p50 / p99 ms |\n|---|---|---|---|---|---|---|---|\n",
    );
    if let (Some(c), Some(d)) = (&r.ceiling_produce, &r.drain_events_per_sec) {
        s.push_str(&format!(
            "| kafka | {:.0} (raw rdkafka produce) | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            c.median,
            d.median,
            d.median / c.median.max(1e-9),
            r.drain_cpu_us_per_event
                .as_ref()
                .map(|x| x.median)
                .unwrap_or(0.0),
            r.drain_peak_rss_mb
                .as_ref()
                .map(|x| x.median)
                .unwrap_or(0.0),
            at(&r.sustained, 1_000),
            at(&r.sustained, 10_000),
        ));
    }
    for k in &r.sinks {
        s.push_str(&format!(
            "| {} | {:.0} ({}) | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            k.sink,
            k.ceiling_events_per_sec,
            k.ceiling_what,
            k.drain.events_per_sec,
            k.drain.events_per_sec / k.ceiling_events_per_sec.max(1e-9),
            k.drain.cpu_us_per_event,
            k.drain.peak_rss_mb,
            at(&k.sustained, 1_000),
            at(&k.sustained, 10_000),
        ));
    }
    s
}
