//! Shared liveness and readiness facts, set by the actors and read by `/readyz`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Lease state of this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Not trying yet, or shutting down.
    None = 0,
    /// Another instance holds the lease; this one waits to take over.
    Standby = 1,
    /// This instance publishes.
    Active = 2,
}

/// What `/readyz` reports; cheap to update from any actor.
#[derive(Debug)]
pub struct Health {
    db_up: AtomicBool,
    broker_up: AtomicBool,
    /// Why the broker cannot be used (a TLS or authentication failure), until it can:
    /// what kind of problem, and the last attempt's words.
    broker_problem: Mutex<Option<(String, String)>>,
    lease: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            db_up: AtomicBool::new(false),
            broker_up: AtomicBool::new(true),
            broker_problem: Mutex::new(None),
            lease: AtomicU8::new(LeaseState::None as u8),
        }
    }
}

impl Health {
    /// Whether the last database operation succeeded.
    pub fn db_up(&self) -> bool {
        self.db_up.load(Ordering::Relaxed)
    }
    /// Records the outcome of a database operation; logs transitions once.
    pub fn set_db_up(&self, up: bool) {
        if self.db_up.swap(up, Ordering::Relaxed) != up {
            metrics::gauge!("outboxd_database_up").set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!("Database reachable.");
            }
        }
    }
    /// Whether the broker was reachable last time we heard.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }
    /// Records broker reachability; returns whether it changed (logs the recovery).
    pub fn set_broker_up(&self, up: bool) -> bool {
        let changed = self.broker_up.swap(up, Ordering::Relaxed) != up;
        // A problem is only ever recorded with the broker down, so it can only need
        // clearing when the broker comes back: no lock per acknowledged batch.
        if up && changed {
            self.set_broker_problem(None);
        }
        if changed {
            metrics::gauge!("outboxd_broker_up").set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!("Broker reachable again.");
            }
        }
        changed
    }
    /// Why the broker cannot be used, when a TLS or authentication failure says so.
    pub fn broker_problem(&self) -> Option<String> {
        self.broker_problem
            .lock()
            .expect("broker problem")
            .as_ref()
            .map(|(_, words)| words.clone())
    }
    /// Records (or, with `None`, clears) why the broker cannot be used: `(kind, words)`,
    /// where `kind` names the problem the same way on every connection attempt and
    /// `words` are the last attempt's (librdkafka words one failure differently from one
    /// attempt to the next). Returns whether the kind changed, so that a problem is logged
    /// once, not on every attempt.
    pub fn set_broker_problem(&self, problem: Option<(&str, String)>) -> bool {
        let mut current = self.broker_problem.lock().expect("broker problem");
        let changed = current.as_ref().map(|(kind, _)| kind.as_str())
            != problem.as_ref().map(|(kind, _)| *kind);
        *current = problem.map(|(kind, words)| (kind.to_string(), words));
        changed
    }
    /// This instance's lease state.
    pub fn lease(&self) -> LeaseState {
        match self.lease.load(Ordering::Relaxed) {
            1 => LeaseState::Standby,
            2 => LeaseState::Active,
            _ => LeaseState::None,
        }
    }
    /// Sets the lease state.
    pub fn set_lease(&self, state: LeaseState) {
        self.lease.store(state as u8, Ordering::Relaxed);
        metrics::gauge!("outboxd_lease_active").set(if state == LeaseState::Active {
            1.0
        } else {
            0.0
        });
    }
    /// Ready: the database and the broker are reachable.
    pub fn ready(&self) -> bool {
        self.db_up() && self.broker_up()
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn a_broker_problem_is_new_only_when_its_kind_changes() {
        let h = Health::default();
        assert!(h.set_broker_problem(Some(("bad CA", "attempt 1 words".into()))));
        assert!(
            !h.set_broker_problem(Some(("bad CA", "attempt 2, other words".into()))),
            "same problem, worded differently: not logged again"
        );
        assert_eq!(
            h.broker_problem().as_deref(),
            Some("attempt 2, other words")
        );
        assert!(h.set_broker_problem(Some(("bad password", "w".into()))));
        h.set_broker_up(false);
        h.set_broker_up(true);
        assert_eq!(h.broker_problem(), None, "cleared when the broker is back");
        assert!(h.set_broker_problem(Some(("bad password", "w".into()))));
    }
}
