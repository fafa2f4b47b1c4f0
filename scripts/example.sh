#!/usr/bin/env bash
# The example end to end (examples/README.md): users-api writes users and their
# user.created events in one transaction, `outboxd run` relays them to the Redis stream
# user:events, welcome-mailer consumes them through the inbox. Users are posted over HTTP
# while the mailer and the relay are each killed with kill -9 once and restarted, and the
# mailer's Redis and database connections are cut; then it checks that every user got
# exactly one welcome mail and nothing is left pending in the consumer group. Prints a
# report; exits non-zero on any mismatch.
#
# Resets the database outboxd_example and the Redis keys user:events and
# welcome-mailer:dead-letters. Environment: USERS (default 300), DATABASE_URL (the server,
# default postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL (default
# redis://127.0.0.1:6379), PROFILE (release, or debug as scripts/test.sh uses).
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-300}
PROFILE=${PROFILE:-release}
ADMIN_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DB_URL="${ADMIN_URL%/*}/outboxd_example"
API=127.0.0.1:18080
RELAY_HTTP=127.0.0.1:18464
STREAM=user:events
GROUP=welcome-mailer

say() { echo "[example] $*"; }
fail() { echo "[example] FAILED: $*" >&2; echo "[example] logs in $work" >&2; exit 1; }
rcli() { redis-cli -u "$REDIS_URL" "$@"; }
sql() { psql "$DB_URL" -Atqc "$1"; }

scripts/setup.sh
target=${CARGO_TARGET_DIR:-target}/$PROFILE
flag=(); [ "$PROFILE" = release ] && flag=(--release)
cargo build "${flag[@]}" --bin outboxd --example users-api --example welcome-mailer

work=$(mktemp -d /tmp/outboxd-example.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

PGOPTIONS='-c client_min_messages=warning' psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS outboxd_example WITH (FORCE)" -c "CREATE DATABASE outboxd_example" >/dev/null
rcli DEL "$STREAM" welcome-mailer:dead-letters >/dev/null

export OUTBOXD__DATABASE__URL=$DB_URL OUTBOXD__SINK__KIND=redis OUTBOXD__REDIS__URL=$REDIS_URL \
    OUTBOXD__METRICS__LISTEN=$RELAY_HTTP
"$target/outboxd" migrate >/dev/null

# Each starter runs one process in the background, logging to $work/<name>.log.
relay_runs=0 mailer_runs=0
start_relay() {
    relay_runs=$((relay_runs + 1))
    "$target/outboxd" run >"$work/relay-$relay_runs.log" 2>&1 &
    relay=$!; pids+=("$relay")
}
start_mailer() {
    mailer_runs=$((mailer_runs + 1))
    # A new name per run, as a new pod would have: the dead member's entries must be taken
    # over by XAUTOCLAIM, not re-read under its old name. SEND_DELAY_MS plays a slow mail
    # server, so that the kill always finds entries read but not yet acknowledged.
    DATABASE_URL=$DB_URL REDIS_URL=$REDIS_URL CONSUMER="mailer-$mailer_runs" CLAIM_IDLE_MS=2000 \
        SEND_DELAY_MS=20 "$target/examples/welcome-mailer" >"$work/mailer-$mailer_runs.log" 2>&1 &
    mailer=$!; pids+=("$mailer")
}
wait_for() { # what, url, expected status
    for _ in $(seq 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$2")" = "$3" ] && return 0
        sleep 0.1
    done
    fail "$1 did not answer $3 at $2"
}
post_users() { # post users $1..$2, four at a time; every status goes to $work/created
    seq "$1" "$2" | xargs -P 4 -I{} curl -s -o /dev/null -w '%{http_code}\n' \
        -H 'content-type: application/json' \
        -d '{"name":"User {}","email":"user-{}@example.com"}' "http://$API/users" >>"$work/created"
}
declare -A answered # status → how many expected answers had it, for the report
expect() { # status, what, curl arguments...: the answer must have that status and a JSON error
    local status=$1 what=$2; shift 2
    answered[$status]=$(( ${answered[$status]:-0} + 1 ))
    local got; got=$(curl -s -o "$work/body" -w '%{http_code}' "$@")
    [ "$got" = "$status" ] || fail "$what: expected $status, got $got ($(cat "$work/body"))"
    [ "$status" -lt 400 ] || grep -q '"error"' "$work/body" || fail "$what: no JSON error: $(cat "$work/body")"
}
pending_of() { # entries the member $1 holds unacknowledged
    echo $(( $(rcli XPENDING "$STREAM" "$GROUP" - + 100000 "$1" | wc -l) / 4 ))
}

start_relay
DATABASE_URL=$DB_URL LISTEN=$API "$target/examples/users-api" >"$work/api.log" 2>&1 &
pids+=($!)
start_mailer
wait_for users-api "http://$API/health" 200
wait_for "the relay" "http://$RELAY_HTTP/readyz" 200

say "bad requests are refused and write nothing"
json=(-H 'content-type: application/json')
expect 400 "a body that is not JSON" "${json[@]}" -d 'not json' "http://$API/users"
expect 415 "no JSON content type" -d '{"name":"A","email":"a@example.com"}' "http://$API/users"
expect 422 "a missing email" "${json[@]}" -d '{"name":"A"}' "http://$API/users"
expect 422 "an invalid email" "${json[@]}" -d '{"name":"A","email":"not-an-address"}' "http://$API/users"
expect 422 "an empty name" "${json[@]}" -d '{"name":" ","email":"a@example.com"}' "http://$API/users"
expect 422 "a NUL character" "${json[@]}" -d '{"name":"A\u0000B","email":"a@example.com"}' "http://$API/users"
expect 422 "a name of 201 characters" "${json[@]}" \
    -d "{\"name\":\"$(printf 'n%.0s' $(seq 201))\",\"email\":\"a@example.com\"}" "http://$API/users"
expect 422 "an email of 255 characters" "${json[@]}" \
    -d "{\"name\":\"A\",\"email\":\"$(printf 'e%.0s' $(seq 243))@example.com\"}" "http://$API/users"
grep -q 'longer than 254' "$work/body" || fail "the email's length is what is refused: $(cat "$work/body")"
expect 404 "an unknown user" "http://$API/users/$(cat /proc/sys/kernel/random/uuid)"
expect 404 "a user id that is not one" "http://$API/users/nope"
[ "$(sql 'SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM outbox)')" = 0 ] ||
    fail "a refused request wrote a user or an event"
# An API whose database does not answer says so.
DATABASE_URL=postgres://postgres@127.0.0.1:1/none LISTEN=127.0.0.1:18081 \
    "$target/examples/users-api" >"$work/api-no-db.log" 2>&1 &
pids+=($!)
wait_for "users-api without a database" "http://127.0.0.1:18081/health" 503
expect 503 "health without a database" "http://127.0.0.1:18081/health"
grep -qx '{"error":"database unavailable"}' "$work/body" ||
    fail "/health must not show the database's own words: $(cat "$work/body")"
expect 503 "a user posted while the database is down" "${json[@]}" \
    -d '{"name":"A","email":"a@example.com"}' "http://127.0.0.1:18081/users"

third=$((USERS / 3))
say "posting users 1..$third; kill -9 of the mailer mid-way"
post_users 1 "$third" &
posting=$!
sleep 0.3
# Kill it while it holds entries it has read and not acknowledged: SEND_DELAY_MS keeps it
# behind the posting, so each read takes more than the one before; wait for a handful.
for _ in $(seq 100); do [ "$(pending_of mailer-1)" -ge 5 ] && break; sleep 0.05; done
kill -9 "$mailer"; wait "$mailer" 2>/dev/null || true
wait "$posting"
left_by_mailer=$(pending_of mailer-1)
[ "$left_by_mailer" -gt 0 ] || fail "the killed mailer held nothing unacknowledged: the take-over is not exercised"
say "the killed mailer left $left_by_mailer entries unacknowledged; starting another"
start_mailer
expect 409 "an email already taken" "${json[@]}" -d '{"name":"Again","email":"user-1@example.com"}' "http://$API/users"
expect 409 "an email taken in other letters" "${json[@]}" -d '{"name":"Again","email":"User-1@Example.com"}' "http://$API/users"

say "posting users $((third + 1))..$((2 * third)); kill -9 of the relay mid-way"
post_users $((third + 1)) $((2 * third)) &
posting=$!
sleep 0.3
kill -9 "$relay"; wait "$relay" 2>/dev/null || true
sleep 1
start_relay
wait "$posting"

say "posting users $((2 * third + 1))..$USERS; the mailer's Redis and database connections cut mid-way"
post_users $((2 * third + 1)) "$USERS" &
posting=$!
sleep 0.3
rcli CLIENT KILL TYPE normal SKIPME yes >/dev/null
sql "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '$GROUP'" >/dev/null
wait "$posting"

created=$(grep -c '^201$' "$work/created" || true)
[ "$created" = "$USERS" ] || fail "$created of $USERS users created: $(sort "$work/created" | uniq -c | tr '\n' ' ')"
some=$(sql "SELECT id FROM users WHERE email = 'user-7@example.com'")
expect 200 "an existing user" "http://$API/users/$some"
grep -q '"email":"user-7@example.com"' "$work/body" || fail "GET /users/$some answered $(cat "$work/body")"

say "waiting for every welcome mail"
done_at=$((SECONDS + 120))
while :; do
    mailed=$(sql "SELECT count(DISTINCT user_id) FROM welcome_mail")
    outbox=$(sql "SELECT count(*) FROM outbox")
    pending=$(rcli XPENDING "$STREAM" "$GROUP" | head -1)
    [ "$mailed" = "$USERS" ] && [ "$outbox" = 0 ] && [ "$pending" = 0 ] && break
    [ $SECONDS -lt $done_at ] || fail "after 120 s: $mailed of $USERS users mailed, $outbox events in the outbox, $pending entries pending"
    sleep 0.5
done
sleep 1 # anything still arriving would show as a duplicate below

mails=$(sql "SELECT count(*) FROM welcome_mail")
missing=$(sql "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM welcome_mail m WHERE m.user_id = u.id)")
twice=$(sql "SELECT count(*) FROM (SELECT user_id FROM welcome_mail GROUP BY user_id HAVING count(*) > 1) d")
strays=$(sql "SELECT count(*) FROM welcome_mail m WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id AND u.email = m.email)")
pending=$(rcli XPENDING "$STREAM" "$GROUP" | head -1)
entries=$(rcli XLEN "$STREAM")
dead=$(rcli XLEN welcome-mailer:dead-letters)
skipped=$(cat "$work"/mailer-*.log | grep -c 'Duplicate delivery skipped' || true)
taken=$(cat "$work"/mailer-*.log | grep 'Took over' | grep -o 'entries=[0-9]*' | awk -F= '{n += $2} END {print n + 0}')

cat <<EOF
[example] report
  users created                     $USERS (refused: $(( ${answered[400]:-0} + ${answered[415]:-0} + ${answered[422]:-0} )) bad bodies, ${answered[409]:-0} emails taken, ${answered[503]:-0} answers with the database down)
  stream entries in $STREAM    $entries (the relay resent $((entries - USERS)) after its kill -9)
  welcome mails                     $mails
  users without a mail              $missing
  users with more than one mail     $twice
  mails to no such user             $strays
  left unacknowledged by the killed mailer   $left_by_mailer (entries taken over by XAUTOCLAIM: $taken)
  duplicate deliveries skipped by the inbox  $skipped
  pending in group $GROUP    $pending
  dead letters                      $dead
EOF
[ "$mails" = "$USERS" ] && [ "$missing" = 0 ] && [ "$twice" = 0 ] && [ "$strays" = 0 ] &&
    [ "$pending" = 0 ] && [ "$dead" = 0 ] || fail "the mails do not match the users (see the report)"
say "PASSED: every user got exactly one welcome mail; nothing pending"
rm -rf "$work"
