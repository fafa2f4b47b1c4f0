//! `outboxd-torture`: the fault-injection harness. Runs `outboxd run` as a separate process
//! against the real PostgreSQL and a real broker (a private Tansu behind a TCP proxy, or
//! librdkafka's mock cluster for what Tansu cannot stage) while a load generator writes
//! events at a steady rate through the library API, injects faults, and checks every
//! promise of design.md §2 with a ledger consumer.
//!
//! ```text
//! outboxd-torture --profile short                 # every scenario, a few minutes (CI)
//! outboxd-torture --profile long                  # every scenario, more cycles
//! outboxd-torture --scenario kill9 --scenario poison
//! ```

mod db;
mod env;
mod scenarios;
mod sinks;

use std::process::ExitCode;

use clap::Parser;
use outboxd::sink::SinkKind;

/// Fault-injection harness for outboxd.
#[derive(Debug, Parser)]
#[command(name = "outboxd-torture", about, long_about = None)]
struct Args {
    /// `short` (CI) or `long`.
    #[arg(long, default_value = "short")]
    profile: String,
    /// Scenarios to run (default: all): kill9, broker-restart, netcut, sink-pause, poison,
    /// destination, sigterm, sigstop, db-restart, bloat, late, unknown-topic, pg-failover,
    /// pg-switchover, kafka-leaders.
    #[arg(long)]
    scenario: Vec<String>,
    /// Sinks to run them against (default: kafka, redis and nats). A scenario that does
    /// not concern a sink is skipped for it (see `scenarios::applies`).
    #[arg(long, value_parser = testkit::demo::parse_sink)]
    sink: Vec<SinkKind>,
    /// Databases to run them on (default: postgres and mariadb). On MariaDB the scenarios
    /// that concern the database run, with Kafka (see `scenarios::applies`).
    #[arg(long, value_parser = db::Database::parse)]
    database: Vec<db::Database>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/torture-report.json")]
    report: std::path::PathBuf,
}

// jemalloc for the whole process, librdkafka's C allocations included: glibc malloc's
// bookkeeping was about a fifth of the relay's CPU (docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let profile = match args.profile.as_str() {
        "short" => scenarios::Profile::short(),
        "long" => scenarios::Profile::long(),
        other => {
            eprintln!("error: unknown profile {other:?} (short or long)");
            return ExitCode::from(2);
        }
    };
    let names: Vec<String> = if args.scenario.is_empty() {
        scenarios::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenario.clone()
    };
    if let Err(e) = testkit::process::find_outboxd() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let mut reports = Vec::new();
    let mut ok = true;
    let sinks = if args.sink.is_empty() {
        vec![SinkKind::Kafka, SinkKind::Redis, SinkKind::Nats]
    } else {
        args.sink.clone()
    };
    let databases = if args.database.is_empty() {
        vec![db::Database::Postgres, db::Database::MariaDb]
    } else {
        args.database.clone()
    };
    let runs: Vec<(db::Database, SinkKind, &String)> = databases
        .iter()
        .flat_map(|d| sinks.iter().map(move |s| (*d, *s)))
        .flat_map(|(d, sink)| names.iter().map(move |n| (d, sink, n)))
        .filter(|(d, sink, n)| scenarios::applies(n, *sink, *d))
        .collect();
    for (database, sink, scenario) in runs {
        let name = match database {
            db::Database::Postgres => format!("{scenario}/{sink}"),
            db::Database::MariaDb => format!("{scenario}/{sink}/{}", database.name()),
        };
        eprintln!("[torture] {name}: running ({} profile)", profile.name);
        let profile = scenarios::Profile {
            database,
            ..profile.clone()
        };
        match scenarios::run(scenario, &profile, sink).await {
            Ok(r) => {
                eprintln!(
                    "[torture] {name}: {} in {:.0} s — written {}, faults {}, lost {}, reordered {}, duplicates {} (bound {}), unexpected {}, dead-lettered {}",
                    if r.passed() { "PASS" } else { "FAIL" },
                    r.duration_secs,
                    r.events_written,
                    r.faults,
                    r.lost,
                    r.reordered,
                    r.duplicates,
                    r.duplicate_bound,
                    r.unexpected,
                    r.dead_lettered
                );
                for n in &r.notes {
                    eprintln!("[torture]   {n}");
                }
                for p in &r.phases {
                    eprintln!(
                        "[torture]   phase {}: steady {:.0}/s, burst {:.0}/s, dead tuples {}",
                        p.name, p.steady_events_per_sec, p.burst_events_per_sec, p.dead_tuples
                    );
                }
                for f in &r.failures {
                    eprintln!("[torture]   FAILED: {f}");
                }
                ok &= r.passed();
                reports.push(r);
            }
            Err(e) => {
                eprintln!("[torture] {name}: ERROR {e:#}");
                ok = false;
            }
        }
    }
    let json = serde_json::json!({"profile": profile, "scenarios": reports, "passed": ok});
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.report, serde_json::to_string_pretty(&json).unwrap()) {
        eprintln!("error: cannot write {}: {e}", args.report.display());
    }
    eprintln!(
        "[torture] {} — report in {}",
        if ok { "ALL PASSED" } else { "FAILURES" },
        args.report.display()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
