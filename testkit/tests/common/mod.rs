//! Helpers shared by the end-to-end tests: the testkit's databases, processes and private
//! servers, and what only these tests use (`relay.rs`, `sinks.rs`, `sasl_proxy.rs`).
#![allow(dead_code, unused_imports)]

mod relay;
pub mod sasl_proxy;
pub mod sinks;

pub use relay::*;
pub use testkit::db::*;
pub use testkit::mysqldb::*;
pub use testkit::process::*;
pub use testkit::servers::PrivateServer;

/// The `outboxd` binary these tests run.
pub fn bin() -> std::path::PathBuf {
    outboxd_bin()
}
