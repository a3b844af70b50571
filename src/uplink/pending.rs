//! Packet-id bookkeeping of one session. rumqttc reports the packet id of each publish as
//! it writes it, in request order, so a FIFO of sequence numbers, pushed under the same lock
//! that queues the request, maps every packet id back to its record; the record leaves the
//! outbox only on the PUBACK that matches it, cleared in batches.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use crate::journal::Journal;
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

/// Clears acknowledged records from the outbox off the session's event loop: each handover
/// is one journal write on a blocking thread, and handovers that queue up meanwhile are
/// merged into the next, so the event loop goes on reading PUBACKs and writing publishes
/// while the disk works, and a faster drain writes the watermark less often per record.
pub(super) struct Clearer {
    tx: mpsc::UnboundedSender<Vec<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Clearer {
    pub(super) fn start(journal: Journal, metrics: Arc<Metrics>) -> Clearer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u64>>();
        let task = tokio::spawn(async move {
            while let Some(mut seqs) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    seqs.extend(more);
                }
                let journal = journal.clone();
                let records = seqs.len();
                match tokio::task::spawn_blocking(move || journal.mark_forwarded_many(&seqs)).await
                {
                    Ok(Ok(n)) => {
                        Metrics::add(&metrics.records_forwarded, n);
                        Metrics::sub(&metrics.backlog, n);
                    }
                    Ok(Err(e)) => {
                        warn!(records, error = %e, "cannot clear records from the outbox; they will be sent again")
                    }
                    Err(e) => {
                        warn!(records, error = %e, "clearing records from the outbox failed; they will be sent again")
                    }
                }
            }
        });
        Clearer { tx, task }
    }

    /// Hands the records `pending` holds as acknowledged over to be cleared.
    pub(super) fn clear(&self, pending: &Mutex<Pending>) {
        let seqs = std::mem::take(&mut pending.lock().unwrap_or_else(|e| e.into_inner()).acked);
        if !seqs.is_empty() {
            // The task ends only after the sender is dropped, so this cannot fail.
            let _ = self.tx.send(seqs);
        }
    }

    /// Waits until everything handed over is cleared: the next session reads the outbox
    /// from the watermark, and would otherwise send acknowledged records again.
    pub(super) async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            warn!(error = %e, "the outbox clearer failed; acknowledged records may be sent again");
        }
    }
}
