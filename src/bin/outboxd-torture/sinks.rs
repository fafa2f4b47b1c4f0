//! The Redis and NATS sides of the harness: a private `redis-server` (append-only file,
//! fsync always, so a kill loses nothing it acknowledged) or `nats-server -js` (file
//! store) that can be killed, restarted on the same port and data, paused; and ledger
//! consumers that read the scenario's stream continuously, directly from the server (not
//! through the relay's proxy), resuming after the position they reached when the server
//! goes away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use outboxd::sink::SinkKind;
use outboxd::verify::Consumed;

/// The JetStream stream that captures a scenario's subject.
pub const NATS_STREAM: &str = "TORTURE";

/// A Redis or NATS server process of the scenario's own.
pub struct SinkServer {
    kind: SinkKind,
    child: Child,
    /// The port it listens on (the relay reaches it through a proxy).
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl SinkServer {
    /// Starts the server on `port`, its data in `dir`.
    pub fn start(kind: SinkKind, port: u16, dir: &Path, log: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let child = spawn(kind, port, dir, log)?;
        Ok(SinkServer {
            kind,
            child,
            port,
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
        })
    }

    /// The URL of the server itself (not through the proxy).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind.name(), self.port)
    }

    /// `kill -9`, then the same server again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.kind, self.port, &self.dir, &self.log)?;
        Ok(())
    }

    /// Sends `sig` to the server (SIGSTOP / SIGCONT: the sink paused).
    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(kind: SinkKind, port: u16, dir: &Path, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let port_s = port.to_string();
    let dir_s = dir.to_string_lossy().into_owned();
    let mut cmd = match kind {
        SinkKind::Redis => {
            let mut c = Command::new("redis-server");
            c.args(["--port", &port_s, "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--dir", &dir_s]);
            c
        }
        SinkKind::Nats => {
            let mut c = Command::new("nats-server");
            c.args(["-js", "-a", "127.0.0.1", "-p", &port_s, "-sd", &dir_s]);
            c
        }
        SinkKind::Kafka => anyhow::bail!("Kafka runs on Tansu (LocalBroker)"),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| anyhow::anyhow!("{kind} server (scripts/setup.sh installs it): {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{kind} server did not listen on {port}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Reads the Redis stream `stream` at `url` from its start until `stop`, handing each
/// batch of entries to `seen`; reconnects (counting an error) whenever the server goes.
pub fn consume_redis(
    url: String,
    stream: String,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    mut seen: impl FnMut(Vec<Consumed>),
) {
    type Reply = Option<Vec<(String, Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>)>>;
    let mut cursor = "0-0".to_string();
    let mut offset = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let conn = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)));
        let mut conn = match conn {
            Ok(c) => c,
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        while !stop.load(Ordering::Relaxed) {
            let reply: redis::RedisResult<Reply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(5_000)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&cursor)
                .query(&mut conn);
            match reply {
                Ok(Some(streams)) => {
                    let mut batch = Vec::new();
                    for (_, entries) in streams {
                        for (id, fields) in entries {
                            cursor = id;
                            batch.push(Consumed::from_redis(&stream, offset, fields));
                            offset += 1;
                        }
                    }
                    seen(batch);
                }
                Ok(None) => {}
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// Reads the JetStream stream [`NATS_STREAM`] at `url` from its first message until
/// `stop`, handing each message to `seen`; after an error it reconnects and goes on from
/// the next stream sequence.
pub fn consume_nats(
    url: String,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    mut seen: impl FnMut(Vec<Consumed>),
) {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut next = 1u64;
        while !stop.load(Ordering::Relaxed) {
            let attempt = async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(url.as_str())
                    .await?;
                let js = async_nats::jetstream::new(client);
                let stream = js.get_stream(NATS_STREAM).await?;
                let consumer = stream
                    .create_consumer(OrderedConfig {
                        deliver_policy: DeliverPolicy::ByStartSequence {
                            start_sequence: next,
                        },
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok((stream, consumer.messages().await?))
            };
            let (mut stream, mut messages) = match attempt.await {
                Ok(m) => m,
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut last = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(100), messages.next()).await {
                    Ok(Some(Ok(m))) => match Consumed::from_nats(&m) {
                        Ok(c) => {
                            next = c.offset as u64 + 1;
                            last = std::time::Instant::now();
                            seen(vec![c]);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Ok(Some(Err(_))) | Ok(None) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    // Quiet for a second: if the stream holds messages past ours, the
                    // consumer is stuck after a server restart (its heartbeat check is
                    // slower): make a new one.
                    Err(_) if last.elapsed() > Duration::from_secs(1) => {
                        last = std::time::Instant::now();
                        match stream.info().await {
                            Ok(info) if info.state.last_sequence >= next => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    });
}
