#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the TLS tests, beside the machine's own: its server
# certificate (for 127.0.0.1 and localhost) is signed by a CA made here, and it accepts only
# TLS connections that show a client certificate signed by that CA (pg_hba: hostssl … cert).
# The cluster belongs to the machine, not to a clone, so its files do too:
# $OUTBOXD_TEST_PG_TLS_DIR (default /var/lib/outboxd-tests/pg-tls) gets ca.crt,
# other-ca.crt (a CA that signed nothing), client.crt, client.key and port. Idempotent: the
# certificates and the cluster are made once, the cluster started when it is down.
set -euo pipefail
dir=${OUTBOXD_TEST_PG_TLS_DIR:-/var/lib/outboxd-tests/pg-tls}
name=outboxd_tls
port=${OUTBOXD_TLS_PG_PORT:-55433}
ver=$(ls /etc/postgresql | sort -n | tail -1)
say() { echo "[pg-tls] $*"; }
mkdir -p "$dir"
cd "$dir"

if [ ! -s client.ext ]; then
    say "making a test CA, a server certificate and a client certificate in $dir"
    quiet() { "$@" >/dev/null 2>&1; }
    quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outboxd test CA" \
        -keyout ca.key -out ca.crt
    quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=a CA that signed nothing" \
        -keyout other-ca.key -out other-ca.crt
    quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    # X.509 v3 with the usual extensions: rustls (webpki) refuses v1 certificates.
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext
    quiet openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile server.ext -out server.crt
    quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=postgres" -keyout client.key -out client.csr
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.ext
    quiet openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile client.ext -out client.crt
    chmod 600 ./*.key
fi

if ! pg_lsclusters --no-header | awk '{print $1 "/" $2}' | grep -qx "$ver/$name"; then
    say "creating PostgreSQL cluster $ver/$name on port $port"
    pg_createcluster "$ver" "$name" -p "$port" >/dev/null
    conf=/etc/postgresql/$ver/$name
    data=$(pg_lsclusters --no-header | awk -v v="$ver" -v n="$name" '$1 == v && $2 == n {print $6}')
    cat >>"$conf/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
ssl = on
ssl_cert_file = '$data/server.crt'
ssl_key_file = '$data/server.key'
ssl_ca_file = '$data/ca.crt'
fsync = off
EOF
    cat >"$conf/pg_hba.conf" <<EOF
local   all all                 trust
hostssl all outboxd_pw 127.0.0.1/32 scram-sha-256
hostssl all all 127.0.0.1/32    cert
EOF
fi
data=$(pg_lsclusters --no-header | awk -v v="$ver" -v n="$name" '$1 == v && $2 == n {print $6}')
if ! cmp -s ca.crt "$data/ca.crt" || ! cmp -s server.crt "$data/server.crt"; then
    install -o postgres -g postgres -m 600 server.key "$data/server.key"
    install -o postgres -g postgres -m 644 server.crt "$data/server.crt"
    install -o postgres -g postgres -m 644 ca.crt "$data/ca.crt"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload 2>/dev/null || true
fi
port=$(pg_lsclusters --no-header | awk -v v="$ver" -v n="$name" '$1 == v && $2 == n {print $3}')
if ! pg_lsclusters --no-header | awk -v v="$ver" -v n="$name" '$1 == v && $2 == n {print $4}' | grep -qx online; then
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
fi
# A role that logs in with a password (over TLS), for the password tests.
psql -q -p "$port" -U postgres -h /var/run/postgresql -d postgres -v ON_ERROR_STOP=1 >/dev/null <<'EOF'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outboxd_pw') THEN
    CREATE ROLE outboxd_pw LOGIN PASSWORD 'correct-horse-battery-staple';
  END IF;
END $$;
EOF
echo "$port" >port
