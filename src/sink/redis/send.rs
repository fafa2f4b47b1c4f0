//! Sending: a pipeline of `XADD`s, ending with `WAIT` when `redis.wait_replicas` asks for
//! it, each reply settling its row. On one server, up to [`PIPELINES_IN_FLIGHT`]
//! pipelines are out at once; on a Redis Cluster, rows go to one queue per hash slot (a
//! node takes no pipeline that crosses slots) with one pipeline out at a time per slot, so
//! a slot whose master is failing over holds only its own rows, never the others'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use redis::Value;
use redis::cluster_routing::Slot;
use tokio::sync::mpsc::UnboundedSender;

use super::classify::{classify, classify_code, not_replicated, security_hint};
use super::command::{
    IDMP_NO, IDMP_UNKNOWN, IDMP_YES, message, redis_version, supports_idmp, xadd,
};
use super::config::RedisConfig;
use super::conn::Conn;
use crate::health::Health;
use crate::sink::api::{Batch, FailureKind, PublishFailure, Rows};

/// Pipelines in flight at once (on one server); batches handed over meanwhile wait and go
/// together.
pub const PIPELINES_IN_FLIGHT: usize = 4;

/// Commands in one pipeline, at most (more batches wait for the next).
pub const PIPELINE_ROWS: usize = 5_000;

/// Rows of one batch that go in one pipeline (on a cluster: those of one hash slot).
pub(super) struct Part {
    batch: Arc<Batch>,
    rows: Vec<usize>,
}

impl Rows for Part {
    fn row_count(&self) -> usize {
        self.rows.len()
    }

    fn fail_all(&self, failure: &PublishFailure) {
        for &i in &self.rows {
            self.batch.failed(i, failure.clone());
        }
    }
}

/// A cluster's queues, one per hash slot.
pub(super) struct PerSlot {
    sender: Sender,
    slots: Mutex<HashMap<Slot, UnboundedSender<Part>>>,
}

/// Where the sink's `send` puts rows.
pub(super) enum Queues {
    /// One server: one queue.
    One(UnboundedSender<Part>),
    /// A Redis Cluster: a queue per hash slot, made when the slot is first written.
    PerSlot(Box<PerSlot>),
}

impl Queues {
    pub(super) fn new(sender: Sender) -> Queues {
        if matches!(sender.conn, Conn::Cluster(_)) {
            Queues::PerSlot(Box::new(PerSlot {
                sender,
                slots: Mutex::new(HashMap::new()),
            }))
        } else {
            Queues::One(crate::sink::api::coalescing(
                PIPELINES_IN_FLIGHT,
                PIPELINE_ROWS,
                move |parts| sender.clone().pipeline(parts),
            ))
        }
    }

    /// Hands `batch`'s rows to their queue(s).
    pub(super) fn send(&self, batch: Arc<Batch>) {
        match self {
            Queues::One(queue) => {
                let rows = (0..batch.rows().len()).collect();
                crate::sink::api::enqueue(queue, Part { batch, rows });
            }
            Queues::PerSlot(per) => {
                let PerSlot { sender, slots } = per.as_ref();
                let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
                for (i, row) in batch.rows().iter().enumerate() {
                    by_slot
                        .entry(Slot::for_key(&row.topic))
                        .or_default()
                        .push(i);
                }
                let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
                for (slot, rows) in by_slot {
                    let queue = slots.entry(slot).or_insert_with(|| {
                        let sender = sender.clone();
                        crate::sink::api::coalescing(1, PIPELINE_ROWS, move |parts| {
                            sender.clone().pipeline(parts)
                        })
                    });
                    let part = Part {
                        batch: batch.clone(),
                        rows,
                    };
                    crate::sink::api::enqueue(queue, part);
                }
            }
        }
    }
}

/// What the writer needs to send a pipeline.
#[derive(Clone)]
pub(super) struct Sender {
    pub(super) conn: Conn,
    pub(super) health: Arc<Health>,
    pub(super) config: RedisConfig,
    /// Whether the server takes `XADD IDMP`: [`IDMP_UNKNOWN`] until read.
    pub(super) idmp: Arc<AtomicU8>,
}

impl Sender {
    /// One pipeline for `parts`: an `XADD` per row that can be sent (then `WAIT`), each
    /// reply settling its row.
    async fn pipeline(mut self, parts: Vec<Part>) {
        let mut idmp = self.idmp.load(Ordering::Relaxed);
        if idmp == IDMP_UNKNOWN {
            idmp = learn_idmp(&mut self.conn, &self.idmp).await;
        }
        // What this pipeline learned or found, not what another one changed it to since.
        let idmp = idmp == IDMP_YES;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::new();
        for part in &parts {
            for &i in &part.rows {
                let row = &part.batch.rows()[i];
                match message(&self.config, row) {
                    Ok(m) => {
                        let event_id = idmp.then(|| row.event_id.to_string());
                        pipe.add_command(xadd(&self.config, &m, event_id.as_deref()));
                        sent.push((&part.batch, i));
                    }
                    Err(f) => part.batch.failed(i, f),
                }
            }
        }
        if sent.is_empty() {
            return;
        }
        let wait = self.config.wait_replicas;
        if wait > 0 {
            pipe.cmd("WAIT").arg(wait).arg(self.config.wait_timeout_ms);
        }
        let cluster = matches!(self.conn, Conn::Cluster(_));
        let replies = match pipe.query_async::<Vec<Value>>(&mut self.conn).await {
            Ok(replies) => replies,
            Err(e) => {
                let f = classify(&e, cluster);
                server_failure(&self.health, &f);
                if f.class == "broker_unavailable" {
                    // The connection is re-made, maybe to another server (a failover
                    // behind the same address): learn again whether it takes IDMP.
                    self.idmp.store(IDMP_UNKNOWN, Ordering::Relaxed);
                }
                for part in &parts {
                    part.fail_all(&f);
                }
                return;
            }
        };
        let mut replies = replies.into_iter();
        // The rows' replies, then WAIT's: how many replicas have every write before it.
        let rows: Vec<_> = sent.into_iter().map(|row| (row, replies.next())).collect();
        let unreplicated = match (wait > 0).then(|| replies.next()) {
            None => None,
            Some(Some(Value::Int(n))) if n >= i64::from(wait) => None,
            Some(Some(Value::Int(n))) => Some(format!(
                "only {n} of the {wait} replicas asked for (redis.wait_replicas) had the \
                 writes within redis.wait_timeout_ms = {} ms; sent again",
                self.config.wait_timeout_ms
            )),
            Some(other) => Some(format!("WAIT answered {other:?}; sent again")),
        };
        let mut added = 0;
        let mut refused = None;
        for ((batch, i), reply) in rows {
            match reply {
                Some(Value::ServerError(e)) => {
                    let f = classify_code(e.code(), e.to_string(), cluster);
                    server_failure(&self.health, &f);
                    if idmp && e.code() == "ERR" {
                        // A server that does not know IDMP reads it as the entry id
                        // ("Invalid stream ID"): after a failover to an older server.
                        // Ask the server again before the next pipeline.
                        self.idmp.store(IDMP_UNKNOWN, Ordering::Relaxed);
                    }
                    if f.kind == FailureKind::Transient && refused.is_none() {
                        refused = Some(f.message.clone());
                    }
                    batch.failed(i, f);
                }
                // Added, but a master crash now would lose it: not published yet.
                Some(_) if unreplicated.is_some() => {
                    let words = unreplicated.clone().unwrap_or_default();
                    if refused.is_none() {
                        refused = Some(words.clone());
                    }
                    batch.failed(i, not_replicated(words, cluster));
                }
                Some(_) => {
                    added += 1;
                    batch.acked(i);
                }
                None => batch.failed(
                    i,
                    PublishFailure::new(
                        FailureKind::Transient,
                        "transient",
                        "Redis sent fewer replies than commands",
                    ),
                ),
            }
        }
        if added == 0
            && let Some(words) = refused
        {
            refuses_every_write(&self.health, &words);
        }
    }
}

/// Reads whether the server takes `XADD IDMP` (again after a refusal or a lost
/// connection) and returns it; leaves it unknown if the server did not answer (the next
/// batch asks again).
async fn learn_idmp(conn: &mut Conn, idmp: &AtomicU8) -> u8 {
    match conn.info_server().await {
        Ok(info) => {
            let yes = supports_idmp(&info);
            let learned = if yes { IDMP_YES } else { IDMP_NO };
            // Batches sent before the first answer all ask; one says it.
            if idmp.swap(learned, Ordering::Relaxed) == learned {
                return learned;
            }
            tracing::info!(
                idempotent = yes,
                "Redis {}: XADD {}.",
                redis_version(&info).unwrap_or("?"),
                if yes {
                    "with IDMP (resends add nothing)"
                } else {
                    "without IDMP (Redis 8.6+ has it; resends are duplicates consumers drop by event_id)"
                }
            );
            learned
        }
        Err(e) if e.code() == Some("NOPERM") => {
            idmp.store(IDMP_NO, Ordering::Relaxed);
            IDMP_NO
        }
        Err(_) => IDMP_UNKNOWN,
    }
}

/// A pipeline of which the server took nothing, for a reason that is not the rows' own
/// (`OOM`, `READONLY`, `LOADING`, a command it does not know): nothing can be published
/// until it changes, so readiness says so, with the server's words, and the log says it
/// once; the next delivery clears it. Rows stay pending and spend no attempts meanwhile.
pub(super) fn refuses_every_write(health: &Health, words: &str) {
    health.set_broker_up(false);
    if health.set_broker_problem(Some((
        "refuses writes",
        format!("Redis refuses every XADD: {words}"),
    ))) {
        tracing::error!(error = %words, "Redis refuses every XADD; rows stay pending until it takes them again.");
    }
}

/// Health bookkeeping for a failure that concerns the whole server.
pub(super) fn server_failure(health: &Health, failure: &PublishFailure) {
    if failure.class == "broker_unavailable" || failure.class == "not_authenticated" {
        let changed = health.set_broker_up(false);
        if let Some((kind, hint)) = security_hint(failure) {
            let words = format!("{hint} ({})", failure.message);
            if health.set_broker_problem(Some((kind, words.clone()))) {
                tracing::error!(problem = %words, "Cannot use Redis; rows stay pending until this is fixed.");
            }
        } else if changed {
            tracing::warn!(error = %failure.message, "Redis is unreachable; sends are retried.");
        }
    }
}
