//! Reading a topic back and checking it: the demo's verification, the tests' and the
//! fault harness's ledger. Consumers use manual partition assignment from the beginning.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// Creates a topic with this many partitions (an existing one is fine).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (UTF-8).
    pub key: String,
    /// Value.
    pub value: Vec<u8>,
    /// Headers in record order.
    pub headers: Vec<(String, String)>,
}

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

    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A consumer assigned every partition of some topics from the beginning.
///
/// Consumer errors (a broker connection cut, all brokers down) are not fatal in
/// librdkafka: the consumer reconnects and goes on from its position. The reader counts
/// them and keeps reading, so that records read before an error are never dropped.
pub struct Reader {
    consumer: BaseConsumer,
    errors: std::cell::Cell<u64>,
    last_error: std::cell::RefCell<Option<String>>,
}

impl Reader {
    /// Assigns every partition of `topics`, from offset 0.
    pub fn new(brokers: &str, topics: &[&str]) -> anyhow::Result<Reader> {
        Reader::with_options(brokers, topics, &[])
    }

    /// As [`Reader::new`], with more librdkafka options (TLS, SASL).
    pub fn with_options(
        brokers: &str,
        topics: &[&str],
        options: &[(&str, &str)],
    ) -> anyhow::Result<Reader> {
        let mut config = ClientConfig::new();
        for (k, v) in options {
            config.set(*k, *v);
        }
        let consumer: BaseConsumer = config
            .set("bootstrap.servers", brokers)
            .set(
                "group.id",
                format!("outboxd-reader-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let t = md
                .topics()
                .first()
                .ok_or_else(|| anyhow::anyhow!("no metadata for topic {topic}"))?;
            if t.partitions().is_empty() {
                anyhow::bail!("topic {topic} has no partitions (does it exist?)");
            }
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(Reader {
            consumer,
            errors: std::cell::Cell::new(0),
            last_error: std::cell::RefCell::new(None),
        })
    }

    /// Consumer errors seen so far, and the last one: what to tell a user whose
    /// verification found records missing.
    pub fn errors(&self) -> (u64, Option<String>) {
        (self.errors.get(), self.last_error.borrow().clone())
    }

    /// Reads what arrives within `wait` (at most `max` records). Consumer errors are
    /// counted (see [`Reader::errors`]), not returned: the records read before one must not
    /// be lost with it.
    pub fn poll_for(&self, wait: Duration, max: usize) -> Vec<Consumed> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                None => {}
                Some(Err(e)) => {
                    self.errors.set(self.errors.get() + 1);
                    *self.last_error.borrow_mut() = Some(e.to_string());
                }
                Some(Ok(m)) => out.push(Consumed {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        h.value
                                            .map(|v| String::from_utf8_lossy(v).into_owned())
                                            .unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            }
        }
        out
    }

    /// Reads until `done` says so for the records so far, or nothing new arrived for
    /// `idle`, or `timeout` passed.
    pub fn read_until(
        &self,
        timeout: Duration,
        idle: Duration,
        mut done: impl FnMut(&[Consumed]) -> bool,
    ) -> Vec<Consumed> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        let mut last_new = Instant::now();
        while Instant::now() < deadline {
            let got = self.poll_for(Duration::from_millis(200), 100_000);
            if !got.is_empty() {
                last_new = Instant::now();
                all.extend(got);
                if done(&all) {
                    break;
                }
            } else if last_new.elapsed() >= idle {
                break;
            }
        }
        all
    }
}

/// What a ledger found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerReport {
    /// Events written (expected).
    pub expected: u64,
    /// Distinct expected events seen.
    pub delivered: u64,
    /// Expected events never seen.
    pub lost: u64,
    /// First sightings that came after a higher sequence number of the same aggregate.
    pub reordered: u64,
    /// Records seen more than once (resends).
    pub duplicates: u64,
    /// Records that belong to no written event.
    pub unexpected: u64,
    /// Events whose commit outcome was unknown (connection lost during COMMIT) and that
    /// did arrive; those that did not are not counted as lost.
    pub uncertain_delivered: u64,
}

/// Per-aggregate bookkeeping of sequence numbers: what was written, what was seen.
#[derive(Debug, Default)]
pub struct Ledger {
    written: HashMap<String, HashSet<u64>>,
    uncertain: HashMap<String, HashSet<u64>>,
    seen: HashMap<String, HashSet<u64>>,
    last_first: HashMap<String, u64>,
    duplicates: u64,
    reordered: u64,
    /// The first few reorders, for the report.
    pub reorder_examples: Vec<String>,
}

impl Ledger {
    /// Records that `seq` of `aggregate` was committed.
    pub fn written(&mut self, aggregate: &str, seq: u64) {
        self.written
            .entry(aggregate.to_string())
            .or_default()
            .insert(seq);
    }

    /// Records that `seq` of `aggregate` may have been committed: the connection broke
    /// during COMMIT. It may arrive; if it does not, it is not lost.
    pub fn uncertain(&mut self, aggregate: &str, seq: u64) {
        self.uncertain
            .entry(aggregate.to_string())
            .or_default()
            .insert(seq);
    }

    /// Records a sighting, in consumption order (per aggregate: per Kafka partition).
    pub fn seen(&mut self, aggregate: &str, seq: u64) {
        let seen = self.seen.entry(aggregate.to_string()).or_default();
        if !seen.insert(seq) {
            self.duplicates += 1;
            return;
        }
        let last = self.last_first.entry(aggregate.to_string()).or_insert(0);
        if seq < *last {
            self.reordered += 1;
            if self.reorder_examples.len() < 10 {
                self.reorder_examples
                    .push(format!("{aggregate}: seq {seq} first seen after {last}"));
            }
        } else {
            *last = seq;
        }
    }

    /// The verdict so far.
    pub fn report(&self) -> LedgerReport {
        let expected: u64 = self.written.values().map(|s| s.len() as u64).sum();
        let delivered: u64 = self
            .written
            .iter()
            .map(|(a, w)| {
                self.seen
                    .get(a)
                    .map_or(0, |s| w.iter().filter(|q| s.contains(q)).count() as u64)
            })
            .sum();
        let mut unexpected = 0;
        let mut uncertain_delivered = 0;
        for (a, s) in &self.seen {
            for q in s {
                if self.written.get(a).is_some_and(|w| w.contains(q)) {
                    continue;
                }
                if self.uncertain.get(a).is_some_and(|u| u.contains(q)) {
                    uncertain_delivered += 1;
                } else {
                    unexpected += 1;
                }
            }
        }
        LedgerReport {
            expected,
            delivered,
            lost: expected - delivered,
            reordered: self.reordered,
            duplicates: self.duplicates,
            unexpected,
            uncertain_delivered,
        }
    }

    /// Aggregates with events written but not seen, with the missing sequence numbers.
    pub fn missing(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out = BTreeMap::new();
        for (a, w) in &self.written {
            let s = self.seen.get(a);
            let mut m: Vec<u64> = w
                .iter()
                .filter(|q| !s.is_some_and(|s| s.contains(q)))
                .copied()
                .collect();
            if !m.is_empty() {
                m.sort();
                out.insert(a.clone(), m);
            }
        }
        out
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
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> anyhow::Result<Vec<Consumed>> {
    let client = redis::Client::open(url)?;
    // A large XRANGE on a busy machine takes longer than the client's default 500 ms.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
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
                .query_async(&mut conn)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_counts_loss_reorder_and_duplicates() {
        let mut l = Ledger::default();
        for s in 1..=4 {
            l.written("a", s);
        }
        l.written("b", 1);
        l.uncertain("b", 2);
        for s in [1, 3, 2, 3, 1] {
            l.seen("a", s);
        }
        l.seen("x", 9);
        l.seen("b", 2);
        let r = l.report();
        assert_eq!(r.expected, 5);
        assert_eq!(r.delivered, 3);
        assert_eq!(r.lost, 2);
        assert_eq!(r.reordered, 1, "2 after 3");
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.unexpected, 1);
        assert_eq!(r.uncertain_delivered, 1);
        assert_eq!(l.missing()["a"], vec![4]);
        assert_eq!(l.missing()["b"], vec![1]);
    }
}
