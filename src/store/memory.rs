//! The in-memory store: [`Store`] without a database, for the pipeline's own tests
//! (ordering, retries, holds, dead letters, supervision, restarts), which then run in
//! seconds, deterministically, with PostgreSQL stopped. Not for production: nothing
//! survives the process.
//!
//! It keeps the PostgreSQL store's meanings: ids are taken at insert time and rows become
//! visible at commit ([`MemoryStore::begin`]), so late committers happen here too; the
//! reader never skips one (it knows exactly which ids belong to open transactions and
//! looks at them again until they commit or roll back). Writes are fenced by the lease's
//! epoch, instance locks go with their holder ([`MemoryStore::end_sessions`] ends them
//! all, as a database restart would), and [`MemoryStore::set_down`] makes every operation
//! fail as an unreachable database does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::config::OnPublish;
use crate::outbox::{NewEvent, Payload};
use crate::store::{
    Fence, InstanceLock, LeaseClaim, LockCheck, OutboxRow, PendingReader, ReadBatch, Store,
    StoreError, WakeFn, Wakeup,
};

/// A row of the outbox table.
#[derive(Debug, Clone)]
struct Stored {
    row: OutboxRow,
    /// Written by a transaction that has not committed yet.
    open: bool,
    published_at: Option<Instant>,
    last_error: Option<String>,
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
struct MemLease {
    owner: String,
    epoch: i64,
    renewed_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct Tables {
    next_id: i64,
    outbox: BTreeMap<i64, Stored>,
    dead_letters: BTreeMap<i64, MemDeadLetter>,
    leases: HashMap<String, MemLease>,
    /// Instance name → the session holding its lock.
    locks: HashMap<String, u64>,
    /// Statements answered (the benchmark's `outboxd_db_queries_total`, here for tests).
    statements: u64,
}

#[derive(Default)]
struct Inner {
    tables: Mutex<Tables>,
    down: AtomicBool,
    next_session: AtomicU64,
    notify: Notify,
    rescan: AtomicBool,
}

/// The relay's database in memory. Cheap to clone (one shared set of tables).
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

fn down_error() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "the in-memory database is down (MemoryStore::set_down)",
    ))
}

fn check_fence(t: &Tables, fence: &Fence) -> Result<(), StoreError> {
    match t.leases.get(&fence.name) {
        Some(l) if l.owner == fence.owner && l.epoch == fence.epoch => Ok(()),
        _ => Err(StoreError::Fenced(fence.name.clone())),
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> Result<MutexGuard<'_, Tables>, sqlx::Error> {
        if self.inner.down.load(Ordering::Acquire) {
            return Err(down_error());
        }
        let mut t = self.inner.tables.lock().expect("memory store");
        t.statements += 1;
        Ok(t)
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.inner.tables.lock().expect("memory store")
    }

    /// Makes every operation fail as an unreachable database does (`true`), or answer
    /// again (`false`).
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::Release);
        if !down {
            self.inner.notify.notify_one();
        }
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

    fn request_rescan(&self) {
        self.inner.rescan.store(true, Ordering::Release);
        self.inner.notify.notify_one();
    }

    fn wake(&self) {
        self.inner.notify.notify_one();
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

/// The cursor, and the ids below it that belonged to open transactions when it passed
/// them: the only places a late committer can appear.
struct MemReader {
    store: MemoryStore,
    cursor: i64,
    open_below: BTreeSet<i64>,
}

impl PendingReader for MemReader {
    fn read(&mut self, limit: i64) -> BoxFuture<'_, Result<ReadBatch, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let t = self.store.tables()?;
            let limit = limit.max(0) as usize;
            let mut rows = Vec::new();
            // Late rows first, in id order (all below the cursor); a rolled-back id is
            // gone from the table and forgotten.
            let mut settled = Vec::new();
            for &id in &self.open_below {
                match t.outbox.get(&id) {
                    Some(s) if s.open => {}
                    Some(s) if s.published_at.is_none() => {
                        if rows.len() >= limit {
                            break;
                        }
                        rows.push(s.row.clone());
                        settled.push(id);
                    }
                    _ => settled.push(id),
                }
            }
            for id in settled {
                self.open_below.remove(&id);
            }
            let cursor_before = self.cursor;
            let mut cursor = cursor_before;
            let mut full = rows.len() >= limit;
            for (&id, s) in t.outbox.range(cursor_before + 1..) {
                if rows.len() >= limit {
                    full = true;
                    break;
                }
                cursor = id;
                if s.open {
                    self.open_below.insert(id);
                } else if s.published_at.is_none() {
                    rows.push(s.row.clone());
                }
            }
            self.cursor = cursor;
            Ok(ReadBatch {
                rows,
                cursor_before,
                full,
                started: Some(started),
            })
        })
    }

    fn cursor(&self) -> i64 {
        self.cursor
    }

    fn found(&mut self, id: i64) -> bool {
        self.open_below.remove(&id)
    }
}

/// A holder of an instance name's lock.
struct MemLock {
    store: MemoryStore,
    owner: String,
    session: u64,
}

impl MemLock {
    fn held(&self) -> bool {
        self.store.lock().locks.get(&self.owner) == Some(&self.session)
    }
}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut t = self.store.lock();
        if t.locks.get(&self.owner) == Some(&self.session) {
            t.locks.remove(&self.owner);
        }
    }
}

impl InstanceLock for MemLock {
    fn alive(&mut self, _patience: Duration) -> BoxFuture<'_, bool> {
        let alive = self.held() && !self.store.inner.down.load(Ordering::Acquire);
        Box::pin(async move { alive })
    }

    fn renew_lease<'a>(
        &'a mut self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            if !self.held() {
                return Err(down_error());
            }
            self.store.renew_lease(fence, ttl).await
        })
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn reader(&self) -> Box<dyn PendingReader> {
        Box::new(MemReader {
            store: self.clone(),
            cursor: 0,
            open_below: BTreeSet::new(),
        })
    }

    fn fetch_ids<'a>(
        &'a self,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<Vec<OutboxRow>, StoreError>> {
        Box::pin(async move {
            let t = self.tables()?;
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            Ok(ids
                .iter()
                .filter_map(|id| t.outbox.get(id))
                .filter(|s| !s.open && s.published_at.is_none())
                .map(|s| s.row.clone())
                .collect())
        })
    }

    fn pending_ids_upto<'a>(
        &'a self,
        upto: i64,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(async move {
            let t = self.tables()?;
            Ok(t.outbox
                .range(..=upto)
                .filter(|(_, s)| {
                    !s.open && s.published_at.is_none() && !skip.contains(&s.row.aggregate_id)
                })
                .map(|(id, _)| *id)
                .collect())
        })
    }

    fn held_aggregates(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let t = self.tables()?;
            let held: BTreeSet<String> = t
                .dead_letters
                .values()
                .filter(|d| d.resolved_at.is_none())
                .map(|d| d.row.aggregate_id.clone())
                .collect();
            Ok(held.into_iter().collect())
        })
    }

    fn mark_published<'a>(
        &'a self,
        fence: &'a Fence,
        ids: &'a [i64],
        mode: OnPublish,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            check_fence(&t, fence)?;
            let now = Instant::now();
            let mut n = 0;
            for id in ids {
                match mode {
                    OnPublish::Delete => {
                        if t.outbox.remove(id).is_some() {
                            n += 1;
                        }
                    }
                    OnPublish::Mark => {
                        if let Some(s) = t.outbox.get_mut(id)
                            && s.published_at.is_none()
                        {
                            s.published_at = Some(now);
                            n += 1;
                        }
                    }
                }
            }
            Ok(n)
        })
    }

    fn record_failure<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        _retry_in: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            check_fence(&t, fence)?;
            if let Some(s) = t.outbox.get_mut(&id) {
                s.row.attempts = attempts;
                s.last_error = Some(error.to_string());
            }
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        fence: &'a Fence,
        id: i64,
        attempts: i32,
        reason: &'a str,
        error_class: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            check_fence(&t, fence)?;
            let pending = t
                .outbox
                .get(&id)
                .is_some_and(|s| !s.open && s.published_at.is_none());
            if !pending {
                return Ok(false);
            }
            let row = t.outbox.remove(&id).expect("pending").row;
            t.dead_letters.entry(id).or_insert(MemDeadLetter {
                row,
                reason: reason.into(),
                error_class: error_class.into(),
                attempts,
                resolved_at: None,
            });
            Ok(true)
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        claim: &'a LeaseClaim<'a>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            let now = Instant::now();
            let fresh = MemLease {
                owner: claim.owner.into(),
                epoch: 1,
                renewed_at: now,
                expires_at: now + claim.ttl,
            };
            let epoch = match t.leases.get_mut(claim.name) {
                None => {
                    t.leases.insert(claim.name.into(), fresh);
                    1
                }
                Some(l) => {
                    let reclaimable =
                        l.owner == claim.owner && claim.reclaim && l.renewed_at + claim.grace < now;
                    if l.expires_at >= now && !reclaimable {
                        return Ok(None);
                    }
                    let epoch = l.epoch + 1;
                    *l = MemLease { epoch, ..fresh };
                    epoch
                }
            };
            Ok(Some(epoch))
        })
    }

    fn renew_lease<'a>(
        &'a self,
        fence: &'a Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            let now = Instant::now();
            Ok(match t.leases.get_mut(&fence.name) {
                Some(l) if l.owner == fence.owner && l.epoch == fence.epoch => {
                    l.renewed_at = now;
                    l.expires_at = now + ttl;
                    true
                }
                _ => false,
            })
        })
    }

    fn release_lease<'a>(&'a self, fence: &'a Fence) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            if let Some(l) = t.leases.get_mut(&fence.name)
                && l.owner == fence.owner
                && l.epoch == fence.epoch
            {
                l.expires_at = Instant::now() - Duration::from_millis(1);
            }
            Ok(())
        })
    }

    fn lock_instance<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn InstanceLock>>, LockCheck>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            if t.locks.contains_key(owner) {
                return Ok(None);
            }
            let session = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
            t.locks.insert(owner.into(), session);
            drop(t);
            Ok(Some(Box::new(MemLock {
                store: self.clone(),
                owner: owner.into(),
                session,
            }) as Box<dyn InstanceLock>))
        })
    }

    fn backlog(&self, cap: i64) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        Box::pin(async move {
            let t = self.tables()?;
            let pending = t
                .outbox
                .values()
                .filter(|s| !s.open && s.published_at.is_none())
                .take(cap.max(0) as usize)
                .count();
            let open = t
                .dead_letters
                .values()
                .filter(|d| d.resolved_at.is_none())
                .count();
            Ok((pending as i64, open as i64))
        })
    }

    fn delete_published<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            check_fence(&t, fence)?;
            let old: Vec<i64> = t
                .outbox
                .iter()
                .filter(|(_, s)| s.published_at.is_some_and(|p| p.elapsed() > retention))
                .map(|(id, _)| *id)
                .take(limit.max(0) as usize)
                .collect();
            for id in &old {
                t.outbox.remove(id);
            }
            Ok(old.len() as u64)
        })
    }

    fn delete_resolved_dead_letters<'a>(
        &'a self,
        fence: &'a Fence,
        retention: Duration,
        limit: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut t = self.tables()?;
            check_fence(&t, fence)?;
            let old: Vec<i64> = t
                .dead_letters
                .iter()
                .filter(|(_, d)| d.resolved_at.is_some_and(|r| r.elapsed() > retention))
                .map(|(id, _)| *id)
                .take(limit.max(0) as usize)
                .collect();
            for id in &old {
                t.dead_letters.remove(id);
            }
            Ok(old.len() as u64)
        })
    }

    fn watch(&self, wake: WakeFn) -> Option<tokio::task::JoinHandle<()>> {
        let inner = self.inner.clone();
        Some(tokio::spawn(async move {
            if !wake(Wakeup::Rows) {
                return;
            }
            loop {
                inner.notify.notified().await;
                let what = if inner.rescan.swap(false, Ordering::AcqRel) {
                    Wakeup::Rescan
                } else {
                    Wakeup::Rows
                };
                if !wake(what) {
                    return;
                }
            }
        }))
    }
}
