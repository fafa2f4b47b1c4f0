#!/usr/bin/env bash
# Counts the instructions `outboxd run` spends per event while draining a backlog, under
# valgrind's callgrind: a repeatable measure of the relay's own CPU cost (instructions, not
# seconds; the same build and input give nearly the same count however busy the machine
# is), for comparing code changes. docs/performance.md describes how it was used.
#
#   scripts/callgrind-drain.sh [ROWS]      # default 50000 rows, 500-byte JSON payloads
#
# Needs valgrind (Debian package). Writes target/callgrind/callgrind.out.* for
# callgrind_annotate. Extra settings for the relay go in the environment as usual
# (OUTBOXD__RELAY__MAX_IN_FLIGHT=…).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-50000}
scripts/setup.sh
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --bin outboxd
. scripts/backlog.sh
fresh_backlog outboxd_callgrind "$rows" callgrind "$target/release/outboxd"
out="$target/callgrind"
rm -rf "$out" && mkdir -p "$out"
OUTBOXD__DATABASE__URL=$url OUTBOXD__METRICS__LISTEN="" OUTBOXD__LOG__LEVEL=warn \
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.%p" \
    "$target/release/outboxd" run 2>"$out/valgrind.log" &
pid=$!
start=$(date +%s)
until [ "$(psql "$url" -Atqc 'SELECT count(*) FROM outbox')" = 0 ]; do
    sleep 1
    if [ $(( $(date +%s) - start )) -gt 900 ]; then echo "drain did not finish in 15 minutes" >&2; kill $pid; exit 1; fi
done
kill -TERM $pid
wait $pid || true
callgrind_annotate "$out"/callgrind.out.* >"$out/annotate.txt" 2>/dev/null
total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' "$out/annotate.txt" | head -n1)
echo "rows $rows, instructions $total, per event $(( total / rows ))"
