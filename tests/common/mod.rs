//! Helpers of the product crate's own tests: a fresh database per test on the real
//! PostgreSQL. The file is the testkit's (`testkit/src/db.rs`), included by path: this
//! crate does not depend on the testkit (its tests are built with `--no-default-features`
//! too, and a dependency on the testkit would turn the relay and its sinks on).
#![allow(dead_code)]

#[path = "../../testkit/src/db.rs"]
mod db;

pub use db::*;
