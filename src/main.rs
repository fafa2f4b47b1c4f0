//! The `outboxd` binary: parse the command line, load the configuration (exit 2 with every
//! problem listed), set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use outboxd::cli::{Cli, Command};

// jemalloc for the whole process, librdkafka's C allocations included: glibc malloc's
// bookkeeping was about a fifth of the relay's CPU (docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match outboxd::cli::load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if std::env::var_os("RUST_LOG").is_none() && !config.log.level.contains("async_nats") {
        // async-nats logs every failed reconnect at INFO and ERROR; the relay says once
        // what is wrong, and one-shot commands print their own diagnosis.
        let quiet = if matches!(cli.command, Command::Run) {
            "warn"
        } else {
            "off"
        };
        config.log.level = format!("{},async_nats={quiet}", config.log.level);
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
    runtime.block_on(outboxd::cli::execute(cli.command, config))
}
