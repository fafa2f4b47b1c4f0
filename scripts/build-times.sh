#!/usr/bin/env bash
# What depending on outboxd costs an application's build: a minimal application (one
# `enqueue` in a transaction, `MIGRATOR.run`) built cold — debug, empty target directory,
# crates already downloaded — once with outboxd's default features (the whole relay) and
# once with `default-features = false` (the library alone). Prints the README's table:
# crates in the dependency tree and wall-clock build time. Takes about 7 minutes on 2 cores.
#
#   scripts/build-times.sh            # both rows
#   scripts/build-times.sh light      # only default-features = false
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
which=${1:-both}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sqlx_version=$(cargo metadata --format-version 1 --manifest-path "$repo/Cargo.toml" |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "sqlx"))')

app() { # name, the outboxd dependency line
    mkdir -p "$work/$1/src"
    cat >"$work/$1/Cargo.toml" <<EOF
[package]
name = "$1"
version = "0.1.0"
edition = "2024"

[dependencies]
$2
sqlx = { version = "=$sqlx_version", default-features = false, features = ["runtime-tokio", "postgres"] }
tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
serde_json = "1"
EOF
    cat >"$work/$1/src/main.rs" <<'EOF'
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    outboxd::MIGRATOR.run(&pool).await?;
    let mut tx = pool.begin().await?;
    let event = outboxd::NewEvent::builder("order", "o-1")
        .event_type("order.created")
        .topic("orders")
        .json(&serde_json::json!({"total": 12}))
        .build()?;
    outboxd::enqueue(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(())
}
EOF
}

measure() { # name, label
    local dir=$work/$1
    # The lock file and the downloads first, outside the timing.
    (cd "$dir" && cargo fetch -q)
    local crates
    crates=$(cd "$dir" && cargo tree -e normal,build --prefix none | sed 's/ (\*)$//' | sort -u | wc -l)
    local start end
    start=$(date +%s)
    (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build -q)
    end=$(date +%s)
    printf '| %s | %s | %s s |\n' "$2" "$crates" "$((end - start))"
}

echo "| outboxd dependency | crates in its tree | cold build |"
echo "|---|---|---|"
if [ "$which" != light ]; then
    app full "outboxd = { path = \"$repo\" }"
    measure full "default features (the whole relay and its three sinks)"
fi
app light "outboxd = { path = \"$repo\", default-features = false }"
measure light '`default-features = false`'
