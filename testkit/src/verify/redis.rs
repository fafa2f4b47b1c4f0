//! Redis Streams: reading streams back from the beginning.

use std::time::{Duration, Instant};

use super::consumed::Consumed;

impl Consumed {
    /// A Redis stream entry as read: value = its `payload` field, key = its
    /// `aggregate_id` field, the other fields as headers; offset = `offset`.
    pub fn from_redis(stream: &str, offset: i64, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Consumed {
        let mut c = Consumed {
            topic: stream.to_string(),
            partition: 0,
            offset,
            key: String::new(),
            value: Vec::new(),
            headers: Vec::new(),
        };
        for (k, v) in fields {
            if k == b"payload" {
                c.value = v;
                continue;
            }
            let (k, v) = (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            );
            if k == "aggregate_id" {
                c.key = v.clone();
            }
            c.headers.push((k, v));
        }
        c
    }
}

/// An entry as `XRANGE` returns it: id and fields.
type StreamEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Reads Redis streams from the beginning (`XRANGE`, in stream order) until `done` says
/// so, nothing new arrived for `idle`, or `timeout` passed. Each entry becomes a
/// [`Consumed`]: key = its `aggregate_id` field, value = `payload`, headers = the other
/// fields in entry order, offset = its position in the stream.
pub async fn read_redis(
    url: &str,
    streams: &[&str],
    timeout: Duration,
    idle: Duration,
    done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    let client = redis::Client::open(url)?;
    // A large XRANGE on a busy machine takes longer than the client's default 500 ms.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    read_streams(&mut conn, streams, timeout, idle, done).await
}

/// As [`read_redis`], from a Redis Cluster (any of its `nodes`), each stream from the
/// node serving its slot.
pub async fn read_redis_cluster(
    nodes: &[String],
    streams: &[&str],
    timeout: Duration,
    idle: Duration,
    done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    let mut conn = redis::cluster::ClusterClient::builder(nodes.to_vec())
        .response_timeout(timeout)
        .build()?
        .get_async_connection()
        .await?;
    read_streams(&mut conn, streams, timeout, idle, done).await
}

async fn read_streams(
    conn: &mut impl redis::aio::ConnectionLike,
    streams: &[&str],
    timeout: Duration,
    idle: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    let deadline = Instant::now() + timeout;
    let mut last_new = Instant::now();
    let mut cursors: Vec<String> = streams.iter().map(|_| "-".to_string()).collect();
    let mut all = Vec::new();
    loop {
        let mut got = 0;
        for (s, stream) in streams.iter().enumerate() {
            let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(*stream)
                .arg(&cursors[s])
                .arg("+")
                .arg("COUNT")
                .arg(2_000)
                .query_async(conn)
                .await?;
            for (id, fields) in entries {
                cursors[s] = format!("({id}");
                got += 1;
                all.push(Consumed::from_redis(stream, all.len() as i64, fields));
            }
        }
        if got > 0 {
            last_new = Instant::now();
            if done(&all) {
                break;
            }
        } else if last_new.elapsed() >= idle || Instant::now() >= deadline {
            break;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Ok(all)
}
