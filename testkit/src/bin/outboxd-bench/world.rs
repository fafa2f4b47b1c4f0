//! The world a phase runs in: a fresh database, a fresh broker with the topic, progress
//! output.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use outboxd::config::Config;
use outboxd::sink::SinkKind;
use testkit::broker::LocalBroker;
use testkit::process::free_port;
use testkit::servers::PrivateServer;
use testkit::verify::create_topic;

/// Aggregates the events are spread over.
pub use testkit::backlog::AGGREGATES;

/// Topic partitions.
pub const TOPIC_PARTITIONS: i32 = 8;

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what:<28} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} ({{per_sec}})"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    b
}

pub(crate) fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

pub(crate) fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database and a fresh broker with the topic.
pub(crate) struct World {
    /// The relay's configuration: the defaults with the `OUTBOXD__…` environment applied
    /// (as `outboxd run` applies it), database and broker set below.
    pub(crate) base: Config,
    pub(crate) url: String,
    pub(crate) pool: sqlx::PgPool,
    pub(crate) broker: LocalBroker,
    pub(crate) brokers: String,
    pub(crate) topic: String,
    /// The sink the relay publishes to, and its private server (Redis or NATS).
    pub(crate) sink: SinkKind,
    pub(crate) server: Option<PrivateServer>,
}

impl World {
    pub(crate) async fn new() -> anyhow::Result<World> {
        World::with_partitions(TOPIC_PARTITIONS).await
    }

    /// A fresh database, and a fresh broker whose topic has `partitions` partitions.
    pub(crate) async fn with_partitions(partitions: i32) -> anyhow::Result<World> {
        let base = Config::load(&outboxd::config::ConfigSource {
            path: None,
            required: false,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let url = testkit::backlog::fresh_database(&admin_url(), "outboxd_bench").await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect(&url)
            .await?;
        let (broker, addr, topic) = fresh_broker(partitions).await?;
        Ok(World {
            base,
            url,
            pool,
            broker,
            brokers: addr,
            topic,
            sink: SinkKind::Kafka,
            server: None,
        })
    }

    /// As [`World::new`], publishing to `sink`: for Redis and NATS a private server
    /// (Redis with its append-only file fsynced always, NATS with its file store) and, for
    /// NATS, the stream `BENCH` capturing the topic.
    pub(crate) async fn for_sink(sink: SinkKind) -> anyhow::Result<World> {
        let mut w = World::new().await?;
        if sink == SinkKind::Kafka {
            return Ok(w);
        }
        let dir = std::env::temp_dir().join(format!("outboxd-bench-{sink}"));
        let _ = std::fs::remove_dir_all(&dir);
        let log = std::env::temp_dir().join(format!("outboxd-bench-{sink}.log"));
        let server = PrivateServer::start_in(sink, free_port(), &dir, &log)?;
        if sink == SinkKind::Nats {
            testkit::verify::create_nats_stream(
                &server.url(),
                "BENCH",
                &[&w.topic],
                Duration::from_secs(120),
            )
            .await?;
        }
        w.sink = sink;
        w.server = Some(server);
        Ok(w)
    }

    /// `OUTBOXD__…` settings that point `outboxd run` at this world's sink.
    pub(crate) fn sink_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("OUTBOXD__SINK__KIND", self.sink.name().to_string()),
            ("OUTBOXD__KAFKA__BROKERS", self.brokers.clone()),
        ];
        match (&self.server, self.sink) {
            (Some(s), SinkKind::Redis) => env.push(("OUTBOXD__REDIS__URL", s.url())),
            (Some(s), SinkKind::Nats) => env.push(("OUTBOXD__NATS__URL", s.url())),
            _ => {}
        }
        env
    }

    pub(crate) fn config(&self) -> Config {
        let mut c = self.base.clone();
        c.database.url = self.url.clone();
        c.kafka.brokers = self.brokers.clone();
        c.sink.kind = self.sink;
        if let Some(server) = &self.server {
            c.redis.url = server.url();
            c.nats.url = server.url();
        }
        c.metrics.listen = String::new();
        c
    }

    /// `n` pending rows before the relay starts: 500-byte JSON payloads over 10,000
    /// aggregates, written server-side in statements of 100,000 rows, then vacuumed and
    /// analysed.
    pub(crate) async fn prefill(&self, n: u64) -> anyhow::Result<()> {
        let b = bar(n, "prefill backlog");
        testkit::backlog::prefill(&self.pool, n, &self.topic, |done| b.set_position(done)).await?;
        b.finish_and_clear();
        Ok(())
    }

    /// `m` rows in one statement (one transaction), sequence numbers from `first`; returns
    /// when they are committed.
    pub(crate) async fn insert_rows(&self, first: u64, m: u64) -> anyhow::Result<()> {
        testkit::backlog::insert_rows(&self.pool, first, m, &self.topic).await
    }

    pub(crate) async fn close(mut self) {
        self.pool.close().await;
        self.broker.stop();
    }
}

/// The PostgreSQL server's version and durability settings, for the report.
pub(crate) async fn describe_postgres(p: &sqlx::PgPool) -> String {
    let v: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(p)
        .await
        .unwrap_or_default();
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(p)
        .await
        .unwrap_or_default();
    let sc: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(p)
        .await
        .unwrap_or_default();
    format!("{v}; fsync={fsync}; synchronous_commit={sc}")
}

/// A private Tansu on a free port with the topic `bench` of `partitions` partitions: the
/// broker, its address and the topic.
pub(crate) async fn fresh_broker(partitions: i32) -> anyhow::Result<(LocalBroker, String, String)> {
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::env::temp_dir().join("outboxd-bench-tansu.log");
    let a = addr.clone();
    let broker = tokio::task::spawn_blocking(move || LocalBroker::start(&a, &a, &log)).await??;
    let topic = "bench".to_string();
    create_topic(&addr, &topic, partitions).await?;
    Ok((broker, addr, topic))
}

/// A metric from the relay's `/metrics`, summed over its labels; None when the endpoint
/// does not answer or does not export it.
pub(crate) async fn scrape(addr: &str, metric: &str) -> Option<f64> {
    let (_, body) = testkit::process::http_get(addr, "/metrics").await?;
    metric_sum(&body, metric)
}

/// A metric in a `/metrics` body, summed over its labels; None when it is not there.
pub(crate) fn metric_sum(body: &str, metric: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}
