#!/usr/bin/env bash
# Before/after for a change on the hot path: runs the benchmark with two builds taking
# turns (before, after, before, after, …), so that a slow spell of the shared machine falls
# on both, and prints the medians of each side (docs/performance.md, "Changes that
# mattered").
#
#   scripts/ab.sh BEFORE_DIR AFTER_DIR PAIRS [outboxd-bench arguments]
#   scripts/ab.sh /tmp/bin-before /tmp/bin-after 3 --mode quick --only single,drain --seconds 20
#
# Each *_DIR holds an `outboxd` built in release mode from the commit to compare (a git
# worktree per commit, each with its own CARGO_TARGET_DIR: builds of one package from two
# paths share their artifacts in one target directory). Both sides are driven by the same
# benchmark — the *_DIR's own `outboxd-bench` if it has one, else $AB_BENCH (default: this
# checkout's release build) — which runs the relay as its own process through $OUTBOXD_BIN.
# Results: target/ab/{before,after}-N/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2 pairs=$3
shift 3
scripts/setup.sh
out=${AB_OUT:-target/ab}
mkdir -p "$out"
for i in $(seq "$pairs"); do
    for side in before after; do
        dir=$before
        [ "$side" = after ] && dir=$after
        bench=${AB_BENCH:-${CARGO_TARGET_DIR:-target}/release/outboxd-bench}
        [ -x "$dir/outboxd-bench" ] && bench=$dir/outboxd-bench
        OUTBOXD_BIN=$dir/outboxd "$bench" "$@" --runs 1 --out "$out/$side-$i" 2>&1 \
            | grep '^\[bench\]' || true
    done
done
# Medians per side: drains, sustained and single-event runs, by rate and relay.
for side in before after; do
    jq -s --arg side "$side" '
      def median: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      {
        side: $side,
        drain_events_per_sec: ([.[].drains[].events_per_sec] | median),
        drain_cpu_us_per_event: ([.[].drains[].cpu_us_per_event] | median),
        sustained: ([.[].sustained[]] | group_by(.offered) | map({
          offered: .[0].offered, runs: length,
          p50_ms: ([.[].p50_ms] | median), p99_ms: ([.[].p99_ms] | median),
          cpu_us_per_event: ([.[].cpu_us_per_event] | median)})),
        single: ([.[].single[]] | group_by([.offered, .relay]) | map({
          offered: .[0].offered, relay: .[0].relay, runs: length,
          achieved: ([.[].achieved] | median),
          relay_cpu_us: ([.[].relay_cpu_us_per_event] | median),
          pg_cpu_us: ([.[].pg_cpu_us_per_event] | median),
          broker_cpu_us: ([.[].broker_cpu_us_per_event] | median),
          statements_per_1000: ([.[].statements_per_1000] | median),
          produce_requests_per_1000: ([.[].produce_requests_per_1000] | median),
          p50_ms: ([.[].p50_ms] | median), p99_ms: ([.[].p99_ms] | median)}))
      }' "$out"/"$side"-*/results.json
done
