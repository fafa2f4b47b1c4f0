#!/usr/bin/env bash
# A private Redis master, its replica and three sentinels on free ports, for the Sentinel
# tests (issue 26). Master name "outboxd"; quorum 2; down-after 1 s; append-only file with
# fsync always; 127.0.0.1 only.
#
#   scripts/redis-sentinel.sh start DIR     # prints "MASTER REPLICA S1 S2 S3"; waits for sync
#   scripts/redis-sentinel.sh master DIR    # the port the sentinels name as master now
#   scripts/redis-sentinel.sh kill PORT DIR # kill -9 the server on PORT
#   scripts/redis-sentinel.sh restart PORT DIR # start it again; waits until the
#                                           # sentinels made it a replica, in sync
#   scripts/redis-sentinel.sh stop DIR      # all down, DIR removed
set -euo pipefail
cmd=${1:?usage: scripts/redis-sentinel.sh start|master|kill PORT|restart PORT|stop DIR}
say() { echo "[redis-sentinel] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
server() { # port, extra arguments
    mkdir -p "$dir/$1"
    redis-server --port "$1" --bind 127.0.0.1 --dir "$dir/$1" --appendonly yes \
        --appendfsync always --save '' --daemonize yes --pidfile "$dir/$1/redis.pid" \
        --logfile "$dir/$1/redis.log" "${@:2}"
}

case $cmd in
start)
    dir=${2:?the directory}
    rm -rf "$dir"
    mkdir -p "$dir"
    m=$(free_port) r=$(free_port)
    server "$m"
    server "$r" --replicaof 127.0.0.1 "$m"
    sentinels=()
    for _ in 1 2 3; do
        s=$(free_port)
        mkdir -p "$dir/$s"
        cat >"$dir/$s/sentinel.conf" <<CONF
port $s
bind 127.0.0.1
daemonize yes
pidfile $dir/$s/redis.pid
logfile $dir/$s/redis.log
dir $dir/$s
sentinel monitor outboxd 127.0.0.1 $m 2
sentinel down-after-milliseconds outboxd 1000
sentinel failover-timeout outboxd 5000
CONF
        redis-server "$dir/$s/sentinel.conf" --sentinel
        sentinels+=("$s")
    done
    echo "$m $r ${sentinels[*]}" >"$dir/ports"
    for _ in $(seq 1 300); do
        cli "$r" info replication 2>/dev/null | grep -q 'master_link_status:up' && linked=1 || linked=0
        known=0
        for s in "${sentinels[@]}"; do
            n=$(cli "$s" sentinel master outboxd 2>/dev/null | awk 'f {print; exit} /^num-other-sentinels$/ {f=1}')
            [ "${n:-0}" = 2 ] && known=$((known + 1))
        done
        [ "$linked" = 1 ] && [ "$known" = 3 ] && break
        sleep 0.1
    done
    [ "$linked" = 1 ] && [ "$known" = 3 ] ||
        { say "replica not in sync or sentinels not acquainted; see $dir/*/redis.log"; exit 1; }
    cat "$dir/ports"
    ;;
master)
    dir=${2:?the directory}
    s=$(awk '{print $3}' "$dir/ports")
    cli "$s" sentinel get-master-addr-by-name outboxd | tail -1
    ;;
kill)
    port=${2:?the port}
    dir=${3:?the directory}
    kill -9 "$(cat "$dir/$port/redis.pid")"
    ;;
restart)
    port=${2:?the port}
    dir=${3:?the directory}
    server "$port"
    # Until it is a replica in sync again (the sentinels take about 10 s to reconfigure
    # a former master), so that the next failover has a replica to promote.
    for _ in $(seq 1 600); do
        cli "$port" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
        sleep 0.1
    done
    cli "$port" info replication 2>/dev/null | grep -q 'master_link_status:up' ||
        { say "$port did not come back as a replica in sync; see $dir/$port/redis.log"; exit 1; }
    ;;
stop)
    dir=${2:?the directory}
    for pid in "$dir"/*/redis.pid; do
        [ -f "$pid" ] && kill -9 "$(cat "$pid")" 2>/dev/null || true
    done
    rm -rf "$dir"
    ;;
*) say "unknown command $cmd"; exit 2 ;;
esac
