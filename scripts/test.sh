#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs and starts what the tests need,
# then runs unit, integration and doc tests against the real PostgreSQL and broker, the
# library alone and each sink alone, the operations pack (deploy/check.sh, and
# deploy/image/check.sh for the container image's build and libraries), the example
# end to end (scripts/example.sh: API, relay into Redis, mailer with the inbox, two
# kill -9s) and the fault-injection harness's short profile (scripts/torture.sh short).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export OUTBOXD_TEST_BROKERS=${OUTBOXD_TEST_BROKERS:-127.0.0.1:9092}
# Databases left by interrupted earlier runs.
psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'outboxd_t_%'" |
    while read -r db; do psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done
mariadb --protocol=tcp -h 127.0.0.1 -u outboxd_test -poutboxd_test -Nse \
    "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'outboxd\\_t\\_%'" |
    while read -r db; do
        mariadb --protocol=tcp -h 127.0.0.1 -u outboxd_test -poutboxd_test -e "DROP DATABASE IF EXISTS \`$db\`"
    done
if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
# The workspace: the product (outboxd) and its test machinery (testkit/: the end-to-end
# tests, the fault harness, the benchmark, the demo).
cargo build --workspace --all-targets
# The product crate's shape: no module import cycle, no file over 700 lines, no test
# machinery in its dependency tree.
scripts/check-layout.sh
cargo nextest run --workspace --all-targets --no-fail-fast
cargo test --doc --workspace
# The docs: every public item documented (deny(missing_docs)), no broken links.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --no-default-features
# The operations pack, with the relay just built (the one-sink builds below replace it),
# named by a path relative to the repository as a newcomer's target/ is, wherever
# CARGO_TARGET_DIR puts it (CI's is outside the clone).
deploy/check.sh "$(realpath --relative-to=. "${CARGO_TARGET_DIR:-target}/debug/outboxd")"
# What an application builds (default-features = false): the library alone, without any
# of the relay's dependencies; and a relay with one sink, for each sink.
cargo nextest run --no-default-features --lib --test inbox --test enqueue
relay_only=$(cargo tree --no-default-features -e normal --prefix none |
    grep -E '^(rdkafka|redis|async-nats|ractor|axum|clap|governor|metrics|figment|rustls) ' | sort -u || true)
if [ -n "$relay_only" ]; then
    echo "the library without default features depends on relay crates: $relay_only" >&2
    exit 1
fi
# The pipeline's behaviour tests need neither a database nor a broker: the relay without
# any sink, on the in-memory store and sink, with the database URL pointing nowhere.
DATABASE_URL=postgres://nobody@127.0.0.1:9/unreachable \
    cargo nextest run --no-default-features --features relay --test pipeline
for sink in kafka redis nats; do
    cargo build --no-default-features --features "$sink" --bin outboxd
    cargo nextest run --no-default-features --features "$sink" --lib
done
# The container image: the Dockerfile's build command, the libraries the runtime provides.
deploy/image/check.sh
PROFILE=debug USERS=300 scripts/example.sh
scripts/torture.sh short
