//! The in-memory store's tables, its handle with the tests' API, and transactions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::Utc;
use tokio::sync::Notify;

use crate::outbox::{NewEvent, Payload};
use crate::store::{Fence, OutboxRow, StoreError};

/// A row of the outbox table.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) row: OutboxRow,
    /// Written by a transaction that has not committed yet.
    pub(super) open: bool,
    pub(super) published_at: Option<Instant>,
    pub(super) last_error: Option<String>,
}

/// A row of the dead-letter table.
#[derive(Debug, Clone)]
pub struct MemDeadLetter {
    /// The row as it was pending.
    pub row: OutboxRow,
    /// Why.
    pub reason: String,
    /// The failure class.
    pub error_class: String,
    /// Attempts made.
    pub attempts: i32,
    /// When an operator replayed or discarded it.
    pub resolved_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(super) struct MemLease {
    pub(super) owner: String,
    pub(super) epoch: i64,
    pub(super) renewed_at: Instant,
    pub(super) expires_at: Instant,
}

#[derive(Default)]
pub(super) struct Tables {
    pub(super) next_id: i64,
    pub(super) outbox: BTreeMap<i64, Stored>,
    pub(super) dead_letters: BTreeMap<i64, MemDeadLetter>,
    pub(super) leases: HashMap<String, MemLease>,
    /// Instance name → the session holding its lock.
    pub(super) locks: HashMap<String, u64>,
    /// Statements answered (the benchmark's `outboxd_db_queries_total`, here for tests).
    pub(super) statements: u64,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) tables: Mutex<Tables>,
    pub(super) down: AtomicBool,
    pub(super) next_session: AtomicU64,
    pub(super) notify: Notify,
    pub(super) rescan: AtomicBool,
    /// Times the poller turned row wake-ups off (as `UNLISTEN` would), for tests.
    pub(super) wakeups_paused: AtomicU64,
    /// Whether row wake-ups are off now.
    pub(super) wakeups_off: AtomicBool,
}

/// The relay's database in memory. Cheap to clone (one shared set of tables).
#[derive(Clone, Default)]
pub struct MemoryStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn down_error() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "the in-memory database is down (MemoryStore::set_down)",
    ))
}

pub(super) fn check_fence(t: &Tables, fence: &Fence) -> Result<(), StoreError> {
    match t.leases.get(&fence.name) {
        Some(l) if l.owner == fence.owner && l.epoch == fence.epoch => Ok(()),
        _ => Err(StoreError::Fenced(fence.name.clone())),
    }
}

impl MemoryStore {
    /// The tables, for one statement (fails while the database is "down").
    pub(super) fn tables(&self) -> Result<MutexGuard<'_, Tables>, sqlx::Error> {
        if self.inner.down.load(Ordering::Acquire) {
            return Err(down_error());
        }
        let mut t = self.inner.tables.lock().expect("memory store");
        t.statements += 1;
        Ok(t)
    }

    /// The tables, for the test API (answers while "down").
    pub(super) fn lock(&self) -> MutexGuard<'_, Tables> {
        self.inner.tables.lock().expect("memory store")
    }

    pub(super) fn request_rescan(&self) {
        self.inner.rescan.store(true, Ordering::Release);
        self.inner.notify.notify_one();
    }

    pub(super) fn wake(&self) {
        self.inner.notify.notify_one();
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every operation fail as an unreachable database does (`true`), or answer
    /// again (`false`).
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::Release);
        if !down {
            self.inner.notify.notify_one();
        }
    }

    /// How often the poller turned row wake-ups off (it reads on its own cadence under
    /// load), and whether they are off now.
    pub fn wakeups_paused(&self) -> (u64, bool) {
        (
            self.inner.wakeups_paused.load(Ordering::Acquire),
            self.inner.wakeups_off.load(Ordering::Acquire),
        )
    }

    /// Ends every session, as a database restart does: instance locks are released.
    pub fn end_sessions(&self) {
        self.lock().locks.clear();
    }

    /// Writes one event and commits (as `enqueue` in an application's transaction);
    /// returns its id.
    pub fn enqueue(&self, event: &NewEvent) -> i64 {
        let mut tx = self.begin();
        let id = tx.enqueue(event);
        tx.commit();
        id
    }

    /// Writes a row as-is, bypassing validation (for broken rows), and commits.
    pub fn insert_raw(&self, row: impl FnOnce(&mut OutboxRow)) -> i64 {
        let mut tx = self.begin();
        let id = tx.insert_raw(row);
        tx.commit();
        id
    }

    /// Starts a transaction: its rows take ids now and become visible at commit.
    pub fn begin(&self) -> MemTransaction {
        MemTransaction {
            store: self.clone(),
            ids: Vec::new(),
            done: false,
        }
    }

    /// Pending rows (committed, not published), by id.
    pub fn pending(&self) -> Vec<OutboxRow> {
        self.lock()
            .outbox
            .values()
            .filter(|s| !s.open && s.published_at.is_none())
            .map(|s| s.row.clone())
            .collect()
    }

    /// The last error recorded for a pending row.
    pub fn last_error(&self, id: i64) -> Option<String> {
        self.lock()
            .outbox
            .get(&id)
            .and_then(|s| s.last_error.clone())
    }

    /// Rows kept after publishing (`on_publish = "mark"`).
    pub fn published_kept(&self) -> usize {
        self.lock()
            .outbox
            .values()
            .filter(|s| s.published_at.is_some())
            .count()
    }

    /// Every dead letter, by id.
    pub fn dead_letters(&self) -> Vec<MemDeadLetter> {
        self.lock().dead_letters.values().cloned().collect()
    }

    /// `outboxd dead-letters replay --aggregate`: the aggregate's open dead letters go
    /// back to the outbox under their ids and the relay is asked to rescan.
    pub fn replay(&self, aggregate_id: &str) -> usize {
        let mut t = self.lock();
        let now = Instant::now();
        let mut back = Vec::new();
        for dl in t.dead_letters.values_mut() {
            if dl.row.aggregate_id == aggregate_id && dl.resolved_at.is_none() {
                dl.resolved_at = Some(now);
                back.push(dl.row.clone());
            }
        }
        for mut row in back.iter().cloned() {
            row.attempts = 0;
            t.outbox.insert(
                row.id,
                Stored {
                    row,
                    open: false,
                    published_at: None,
                    last_error: None,
                },
            );
        }
        drop(t);
        self.request_rescan();
        back.len()
    }

    /// `outboxd dead-letters discard --aggregate`: resolves its open dead letters without
    /// sending them; the relay is asked to rescan (the aggregate's later rows go on).
    pub fn discard(&self, aggregate_id: &str) -> usize {
        let mut n = 0;
        let now = Instant::now();
        for dl in self.lock().dead_letters.values_mut() {
            if dl.row.aggregate_id == aggregate_id && dl.resolved_at.is_none() {
                dl.resolved_at = Some(now);
                n += 1;
            }
        }
        self.request_rescan();
        n
    }

    /// The current holder of a lease: owner and epoch.
    pub fn lease(&self, name: &str) -> Option<(String, i64)> {
        self.lock()
            .leases
            .get(name)
            .map(|l| (l.owner.clone(), l.epoch))
    }

    /// Statements answered so far.
    pub fn statements(&self) -> u64 {
        self.lock().statements
    }
}

/// An open transaction of [`MemoryStore::begin`]; rolled back when dropped uncommitted.
pub struct MemTransaction {
    store: MemoryStore,
    ids: Vec<i64>,
    done: bool,
}

impl MemTransaction {
    /// Writes one event in this transaction; returns its id (taken now).
    pub fn enqueue(&mut self, event: &NewEvent) -> i64 {
        let (payload, payload_bytes) = match event.payload() {
            Payload::Json(text) => (Some(text.clone().into_bytes()), None),
            Payload::Bytes(b) => (None, Some(b.clone())),
        };
        let headers = if event.headers().is_empty() {
            String::new()
        } else {
            serde_json::to_string(event.headers()).expect("string map serializes")
        };
        self.insert_raw(|r| {
            r.event_id = event.event_id();
            r.aggregate_type = event.aggregate_type().into();
            r.aggregate_id = event.aggregate_id().into();
            r.event_type = event.event_type().into();
            r.topic = event.topic().into();
            r.payload = payload;
            r.payload_bytes = payload_bytes;
            r.headers = headers;
        })
    }

    /// Writes a row as-is (for broken rows); returns its id.
    pub fn insert_raw(&mut self, fill: impl FnOnce(&mut OutboxRow)) -> i64 {
        let mut t = self.store.lock();
        t.next_id += 1;
        let id = t.next_id;
        let mut row = OutboxRow {
            id,
            aggregate_type: "test".into(),
            aggregate_id: String::new(),
            event_type: "test".into(),
            topic: String::new(),
            payload: Some(b"{}".to_vec()),
            payload_bytes: None,
            headers: String::new(),
            event_id: uuid::Uuid::new_v4(),
            created_at: Utc::now(),
            attempts: 0,
            tries: 0,
        };
        fill(&mut row);
        row.id = id;
        t.outbox.insert(
            id,
            Stored {
                row,
                open: true,
                published_at: None,
                last_error: None,
            },
        );
        self.ids.push(id);
        id
    }

    /// Makes the transaction's rows visible and wakes the relay.
    pub fn commit(mut self) {
        self.finish(true);
    }

    /// Drops the transaction's rows (their ids stay unused).
    pub fn rollback(mut self) {
        self.finish(false);
    }

    fn finish(&mut self, commit: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let mut t = self.store.lock();
        for id in &self.ids {
            if commit {
                if let Some(s) = t.outbox.get_mut(id) {
                    s.open = false;
                }
            } else {
                t.outbox.remove(id);
            }
        }
        drop(t);
        if commit {
            self.store.wake();
        }
    }
}

impl Drop for MemTransaction {
    fn drop(&mut self) {
        self.finish(false);
    }
}
