#!/usr/bin/env bash
# The example end to end (examples/README.md): users-api writes users and their
# user.created events in one transaction, `outboxd run` relays them to the Redis stream
# user:events, welcome-mailer consumes them through the inbox. Users are posted over HTTP
# while the mailer and the relay are each killed with kill -9 once and restarted, and the
# mailer's Redis and database connections are cut; then it checks that every user got
# exactly one welcome mail and nothing is left pending in the consumer group. Prints a
# report; exits non-zero on any mismatch. The checks are the testkit's outboxd-example
# (testkit/src/bin/outboxd-example.rs); this builds the programs and runs it.
#
# Resets the database outboxd_example and the Redis keys user:events and
# welcome-mailer:dead-letters. Environment: USERS (default 300), DATABASE_URL (the server,
# default postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL (default
# redis://127.0.0.1:6379), PROFILE (release, or debug as scripts/test.sh uses).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
scripts/setup.sh example
flag=(); [ "$PROFILE" = release ] && flag=(--release)
# One build of the workspace, as scripts/test.sh builds it, so nothing is built twice.
cargo build "${flag[@]}" --workspace --bin outboxd --bin outboxd-example \
    --example users-api --example welcome-mailer
exec "${CARGO_TARGET_DIR:-target}/$PROFILE/outboxd-example"
