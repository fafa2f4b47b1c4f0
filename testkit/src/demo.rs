//! `outboxd-demo [--sink kafka|redis|nats] [--database postgres|mariadb]` (scripts/demo.sh):
//! the whole flow on one machine. Starts (or reuses) the local Kafka broker, or uses the
//! Redis / NATS of the configuration, recreates a demo database on PostgreSQL or MariaDB,
//! writes events through the library API from concurrent
//! writers, runs the relay in-process, shows progress, reads the topic / stream back with
//! a consumer of that sink and verifies: delivered, lost, reordered, duplicates,
//! throughput, commit→ack latency.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use crate::verify::{self, Ledger};
use outboxd::actors::{Delivered, Hooks};
use outboxd::config::Config;
use outboxd::db::Backend;
use outboxd::relay::{Relay, RelayOptions};
use outboxd::{NewEvent, SinkKind, enqueue_batch};

/// `outboxd-demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Events to write.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Aggregates they are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub aggregates: u32,
    /// Concurrent writers (each owns a share of the aggregates).
    #[arg(long, default_value_t = 8)]
    pub writers: u32,
    /// Events per writing transaction.
    #[arg(long, default_value_t = 20)]
    pub per_transaction: u32,
    /// The database: postgres (the server of database.url) or mariadb (database.url's
    /// server when it is a mariadb:// or mysql:// URL, else the local MariaDB as the user
    /// scripts/setup.sh creates); default: the kind database.url names.
    #[arg(long, value_parser = ["postgres", "mariadb"])]
    pub database: Option<String>,
    /// Database to (re)create for the demo, on that server.
    #[arg(long, default_value = "outboxd_demo")]
    pub database_name: String,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 8)]
    pub topic_partitions: i32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// The sink to publish to: kafka (a local Tansu is started if nothing listens on
    /// kafka.brokers), redis (redis.url) or nats (nats.url, JetStream on); default
    /// sink.kind.
    #[arg(long, value_parser = parse_sink)]
    pub sink: Option<SinkKind>,
    /// With the Redis sink: start a private six-node Redis Cluster
    /// (scripts/redis-cluster.sh; three masters, a replica each) and publish to it with
    /// `redis.cluster = true` and `redis.wait_replicas = 1`, the aggregates spread over
    /// 16 streams (so over every master's slots). `scripts/demo.sh --sink redis-cluster`.
    #[arg(long)]
    pub redis_cluster: bool,
}

/// Streams the Redis Cluster demo spreads its aggregates over.
const CLUSTER_STREAMS: u32 = 16;

/// The local MariaDB as `scripts/setup.sh` prepares it (user `outboxd_test`).
pub const LOCAL_MARIADB: &str = "mariadb://outboxd_test:outboxd_test@127.0.0.1:3306/mysql";

/// The server the demo makes its database on: `--database`, else `database.url`'s kind.
fn demo_server(url: &str, database: Option<&str>) -> anyhow::Result<String> {
    let mysql = Backend::of(url) == Some(Backend::MySql);
    Ok(match database {
        Some("mariadb") if !mysql => LOCAL_MARIADB.to_string(),
        Some("postgres") if mysql => anyhow::bail!(
            "--database postgres, but database.url names a MariaDB/MySQL server: \
             set database.url (OUTBOXD__DATABASE__URL) to a PostgreSQL one"
        ),
        _ => url.to_string(),
    })
}

/// The demo's database, written through the library's `enqueue_batch` on either driver.
enum DemoDb {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

impl DemoDb {
    async fn connect(url: &str, max: u32) -> anyhow::Result<DemoDb> {
        Ok(if Backend::of(url) == Some(Backend::MySql) {
            DemoDb::MySql(crate::backlog::connect_mysql(url, max).await?)
        } else {
            DemoDb::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max)
                    .connect(url)
                    .await?,
            )
        })
    }

    /// The events in one transaction, committed; their ids.
    async fn write(&self, events: &[NewEvent]) -> anyhow::Result<Vec<Uuid>> {
        Ok(match self {
            DemoDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let ids = enqueue_batch(&mut *tx, events).await?;
                tx.commit().await?;
                ids
            }
            DemoDb::MySql(pool) => {
                let mut tx = pool.begin().await?;
                let ids = enqueue_batch(&mut *tx, events).await?;
                tx.commit().await?;
                ids
            }
        })
    }
}

/// A sink by its name (`kafka`, `redis`, `nats`), for command-line arguments.
pub fn parse_sink(s: &str) -> Result<SinkKind, String> {
    SinkKind::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("{s:?} is not a sink (kafka, redis, nats)"))
}

/// Runs the demo; exit 0 when the verification passes.
pub async fn run(config: Config, args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.writers > 0 && args.aggregates > 0,
        "writers and aggregates must be > 0"
    );
    let mut config = config;
    let kind = args.sink.unwrap_or(config.sink.kind);
    config.sink.kind = kind;
    #[cfg(feature = "kafka")]
    let brokers = config.kafka.brokers.clone();
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    // A Tansu the demo started, stopped when dropped.
    let mut _broker: Option<Option<crate::broker::LocalBroker>> = None;
    anyhow::ensure!(
        !args.redis_cluster || kind == SinkKind::Redis,
        "--redis-cluster goes with --sink redis"
    );
    // The Redis Cluster the demo started, stopped when dropped.
    #[cfg(feature = "redis")]
    let mut _cluster: Option<crate::redistopo::RedisCluster> = None;
    let (topic, destination) = match kind {
        #[cfg(feature = "kafka")]
        SinkKind::Kafka => {
            let b = brokers.clone();
            _broker =
                Some(tokio::task::spawn_blocking(move || crate::broker::ensure_local(&b)).await??);
            let topic = format!("outboxd-demo-{stamp}");
            verify::create_topic(&brokers, &topic, args.topic_partitions).await?;
            let d = format!("Kafka topic {topic} ({} partitions)", args.topic_partitions);
            (topic, d)
        }
        #[cfg(feature = "redis")]
        SinkKind::Redis if args.redis_cluster => {
            let dir = std::env::temp_dir().join("outboxd-demo-redis-cluster");
            let cluster =
                tokio::task::spawn_blocking(move || crate::redistopo::RedisCluster::start(&dir))
                    .await??;
            config.redis.url = cluster.seeds();
            config.redis.cluster = true;
            config.redis.wait_replicas = 1;
            let topic = format!("outboxd:demo:{stamp}");
            let d = format!(
                "{CLUSTER_STREAMS} Redis streams {topic}:0..{} on a Redis Cluster of 3 masters \
                 and 3 replicas at {} (WAIT 1 after each pipeline)",
                CLUSTER_STREAMS - 1,
                config.redis.url
            );
            _cluster = Some(cluster);
            (topic, d)
        }
        #[cfg(feature = "redis")]
        SinkKind::Redis => {
            let topic = format!("outboxd:demo:{stamp}");
            let d = format!(
                "Redis stream {topic} at {}",
                outboxd::secrets::redact(&config.redis.url)
            );
            (topic, d)
        }
        #[cfg(feature = "nats")]
        SinkKind::Nats => {
            let topic = format!("outboxd.demo.{stamp}");
            verify::create_nats_stream(
                &config.nats.url,
                &format!("OUTBOXD_DEMO_{stamp}"),
                &[&topic],
                Duration::from_secs(120),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the demo's JetStream stream: {e}"))?;
            let d = format!("NATS JetStream stream OUTBOXD_DEMO_{stamp}, subject {topic}");
            (topic, d)
        }
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "this outboxd was built without the {other} sink (Cargo feature `{other}`)"
        ),
    };
    let server = demo_server(&config.database.url, args.database.as_deref())?;
    let url = crate::backlog::fresh_database(&server, &args.database_name).await?;
    let backend = Backend::of(&url).unwrap_or(Backend::Postgres);
    eprintln!(
        "outboxd demo: {} events over {} aggregates from {} writers -> {destination}, {} database {}",
        args.events,
        args.aggregates,
        args.writers,
        backend.name(),
        outboxd::secrets::redact(&url)
    );

    let acks: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let hook_acks = acks.clone();
    let hook_count = delivered.clone();
    let hooks = Hooks {
        on_delivered: Some(Arc::new(move |batch: &[Delivered]| {
            let mut m = hook_acks.lock().expect("acks");
            for d in batch {
                m.entry(d.row.event_id).or_insert(d.acked_at);
            }
            hook_count.store(m.len() as u64, Ordering::Relaxed);
        })),
        ..Default::default()
    };
    let mut relay_cfg = config.clone();
    relay_cfg.database.url = url.clone();
    relay_cfg.metrics.listen = String::new();
    let relay = Relay::start(
        relay_cfg,
        RelayOptions {
            hooks,
            ..Default::default()
        },
    )
    .await?;

    let db = Arc::new(DemoDb::connect(&url, args.writers + 1).await?);
    // The destinations: the topic, or on a Redis Cluster the topic's streams.
    let streams: Vec<String> = if args.redis_cluster {
        (0..CLUSTER_STREAMS)
            .map(|i| format!("{topic}:{i}"))
            .collect()
    } else {
        vec![topic.clone()]
    };
    let written = Arc::new(AtomicU64::new(0));
    let commits: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let share = args.events / u64::from(args.writers)
            + u64::from(u64::from(w) < args.events % u64::from(args.writers));
        let own: Vec<u32> = (0..args.aggregates)
            .filter(|a| a % args.writers == w)
            .collect();
        if own.is_empty() {
            continue;
        }
        writers.push(tokio::spawn(write_events(
            db.clone(),
            streams.clone(),
            own,
            share,
            args.per_transaction.max(1) as usize,
            written.clone(),
            commits.clone(),
            ledger.clone(),
        )));
    }

    let bar = ProgressBar::new(args.events);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} acknowledged ({per_sec}) {msg}",
        )?
        .progress_chars("=> "),
    );
    let deadline = started + Duration::from_secs(args.timeout_secs);
    loop {
        let d = delivered.load(Ordering::Relaxed);
        bar.set_position(d);
        bar.set_message(format!("{} written", written.load(Ordering::Relaxed)));
        if d >= args.events || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    for w in writers {
        w.await??;
    }
    let elapsed_ack = started.elapsed();
    relay.shutdown().await?;

    // Read everything back and check it.
    let expected = written.load(Ordering::Relaxed);
    let mut seen = std::collections::HashSet::new();
    let mut counted = 0;
    let done = move |rs: &[verify::Consumed]| {
        for r in &rs[counted..] {
            if let Some(e) = r.header("event_id") {
                seen.insert(e.to_string());
            }
        }
        counted = rs.len();
        seen.len() as u64 >= expected
    };
    let (timeout, idle) = (Duration::from_secs(120), Duration::from_secs(5));
    let (records, (consumer_errors, last_consumer_error)): (_, (u64, Option<String>)) = match kind {
        #[cfg(feature = "kafka")]
        SinkKind::Kafka => {
            let t = topic.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let reader = verify::Reader::new(&brokers, &[&t])?;
                let records = reader.read_until(timeout, idle, done);
                Ok((records, reader.errors()))
            })
            .await??
        }
        #[cfg(feature = "redis")]
        SinkKind::Redis => {
            let names: Vec<&str> = streams.iter().map(String::as_str).collect();
            let records = match &_cluster {
                Some(c) => {
                    verify::read_redis_cluster(&c.node_urls(), &names, timeout, idle, done).await?
                }
                None => verify::read_redis(&config.redis.url, &names, timeout, idle, done).await?,
            };
            (records, (0, None))
        }
        #[cfg(feature = "nats")]
        SinkKind::Nats => (
            verify::read_nats(
                &config.nats.url,
                &format!("OUTBOXD_DEMO_{stamp}"),
                timeout,
                idle,
                done,
            )
            .await?,
            (0, None),
        ),
        #[allow(unreachable_patterns)]
        _ => unreachable!("refused above"),
    };
    let mut ledger = Arc::try_unwrap(ledger)
        .map_err(|_| anyhow::anyhow!("writers still running"))?
        .into_inner()
        .expect("ledger");
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
        if let Some(seq) = v.get("seq").and_then(serde_json::Value::as_u64) {
            ledger.seen(&r.key, seq);
        }
    }
    let report = ledger.report();

    let commits = commits.lock().expect("commits");
    let acks = acks.lock().expect("acks");
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let first_commit = commits.values().min().copied();
    let last_ack = acks.values().max().copied();
    for (id, ack) in acks.iter() {
        if let Some(c) = commits.get(id) {
            hist.record(ack.saturating_duration_since(*c).as_micros() as u64)?;
        }
    }
    let span = match (first_commit, last_ack) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => elapsed_ack,
    };
    let rate = report.delivered as f64 / span.as_secs_f64().max(1e-9);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!("outboxd demo — {} -> {destination}", backend.name());
    println!(
        "  written      {expected} events over {} aggregates",
        args.aggregates
    );
    println!("  acknowledged {}", acks.len());
    println!("  read back    {} records", records.len());
    println!("  delivered    {}", report.delivered);
    println!("  lost         {}", report.lost);
    println!("  reordered    {}", report.reordered);
    println!("  duplicates   {}", report.duplicates);
    println!("  throughput   {rate:.0} events/s (first commit to last acknowledgement)");
    println!(
        "  commit->ack  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.50),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    for e in &ledger.reorder_examples {
        println!("  reordered: {e}");
    }
    let passed = report.lost == 0
        && report.reordered == 0
        && report.unexpected == 0
        && report.expected == args.events;
    if !passed && consumer_errors > 0 {
        println!(
            "  reader       {consumer_errors} consumer errors, last: {}",
            last_consumer_error.unwrap_or_default()
        );
    }
    println!("verification: {}", if passed { "PASSED" } else { "FAILED" });
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[allow(clippy::too_many_arguments)]
async fn write_events(
    db: Arc<DemoDb>,
    topics: Vec<String>,
    aggregates: Vec<u32>,
    count: u64,
    per_tx: usize,
    written: Arc<AtomicU64>,
    commits: Arc<Mutex<HashMap<Uuid, Instant>>>,
    ledger: Arc<Mutex<Ledger>>,
) -> anyhow::Result<()> {
    let mut seqs = vec![0u64; aggregates.len()];
    let mut next = 0usize;
    let mut left = count;
    while left > 0 {
        let n = per_tx.min(left as usize);
        let mut events = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let i = next % aggregates.len();
            next += 1;
            seqs[i] += 1;
            let agg = format!("demo-{}", aggregates[i]);
            let topic = &topics[aggregates[i] as usize % topics.len()];
            events.push(
                NewEvent::builder("demo", agg.clone())
                    .event_type("demo.happened")
                    .topic(topic.clone())
                    .json(&serde_json::json!({"aggregate": agg, "seq": seqs[i]}))
                    .build()?,
            );
            keys.push((agg, seqs[i]));
        }
        let ids = db.write(&events).await?;
        let now = Instant::now();
        {
            let mut c = commits.lock().expect("commits");
            for id in &ids {
                c.insert(*id, now);
            }
        }
        {
            let mut l = ledger.lock().expect("ledger");
            for (a, s) in &keys {
                l.written(a, *s);
            }
        }
        written.fetch_add(n as u64, Ordering::Relaxed);
        left -= n as u64;
    }
    Ok(())
}
