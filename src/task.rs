//! Tasks that live as long as their owner.

/// Aborts a task when dropped, with whatever owns it (a crashed actor's state included).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
