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

mod lock;
mod reader;
mod tables;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::config::OnPublish;
use crate::store::{
    Fence, InstanceLock, LeaseClaim, LockCheck, OutboxRow, PendingReader, RowWakeups, Store,
    StoreError, WakeFn, Wakeup,
};
use lock::MemLock;
use reader::MemReader;
use tables::{MemLease, check_fence};

pub use tables::{MemDeadLetter, MemTransaction, MemoryStore};

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
            // A replayed row failing again reopens its dead letter.
            t.dead_letters.insert(
                id,
                MemDeadLetter {
                    row,
                    reason: reason.into(),
                    error_class: error_class.into(),
                    attempts,
                    resolved_at: None,
                },
            );
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
            let old = older(&t.outbox, |s| s.published_at, retention, limit);
            Ok(old
                .iter()
                .filter(|id| t.outbox.remove(id).is_some())
                .count() as u64)
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
            let old = older(&t.dead_letters, |d| d.resolved_at, retention, limit);
            Ok(old
                .iter()
                .filter(|id| t.dead_letters.remove(id).is_some())
                .count() as u64)
        })
    }

    fn watch(&self, wake: WakeFn, mut wanted: RowWakeups) -> Option<tokio::task::JoinHandle<()>> {
        let inner = self.inner.clone();
        Some(tokio::spawn(async move {
            if !wake(Wakeup::Rows) {
                return;
            }
            // Like LISTEN / UNLISTEN: no row wake-ups while the poller does not want them,
            // and one when it wants them again.
            let mut listening = true;
            loop {
                tokio::select! {
                    _ = inner.notify.notified() => {
                        let what = if inner.rescan.swap(false, Ordering::AcqRel) {
                            Wakeup::Rescan
                        } else if listening {
                            Wakeup::Rows
                        } else {
                            continue;
                        };
                        if !wake(what) {
                            return;
                        }
                    }
                    changed = wanted.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let want = *wanted.borrow_and_update();
                        let resumed = want && !listening;
                        if listening && !want {
                            inner.wakeups_paused.fetch_add(1, Ordering::AcqRel);
                        }
                        inner.wakeups_off.store(!want, Ordering::Release);
                        listening = want;
                        if resumed && !wake(Wakeup::Rows) {
                            return;
                        }
                    }
                }
            }
        }))
    }
}

/// Ids of up to `limit` entries whose time (`when`) is more than `retention` ago.
fn older<T>(
    table: &std::collections::BTreeMap<i64, T>,
    when: impl Fn(&T) -> Option<Instant>,
    retention: Duration,
    limit: i64,
) -> Vec<i64> {
    table
        .iter()
        .filter(|(_, e)| when(e).is_some_and(|t| t.elapsed() > retention))
        .map(|(id, _)| *id)
        .take(limit.max(0) as usize)
        .collect()
}
