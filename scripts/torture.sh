#!/usr/bin/env bash
# The fault-injection harness: scripts/torture.sh short (a few minutes; CI runs it) or
# scripts/torture.sh long (every scenario with more cycles; the numbers in
# docs/reliability.md). Extra arguments go to outboxd-torture, e.g. --scenario kill9.
# It restarts the local PostgreSQL and MariaDB (db-restart scenario): run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-short}
shift || true
scripts/setup.sh
target=${CARGO_TARGET_DIR:-target}
if [ "$profile" = long ]; then
    cargo build --release --workspace --bin outboxd --bin outboxd-torture
    exec "$target/release/outboxd-torture" --profile long --report "$target/torture-long.json" "$@"
else
    cargo build --workspace --bin outboxd --bin outboxd-torture
    exec "$target/debug/outboxd-torture" --profile "$profile" --report "$target/torture-$profile.json" "$@"
fi
