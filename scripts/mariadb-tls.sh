#!/usr/bin/env bash
# A throwaway MariaDB for the TLS tests, beside the machine's own (which has TLS off): it
# listens on 127.0.0.1 and 127.0.0.2, accepts only TLS connections (require_secure_transport),
# and shows the server certificate that scripts/pg-tls-cluster.sh made (for 127.0.0.1 and
# localhost, signed by the test CA), so 127.0.0.2 is a host the certificate does not name.
# Users: outboxd_tls (password correct-horse-battery-staple) and outboxd_x509 (no password,
# a client certificate signed by the test CA required). Files in $OUTBOXD_TEST_MARIADB_TLS_DIR
# (default /var/lib/outboxd-tests/mariadb-tls): data/, the server's log, and port.
# Idempotent: the data directory is made once, the server started when it is down.
set -euo pipefail
pki=${OUTBOXD_TEST_PG_TLS_DIR:-/var/lib/outboxd-tests/pg-tls}
dir=${OUTBOXD_TEST_MARIADB_TLS_DIR:-/var/lib/outboxd-tests/mariadb-tls}
port=${OUTBOXD_TLS_MARIADB_PORT:-3307}
say() { echo "[mariadb-tls] $*"; }
[ -s "$pki/server.crt" ] || { say "no test certificates in $pki: run scripts/pg-tls-cluster.sh"; exit 1; }
mkdir -p "$dir"
chown mysql:mysql "$dir"  # the server writes its socket, pid file and log here
cd "$dir"
# The server runs as mysql and reads its own copies of the certificate files.
install -o mysql -g mysql -m 600 "$pki/server.key" server.key
install -o mysql -g mysql -m 644 "$pki/server.crt" server.crt
install -o mysql -g mysql -m 644 "$pki/ca.crt" ca.crt

if [ ! -d data/mysql ]; then
    say "creating a MariaDB data directory in $dir/data"
    mkdir -p data
    chown mysql:mysql data
    mariadb-install-db --no-defaults --user=mysql --datadir="$dir/data" \
        --auth-root-authentication-method=socket >"$dir/install.log" 2>&1 ||
        { say "mariadb-install-db failed; see $dir/install.log"; exit 1; }
fi

up() { mariadb-admin --no-defaults --socket="$dir/sock" -u root ping >/dev/null 2>&1; }
if ! up; then
    say "starting MariaDB with TLS only on 127.0.0.1:$port and 127.0.0.2:$port"
    nohup setsid mariadbd --no-defaults --user=mysql --datadir="$dir/data" \
        --port="$port" --bind-address=127.0.0.1,127.0.0.2 --socket="$dir/sock" \
        --pid-file="$dir/mariadbd.pid" --log-error="$dir/mariadbd.log" \
        --ssl-cert="$dir/server.crt" --ssl-key="$dir/server.key" --ssl-ca="$dir/ca.crt" \
        --require-secure-transport=ON --innodb-buffer-pool-size=32M \
        --innodb-flush-log-at-trx-commit=0 --skip-name-resolve \
        >/dev/null 2>&1 </dev/null &
    for _ in $(seq 1 120); do up && break; sleep 0.5; done
    up || { say "MariaDB with TLS did not start; see $dir/mariadbd.log"; exit 1; }
fi
mariadb --no-defaults --socket="$dir/sock" -u root <<'EOF'
CREATE USER IF NOT EXISTS 'outboxd_tls'@'127.0.0.%' IDENTIFIED BY 'correct-horse-battery-staple';
CREATE USER IF NOT EXISTS 'outboxd_x509'@'127.0.0.%' REQUIRE X509;
GRANT ALL PRIVILEGES ON *.* TO 'outboxd_tls'@'127.0.0.%';
GRANT ALL PRIVILEGES ON *.* TO 'outboxd_x509'@'127.0.0.%';
EOF
echo "$port" >port
