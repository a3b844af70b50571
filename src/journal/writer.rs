//! The journal's single writer: numbers, chains, group-commits and flushes records.
//!
//! Producers (the PLC link tasks) hand finished records to a [`RecordSink`] and move on; the
//! writer gathers whatever arrives within the flush window into one transaction and one
//! flush. Only after the flush are the records counted as accepted and announced to the
//! uplink through a watch channel carrying the last accepted sequence.

use std::sync::Arc;
use std::time::Duration;

use bondline_devices::contract::ParcelRecord;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::error;

use super::{sha256, Journal};
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// Largest group commit; bounds the latency a burst can add to one record.
const MAX_BATCH: usize = 4096;

/// Where producers put finished records. `seq`, `msg_id` and `prev_hash` are filled in by the
/// writer; whatever the producer put there is overwritten.
#[derive(Clone)]
pub struct RecordSink {
    tx: mpsc::UnboundedSender<ParcelRecord>,
    metrics: Arc<Metrics>,
}

impl RecordSink {
    /// Queues a record for the journal. Never waits. Fails only once the writer has stopped,
    /// which happens after every sink is dropped; the error is logged loudly.
    pub fn push(&self, record: ParcelRecord) {
        if let Err(e) = self.tx.send(record) {
            self.metrics
                .journal_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error!(waybill = ?e.0.waybill, "journal writer has stopped; record not stored");
        }
    }
}

/// The writer task's state.
pub struct JournalWriter {
    journal: Journal,
    rx: mpsc::UnboundedReceiver<ParcelRecord>,
    window: Duration,
    metrics: Arc<Metrics>,
    accepted: watch::Sender<u64>,
    last_seq: u64,
    last_hash: [u8; 32],
}

/// Creates the sink and its writer. The watch receiver carries the last accepted sequence.
pub fn record_sink(
    journal: Journal,
    window: Duration,
    metrics: Arc<Metrics>,
) -> Result<(RecordSink, JournalWriter, watch::Receiver<u64>), super::JournalError> {
    let (last_seq, last_hash) = journal.chain_head()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (accepted, accepted_rx) = watch::channel(last_seq);
    Ok((
        RecordSink {
            tx,
            metrics: metrics.clone(),
        },
        JournalWriter {
            journal,
            rx,
            window,
            metrics,
            accepted,
            last_seq,
            last_hash,
        },
        accepted_rx,
    ))
}

impl JournalWriter {
    /// Runs until every [`RecordSink`] is dropped and the queue is empty, so a shutdown that
    /// stops the producers first loses nothing.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(256);
        while let Some(first) = self.rx.recv().await {
            batch.push(first);
            let deadline = Instant::now() + self.window;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            self.commit(&mut batch).await;
        }
    }

    async fn commit(&mut self, batch: &mut Vec<ParcelRecord>) {
        let first = self.last_seq + 1;
        let mut records = Vec::with_capacity(batch.len());
        for mut r in batch.drain(..) {
            self.last_seq += 1;
            r.seq = self.last_seq;
            r.msg_id = format!("{}-{}", r.gateway, r.seq);
            r.prev_hash = hex::encode(self.last_hash);
            let bytes = serde_json::to_vec(&r).expect("records always serialize");
            self.last_hash = sha256(&bytes);
            records.push(bytes);
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let result = match self
                .journal
                .commit(first, &records, (self.last_seq, self.last_hash))
            {
                Ok(()) => self.journal.flush().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    // The same keys and bytes are written again: a retry cannot duplicate.
                    self.metrics
                        .journal_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = backoff.next_delay();
                    error!(error = %e, records = records.len(), retry_in = ?wait, "journal commit failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let n = records.len() as u64;
        Metrics::add(&self.metrics.records_accepted, n);
        Metrics::add(&self.metrics.backlog, n);
        self.accepted.send_replace(self.last_seq);
    }
}
