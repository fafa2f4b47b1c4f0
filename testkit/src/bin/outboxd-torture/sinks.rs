//! The Redis and NATS sides of the harness (the servers are `testkit::servers`): ledger
//! consumers that read the scenario's stream continuously, directly from the server (not
//! through the relay's proxy), resuming after the position they reached when the server
//! goes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testkit::redistopo::Topology;
use testkit::verify::Consumed;

/// The JetStream stream that captures a scenario's subject.
pub const NATS_STREAM: &str = "TORTURE";

/// Reads the Redis streams `streams` wherever `topology` keeps them, from their start
/// until `stop`, handing each batch of entries to `seen`; reconnects (counting an error)
/// whenever the server goes — on a cluster or behind sentinels, to wherever the stream is
/// served now. One stream is read with a blocking `XREAD`; several (spread over a
/// cluster's slots) one by one, in rounds.
pub fn consume_redis(
    topology: Topology,
    streams: Vec<String>,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    mut seen: impl FnMut(Vec<Consumed>),
) {
    type Reply = Option<Vec<(String, Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>)>>;
    let mut cursors = vec!["0-0".to_string(); streams.len()];
    let mut offsets = vec![0i64; streams.len()];
    let block = streams.len() == 1;
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match testkit::redistopo::connect(&topology) {
            Ok(c) => c,
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        'read: while !stop.load(Ordering::Relaxed) {
            let mut got = 0;
            for (s, stream) in streams.iter().enumerate() {
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT").arg(5_000);
                if block {
                    cmd.arg("BLOCK").arg(100);
                }
                cmd.arg("STREAMS").arg(stream).arg(&cursors[s]);
                match cmd.query::<Reply>(conn.as_mut()) {
                    Ok(Some(replies)) => {
                        let mut batch = Vec::new();
                        for (_, entries) in replies {
                            for (id, fields) in entries {
                                cursors[s] = id;
                                batch.push(Consumed::from_redis(stream, offsets[s], fields));
                                offsets[s] += 1;
                            }
                        }
                        got += batch.len();
                        seen(batch);
                    }
                    Ok(None) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break 'read;
                    }
                }
            }
            if got == 0 && !block {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Reads the JetStream stream [`NATS_STREAM`] at `url` (one server or several,
/// comma-separated) from its first message until
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
                // One server or several (a cluster), comma-separated.
                let servers: Vec<async_nats::ServerAddr> =
                    url.split(',').map(str::parse).collect::<Result<_, _>>()?;
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(servers)
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
