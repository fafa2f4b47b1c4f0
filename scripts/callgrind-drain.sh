#!/usr/bin/env bash
# Counts the instructions `outboxd run` spends per event while draining a backlog, under
# valgrind's callgrind: a repeatable measure of the relay's own CPU cost (instructions, not
# seconds; the same build and input give nearly the same count however busy the machine
# is), for comparing code changes. docs/performance.md describes how it was used.
#
#   scripts/callgrind-drain.sh [ROWS]      # default 50000 rows, 500-byte JSON payloads
#
# Needs valgrind (Debian package). The testkit's outboxd-drain runs the drain (a private
# Tansu, an 8-partition topic) and writes target/callgrind/callgrind/callgrind.out.* and
# annotate.txt. Extra settings for the relay go in the environment as usual
# (OUTBOXD__RELAY__MAX_IN_FLIGHT=…); OUTBOXD_BIN=path measures another build of outboxd.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null 2>&1
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --workspace --bin outboxd --bin outboxd-drain
exec "$target/release/outboxd-drain" "${1:-50000}" --database outboxd_callgrind --callgrind --out "$target/callgrind"
