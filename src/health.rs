//! Shared liveness and readiness facts, set by the actors and read by `/readyz`.

use std::collections::BTreeMap;
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
    /// Why the database cannot be used although it may answer (no primary among the
    /// hosts), until it can.
    db_problem: Mutex<Option<String>>,
    /// Whether `db_problem` has anything.
    any_db_problem: AtomicBool,
    broker_up: AtomicBool,
    /// Why the broker cannot be used (a TLS or authentication failure), until it can:
    /// what kind of problem, and the last attempt's words.
    broker_problem: Mutex<Option<(String, String)>>,
    /// Destinations that refuse every row (destination-level failures): destination →
    /// (class, the last failure's words).
    destination_problems: Mutex<BTreeMap<String, (String, String)>>,
    /// Whether `destination_problems` has anything (read per acknowledged batch).
    any_destination_problem: AtomicBool,
    lease: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            db_up: AtomicBool::new(false),
            db_problem: Mutex::new(None),
            any_db_problem: AtomicBool::new(false),
            broker_up: AtomicBool::new(true),
            broker_problem: Mutex::new(None),
            destination_problems: Mutex::new(BTreeMap::new()),
            any_destination_problem: AtomicBool::new(false),
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
            self.publish_gauges();
            if up {
                tracing::info!("Database reachable.");
            }
        }
    }
    /// Records (or, with `None`, clears) why the database cannot be used now: no primary
    /// among its hosts, with what each answered.
    pub fn set_db_problem(&self, problem: Option<String>) {
        let mut current = self.db_problem.lock().expect("db problem");
        let changed = current.is_some() != problem.is_some();
        self.any_db_problem
            .store(problem.is_some(), Ordering::Release);
        *current = problem;
        drop(current);
        if changed {
            self.publish_gauges();
        }
    }
    /// Why the database cannot be used now, if a search for its primary says so.
    pub fn db_problem(&self) -> Option<String> {
        self.db_problem.lock().expect("db problem").clone()
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
            self.publish_gauges();
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
    /// Records that `destination` refuses rows for a reason only an operator can fix
    /// (`class`, `words`); returns whether this is news (not the same class as before), so
    /// that it is logged once.
    pub fn set_destination_problem(&self, destination: &str, class: &str, words: &str) -> bool {
        let mut map = self
            .destination_problems
            .lock()
            .expect("destination problems");
        let new = map.get(destination).is_none_or(|(c, _)| c != class);
        map.insert(
            destination.to_string(),
            (class.to_string(), words.to_string()),
        );
        self.any_destination_problem.store(true, Ordering::Release);
        metrics::gauge!("outboxd_destinations_blocked").set(map.len() as f64);
        new
    }
    /// These destinations took rows: whatever was wrong with them is fixed (logged).
    pub fn clear_destination_problems<'a>(&self, delivered: impl Iterator<Item = &'a str>) {
        if !self.any_destination_problem.load(Ordering::Acquire) {
            return;
        }
        let mut map = self
            .destination_problems
            .lock()
            .expect("destination problems");
        for destination in delivered {
            if map.remove(destination).is_some() {
                tracing::info!(%destination, "The destination takes rows again.");
            }
        }
        self.any_destination_problem
            .store(!map.is_empty(), Ordering::Release);
        metrics::gauge!("outboxd_destinations_blocked").set(map.len() as f64);
    }
    /// Destinations refusing rows now: (destination, class, words).
    pub fn destination_problems(&self) -> Vec<(String, String, String)> {
        self.destination_problems
            .lock()
            .expect("destination problems")
            .iter()
            .map(|(d, (c, w))| (d.clone(), c.clone(), w.clone()))
            .collect()
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
    /// Ready: the database (its primary) and the broker are reachable.
    pub fn ready(&self) -> bool {
        self.db_up() && !self.any_db_problem.load(Ordering::Acquire) && self.broker_up()
    }
    /// Sets the readiness gauges (`outboxd_database_up`, `outboxd_broker_up`,
    /// `outboxd_ready`) from the current state: on every change, and at start so that they
    /// exist before anything changes.
    pub fn publish_gauges(&self) {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        metrics::gauge!("outboxd_database_up").set(flag(
            self.db_up() && !self.any_db_problem.load(Ordering::Acquire),
        ));
        metrics::gauge!("outboxd_broker_up").set(flag(self.broker_up()));
        metrics::gauge!("outboxd_ready").set(flag(self.ready()));
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

    #[test]
    fn a_destination_problem_is_news_once_and_cleared_by_a_delivery_there() {
        let h = Health::default();
        assert!(h.set_destination_problem("a", "wrong_type", "WRONGTYPE 1"));
        assert!(!h.set_destination_problem("a", "wrong_type", "WRONGTYPE 2"));
        assert!(h.set_destination_problem("b", "no_stream", "no responders"));
        h.clear_destination_problems(["c", "b"].into_iter());
        assert_eq!(
            h.destination_problems(),
            [("a".into(), "wrong_type".into(), "WRONGTYPE 2".into())]
        );
        h.clear_destination_problems(["a"].into_iter());
        assert!(h.destination_problems().is_empty());
    }
}
