//! An in-memory sink for the pipeline's tests: records what it is given, in order, and
//! fails, holds or crashes on the rows the test asks it to.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use outboxd::SinkKind;
use outboxd::sink::{Batch, FailureKind, PublishFailure, Sink, SinkFactory};
use outboxd::store::OutboxRow;

/// How long after a send a failure is reported.
const FAILURE_TAKES: Duration = Duration::from_millis(30);

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: i64,
    pub aggregate_id: String,
}

#[derive(Default)]
struct Rules {
    /// Rows of these aggregates fail this way, every time.
    failing: HashMap<String, (FailureKind, &'static str)>,
    /// Rows of these topics are refused as a missing destination.
    missing_topics: HashSet<String>,
    /// Rows with these ids fail this way, every time.
    failing_rows: HashMap<i64, (FailureKind, &'static str)>,
    /// Rows with these ids fail transiently this many more times.
    flaky: HashMap<i64, u32>,
}

/// The sink. Clone it to keep a handle while the relay owns the other.
#[derive(Clone, Default)]
pub struct MemorySink {
    published: Arc<Mutex<Vec<Published>>>,
    rules: Arc<Mutex<Rules>>,
    down: Arc<AtomicBool>,
    batches: Arc<AtomicU64>,
    /// Panic in `send` (after handing the batch to the broker) every this many batches.
    panic_every: Arc<AtomicU64>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// For `RelayOptions::sink`.
    pub fn factory(&self) -> SinkFactory {
        let sink = self.clone();
        Arc::new(move |_, _| {
            let sink: Arc<dyn Sink> = Arc::new(sink.clone());
            Box::pin(async move { Ok(sink) })
        })
    }

    pub fn published(&self) -> Vec<Published> {
        self.published.lock().unwrap().clone()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Release);
    }

    pub fn fail_aggregate(&self, aggregate: &str, kind: FailureKind, class: &'static str) {
        let mut r = self.rules.lock().unwrap();
        r.failing.insert(aggregate.into(), (kind, class));
    }

    pub fn fail_row(&self, id: i64, kind: FailureKind, class: &'static str) {
        self.rules
            .lock()
            .unwrap()
            .failing_rows
            .insert(id, (kind, class));
    }

    pub fn heal_aggregate(&self, aggregate: &str) {
        self.rules.lock().unwrap().failing.remove(aggregate);
    }

    pub fn flaky(&self, id: i64, times: u32) {
        self.rules.lock().unwrap().flaky.insert(id, times);
    }

    pub fn missing_topic(&self, topic: &str, missing: bool) {
        let mut r = self.rules.lock().unwrap();
        if missing {
            r.missing_topics.insert(topic.into());
        } else {
            r.missing_topics.remove(topic);
        }
    }

    pub fn panic_every(&self, batches: u64) {
        self.panic_every.store(batches, Ordering::Release);
    }

    fn outcome(&self, row: &OutboxRow) -> Result<(), PublishFailure> {
        if self.down.load(Ordering::Acquire) {
            return Err(PublishFailure::new(
                FailureKind::Transient,
                "broker_unavailable",
                "the memory broker is down",
            ));
        }
        let mut r = self.rules.lock().unwrap();
        if let Some((kind, class)) = r
            .failing
            .get(&row.aggregate_id)
            .or_else(|| r.failing_rows.get(&row.id))
        {
            return Err(PublishFailure::new(*kind, class, "refused by the test"));
        }
        if r.missing_topics.contains(&row.topic) {
            return Err(PublishFailure::new(
                FailureKind::Destination,
                "unknown_topic",
                format!("topic {:?} does not exist", row.topic),
            ));
        }
        if let Some(n) = r.flaky.get_mut(&row.id)
            && *n > 0
        {
            *n -= 1;
            return Err(PublishFailure::new(
                FailureKind::Transient,
                "request_timed_out",
                "flaky by the test",
            ));
        }
        Ok(())
    }

    fn accept(&self, row: &OutboxRow) {
        self.published.lock().unwrap().push(Published {
            id: row.id,
            aggregate_id: row.aggregate_id.clone(),
        });
    }
}

impl Sink for MemorySink {
    fn kind(&self) -> SinkKind {
        SinkKind::Kafka
    }

    fn send(&self, batch: Arc<Batch>) {
        let n = self.batches.fetch_add(1, Ordering::AcqRel) + 1;
        let every = self.panic_every.load(Ordering::Acquire);
        // Acknowledgements arrive from another task, as from a broker.
        let sink = self.clone();
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for (i, row) in batch.rows().iter().enumerate() {
                match sink.outcome(row) {
                    Ok(()) => {
                        sink.accept(row);
                        batch.acked(i);
                    }
                    Err(f) => failed.push((i, f)),
                }
            }
            // A failure takes a while to be known (a request that times out), as with a
            // real broker: what other rows achieved meanwhile tells the relay whether the
            // failure is the row's own or everyone's.
            if !failed.is_empty() {
                tokio::time::sleep(FAILURE_TAKES).await;
            }
            for (i, f) in failed {
                batch.failed(i, f);
            }
        });
        if every > 0 && n.is_multiple_of(every) {
            // The batch is with the broker and the publisher dies: its report comes from
            // a dead incarnation, and the poller sends the rows again (duplicates).
            panic!("test: the sink crashes its publisher after a send");
        }
    }

    fn copy_dead_letter(&self, _row: &OutboxRow, _topic: &str, _class: &str, _reason: &str) {}

    fn probe(&self, _timeout: Duration) -> BoxFuture<'static, Result<String, String>> {
        let down = self.down.load(Ordering::Acquire);
        Box::pin(async move {
            if down {
                Err("the memory broker is down".into())
            } else {
                Ok("memory".into())
            }
        })
    }

    fn describe(&self) -> String {
        "in-memory test sink".into()
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
