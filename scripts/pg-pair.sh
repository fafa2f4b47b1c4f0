#!/usr/bin/env bash
# A private PostgreSQL primary and a synchronous streaming replica on free ports, for the
# failover tests (issue 24): initdb, pg_basebackup -R, run as the postgres user from
# PostgreSQL's own bin directory. Both accept trust connections on 127.0.0.1 only; fsync
# stays on (a crash must lose only what was not acknowledged).
#
#   scripts/pg-pair.sh start DIR          # prints "PRIMARY_PORT REPLICA_PORT"; waits for sync
#   scripts/pg-pair.sh kill-primary DIR   # pg_ctl stop -m immediate (a crash)
#   scripts/pg-pair.sh stop-primary DIR   # pg_ctl stop -m fast (a planned switch-over)
#   scripts/pg-pair.sh promote DIR        # the replica becomes the primary
#   scripts/pg-pair.sh restart-primary DIR  # the old primary up again as it was (split brain)
#   scripts/pg-pair.sh kill-replica DIR   # the replica (or promoted primary) crashes
#   scripts/pg-pair.sh stop DIR           # both down, DIR removed
set -euo pipefail
cmd=${1:?usage: scripts/pg-pair.sh start|kill-primary|stop-primary|promote|restart-primary|kill-replica|stop DIR}
dir=${2:?the directory of the pair}
bin=/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -1)/bin
say() { echo "[pg-pair] $*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctl() { as_pg "$bin/pg_ctl" -D "$dir/$1" -l "$dir/$1.log" -w -t 60 "${@:2}" >/dev/null; }
sql="SELECT sync_state FROM pg_stat_replication WHERE application_name = 'replica'"
sync_state() { as_pg "$bin/psql" -h 127.0.0.1 -p "$1" -U postgres -Atc "$sql" 2>/dev/null || true; }

case $cmd in
start)
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    p=$(free_port) r=$(free_port)
    as_pg "$bin/initdb" -D "$dir/primary" -A trust -U postgres >/dev/null
    cat >>"$dir/primary/postgresql.conf" <<EOF
port = $p
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = 'replica'
synchronous_commit = on
EOF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' \
        >"$dir/primary/pg_hba.conf"
    ctl primary start
    as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$p" -U postgres -D "$dir/replica" -R -X stream
    # After pg_basebackup's own primary_conninfo in postgresql.auto.conf, which wins over
    # postgresql.conf: the replica's name for synchronous_standby_names.
    echo "port = $r" >>"$dir/replica/postgresql.conf"
    cat >>"$dir/replica/postgresql.auto.conf" <<EOF
primary_conninfo = 'host=127.0.0.1 port=$p user=postgres application_name=replica'
EOF
    ctl replica start
    for _ in $(seq 1 100); do
        state=$(sync_state "$p")
        [ "$state" = sync ] && break
        sleep 0.1
    done
    [ "$state" = sync ] || { say "the replica did not become synchronous; see $dir/*.log"; exit 1; }
    echo "$p $r"
    ;;
kill-primary) ctl primary stop -m immediate ;;
stop-primary) ctl primary stop -m fast ;;
restart-primary) ctl primary start ;;
kill-replica) ctl replica stop -m immediate ;;
promote)
    ctl replica promote
    # The new primary has no standby: it must not wait for one on every commit (the
    # configuration it inherited names its own name), as Patroni does when none is left.
    r=$(awk '$1 == "port" {p = $3} END {print p}' "$dir/replica/postgresql.conf")
    as_pg "$bin/psql" -h 127.0.0.1 -p "$r" -U postgres -qAt \
        -c "ALTER SYSTEM SET synchronous_standby_names = ''" -c "SELECT pg_reload_conf()" >/dev/null
    ;;
stop)
    for n in replica primary; do
        [ -f "$dir/$n/postmaster.pid" ] && ctl "$n" stop -m immediate || true
    done
    rm -rf "$dir"
    ;;
*) say "unknown command $cmd"; exit 2 ;;
esac
