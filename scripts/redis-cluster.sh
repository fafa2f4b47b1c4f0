#!/usr/bin/env bash
# A private Redis Cluster on free ports, for the cluster tests (issue 26): six
# redis-server --cluster-enabled yes (three masters, a replica each), append-only file with
# fsync always, on 127.0.0.1 only.
#
#   scripts/redis-cluster.sh start DIR        # prints the six ports; waits for cluster_state:ok
#                                             # and for every replica to be in sync
#   scripts/redis-cluster.sh masters DIR      # the ports of the current masters
#   scripts/redis-cluster.sh kill PORT DIR    # kill -9 the node on PORT (a master crash)
#   scripts/redis-cluster.sh restart PORT DIR # start it again; waits until it is a
#                                             # replica in sync (its slots failed over)
#   scripts/redis-cluster.sh stop DIR         # all down, DIR removed
set -euo pipefail
cmd=${1:?usage: scripts/redis-cluster.sh start|masters|kill PORT|restart PORT|stop DIR}
say() { echo "[redis-cluster] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ports() { cat "$dir/ports"; }
cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
node() { # port
    mkdir -p "$dir/$1"
    redis-server --port "$1" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$dir/$1/nodes.conf" --cluster-node-timeout 2000 \
        --dir "$dir/$1" --appendonly yes --appendfsync always --save '' \
        --daemonize yes --pidfile "$dir/$1/redis.pid" --logfile "$dir/$1/redis.log"
}

case $cmd in
start)
    dir=${2:?the directory of the cluster}
    rm -rf "$dir"
    mkdir -p "$dir"
    list=()
    for _ in 1 2 3 4 5 6; do
        # A cluster node also listens on port + 10000.
        while :; do
            p=$(free_port)
            [ "$p" -lt 55000 ] && break
        done
        node "$p"
        list+=("$p")
    done
    echo "${list[*]}" >"$dir/ports"
    for p in "${list[@]}"; do
        for _ in $(seq 1 100); do cli "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
    done
    hosts=()
    for p in "${list[@]}"; do hosts+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
        { say "cluster create failed; see $dir/create.log"; exit 1; }
    for _ in $(seq 1 200); do
        ok=0
        for p in "${list[@]}"; do
            cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
        done
        [ "$ok" = 6 ] && break
        sleep 0.1
    done
    [ "$ok" = 6 ] || { say "the cluster did not become ok; see $dir/*/redis.log"; exit 1; }
    # Every replica in sync with its master, else a master killed now has no replica that
    # may take over.
    for _ in $(seq 1 300); do
        up=0
        for p in "${list[@]}"; do
            cli "$p" info replication 2>/dev/null | grep -q 'master_link_status:up' && up=$((up + 1))
        done
        [ "$up" = 3 ] && break
        sleep 0.1
    done
    [ "$up" = 3 ] || { say "the replicas did not sync; see $dir/*/redis.log"; exit 1; }
    echo "${list[*]}"
    ;;
masters)
    dir=${2:?the directory of the cluster}
    for p in $(ports); do
        cli "$p" role 2>/dev/null | head -1 | grep -qx master && printf '%s ' "$p"
    done
    echo
    ;;
kill)
    port=${2:?the port of the node}
    dir=${3:?the directory of the cluster}
    kill -9 "$(cat "$dir/$port/redis.pid")"
    ;;
restart)
    port=${2:?the port of the node}
    dir=${3:?the directory of the cluster}
    node "$port"
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
    dir=${2:?the directory of the cluster}
    if [ -f "$dir/ports" ]; then
        for p in $(ports); do
            [ -f "$dir/$p/redis.pid" ] && kill -9 "$(cat "$dir/$p/redis.pid")" 2>/dev/null || true
        done
    fi
    rm -rf "$dir"
    ;;
*) say "unknown command $cmd"; exit 2 ;;
esac
