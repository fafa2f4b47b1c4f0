#!/usr/bin/env bash
# A private three-node NATS cluster with JetStream on free ports, for the cluster tests
# (issue 26), on the current nats-server that scripts/setup.sh installs
# (.tools/bin/nats-server-current: 2.9 can lose a message on a JetStream leader change).
#
#   scripts/nats-cluster.sh start DIR       # prints the three client ports; waits for a meta leader
#   scripts/nats-cluster.sh kill PORT DIR   # kill -9 the node with this client port
#   scripts/nats-cluster.sh restart PORT DIR  # start it again on its store
#   scripts/nats-cluster.sh stop DIR        # all down, DIR removed
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?usage: scripts/nats-cluster.sh start|kill PORT|restart PORT|stop DIR}
bin=$PWD/.tools/bin/nats-server-current
say() { echo "[nats-cluster] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
node() { # client port: starts the node from its configuration
    setsid "$bin" -c "$dir/$1/nats.conf" >"$dir/$1/nats.log" 2>&1 </dev/null &
    echo $! >"$dir/$1/pid"
}
healthy() { # client port: JetStream up with a meta leader
    curl -fsS "http://127.0.0.1:$(cat "$dir/$1/monitor")/healthz?js-enabled-only=true" >/dev/null 2>&1 &&
        curl -fsS "http://127.0.0.1:$(cat "$dir/$1/monitor")/jsz" 2>/dev/null | grep -q '"leader"'
}

case $cmd in
start)
    dir=${2:?the directory}
    [ -x "$bin" ] || { say "no $bin: run scripts/setup.sh"; exit 1; }
    rm -rf "$dir"
    mkdir -p "$dir"
    clients=() routes=()
    for i in 1 2 3; do
        c=$(free_port) r=$(free_port) m=$(free_port)
        mkdir -p "$dir/$c"
        echo "$r" >"$dir/$c/route"
        echo "$m" >"$dir/$c/monitor"
        clients+=("$c")
        routes+=("nats-route://127.0.0.1:$r")
    done
    for i in 0 1 2; do
        c=${clients[$i]}
        cat >"$dir/$c/nats.conf" <<CONF
server_name: n$((i + 1))
listen: 127.0.0.1:$c
http: 127.0.0.1:$(cat "$dir/$c/monitor")
jetstream { store_dir: "$dir/$c/js" }
cluster {
  name: outboxd
  listen: 127.0.0.1:$(cat "$dir/$c/route")
  routes: [ $(IFS=,; echo "${routes[*]}") ]
}
CONF
        node "$c"
    done
    echo "${clients[*]}" >"$dir/ports"
    for _ in $(seq 1 300); do
        ok=0
        for c in "${clients[@]}"; do healthy "$c" && ok=$((ok + 1)); done
        [ "$ok" = 3 ] && break
        sleep 0.1
    done
    [ "$ok" = 3 ] || { say "JetStream did not come up on all three; see $dir/*/nats.log"; exit 1; }
    echo "${clients[*]}"
    ;;
kill)
    port=${2:?the client port}
    dir=${3:?the directory}
    kill -9 "$(cat "$dir/$port/pid")"
    ;;
restart)
    port=${2:?the client port}
    dir=${3:?the directory}
    node "$port"
    for _ in $(seq 1 300); do healthy "$port" && exit 0; sleep 0.1; done
    say "node $port did not come back; see $dir/$port/nats.log"
    exit 1
    ;;
stop)
    dir=${2:?the directory}
    for pid in "$dir"/*/pid; do
        [ -f "$pid" ] && kill -9 "$(cat "$pid")" 2>/dev/null || true
    done
    rm -rf "$dir"
    ;;
*) say "unknown command $cmd"; exit 2 ;;
esac
