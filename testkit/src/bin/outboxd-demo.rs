//! `outboxd-demo`: the whole flow on one machine (`scripts/demo.sh` builds it with one sink
//! and runs it). The configuration is read as `outboxd run` reads it (`--config`, then
//! `OUTBOXD__…` variables); the demo's own options are in `testkit::demo::DemoArgs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use testkit::demo::{self, DemoArgs};

// The relay runs in this process: the same allocator as the `outboxd` binary.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The whole flow on one machine: local broker, demo database, concurrent writers, the
/// relay, a read-back and a verification.
#[derive(Debug, Parser)]
#[command(name = "outboxd-demo", about, long_about = None)]
struct Cli {
    /// Configuration file [default: config/outboxd.toml if it exists]; every key can be
    /// overridden by OUTBOXD__SECTION__KEY environment variables.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    demo: DemoArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match outboxd::cli::load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if std::env::var_os("RUST_LOG").is_none() {
        // The demo draws a progress bar; relay logs below WARN would tear it.
        config.log.level = "warn,async_nats=off".into();
    }
    outboxd::telemetry::init_logs(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.relay.worker_threads.max(1) as usize)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo::run(config, cli.demo)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
