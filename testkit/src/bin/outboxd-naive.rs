//! The naive relay: the one a team writes in an afternoon, as the benchmark's yardstick. An
//! independent program — it uses none of outboxd's code or settings — that loops:
//!
//! select the oldest ≤ 500 rows → produce them all (librdkafka's default producer
//! settings, the record keyed by aggregate id, the `event_id` header) → wait for every
//! acknowledgement → delete the acknowledged rows; sleep 100 ms when nothing was pending.
//!
//! No per-aggregate order under retries, no late-row tracking, no leases, no dead letters.
//!
//! The same loop on PostgreSQL or, for a `mariadb://` / `mysql://` URL, on MariaDB / MySQL
//! (sqlx's driver with its defaults).
//!
//! Every `--report-ms` it prints its counters as one JSON line on stdout (statements sent,
//! produce requests from librdkafka's statistics, events acknowledged, and a histogram of
//! each event's `created_at` → acknowledgement, like outboxd's), for the benchmark.
//!
//!   outboxd-naive --database-url postgres://… --brokers 127.0.0.1:9092

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Row;

#[derive(Parser)]
#[command(about = "The naive outbox relay (the benchmark's yardstick)")]
struct Args {
    /// The outbox's database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka's bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// Rows per cycle.
    #[arg(long, default_value_t = 500)]
    batch: i64,
    /// How often the counters are printed, ms (also librdkafka's statistics interval).
    #[arg(long, default_value_t = 250)]
    report_ms: u64,
    /// A librdkafka producer setting, KEY=VALUE (repeatable), for experiments: the
    /// benchmark's yardstick sets none.
    #[arg(long = "producer", value_parser = key_value)]
    producer: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

/// Counts produce requests from librdkafka's statistics.
struct Counting {
    produce_requests: Arc<AtomicI64>,
}

impl ClientContext for Counting {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let n: i64 = statistics
            .brokers
            .values()
            .filter_map(|b| b.req.get("Produce"))
            .sum();
        self.produce_requests.store(n, Ordering::Relaxed);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let produce_requests = Arc::new(AtomicI64::new(0));
    let context = Counting {
        produce_requests: produce_requests.clone(),
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("statistics.interval.ms", args.report_ms.to_string());
    for (k, v) in &args.producer {
        config.set(k, v);
    }
    let producer: FutureProducer<Counting> = config.create_with_context(context)?;
    let db = Db::connect(&args.database_url).await?;
    let statements = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(testkit::buckets::Buckets::new()));

    let (s, a, p, l) = (
        statements.clone(),
        acknowledged.clone(),
        produce_requests,
        latency.clone(),
    );
    let every = Duration::from_millis(args.report_ms);
    tokio::spawn(async move {
        use std::io::Write;
        loop {
            tokio::time::sleep(every).await;
            let line = serde_json::json!({
                "statements": s.load(Ordering::Relaxed),
                "produce_requests": p.load(Ordering::Relaxed),
                "acknowledged": a.load(Ordering::Relaxed),
                "ack": *l.lock().expect("latency"),
            });
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                std::process::exit(0);
            }
        }
    });

    loop {
        statements.fetch_add(1, Ordering::Relaxed);
        let rows = db.oldest(args.batch).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("naive relay: select failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let selected = rows.len();
        let sends = rows.into_iter().map(|row| {
            let Pending {
                id,
                key,
                topic,
                payload,
                event_id,
                created_us,
            } = row;
            let (producer, latency) = (&producer, &latency);
            async move {
                let headers = OwnedHeaders::new().insert(Header {
                    key: "event_id",
                    value: Some(&event_id),
                });
                let mut record = FutureRecord::to(&topic).key(&key).headers(headers);
                if let Some(p) = &payload {
                    record = record.payload(p);
                }
                let acked = producer.send(record, Duration::from_secs(0)).await.ok();
                if acked.is_some() {
                    let now_us = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64);
                    let seconds = (now_us - created_us).max(0) as f64 / 1e6;
                    latency.lock().expect("latency").record(seconds);
                }
                acked.map(|_| id)
            }
        });
        let acked: Vec<i64> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        if acked.len() < selected {
            eprintln!(
                "naive relay: {} of {selected} sends failed",
                selected - acked.len(),
            );
        }
        statements.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = db.delete(&acked).await {
            eprintln!("naive relay: delete failed: {e}");
        }
        acknowledged.fetch_add(acked.len() as u64, Ordering::Relaxed);
    }
}

/// A pending row as the loop sends it.
struct Pending {
    id: i64,
    key: String,
    topic: String,
    payload: Option<String>,
    event_id: String,
    /// `created_at`, µs since the epoch.
    created_us: i64,
}

/// The outbox's database, by the URL's scheme.
enum Db {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

impl Db {
    async fn connect(url: &str) -> anyhow::Result<Db> {
        Ok(
            if url.starts_with("mysql:") || url.starts_with("mariadb:") {
                // sqlx's MySQL driver reads mysql:// only.
                let url = url.replacen("mariadb:", "mysql:", 1);
                Db::MySql(
                    sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(1)
                        .connect(&url)
                        .await?,
                )
            } else {
                Db::Postgres(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .connect(url)
                        .await?,
                )
            },
        )
    }

    /// The oldest `limit` rows.
    async fn oldest(&self, limit: i64) -> Result<Vec<Pending>, sqlx::Error> {
        fn pending<R: Row>(row: &R) -> Pending
        where
            for<'a> &'a str: sqlx::ColumnIndex<R>,
            i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            Pending {
                id: row.get("id"),
                key: row.get("aggregate_id"),
                topic: row.get("topic"),
                payload: row.get("payload"),
                event_id: row.get("event_id"),
                created_us: row.get("created_us"),
            }
        }
        Ok(match self {
            Db::Postgres(pool) => sqlx::query(
                "SELECT id, aggregate_id, topic, payload::text AS payload, event_id::text AS event_id, \
                 (extract(epoch FROM created_at) * 1000000)::int8 AS created_us \
                 FROM outbox ORDER BY id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(pending)
            .collect(),
            Db::MySql(pool) => sqlx::query(
                "SELECT id, aggregate_id, topic, CAST(payload AS CHAR) AS payload, event_id, \
                 CAST(UNIX_TIMESTAMP(created_at) * 1000000 AS SIGNED) AS created_us \
                 FROM outbox ORDER BY id LIMIT ?",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(pending)
            .collect(),
        })
    }

    /// Deletes the rows `ids`.
    async fn delete(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        match self {
            Db::Postgres(pool) => {
                sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                    .bind(ids)
                    .execute(pool)
                    .await?;
            }
            Db::MySql(pool) if !ids.is_empty() => {
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM outbox WHERE id IN ({list})"
                )))
                .execute(pool)
                .await?;
            }
            Db::MySql(_) => {}
        }
        Ok(())
    }
}
