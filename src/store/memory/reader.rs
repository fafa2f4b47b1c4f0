//! Reading the in-memory store without skipping a late committer.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::future::BoxFuture;

use super::tables::MemoryStore;
use crate::store::{PendingReader, ReadBatch, StoreError};

/// The cursor, and the ids below it that belonged to open transactions when it passed
/// them: the only places a late committer can appear.
pub(super) struct MemReader {
    pub(super) store: MemoryStore,
    pub(super) cursor: i64,
    pub(super) open_below: BTreeSet<i64>,
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
                started,
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
