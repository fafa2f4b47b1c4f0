//! outboxd's test machinery, outside the product (`publish = false`): what the end-to-end
//! tests (`testkit/tests`), the fault harness (`outboxd-torture`), the benchmark
//! (`outboxd-bench`) and the demo (`outboxd-demo`, run by `scripts/demo.sh`) share.
//!
//! - [`db`]: a fresh PostgreSQL database per test, the TLS test cluster's files;
//!   [`backlog`]: a fresh database with a backlog to drain;
//! - [`process`]: the `outboxd` binary, relay processes, free ports;
//! - [`servers`]: private Redis and NATS servers; [`broker`]: Tansu, the Kafka broker;
//! - [`chaos`]: a TCP proxy that cuts, pauses and delays connections;
//! - [`verify`]: reading a topic or stream back, and the ledger (lost, reordered,
//!   duplicates);
//! - [`pgpair`]: a private PostgreSQL primary and synchronous replica, for failovers;
//! - `natscluster` (feature `nats`): a private three-node JetStream cluster;
//! - `redistopo` (feature `redis`): a private Redis Cluster, and a master with a replica
//!   and sentinels, for failovers; reading streams wherever they are;
//! - [`cpu`]: CPU accounting from `/proc`;
//! - [`demo`]: the whole flow on one machine.
//!
//! The product crate does not depend on this one: its normal dependency tree holds no
//! test machinery (scripts/test.sh checks it).

pub mod backlog;
pub mod broker;
pub mod buckets;
pub mod chaos;
pub mod cpu;
pub mod db;
pub mod demo;
pub mod mysqldb;
#[cfg(feature = "nats")]
pub mod natscluster;
pub mod pgpair;
pub mod process;
#[cfg(feature = "redis")]
pub mod redistopo;
pub mod servers;
pub mod verify;

/// The repository's root directory (the workspace's), for files the tests read: the
/// operations pack, the configuration, the scripts.
pub fn repository() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit is a directory of the repository")
}

/// Runs `scripts/<name> ARGS… DIR` and returns what it printed; an error with its stderr
/// when it fails (the private clusters' scripts all take their directory last).
pub(crate) fn script(name: &str, args: &[&str], dir: &std::path::Path) -> anyhow::Result<String> {
    let path = repository().join("scripts").join(name);
    let out = std::process::Command::new(&path)
        .args(args)
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/{name} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
