#!/usr/bin/env bash
# Idle cost on MariaDB, two builds of outboxd taking turns (docs/performance.md, "PostgreSQL
# and MariaDB side by side"): `outboxd run` against an empty outbox on the local MariaDB
# (scripts/setup.sh's test user) and the local Tansu, 5 s to settle, then the relay's and
# mariadbd's CPU over 30 s (utime+stime from /proc) and the statements it counted.
#
#   docs/bench/databases/idle-ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
url=mariadb://outboxd_test:outboxd_test@127.0.0.1:3306/outboxd_idle
mariadb --protocol=tcp -h 127.0.0.1 -u outboxd_test -poutboxd_test \
    -e 'DROP DATABASE IF EXISTS outboxd_idle; CREATE DATABASE outboxd_idle'
OUTBOXD__DATABASE__URL=$url "$after" migrate >/dev/null
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
statements() {
    curl -s 127.0.0.1:19555/metrics | awk '/^outboxd_db_queries_total/{s+=$2} END{print s+0}'
}
# The local server on 3306, not the TLS test server on 3307.
mdb=
for p in $(pgrep -x mariadbd); do grep -q 3307 "/proc/$p/cmdline" || mdb=$p; done
for round in $(seq "$rounds"); do
    for which in before after; do
        bin=$before
        [ "$which" = after ] && bin=$after
        OUTBOXD__DATABASE__URL=$url OUTBOXD__KAFKA__BROKERS=127.0.0.1:9092 \
            OUTBOXD__METRICS__LISTEN=127.0.0.1:19555 OUTBOXD__LOG__LEVEL=warn \
            "$bin" run >/dev/null 2>&1 &
        pid=$!
        sleep 5
        r0=$(ticks $pid) m0=$(ticks "$mdb") q0=$(statements)
        sleep 30
        r1=$(ticks $pid) m1=$(ticks "$mdb") q1=$(statements)
        kill -TERM $pid
        wait $pid || true
        echo "$round $which relay_pct=$(echo "scale=2; ($r1-$r0)*100/$hz/30" | bc)" \
            "mariadb_pct=$(echo "scale=2; ($m1-$m0)*100/$hz/30" | bc)" \
            "statements_per_s=$(echo "scale=1; ($q1-$q0)/30" | bc)"
    done
done
