#!/usr/bin/env bash
# The whole flow on one machine: sets up PostgreSQL and the sink's server, builds outboxd
# with that one sink, and runs `outboxd-demo` (100,000 events over 1,000 aggregates,
# verified). Extra arguments go to the demo, e.g. scripts/demo.sh --events 20000;
# scripts/demo.sh --sink redis or --sink nats publishes to Redis Streams or NATS JetStream;
# scripts/demo.sh --sink redis-cluster to a private six-node Redis Cluster it starts;
# scripts/demo.sh --database mariadb writes the events to (and relays them from) the local
# MariaDB instead of PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
sink=kafka
database=postgres
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --sink) sink=${args[$((i + 1))]:-} ;;
        --sink=*) sink=${args[$i]#--sink=} ;;
        --database) database=${args[$((i + 1))]:-} ;;
        --database=*) database=${args[$i]#--database=} ;;
    esac
done
# A Redis Cluster is the Redis sink on a cluster the demo starts (--redis-cluster).
if [ "$sink" = redis-cluster ]; then
    sink=redis
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[$i]}" in
            redis-cluster) args[i]=redis ;;
            --sink=redis-cluster) args[i]=--sink=redis ;;
        esac
    done
    args+=(--redis-cluster)
fi
scripts/setup.sh demo "$sink" "$database"
target=${CARGO_TARGET_DIR:-target}
# The demo is the testkit's (testkit/src/demo.rs), with only the sink shown: a Redis or
# NATS demo builds no librdkafka, a Kafka one no Redis or NATS client; the demo profile
# (Cargo.toml) trades a little speed for build time.
cargo build --profile demo -p outboxd-testkit --no-default-features --features "$sink" --bin outboxd-demo
# The configuration is checked before the demo reads --sink: name the sink there too.
OUTBOXD__SINK__KIND=$sink exec "$target/demo/outboxd-demo" "${args[@]}"
