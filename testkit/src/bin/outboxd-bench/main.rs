//! `outboxd-bench`: the benchmark. Against the local PostgreSQL (fsync on) and a private
//! Tansu, with 500-byte JSON payloads over 10,000 aggregates and the idempotent `acks=all`
//! producer, it measures in one run:
//!
//! - ceilings: raw PostgreSQL drain (the relay's read + delete SQL, no Kafka), raw
//!   produce (rdkafka into the same broker, no PostgreSQL), a minimal relay, and the
//!   broker's own send → acknowledgement latency at the sustained rates;
//! - drain: a pre-filled backlog drained by `outboxd run` (a separate process), with its CPU
//!   per event, peak RSS and database round trips per 1,000 events;
//! - sustained: offered rates (1k, 10k, 20k events/s) written through the library API, the
//!   relay in-process so that every event's commit→acknowledgement latency is exact (and
//!   split into stages: commit → query, query, hand-off to the producer, broker), and a
//!   search for the highest rate with a flat backlog;
//! - single: single-event transactions at 1k, 2k and 5k/s from `pgbench`, `outboxd run`
//!   beside an independent naive relay (select 500 → produce → wait → delete, librdkafka's
//!   defaults) as an in-run yardstick, each its own process: writers' achieved rate,
//!   relay, PostgreSQL and Tansu CPU per event, statements and produce requests per 1,000
//!   events, insert → acknowledgement and insert → consumer latency;
//! - tls: the drain with TLS to PostgreSQL off (`sslmode=disable`) and on (`require`),
//!   taking turns;
//! - sinks: Redis Streams and NATS JetStream beside Kafka — an in-run ceiling per sink (raw
//!   pipelined `XADD`, raw JetStream publish with acks), the same drain, and sustained
//!   latency at the plan's rates up to 10k events/s;
//! - databases: PostgreSQL and MariaDB side by side — a drain, single-event transactions
//!   from the benchmark's own writer (the same on both) and idle, outboxd beside the naive
//!   relay, each its own process;
//! - bloat (`--mode long`): drain throughput while a transaction holds the xmin horizon.
//!
//! Results: `<out>/results.json`, `<out>/summary.md`, `<out>/latency.svg`.

mod bloat;
mod ceilings;
mod chart;
mod databases;
mod drain;
mod plan;
mod report;
mod run;
mod single;
mod sinks;
mod stats;
mod sustained;
mod world;

use std::process::ExitCode;

use clap::Parser;
use plan::Args;

// jemalloc for the whole process, librdkafka's C allocations included: glibc malloc's
// bookkeeping was about a fifth of the relay's CPU (docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(results) = &args.render {
        return match report::render(results, &args.out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let plan = match plan::Plan::from_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run::run(plan).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
