#!/usr/bin/env bash
# One drain by `outboxd run` with its CPU split and, on request, a profile: the quick A/B
# measurements of docs/performance.md and its `perf` figures. The testkit's outboxd-drain
# does the work: a fresh database with ROWS pending rows (500-byte JSON payloads, 10,000
# aggregates), a private Tansu with an 8-partition topic, the relay until the outbox is
# empty; it prints events/s, user and system CPU per event, and CPU per relay thread.
#
#   scripts/perf-drain.sh [ROWS]                       # default 300000
#   PERF=record scripts/perf-drain.sh                  # + perf record -> target/perf/perf.data
#   PERF=poll scripts/perf-drain.sh                    # + poll()/sendmsg() counts (perf stat)
#   OUTBOXD__RELAY__WORKER_THREADS=2 scripts/perf-drain.sh   # any setting, by environment
#   KAFKA_TLS=1 scripts/perf-drain.sh                  # the relay reaches Tansu over TLS
#                                                      # (socat in front, the test CA's certificate)
#
# Needs perf (Debian's linux-perf) for PERF=…; CPU times are read from /proc either way.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-target}
cargo build --release --workspace --bin outboxd --bin outboxd-drain 2>/dev/null
args=("${1:-300000}" --out "$target/perf")
[ "${KAFKA_TLS:-0}" = 1 ] && args+=(--kafka-tls)
[ -n "${PERF:-}" ] && args+=(--perf "$PERF")
exec "$target/release/outboxd-drain" "${args[@]}"
