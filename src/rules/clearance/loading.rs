//! Loading the table from the store at start: room made ahead, progress counted, and the
//! table marked as loading until the load is complete, so that every lookup meanwhile says
//! so (and decisions hold, fail closed).

use std::sync::atomic::Ordering;

use super::ClearanceTable;
use crate::rules::sharded::SHARDS;

/// Progress of a background load, for `/readyz` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loading {
    /// Stored entries applied so far.
    pub done: u64,
    /// Stored entries expected (as counted at the last complete load; 0 if unknown).
    pub expected: u64,
}

impl ClearanceTable {
    /// Makes room for `declarations` waybills spread over the shards (a load of a stored
    /// table whose size is known), so the load itself grows nothing.
    pub fn reserve(&self, declarations: usize) {
        let per = declarations / SHARDS + declarations / SHARDS / 16 + 1;
        for s in 0..SHARDS {
            let mut shard = self.shards.write(s);
            let room = per.saturating_sub(shard.entries.len());
            shard.entries.reserve_exact(room);
            let room = per.saturating_sub(shard.index.len());
            shard.index.reserve(room);
        }
    }

    /// Marks the table as loading from the store, `expected` entries to come (0: unknown).
    pub fn begin_loading(&self, expected: u64) {
        self.load_done.store(0, Ordering::Relaxed);
        self.load_expected.store(expected, Ordering::Relaxed);
        self.loading.store(true, Ordering::Release);
    }

    /// Counts `n` more stored entries applied.
    pub fn loaded(&self, n: u64) {
        self.load_done.fetch_add(n, Ordering::Relaxed);
    }

    /// The load is complete: lookups are whole from now on.
    pub fn finish_loading(&self) {
        self.loading.store(false, Ordering::Release);
    }

    /// The load's progress while the table is loading; `None` once it is whole.
    pub fn loading(&self) -> Option<Loading> {
        self.loading.load(Ordering::Acquire).then(|| Loading {
            done: self.load_done.load(Ordering::Relaxed),
            expected: self.load_expected.load(Ordering::Relaxed),
        })
    }
}
