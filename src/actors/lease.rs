//! The lease this relay publishes under, and its instance name (README, "Several
//! instances"). Owned by the supervisor, which asks it to take, renew and release.
//!
//! What I decide:
//! - **Who may take the lease.** Anyone, once it expired (`relay.lease_ttl_ms` without
//!   renewal) or was released. Earlier only for a process that holds its instance name's
//!   lock ([`Store::lock_instance`]) and finds the lease held under that same
//!   name but not renewed for [`Lease::grace`]: a restarted process reclaims its dead
//!   predecessor's lease within about 1.5 s (the grace, 1 s by default, a retry period
//!   and its own start) instead of the whole TTL.
//! - **When the holder may publish.** Only within [`Lease::window`] after it *asked* for
//!   its last successful renewal — shorter than the grace and than the TTL, so by the time
//!   anyone may take the lease over, the holder has stopped handing rows to the sink. A
//!   holder whose instance lock session dies (a PostgreSQL restart, `idle_session_timeout`,
//!   `pg_terminate_backend`, a NAT) keeps renewing through its pool and keeps the lease: a
//!   same-named process that takes the lock meanwhile waits, because the lease is still
//!   being renewed. The lock is a hint that the predecessor *may* be gone; the renewals
//!   stopping is the proof.
//! - **Cadence.** Renew every [`Lease::renew_every`] (`min(ttl / 3, 250 ms)`), through the
//!   instance-lock connection, which a busy pool cannot delay.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::store::{Fence, InstanceLock, LeaseClaim, LockCheck, RELAY_LEASE, Store};

/// The lease and the instance lock of one relay.
pub struct Lease {
    owner: String,
    ttl: Duration,
    /// The session holding the instance-name lock; `None` while another session holds it.
    identity: Option<Box<dyn InstanceLock>>,
    /// When to try again for the lock while holding the lease without it.
    relock_at: Option<Instant>,
    /// The lease held.
    pub fence: Option<Fence>,
}

/// What a try for the lease came to.
pub enum Take {
    /// Ours, with this epoch; publishing is allowed until the deadline.
    Taken(i64, Instant),
    /// Held by another; try again after this long.
    Standby(Duration),
}

/// What a renewal came to.
pub enum Renewal {
    /// Publishing is allowed until this deadline.
    Renewed(Instant),
    /// Another instance took the lease: stop.
    TakenOver,
    /// The database did not answer; the last deadline stands.
    Failed(sqlx::Error),
}

impl Lease {
    /// A lease for the instance `owner`, lasting `ttl` without renewal.
    pub fn new(owner: String, ttl: Duration) -> Self {
        Self {
            owner,
            ttl,
            identity: None,
            relock_at: None,
            fence: None,
        }
    }

    /// How often the holder renews.
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 3).min(Duration::from_millis(250))
    }

    /// How long a lease under this name must have gone without renewal before a process
    /// holding the name's lock may reclaim it.
    pub fn grace(&self) -> Duration {
        self.renew_every() * 4
    }

    /// How long after asking for a renewal the holder may publish.
    pub fn window(&self) -> Duration {
        self.ttl.mul_f64(0.9).min(self.grace().mul_f64(0.8))
    }

    /// Tries to take the lease. `Err(LockCheck::NotSession)`: the database is behind a
    /// pooler in transaction mode, where no lease can be trusted.
    pub async fn acquire(&mut self, store: &dyn Store) -> Result<Take, LockCheck> {
        let reclaim = self.hold_identity(store).await?;
        let asked_at = Instant::now();
        let claim = LeaseClaim {
            name: RELAY_LEASE,
            owner: &self.owner,
            ttl: self.ttl,
            reclaim,
            grace: self.grace(),
        };
        let taken = store.acquire_lease(&claim).await?;
        Ok(match taken {
            Some(epoch) => {
                self.fence = Some(Fence {
                    name: RELAY_LEASE.into(),
                    owner: self.owner.clone(),
                    epoch,
                });
                Take::Taken(epoch, asked_at + self.window())
            }
            // Holding the name's lock, the lease may come free within the grace: look
            // again soon. Without it, the lease expires after the TTL at the earliest.
            None if reclaim => Take::Standby(self.renew_every()),
            None => Take::Standby(self.ttl / 3),
        })
    }

    /// Extends the lease held, through the instance-lock connection while there is one,
    /// else through the pool.
    pub async fn renew(&mut self, store: &dyn Store) -> Result<Renewal, LockCheck> {
        let Some(fence) = self.fence.clone() else {
            return Ok(Renewal::TakenOver);
        };
        let asked_at = Instant::now();
        let mut renewed = None;
        let patience = self.renew_every() * 2;
        if let Some(lock) = &mut self.identity {
            // A connection a NAT dropped silently would hang until TCP gives up: give it
            // two renewal periods, then treat its session as gone.
            let answer = tokio::time::timeout(patience, lock.renew_lease(&fence, self.ttl)).await;
            match answer {
                Ok(Ok(r)) => renewed = Some(r),
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer".into(),
                    };
                    warn!(
                        %error,
                        "The session holding the instance lock is gone; renewing through the \
                         pool. A process under the same name waits while the lease is renewed."
                    );
                    self.identity = None;
                }
            }
        }
        let renewed = match renewed {
            Some(r) => r,
            None => match store.renew_lease(&fence, self.ttl).await {
                Ok(r) => r,
                Err(e) => return Ok(Renewal::Failed(e)),
            },
        };
        if !renewed {
            self.fence = None;
            return Ok(Renewal::TakenOver);
        }
        if self.identity.is_none() && self.relock_at.is_none_or(|t| Instant::now() >= t) {
            self.relock_at = Some(Instant::now() + self.ttl / 3);
            self.hold_identity(store).await?;
        }
        Ok(Renewal::Renewed(asked_at + self.window()))
    }

    /// Gives the lease up at once, so another instance need not wait for it to expire.
    pub async fn release(&mut self, store: &dyn Store) -> Result<(), sqlx::Error> {
        match self.fence.take() {
            Some(fence) => store.release_lease(&fence).await,
            None => Ok(()),
        }
    }

    /// Forgets the lease (it was taken over, or expired without renewal).
    pub fn forget(&mut self) {
        self.fence = None;
    }

    /// Whether this process holds the lock on its instance name, taking it if it can.
    async fn hold_identity(&mut self, store: &dyn Store) -> Result<bool, LockCheck> {
        let patience = self.renew_every() * 2;
        if let Some(lock) = &mut self.identity {
            if lock.alive(patience).await {
                return Ok(true);
            }
            // The session and its lock are gone: take it again below, if nobody else has.
            self.identity = None;
        }
        match store.lock_instance(&self.owner).await {
            Ok(Some(lock)) => {
                self.identity = Some(lock);
                Ok(true)
            }
            Ok(None) => {
                debug!(owner = %self.owner, "Another session holds this instance name's lock.");
                Ok(false)
            }
            Err(LockCheck::Db(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_stops_publishing_before_anyone_may_take_over() {
        for ttl_ms in [300, 1_000, 3_000, 10_000, 60_000] {
            let lease = Lease::new("x".into(), Duration::from_millis(ttl_ms));
            // A same-named process waits `grace` after the last renewal, others the TTL.
            assert!(lease.window() < lease.grace(), "{ttl_ms}");
            assert!(lease.window() < Duration::from_millis(ttl_ms), "{ttl_ms}");
            // The holder renews several times within its window.
            assert!(lease.renew_every() * 2 <= lease.window(), "{ttl_ms}");
        }
        // The defaults: a restarted process reclaims its lease within about 1.5 s.
        let lease = Lease::new("x".into(), Duration::from_secs(10));
        assert_eq!(lease.renew_every(), Duration::from_millis(250));
        assert_eq!(lease.grace(), Duration::from_secs(1));
        assert_eq!(lease.window(), Duration::from_millis(800));
    }
}
