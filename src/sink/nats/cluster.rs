//! What a JetStream cluster's moments mean for a row: "no responders" is a missing stream
//! only when no stream captures the subject; while a stream elects a leader (or its
//! server restarts) it is a transient problem. And the server's version: JetStream before
//! 2.11 can lose a message on a leader change (in-flight duplicate ids were not cleared),
//! which the relay says once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::{self, context::GetStreamByNameErrorKind};

use crate::sink::api::{FailureKind, PublishFailure};

/// The first version whose JetStream clears in-flight duplicate ids on a leader change.
pub const FIXED_LEADER_CHANGE: (u64, u64) = (2, 11);

/// The verdict on "no responders" for a subject: asked of JetStream once per subject and
/// group (a group's rows of one subject share it).
#[derive(Default)]
pub struct NoResponders {
    seen: HashMap<String, PublishFailure>,
}

impl NoResponders {
    /// Why a publish to `subject` had no responders.
    pub async fn verdict(&mut self, js: &jetstream::Context, subject: &str) -> PublishFailure {
        if let Some(f) = self.seen.get(subject) {
            return f.clone();
        }
        let f = match js.stream_by_subject(subject).await {
            Ok(stream) => PublishFailure::new(
                FailureKind::Transient,
                "no_leader",
                format!(
                    "stream {stream:?} captures {subject:?} but did not answer (a JetStream \
                     leader election, or its server restarting); sent again"
                ),
            ),
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => PublishFailure::new(
                FailureKind::Destination,
                "no_stream",
                format!(
                    "no JetStream stream captures the subject {subject:?}: create one \
                     (nats stream add … --subjects '{subject}'); its rows are held until then"
                ),
            ),
            // The JetStream API itself does not answer: a meta-leader election, a
            // cluster without quorum, a server restarting.
            Err(e) => PublishFailure::new(
                FailureKind::Transient,
                "jetstream_unavailable",
                format!(
                    "no stream answered for {subject:?} and the JetStream API did not say why ({e}); sent again"
                ),
            ),
        };
        self.seen.insert(subject.to_string(), f.clone());
        f
    }
}

/// `major.minor` of a server version (`2.10.22`, `2.11.0-RC.1`).
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether a server of `version` has the leader-change defect (unknown versions: no).
pub fn loses_on_leader_change(version: &str) -> bool {
    major_minor(version).is_some_and(|v| v < FIXED_LEADER_CHANGE)
}

/// Says once per process that the server reached is older than the fix.
pub fn warn_if_old(version: &str, server: &str, said: &AtomicBool) {
    if loses_on_leader_change(version) && !said.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            version,
            server,
            "NATS server older than 2.11: JetStream can lose a message when a stream's leader changes (fixed in 2.11, which clears in-flight duplicate ids on a leader change); upgrade the cluster."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_before_2_11_have_the_leader_change_defect() {
        assert!(loses_on_leader_change("2.9.25"));
        assert!(loses_on_leader_change("2.10.22"));
        assert!(!loses_on_leader_change("2.11.0"));
        assert!(!loses_on_leader_change("2.11.0-RC.1"));
        assert!(!loses_on_leader_change("2.15.1"));
        assert!(!loses_on_leader_change("3.0.0"));
        assert!(!loses_on_leader_change("nonsense"));
    }
}
