//! The world a scenario runs in: a fresh database, a private Tansu behind a TCP proxy, a
//! second proxy in front of PostgreSQL, `outboxd run` processes, a load generator writing
//! through the library API, and a ledger consumer reading continuously.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outboxd::NewEvent;
use outboxd::sink::SinkKind;
use rand::RngExt;
use testkit::broker::LocalBroker;
use testkit::chaos::TcpProxy;
use testkit::redistopo::Topology;
use testkit::verify::{Consumed, Ledger, Reader, create_topic};

use testkit::process::{free_port, outboxd_bin};
use testkit::servers::PrivateServer;

use crate::db::{Database, Db};
use crate::sinks::{NATS_STREAM, consume_nats, consume_redis};

/// Partitions of the scenario topic (also Tansu's default for auto-created topics).
pub const PARTITIONS: i32 = 4;

/// First sightings and commit times, shared by the generator and the consumer.
#[derive(Default)]
pub struct Book {
    /// Per-aggregate sequence ledger.
    pub ledger: Ledger,
    /// Commit time of each (aggregate, seq).
    pub committed_at: HashMap<(String, u64), Instant>,
    /// Commit→first-sighting latency, by first-sighting time.
    pub latencies: Vec<(Instant, Duration)>,
    /// Highest `outbox_id` seen.
    pub max_outbox_id: i64,
    /// Every first sighting's time (throughput per phase).
    pub sightings: Vec<Instant>,
}

/// Enters what the ledger consumer read into the book.
fn note(book: &Mutex<Book>, consumed: &AtomicU64, records: Vec<Consumed>) {
    let now = Instant::now();
    let mut b = book.lock().unwrap();
    for r in records {
        consumed.fetch_add(1, Ordering::Relaxed);
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
        let Some(seq) = v.get("seq").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        if let Some(id) = r.header("outbox_id").and_then(|s| s.parse::<i64>().ok()) {
            b.max_outbox_id = b.max_outbox_id.max(id);
        }
        let key = (r.key.clone(), seq);
        let first = b
            .committed_at
            .get(&key)
            .copied()
            .map(|c| (now, now.saturating_duration_since(c)));
        b.ledger.seen(&r.key, seq);
        if let Some(l) = first {
            b.committed_at.remove(&key);
            b.latencies.push(l);
            b.sightings.push(now);
        }
    }
}

/// A running `outboxd run`.
pub struct RelayProc {
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl RelayProc {
    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits up to `timeout` for exit.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scenario's world.
pub struct Env {
    /// Scenario name.
    pub name: String,
    /// Database name.
    pub db_name: String,
    /// Where it was created (PostgreSQL).
    admin: String,
    /// Direct URL (generator, checks).
    pub db_url: String,
    /// The database the scenario runs on.
    pub database: Database,
    /// Pool for the harness itself.
    pub db: Db,
    /// Proxy between the relay and the database.
    pub db_proxy: TcpProxy,
    /// Proxy between the relay (and the consumer) and the broker.
    pub broker_proxy: Option<TcpProxy>,
    /// The sink the relay publishes to.
    pub sink: SinkKind,
    /// The private broker (Kafka).
    pub broker: Option<LocalBroker>,
    /// The private Redis or NATS server.
    pub server: Option<PrivateServer>,
    broker_port: u16,
    /// Where the relay reaches the sink (`host:port`, through the proxy when there is one).
    pub brokers: String,
    /// The scenario topic.
    pub topic: String,
    /// Streams the writers spread aggregates over (`<topic>:<n>`); 1 = the topic alone.
    pub topics: u32,
    /// Where the Redis streams are, when not on the private server (a cluster, sentinels).
    pub redis_topology: Option<Topology>,
    /// The NATS servers (comma-separated URLs), when not the private server (a cluster).
    pub nats_servers: Option<String>,
    /// Extra relay settings for this scenario.
    pub relay_env: Vec<(String, String)>,
    /// Where logs go.
    pub dir: PathBuf,
    relay_count: usize,
    /// Ledger, commit times, sightings.
    pub book: Arc<Mutex<Book>>,
    consumer_stop: Arc<AtomicBool>,
    consumer: Option<std::thread::JoinHandle<()>>,
    /// Records consumed so far.
    pub consumed: Arc<AtomicU64>,
    /// Consumer errors the ledger consumer rode out (connections cut, broker down).
    pub consumer_errors: Arc<AtomicU64>,
    /// Faults injected.
    pub faults: u32,
}

impl Env {
    /// A fresh database and a private sink server behind a proxy: Tansu unless `brokers`
    /// is given (with the scenario topic created; on other brokers the caller creates
    /// it), or a `redis-server` / `nats-server -js` (with the scenario's JetStream stream).
    pub async fn new(
        name: &str,
        sink: SinkKind,
        brokers: Option<String>,
        database: Database,
    ) -> anyhow::Result<Env> {
        Self::create(name, sink, brokers, database, None).await
    }

    /// As [`Env::new`] on PostgreSQL, with the database created through `admin` (another
    /// server's `postgres` database, such as a private primary's) instead of
    /// `DATABASE_URL`'s. The relay is not proxied there: the caller sets its URL.
    pub async fn on_postgres(name: &str, sink: SinkKind, admin: String) -> anyhow::Result<Env> {
        Self::create(name, sink, None, Database::Postgres, Some(admin)).await
    }

    async fn create(
        name: &str,
        sink: SinkKind,
        brokers: Option<String>,
        database: Database,
        admin: Option<String>,
    ) -> anyhow::Result<Env> {
        let name = match database {
            Database::Postgres => format!("{name}-{sink}"),
            Database::MariaDb => format!("{name}-{sink}-mariadb"),
        };
        let db_name = format!("outboxd_t_torture_{}", name.replace('-', "_"));
        let admin = admin.unwrap_or_else(|| {
            std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
        });
        let db_url = match database {
            Database::Postgres => testkit::backlog::fresh_database(&admin, &db_name).await?,
            Database::MariaDb => testkit::mysqldb::fresh_mysql_database(&db_name).await,
        };
        let db = Db::connect(database, &db_url).await?;
        let db_proxy = TcpProxy::start("127.0.0.1:0", database.server().parse()?).await?;
        let dir = PathBuf::from(std::env::var("OUTBOXD_TORTURE_DIR").unwrap_or_else(|_| {
            std::env::temp_dir()
                .join("outboxd-torture")
                .display()
                .to_string()
        }));
        std::fs::create_dir_all(&dir)?;
        // Stream keys and subjects by each sink's rules.
        let base = name.split(&format!("-{sink}")).next().unwrap_or(&name);
        let topic = match sink {
            SinkKind::Kafka => format!("torture-{base}"),
            SinkKind::Redis => format!("torture:{base}"),
            SinkKind::Nats => format!("torture.{base}"),
        };
        let (bport, pport) = (free_port(), free_port());
        let (mut broker, mut broker_proxy, mut server) = (None, None, None);
        let brokers = match brokers {
            Some(b) => b,
            None => {
                broker_proxy = Some(
                    TcpProxy::start(
                        &format!("127.0.0.1:{pport}"),
                        format!("127.0.0.1:{bport}").parse()?,
                    )
                    .await?,
                );
                match sink {
                    SinkKind::Kafka => {
                        let log = dir.join(format!("{name}-tansu.log"));
                        broker = Some(
                            tokio::task::spawn_blocking(move || {
                                LocalBroker::start(
                                    &format!("127.0.0.1:{bport}"),
                                    &format!("127.0.0.1:{pport}"),
                                    &log,
                                )
                            })
                            .await??,
                        );
                    }
                    _ => {
                        let data = dir.join(format!("{name}-data"));
                        let _ = std::fs::remove_dir_all(&data);
                        let log = dir.join(format!("{name}-{sink}.log"));
                        let s = PrivateServer::start_in(sink, bport, &data, &log)?;
                        if sink == SinkKind::Nats {
                            testkit::verify::create_nats_stream(
                                &s.url(),
                                NATS_STREAM,
                                &[&topic],
                                Duration::from_secs(120),
                            )
                            .await?;
                        }
                        server = Some(s);
                    }
                }
                format!("127.0.0.1:{pport}")
            }
        };
        if broker.is_some() {
            // A fresh Tansu on a loaded machine (right after `bloat`) has timed out an
            // admin request once: ask again before giving up.
            let mut tries = 0;
            while let Err(e) = create_topic(&brokers, &topic, PARTITIONS).await {
                tries += 1;
                anyhow::ensure!(tries < 3, "creating {topic}: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Ok(Env {
            name,
            db_name,
            admin,
            db_url,
            database,
            db,
            db_proxy,
            broker_proxy,
            sink,
            broker,
            server,
            broker_port: bport,
            brokers,
            topic,
            topics: 1,
            redis_topology: None,
            nats_servers: None,
            relay_env: Vec::new(),
            dir,
            relay_count: 0,
            book: Arc::new(Mutex::new(Book::default())),
            consumer_stop: Arc::new(AtomicBool::new(false)),
            consumer: None,
            consumed: Arc::new(AtomicU64::new(0)),
            consumer_errors: Arc::new(AtomicU64::new(0)),
            faults: 0,
        })
    }

    /// The relay's database URL (through the proxy).
    pub fn relay_db_url(&self) -> String {
        self.db_url
            .replace(self.database.server(), &self.db_proxy.addr().to_string())
    }

    /// The PostgreSQL pool of a scenario that runs on PostgreSQL only.
    pub fn pg(&self) -> &sqlx::PgPool {
        match &self.db {
            Db::Pg(p) => p,
            Db::My(_) => panic!("{}: a PostgreSQL-only scenario on MariaDB", self.name),
        }
    }

    /// Starts `outboxd run` with the scenario's settings and this instance id (empty: the
    /// default, the host name).
    pub fn spawn_relay(&mut self, instance: &str) -> anyhow::Result<RelayProc> {
        self.relay_count += 1;
        let log = self
            .dir
            .join(format!("{}-relay-{}.log", self.name, self.relay_count));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(outboxd_bin());
        cmd.arg("run")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, _) in std::env::vars() {
            if k.starts_with("OUTBOXD") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "outboxd=info,warn")
            .env("OUTBOXD__DATABASE__URL", self.relay_db_url())
            .env("OUTBOXD__SINK__KIND", self.sink.name())
            .env("OUTBOXD__KAFKA__BROKERS", &self.brokers)
            .env("OUTBOXD__REDIS__URL", format!("redis://{}", self.brokers))
            .env("OUTBOXD__REDIS__TIMEOUT_MS", "3000")
            .env("OUTBOXD__REDIS__CONNECT_TIMEOUT_MS", "1000")
            // Redis takes bulks up to 512 MB; a 1 MiB limit as NATS's default, so that the
            // poison scenario's big rows are over it.
            .env("OUTBOXD__REDIS__MAX_PAYLOAD_BYTES", "1048576")
            .env("OUTBOXD__NATS__URL", format!("nats://{}", self.brokers))
            .env("OUTBOXD__NATS__TIMEOUT_MS", "3000")
            .env("OUTBOXD__NATS__CONNECT_TIMEOUT_MS", "1000")
            .env("OUTBOXD__METRICS__LISTEN", "")
            .env("OUTBOXD__RELAY__LEASE_TTL_MS", "3000")
            .env("OUTBOXD__KAFKA__STALL_TIMEOUT_MS", "5000")
            .env("OUTBOXD__KAFKA__PRODUCER__MESSAGE.TIMEOUT.MS", "8000")
            .env("OUTBOXD__DATABASE__CONNECT_TIMEOUT_MS", "3000");
        // Empty: the relay's default name (the host's).
        if !instance.is_empty() {
            cmd.env("OUTBOXD__RELAY__INSTANCE_ID", instance);
        }
        for (k, v) in &self.relay_env {
            cmd.env(k, v);
        }
        Ok(RelayProc {
            child: cmd.spawn()?,
            log,
        })
    }

    /// The current lease epoch (0 before any).
    pub async fn lease_epoch(&self) -> i64 {
        self.db
            .count("SELECT coalesce(max(epoch), 0) FROM outbox_lease")
            .await
            .unwrap_or(-1)
    }

    /// Waits until a relay takes the lease (epoch above `before`).
    pub async fn wait_active(&self, before: i64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.lease_epoch().await > before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The streams (topics) the writers write to.
    pub fn streams(&self) -> Vec<String> {
        match self.topics {
            0 | 1 => vec![self.topic.clone()],
            n => (0..n).map(|i| stream_of(&self.topic, n, i)).collect(),
        }
    }

    /// Starts the ledger consumer (continuous, from the beginning).
    pub fn start_consumer(&mut self) {
        let brokers = self.brokers.clone();
        let topic = self.topic.clone();
        let book = self.book.clone();
        let stop = self.consumer_stop.clone();
        let consumed = self.consumed.clone();
        let consumer_errors = self.consumer_errors.clone();
        let seen = move |records: Vec<Consumed>| note(&book, &consumed, records);
        let direct = self.server.as_ref().map(PrivateServer::url);
        let topology = self
            .redis_topology
            .clone()
            .or_else(|| direct.clone().map(Topology::Single));
        let streams = self.streams();
        self.consumer = Some(match self.sink {
            SinkKind::Redis => std::thread::spawn(move || {
                consume_redis(topology.unwrap(), streams, stop, consumer_errors, seen)
            }),
            SinkKind::Nats => {
                let servers = self.nats_servers.clone().or(direct).unwrap();
                std::thread::spawn(move || consume_nats(servers, stop, consumer_errors, seen))
            }
            SinkKind::Kafka => std::thread::spawn(move || {
                let reader = loop {
                    match Reader::new(&brokers, &[&topic]) {
                        Ok(r) => break r,
                        Err(_) if !stop.load(Ordering::Relaxed) => {
                            std::thread::sleep(Duration::from_millis(500))
                        }
                        Err(_) => return,
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let records = reader.poll_for(Duration::from_millis(100), 50_000);
                    consumer_errors.store(reader.errors().0, Ordering::Relaxed);
                    if !records.is_empty() {
                        seen(records);
                    }
                }
            }),
        });
    }

    /// Stops the consumer.
    pub fn stop_consumer(&mut self) {
        self.consumer_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.consumer.take() {
            let _ = h.join();
        }
    }

    /// Waits until the consumer saw nothing new for `quiet`.
    pub async fn consumer_quiet(&self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = self.consumed.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.consumed.load(Ordering::Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Kills the private broker and starts a fresh one on the same ports. The consumer is
    /// restarted too, from the beginning of the new broker's (empty) log: a consumer that
    /// kept its old offsets would skip the new log's first records.
    pub async fn restart_broker(&mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.as_mut() {
            // Redis and NATS keep their data: the consumer carries on where it was.
            return tokio::task::block_in_place(|| server.restart());
        }
        self.stop_consumer();
        if let Some(mut b) = self.broker.take() {
            b.stop();
        }
        let bport = self.broker_port;
        let advertise = self.brokers.clone();
        let log = self
            .dir
            .join(format!("{}-tansu-{}.log", self.name, self.faults));
        let b = tokio::task::spawn_blocking(move || {
            LocalBroker::start(&format!("127.0.0.1:{bport}"), &advertise, &log)
        })
        .await??;
        self.broker = Some(b);
        create_topic(&self.brokers, &self.topic, PARTITIONS).await?;
        self.consumer_stop = Arc::new(AtomicBool::new(false));
        self.start_consumer();
        Ok(())
    }

    /// Sends `sig` to the sink's server process (SIGSTOP / SIGCONT: the sink paused).
    pub fn signal_sink(&self, sig: Signal) {
        if let Some(server) = &self.server {
            server.signal(sig);
        } else if let Some(broker) = &self.broker {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(broker.pid() as i32), sig);
        }
    }

    /// Rows still pending, except those of `excluded` aggregates (held poison).
    pub async fn pending_except(&self, prefix: &str) -> i64 {
        self.db.pending_except(prefix).await.unwrap_or(i64::MAX)
    }

    /// Waits until everything written was published (held poison excepted).
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.pending_except("poison-").await == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Drops the scenario database.
    pub async fn cleanup(mut self) {
        self.stop_consumer();
        self.db.close().await;
        if self.database == Database::MariaDb {
            testkit::mysqldb::drop_mysql_database(&self.db_name).await;
            return;
        }
        if let Ok(p) = sqlx::PgPool::connect(&self.admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            )))
            .execute(&p)
            .await;
        }
    }
}

/// Writes events at a steady rate through the library API, one writer task per share of
/// the aggregates (so an aggregate's events are written one transaction at a time).
/// Stream `i` of `n` the writers spread aggregates over.
fn stream_of(topic: &str, n: u32, i: u32) -> String {
    debug_assert!(i < n);
    format!("{topic}:{i}")
}

pub struct Generator {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Events committed.
    pub committed: Arc<AtomicU64>,
    /// Transactions that failed (before or during COMMIT).
    pub failed: Arc<AtomicU64>,
}

impl Generator {
    /// Starts `writers` tasks writing `rate` events/s in total over `aggregates`.
    pub fn start(env: &Env, aggregates: u32, rate: u32, writers: u32, pad: usize) -> Generator {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let per_writer = (f64::from(rate) / f64::from(writers)).max(1.0);
        let batch = ((per_writer / 50.0).ceil() as usize).clamp(1, 50);
        let period = Duration::from_secs_f64(batch as f64 / per_writer);
        let tasks = (0..writers)
            .map(|w| {
                let own: Vec<(String, String)> = (0..aggregates)
                    .filter(|a| a % writers == w)
                    .map(|a| {
                        let topic = match env.topics {
                            0 | 1 => env.topic.clone(),
                            n => stream_of(&env.topic, n, a % n),
                        };
                        (format!("agg-{a}"), topic)
                    })
                    .collect();
                tokio::spawn(write_loop(
                    env.db.clone(),
                    own,
                    batch,
                    period,
                    pad,
                    env.book.clone(),
                    stop.clone(),
                    committed.clone(),
                    failed.clone(),
                ))
            })
            .collect();
        Generator {
            stop,
            tasks,
            committed,
            failed,
        }
    }

    /// Stops writing and waits for the writers.
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.committed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    db: Db,
    aggregates: Vec<(String, String)>,
    batch: usize,
    period: Duration,
    pad: usize,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    if aggregates.is_empty() {
        return;
    }
    let mut seqs = vec![0u64; aggregates.len()];
    let mut next = rand::rng().random_range(0..aggregates.len());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let padding = "p".repeat(pad);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut events = Vec::with_capacity(batch);
        let mut keys = Vec::with_capacity(batch);
        for _ in 0..batch.min(aggregates.len()) {
            let i = next % aggregates.len();
            next += 1;
            seqs[i] += 1;
            let (agg, topic) = &aggregates[i];
            events.push(
                NewEvent::builder("torture", agg.clone())
                    .event_type("torture.event")
                    .topic(topic.clone())
                    .json(&serde_json::json!({"seq": seqs[i], "pad": padding}))
                    .build()
                    .expect("valid event"),
            );
            keys.push((agg.clone(), seqs[i]));
        }
        // An error from COMMIT itself leaves the outcome unknown.
        let outcome = db.write(&events).await;
        let now = Instant::now();
        let failed_now = {
            let mut b = book.lock().unwrap();
            match outcome {
                Ok(()) => {
                    for (a, s) in keys {
                        b.ledger.written(&a, s);
                        b.committed_at.insert((a, s), now);
                    }
                    committed.fetch_add(events.len() as u64, Ordering::Relaxed);
                    false
                }
                Err(uncertain) => {
                    if uncertain {
                        for (a, s) in keys {
                            b.ledger.uncertain(&a, s);
                        }
                    }
                    true
                }
            }
        };
        if failed_now {
            failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
