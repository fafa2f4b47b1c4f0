//! Instance locks on the in-memory store: held while their holder lives.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;

use super::tables::{MemoryStore, down_error};
use crate::store::{Fence, InstanceLock, Store};

/// A holder of an instance name's lock.
pub(super) struct MemLock {
    pub(super) store: MemoryStore,
    pub(super) owner: String,
    pub(super) session: u64,
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
