//! Kafka: creating a topic, reading topics back from the beginning.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::consumed::Consumed;

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
