#!/usr/bin/env bash
# One drain by `outboxd run` with its CPU split and, on request, a profile: the quick A/B
# measurements of docs/performance.md (two settings, drains interleaved) and its `perf`
# figures. A fresh database with ROWS pending rows (500-byte JSON payloads, 10,000
# aggregates), a private Tansu with an 8-partition topic, the relay until the outbox is
# empty; prints events/s, user and system CPU per event, and CPU per relay thread.
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
rows=${1:-300000}
scripts/setup.sh >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-target}
cargo build --release --bin outboxd 2>/dev/null
bin="$target/release/outboxd"
out="$target/perf"
mkdir -p "$out"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
# With KAFKA_TLS=1 clients reach Tansu only through a TLS terminator on another port, which
# Tansu advertises.
advertised=$port
[ "${KAFKA_TLS:-0}" = 1 ] && advertised=$(free_port)
.tools/bin/tansu broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$advertised" \
    --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
tansu=$!
relay=
socat=
cleanup() {
    [ -n "$relay" ] && kill -TERM "$relay" 2>/dev/null && wait "$relay" 2>/dev/null
    [ -n "$socat" ] && kill "$socat" 2>/dev/null && wait "$socat" 2>/dev/null
    kill "$tansu" 2>/dev/null && wait "$tansu" 2>/dev/null
    return 0
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
.tools/bin/tansu topic create --broker "tcp://127.0.0.1:$port" --partitions 8 perf >/dev/null
tls_env=()
if [ "${KAFKA_TLS:-0}" = 1 ]; then
    pki=${OUTBOXD_TEST_PG_TLS_DIR:-/var/lib/outboxd-tests/pg-tls}
    socat "OPENSSL-LISTEN:$advertised,bind=127.0.0.1,reuseaddr,fork,verify=0,cert=$pki/server.crt,key=$pki/server.key" \
        "TCP:127.0.0.1:$port" &
    socat=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$advertised") 2>/dev/null && break; sleep 0.1; done
    tls_env=(OUTBOXD__KAFKA__PRODUCER__SECURITY.PROTOCOL=ssl "OUTBOXD__KAFKA__PRODUCER__SSL.CA.LOCATION=$pki/ca.crt")
fi

. scripts/backlog.sh
fresh_backlog outboxd_perf "$rows" perf "$bin"

env OUTBOXD__DATABASE__URL="$url" OUTBOXD__KAFKA__BROKERS="127.0.0.1:$advertised" \
    OUTBOXD__METRICS__LISTEN="" OUTBOXD__LOG__LEVEL=warn "${tls_env[@]}" "$bin" run 2>"$out/relay.log" &
relay=$!
t0=$(date +%s.%N)
profiler=
# perf attaches to the threads that exist: let librdkafka start its own first.
[ -n "${PERF:-}" ] && sleep 0.5
case "${PERF:-}" in
    record) perf record -e cpu-clock -F 1000 --call-graph dwarf,16384 -p "$relay" \
                -o "$out/perf.data" 2>/dev/null & profiler=$! ;;
    poll) perf stat -e syscalls:sys_enter_poll,syscalls:sys_enter_sendmsg,context-switches \
              -p "$relay" -o "$out/perf-stat.txt" 2>/dev/null & profiler=$! ;;
    "") ;;
    *) echo "PERF must be record or poll" >&2; exit 2 ;;
esac
until [ "$(psql "$url" -Atqc 'SELECT count(*) FROM outbox')" = 0 ]; do sleep 0.2; done
t1=$(date +%s.%N)
if [ -n "$profiler" ]; then kill -INT "$profiler"; wait "$profiler" || true; fi

hz=$(getconf CLK_TCK)
read -r utime stime < <(awk '{print $14, $15}' "/proc/$relay/stat")
for t in /proc/"$relay"/task/*; do
    printf '  thread %-16s %6.2f µs/event\n' "$(cat "$t/comm")" \
        "$(awk -v hz="$hz" -v r="$rows" '{print ($14 + $15) / hz * 1e6 / r}' "$t/stat")"
done
awk -v r="$rows" -v a="$t0" -v b="$t1" -v u="$utime" -v s="$stime" -v hz="$hz" 'BEGIN {
    printf "rows %d, %.2f s, %.0f events/s, CPU %.2f µs/event (user %.2f, system %.2f)\n",
        r, b - a, r / (b - a), (u + s) / hz * 1e6 / r, u / hz * 1e6 / r, s / hz * 1e6 / r }'
[ "${PERF:-}" = poll ] && grep -E 'syscalls:|context-switches' "$out/perf-stat.txt" | awk '{print "  " $1, $2}'
[ "${PERF:-}" = record ] && echo "profile: perf report -i $out/perf.data --no-children --sort sym"
exit 0
