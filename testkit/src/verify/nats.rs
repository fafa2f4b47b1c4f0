//! NATS JetStream: creating a stream, reading it back from the beginning.

use std::time::{Duration, Instant};

use super::consumed::Consumed;

impl Consumed {
    /// A JetStream message as read: key = its `aggregate_id` header, offset = its stream
    /// sequence.
    pub fn from_nats(m: &async_nats::jetstream::Message) -> anyhow::Result<Consumed> {
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut c = Consumed {
            topic: m.subject.to_string(),
            partition: 0,
            offset: info.stream_sequence as i64,
            key: String::new(),
            value: m.payload.to_vec(),
            headers: Vec::new(),
        };
        if let Some(h) = &m.headers {
            for (k, vs) in h.iter() {
                for v in vs {
                    c.headers.push((k.to_string(), v.to_string()));
                }
            }
        }
        c.key = c.header("aggregate_id").unwrap_or_default().to_string();
        Ok(c)
    }
}

/// Creates (or keeps) a JetStream stream capturing `subjects`, with a duplicate window of
/// `duplicate_window`.
pub async fn create_nats_stream(
    url: &str,
    name: &str,
    subjects: &[&str],
    duplicate_window: Duration,
) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    create_nats_stream_on(client, name, subjects, duplicate_window).await
}

/// As [`create_nats_stream`], on a connected client (one with TLS or credentials).
pub async fn create_nats_stream_on(
    client: async_nats::Client,
    name: &str,
    subjects: &[&str],
    duplicate_window: Duration,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        duplicate_window,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Reads a JetStream stream from its first message, in stream order, until `done` says
/// so, nothing new arrived for `idle`, or `timeout` passed. key = the `aggregate_id`
/// header, value = the body, offset = the stream sequence.
pub async fn read_nats(
    url: &str,
    stream: &str,
    timeout: Duration,
    idle: Duration,
    done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    let client = async_nats::connect(url).await?;
    read_nats_on(client, stream, timeout, idle, done).await
}

/// As [`read_nats`], on a connected client (one with TLS or credentials).
pub async fn read_nats_on(
    client: async_nats::Client,
    stream: &str,
    timeout: Duration,
    idle: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client);
    let stream_handle = js.get_stream(stream).await?;
    let consumer = stream_handle
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let deadline = Instant::now() + timeout;
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(idle.min(left), messages.next()).await {
            Ok(Some(Ok(m))) => {
                all.push(Consumed::from_nats(&m)?);
                if done(&all) {
                    break;
                }
            }
            Ok(Some(Err(e))) => anyhow::bail!("reading stream {stream}: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(all)
}
