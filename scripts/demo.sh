#!/usr/bin/env bash
# The whole flow on one machine: sets up PostgreSQL and the broker, builds outboxd, and
# runs `outboxd demo` (100,000 events over 1,000 aggregates, verified). Extra arguments go
# to the demo, e.g. scripts/demo.sh --events 20000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
target=${CARGO_TARGET_DIR:-target}
cargo build --release --features testkit --bin outboxd
exec "$target/release/outboxd" demo "$@"
