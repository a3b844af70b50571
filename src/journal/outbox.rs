//! The outbox: which stored records still wait for the broker's PUBACK, and the forwarded
//! watermark `W` that moves over them as they are acknowledged or parked (see the journal's
//! invariants, "Outbox"). Parking a record the broker refuses and replaying stored records
//! change the same watermark and side trees (`acked`, `parked`), so they live here too. Kept
//! apart from appending and reading records: the outbox is delivery state about records,
//! never the records themselves.

use std::collections::{BTreeSet, HashSet};

use sled::Tree;

use super::{key_seq, seq_key, Journal, JournalError, State, GENESIS_HASH, META_FORWARDED};

impl Journal {
    /// The forwarded watermark: every record at or below it is acknowledged or parked.
    pub fn forwarded_watermark(&self) -> u64 {
        self.state().forwarded
    }

    /// Number of records waiting for a PUBACK.
    pub fn backlog_len(&self) -> usize {
        let (head, _) = self.chain_head().unwrap_or((0, GENESIS_HASH));
        let w = self.forwarded_watermark();
        let above = |t: &Tree| t.range(seq_key(w + 1)..).count() as u64;
        head.saturating_sub(w)
            .saturating_sub(above(&self.acked))
            .saturating_sub(above(&self.parked)) as usize
    }

    /// Up to `max` unacknowledged records with `from <= seq <= upto`, in sequence order, with
    /// their exact stored bytes. `upto` is the last *accepted* (flushed) sequence: a record
    /// committed but not yet flushed is visible in the store, and must not leave the gateway
    /// before it is durable, or a crash could give its number to another record.
    pub fn outbox_from(
        &self,
        from: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let start = from.max(self.forwarded_watermark() + 1);
        let skip = |t: &Tree| -> Result<HashSet<u64>, JournalError> {
            let mut s = HashSet::new();
            for k in t.range(seq_key(start)..).keys() {
                s.extend(key_seq(&k?));
            }
            Ok(s)
        };
        let (acked, parked) = (skip(&self.acked)?, skip(&self.parked)?);
        let mut out = Vec::with_capacity(max.min(1024));
        for batch in self.batches_from(start)? {
            let batch = batch?;
            for (i, bytes) in batch.records()?.into_iter().enumerate() {
                let seq = batch.first + i as u64;
                if seq > upto {
                    return Ok(out);
                }
                if seq < start || acked.contains(&seq) || parked.contains(&seq) {
                    continue;
                }
                out.push((seq, bytes.to_vec()));
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Takes a record out of the outbox after its PUBACK. Returns whether it was still there.
    pub fn mark_forwarded(&self, seq: u64) -> Result<bool, JournalError> {
        let mut state = self.state();
        if seq <= state.forwarded
            || self.acked.contains_key(seq_key(seq))?
            || self.parked.contains_key(seq_key(seq))?
        {
            return Ok(false);
        }
        if seq == state.forwarded + 1 {
            self.advance(&mut state, seq)?;
        } else {
            self.acked.insert(seq_key(seq), &[][..])?;
        }
        Ok(true)
    }

    /// [`Journal::mark_forwarded`] for several PUBACKs at once: one write of the watermark for
    /// the whole batch instead of one per record. Returns how many records were still in the
    /// outbox. As with single acknowledges, the watermark is written before the out-of-order
    /// entries it covers are removed.
    ///
    /// The outcome does not depend on the order of `seqs` (the watermark only moves over a
    /// contiguous run), so they are taken in sequence order, and the out-of-order and parked
    /// entries within their span are read in one range scan each rather than looked up per
    /// record: on a backlog drain this runs for every PUBACK.
    pub fn mark_forwarded_many(&self, seqs: &[u64]) -> Result<u64, JournalError> {
        let mut state = self.state();
        let start = state.forwarded;
        let mut seqs: Vec<u64> = seqs.iter().copied().filter(|&s| s > start).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let Some(&last) = seqs.last() else {
            return Ok(0);
        };
        let span = |t: &Tree| -> Result<BTreeSet<u64>, JournalError> {
            let mut s = BTreeSet::new();
            for k in t.range(seq_key(start + 1)..=seq_key(last)).keys() {
                s.extend(key_seq(&k?));
            }
            Ok(s)
        };
        let (acked, parked) = (span(&self.acked)?, span(&self.parked)?);
        // Past the span (the walk's tail only), the trees themselves.
        let is_acked = |seq: u64| -> Result<bool, JournalError> {
            Ok(if seq <= last {
                acked.contains(&seq)
            } else {
                self.acked.contains_key(seq_key(seq))?
            })
        };
        let is_parked = |seq: u64| -> Result<bool, JournalError> {
            Ok(if seq <= last {
                parked.contains(&seq)
            } else {
                self.parked.contains_key(seq_key(seq))?
            })
        };
        let mut w = start;
        let mut covered = Vec::new();
        let mut cleared = 0u64;
        for seq in seqs {
            if seq <= w || acked.contains(&seq) || parked.contains(&seq) {
                continue;
            }
            cleared += 1;
            if seq != w + 1 {
                self.acked.insert(seq_key(seq), &[][..])?;
                continue;
            }
            w = seq;
            loop {
                if is_acked(w + 1)? {
                    covered.push(seq_key(w + 1));
                    w += 1;
                } else if is_parked(w + 1)? {
                    w += 1;
                } else {
                    break;
                }
            }
        }
        if w != start {
            self.meta.insert(META_FORWARDED, &w.to_be_bytes()[..])?;
            state.forwarded = w;
            for k in covered {
                self.acked.remove(k)?;
            }
        }
        Ok(cleared)
    }

    /// Moves the watermark to `to`, then over every following record that was acknowledged
    /// out of order or parked. The new watermark is written before the out-of-order entries
    /// it covers are removed, so a crash in between leaves only harmless leftovers.
    fn advance(&self, state: &mut State, to: u64) -> Result<(), JournalError> {
        let mut w = to;
        let mut covered = Vec::new();
        loop {
            let k = seq_key(w + 1);
            if self.acked.contains_key(k)? {
                covered.push(k);
                w += 1;
            } else if self.parked.contains_key(k)? {
                w += 1;
            } else {
                break;
            }
        }
        self.meta.insert(META_FORWARDED, &w.to_be_bytes()[..])?;
        state.forwarded = w;
        for k in covered {
            self.acked.remove(k)?;
        }
        Ok(())
    }

    /// Queues the stored records `from..=to` to be sent again (parked ones included) by
    /// lowering the watermark below `from` and marking what lies between `to` and the old
    /// watermark as already acknowledged. Meant for a stopped daemon. Returns how many
    /// records were queued.
    pub fn replay(&self, from: u64, to: u64) -> Result<u64, JournalError> {
        let first = match self.batches.first()? {
            Some((k, _)) => key_seq(&k).unwrap_or(1),
            None => return Ok(0),
        };
        let (head, _) = self.chain_head()?;
        let from = from.max(first);
        let to = to.min(head);
        if from > to {
            return Ok(0);
        }
        let mut state = self.state();
        let old = state.forwarded;
        // Order matters for a replay that is interrupted: first mark what lies between `to`
        // and the old watermark as acknowledged, then lower the watermark, and only then take
        // the range out of the parked and acknowledged sets. Stopped at any point, no record
        // ends up at or below the watermark unless it was acknowledged or is still parked.
        if from <= old {
            for seq in to + 1..=old {
                if !self.parked.contains_key(seq_key(seq))? {
                    self.acked.insert(seq_key(seq), &[][..])?;
                }
            }
            let w = from - 1;
            self.meta.insert(META_FORWARDED, &w.to_be_bytes()[..])?;
            self.db.flush()?;
            state.forwarded = w;
        }
        for seq in from..=to {
            self.acked.remove(seq_key(seq))?;
            self.parked.remove(seq_key(seq))?;
        }
        drop(state);
        self.db.flush()?;
        Ok(to - from + 1)
    }

    /// Takes a record out of the outbox and keeps it aside with the reason the broker would
    /// not take it. The record itself stays in the journal.
    pub fn park(&self, seq: u64, reason: &str) -> Result<(), JournalError> {
        let mut state = self.state();
        self.parked.insert(seq_key(seq), reason.as_bytes())?;
        if seq == state.forwarded + 1 {
            self.advance(&mut state, seq)?;
        }
        drop(state);
        self.db.flush()?;
        Ok(())
    }

    /// Parked records with their reasons.
    pub fn parked(&self) -> Result<Vec<(u64, String)>, JournalError> {
        let mut out = Vec::new();
        for entry in self.parked.iter() {
            let (k, v) = entry?;
            if let Some(seq) = key_seq(&k) {
                out.push((seq, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        Ok(out)
    }
}
