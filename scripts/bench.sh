#!/usr/bin/env bash
# The benchmark (docs/performance.md): sets up PostgreSQL and the broker, builds outboxd
# and outboxd-bench in release mode and runs them. Each phase starts its own broker and a
# fresh database; nothing else should run on the machine meanwhile.
#
#   scripts/bench.sh                   # standard: every phase but bloat (ceilings, drain, sustained,
#                                      # single, tls, search, sinks, databases; an hour or more)
#   scripts/bench.sh long              # standard + the 10-minute xmin hold
#   scripts/bench.sh quick             # a few minutes, for development
#   scripts/bench.sh standard --only drain --runs 5    # extra arguments go to outboxd-bench
#
# Results: target/bench/{results.json,summary.md,latency.svg} (or --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-standard}
shift || true
scripts/setup.sh
target=${CARGO_TARGET_DIR:-target}
cargo build --release --workspace --bin outboxd --bin outboxd-bench --bin outboxd-naive
exec "$target/release/outboxd-bench" --mode "$mode" "$@"
