# Sourced by the profiling scripts (callgrind-drain.sh, perf-drain.sh): a fresh database
# named DB beside DATABASE_URL's, migrated by BIN, holding ROWS pending rows as the
# benchmark writes them (500-byte JSON payloads over 10,000 aggregates) for TOPIC.
# Sets `url` to the new database's URL.
#
#   fresh_backlog DB ROWS TOPIC BIN
fresh_backlog() {
    local db=$1 rows=$2 topic=$3 bin=$4
    local admin=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
    url="${admin%/*}/$db"
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" 2>/dev/null
    OUTBOXD__DATABASE__URL=$url "$bin" migrate >/dev/null
    psql "$url" -qc "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, topic, payload)
      SELECT 'bench', 'agg-' || (s % 10000), 'bench.event', '$topic',
             jsonb_build_object('seq', s / 10000 + 1, 'pad', repeat('x', 468))
      FROM generate_series(0, $rows - 1) AS s" -qc "VACUUM ANALYZE outbox" >/dev/null
}
