//! Bounded walks over the records of a time range, for charts and exports.
//!
//! Like [`Journal::records_between`] the walk goes from the newest batch backwards and stops
//! once batches are older than the range by more than [`TIME_SLACK_MS`], so a query about the
//! last shift does not read a year of journal. Records reach the caller in slices of at most
//! `batch` records, never as one vector of the whole range; the async form runs on the
//! blocking pool so a long walk never holds up the async workers (the view, the uplink).

use bondline_devices::contract::Record;

use super::lookup::TIME_SLACK_MS;
use super::{Journal, JournalError};

/// Records handed to the caller at once, at most.
pub const WALK_BATCH: usize = 512;

/// Why a walk ended without its answer.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the journal walk stopped: {0}")]
    Task(String),
}

impl Journal {
    /// Calls `f` with the records whose own time (scan time for parcels) lies in
    /// `[from_ms, to_ms)`, newest batches first, in slices of at most `batch` (>= 1) records,
    /// until `f` returns false. Returns false when `f` stopped the walk.
    pub fn walk_between(
        &self,
        from_ms: u64,
        to_ms: u64,
        batch: usize,
        mut f: impl FnMut(&[Record]) -> bool,
    ) -> Result<bool, JournalError> {
        let batch = batch.max(1);
        let mut pending: Vec<Record> = Vec::with_capacity(batch);
        for stored in self.batches.iter().rev() {
            let stored = super::Batch::from_entry(stored)?;
            let mut newest = 0u64;
            for (i, bytes) in stored.records()?.into_iter().enumerate() {
                let seq = stored.first + i as u64;
                let r: Record =
                    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
                        seq,
                        reason: e.to_string(),
                    })?;
                newest = newest.max(r.at_ms());
                if (from_ms..to_ms).contains(&r.at_ms()) {
                    pending.push(r);
                    if pending.len() >= batch {
                        if !f(&pending) {
                            return Ok(false);
                        }
                        pending.clear();
                    }
                }
            }
            if newest.saturating_add(TIME_SLACK_MS) < from_ms {
                break;
            }
        }
        if !pending.is_empty() && !f(&pending) {
            return Ok(false);
        }
        Ok(true)
    }
}

impl Journal {
    /// Calls `f` with every stored record whose sequence is below `before_seq`, highest
    /// sequence (newest) first, until `f` returns false; stops once a batch is older than
    /// `from_ms` by more than [`TIME_SLACK_MS`] (records of later batches cannot lie in the
    /// range). The caller filters by time and counts what it examined, so a page of a
    /// paginated walk reads only what it needs, and the next page starts at the lowest
    /// sequence it saw. Returns false when `f` stopped the walk.
    pub fn walk_back(
        &self,
        before_seq: u64,
        from_ms: u64,
        mut f: impl FnMut(&Record) -> bool,
    ) -> Result<bool, JournalError> {
        for stored in self.batches.range(..super::seq_key(before_seq)).rev() {
            let stored = super::Batch::from_entry(stored)?;
            let mut newest = 0u64;
            let mut records = Vec::new();
            for (i, bytes) in stored.records()?.into_iter().enumerate() {
                let seq = stored.first + i as u64;
                if seq >= before_seq {
                    break;
                }
                let r: Record =
                    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
                        seq,
                        reason: e.to_string(),
                    })?;
                newest = newest.max(r.at_ms());
                records.push(r);
            }
            for r in records.iter().rev() {
                if !f(r) {
                    return Ok(false);
                }
            }
            if newest.saturating_add(TIME_SLACK_MS) < from_ms {
                break;
            }
        }
        Ok(true)
    }
}

/// Folds every record of `[from_ms, to_ms)` into `acc` on the blocking pool, in bounded
/// slices; `step` returns false to stop early. The accumulator is the only thing that grows,
/// so its owner bounds the memory.
pub async fn fold_between<A, F>(
    journal: Journal,
    from_ms: u64,
    to_ms: u64,
    mut acc: A,
    mut step: F,
) -> Result<A, WalkError>
where
    A: Send + 'static,
    F: FnMut(&mut A, &Record) -> bool + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        journal.walk_between(from_ms, to_ms, WALK_BATCH, |rs| {
            rs.iter().all(|r| step(&mut acc, r))
        })?;
        Ok(acc)
    })
    .await
    .map_err(|e| WalkError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::maintenance::tests::filled;

    #[tokio::test]
    async fn walks_exactly_the_range_in_bounded_slices() {
        // Records scanned at 1000, 2000, ..., 20000.
        let (_dir, journal) = filled(20).await;
        let mut seen = Vec::new();
        let mut largest = 0;
        let done = journal
            .walk_between(5000, 12_000, 3, |rs| {
                largest = largest.max(rs.len());
                seen.extend(rs.iter().map(Record::at_ms));
                true
            })
            .unwrap();
        assert!(done);
        assert!(largest <= 3);
        seen.sort_unstable();
        assert_eq!(seen, (5..12).map(|i| i * 1000).collect::<Vec<_>>());
        // Stopping early.
        let mut calls = 0;
        assert!(!journal
            .walk_between(0, u64::MAX, 2, |_| {
                calls += 1;
                false
            })
            .unwrap());
        assert_eq!(calls, 1);
        // An empty range.
        let mut any = false;
        journal
            .walk_between(50_000, 60_000, 3, |_| {
                any = true;
                true
            })
            .unwrap();
        assert!(!any);
    }

    #[tokio::test]
    async fn walks_back_from_a_cursor_newest_first() {
        let (_dir, journal) = filled(20).await;
        let mut seqs = Vec::new();
        assert!(journal
            .walk_back(u64::MAX, 0, |r| {
                seqs.push(r.seq());
                true
            })
            .unwrap());
        assert_eq!(seqs, (1..=20).rev().collect::<Vec<_>>());
        // From a cursor, a page at a time: every record once, in order.
        let mut pages = Vec::new();
        let mut before = u64::MAX;
        loop {
            let mut page = Vec::new();
            journal
                .walk_back(before, 0, |r| {
                    page.push(r.seq());
                    page.len() < 7
                })
                .unwrap();
            match page.last() {
                Some(&last) => before = last,
                None => break,
            }
            pages.extend(page);
        }
        assert_eq!(pages, (1..=20).rev().collect::<Vec<_>>());
        // Batches far older than the range are not read.
        let mut n = 0;
        journal
            .walk_back(u64::MAX, 100_000_000, |_| {
                n += 1;
                true
            })
            .unwrap();
        assert!(n < 20, "{n}");
    }

    #[tokio::test]
    async fn folds_off_the_async_workers() {
        let (_dir, journal) = filled(10).await;
        let n = fold_between(journal.clone(), 3000, 8000, 0u32, |n, _| {
            *n += 1;
            true
        })
        .await
        .unwrap();
        assert_eq!(n, 5);
        let first_two = fold_between(journal, 0, u64::MAX, Vec::new(), |v, r| {
            v.push(r.at_ms());
            v.len() < 2
        })
        .await
        .unwrap();
        assert_eq!(first_two.len(), 2);
    }
}
