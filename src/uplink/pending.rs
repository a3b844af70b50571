//! Packet-id bookkeeping of one session. rumqttc reports the packet id of each publish as
//! it writes it, in request order, so a FIFO of sequence numbers, pushed under the same lock
//! that queues the request, maps every packet id back to its record; the record leaves the
//! outbox only on the PUBACK that matches it, cleared in batches.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Uplink;
use crate::metrics::Metrics;

/// Packet-id bookkeeping of one session. `None` marks a publish that is not a record (an
/// event), whose PUBACK frees nothing in the journal.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) queued: VecDeque<Option<u64>>,
    pub(super) by_pkid: HashMap<u16, Option<u64>>,
    /// When each unacknowledged record was written to the connection.
    pub(super) sent_at: HashMap<u64, Instant>,
    /// When the last PUBACK for a record arrived.
    pub(super) last_record_ack: Option<Instant>,
    /// Records acknowledged and not yet cleared from the outbox (see [`CLEAR_BATCH`]).
    pub(super) acked: Vec<u64>,
}

/// PUBACKs cleared from the outbox together, at most: one watermark write for the batch
/// instead of one per record, which is what limits a backlog drain otherwise.
pub(super) const CLEAR_BATCH: usize = 64;

/// How long an acknowledged record may wait to be cleared. Until then a crash would send it
/// again (a duplicate, never a loss).
pub(super) const CLEAR_DELAY: Duration = Duration::from_millis(2);

impl Pending {
    /// rumqttc wrote the oldest queued publish to the connection as packet `pkid`.
    pub(super) fn written(&mut self, pkid: u16) {
        if let Some(entry) = self.queued.pop_front() {
            if let Some(seq) = entry {
                self.sent_at.insert(seq, Instant::now());
            }
            self.by_pkid.insert(pkid, entry);
        }
    }

    /// A PUBACK for packet `pkid`: what it acknowledges (`Some(None)` for an event, `None`
    /// for a packet id not pending).
    pub(super) fn acknowledged(&mut self, pkid: u16) -> Option<Option<u64>> {
        let entry = self.by_pkid.remove(&pkid);
        if let Some(Some(seq)) = entry {
            self.sent_at.remove(&seq);
            self.last_record_ack = Some(Instant::now());
        }
        entry
    }

    /// Queues an acknowledged record to be cleared from the outbox; true when the batch is
    /// full ([`CLEAR_BATCH`]) and should be cleared now.
    pub(super) fn queue_clear(&mut self, seq: u64) -> bool {
        self.acked.push(seq);
        self.acked.len() >= CLEAR_BATCH
    }
}

impl Uplink {
    /// Clears the acknowledged records from the outbox, in one journal write.
    pub(super) fn clear_acked(&self, pending: &Mutex<Pending>) {
        let seqs = std::mem::take(&mut pending.lock().unwrap_or_else(|e| e.into_inner()).acked);
        if seqs.is_empty() {
            return;
        }
        match self.journal.mark_forwarded_many(&seqs) {
            Ok(n) => {
                Metrics::add(&self.metrics.records_forwarded, n);
                Metrics::sub(&self.metrics.backlog, n);
            }
            Err(e) => {
                warn!(records = seqs.len(), error = %e, "cannot clear records from the outbox; they will be sent again")
            }
        }
    }
}
