//! The journal's single writer: numbers, chains, group-commits and flushes records.
//!
//! Producers (the PLC link tasks) hand finished records to a [`RecordSink`] and move on; the
//! writer gathers whatever arrives within the flush window into one transaction and one
//! flush. Only after the flush are the records counted as accepted and announced to the
//! uplink through a watch channel carrying the last accepted sequence, and the records
//! themselves to whoever subscribed ([`JournalWriter::subscribe`], the staff view).
//!
//! Release decisions come as *intents* ([`RecordSink::push_intent`], see
//! [`super::intents`]) on a queue of their own, which the writer serves beside the records
//! (one task, two loops): an intent is stored and flushed as soon as it arrives, never behind
//! a group commit, and answered (`true` once durable); a parcel record settles its parcel's
//! intent once it is durable itself.
//!
//! When the journal's disk is full (see [`super::capacity`]) the writer holds records in
//! memory instead of writing, up to `hold_limit`, and refuses the ones beyond it, each one
//! logged at error level with its waybill and lane. Held records are written, in order, once
//! there is room again. If the store itself fails with a full disk, it cannot be written
//! again without a restart; the writer then holds records the same way. On shutdown, records
//! still held are written to a spill file beside the store (`<store>-spill/*.jsonl`), which
//! the next start stores before anything else; if even that fails they are written to the
//! log as JSON, the last place they can go.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bondline_devices::contract::{ParcelRecord, Record};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::error;

use super::capacity::Level;
use super::Journal;
use crate::alarm::Alarms;
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// Largest group commit; bounds the latency a burst can add to one record.
const MAX_BATCH: usize = 4096;
/// What stamping may add to a held record's bytes: its sequence number, message id and the
/// previous record's hash.
const STAMP_ALLOWANCE: u64 = 160;
/// Most held records written in one step.
const HELD_STEP: usize = 256;
/// Failed attempts at one commit before the store is taken as failed.
const MAX_COMMIT_FAILURES: u32 = 5;
/// Accepted records buffered for a slow subscriber; one that falls further behind is told
/// it lagged and must read the journal instead.
const FEED_CAPACITY: usize = 4096;

/// Where producers put finished records. `seq`, `msg_id` and `prev_hash` are filled in by the
/// writer; whatever the producer put there is overwritten.
#[derive(Clone)]
pub struct RecordSink {
    tx: mpsc::UnboundedSender<Record>,
    intents: mpsc::UnboundedSender<Intent>,
    metrics: Arc<Metrics>,
}

/// A release decision to store ahead of its command, and who waits for it.
type Intent = (ParcelRecord, oneshot::Sender<bool>);

impl RecordSink {
    /// A sink whose records a unit test reads itself, without a journal.
    #[cfg(test)]
    pub(crate) fn for_tests(metrics: Arc<Metrics>) -> (RecordSink, TestRecords) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (intents, intent_rx) = mpsc::unbounded_channel();
        (
            RecordSink {
                tx,
                intents,
                metrics,
            },
            TestRecords { rx, intent_rx },
        )
    }

    /// Queues a record for the journal. Never waits. Fails only once the writer has stopped,
    /// which happens after every sink is dropped; the error is logged loudly.
    pub fn push(&self, record: impl Into<Record>) {
        if let Err(e) = self.tx.send(record.into()) {
            self.stopped(Some(&e.0));
        }
    }

    /// Queues a release decision to be stored ahead of its command. Never waits; the
    /// receiver resolves `true` once the intent is durable, `false` (or dropped) if it could
    /// not be stored.
    pub fn push_intent(&self, record: ParcelRecord) -> oneshot::Receiver<bool> {
        let (done, rx) = oneshot::channel();
        if self.intents.send((record, done)).is_err() {
            self.stopped(None);
        }
        rx
    }

    fn stopped(&self, record: Option<&Record>) {
        self.metrics
            .journal_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = record {
            error!(record = %serde_json::to_string(r).unwrap_or_default(), "journal writer has stopped; record not stored");
        }
    }
}

/// What a unit test's sink received: records; intents are answered `true` as they pass.
#[cfg(test)]
pub(crate) struct TestRecords {
    rx: mpsc::UnboundedReceiver<Record>,
    intent_rx: mpsc::UnboundedReceiver<Intent>,
}

#[cfg(test)]
impl TestRecords {
    pub fn try_recv(&mut self) -> Result<Record, mpsc::error::TryRecvError> {
        while let Ok((_, done)) = self.intent_rx.try_recv() {
            let _ = done.send(true);
        }
        self.rx.try_recv()
    }
}

/// The writer task's state.
pub struct JournalWriter {
    journal: Journal,
    rx: mpsc::UnboundedReceiver<Record>,
    /// Intents, served beside the records (taken by [`JournalWriter::run`]).
    intent_rx: Option<mpsc::UnboundedReceiver<Intent>>,
    window: Duration,
    metrics: Arc<Metrics>,
    accepted: watch::Sender<u64>,
    last_seq: u64,
    last_hash: [u8; 32],
    /// Records waiting for room on the disk, oldest first.
    held: VecDeque<Record>,
    hold_limit: usize,
    alarms: Option<Alarms>,
    /// The store failed with a full disk and cannot be written until a restart.
    store_failed: bool,
    /// Where held records go at shutdown, and where the last run's spill is read from.
    spill_dir: Option<std::path::PathBuf>,
    /// Spill files read at start whose records are not all stored yet.
    restored: Vec<std::path::PathBuf>,
    /// How many of the records at the front of `held` came from `restored`.
    restored_held: usize,
    /// How many of `restored`'s records are stored (noted with them, see
    /// [`super::SpillProgress`]).
    restored_stored: u64,
    /// Told once the spill read at start is stored (or held, on a full disk).
    on_restored: Option<oneshot::Sender<()>>,
    /// The store's directory and limits, for the check before each write.
    capacity: Option<(std::path::PathBuf, super::capacity::Limits)>,
    /// Records refused in the current full-disk episode (for alarms).
    refused_now: u64,
    /// Accepted records, for subscribers; nothing is cloned while nobody listens.
    feed: broadcast::Sender<Record>,
}

/// Creates the sink and its writer. The watch receiver carries the last accepted sequence.
pub fn record_sink(
    journal: Journal,
    window: Duration,
    metrics: Arc<Metrics>,
) -> Result<(RecordSink, JournalWriter, watch::Receiver<u64>), super::JournalError> {
    let (sink, queue) = record_queue(metrics.clone());
    let (writer, accepted) = JournalWriter::new(journal, queue, window, metrics)?;
    Ok((sink, writer, accepted))
}

/// Creates a sink and the queue behind it, before there is a store to write to: the
/// daemon's lines start while a large store opens, their records taken by
/// [`RecordQueue::spill_until`] until the queue is handed to [`JournalWriter::new`].
pub fn record_queue(metrics: Arc<Metrics>) -> (RecordSink, RecordQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (intents, intent_rx) = mpsc::unbounded_channel();
    (
        RecordSink {
            tx,
            intents,
            metrics,
        },
        RecordQueue {
            rx,
            intent_rx,
            unspilled: Vec::new(),
        },
    )
}

/// What the sinks of [`record_queue`] send, waiting for a writer.
pub struct RecordQueue {
    rx: mpsc::UnboundedReceiver<Record>,
    intent_rx: mpsc::UnboundedReceiver<Intent>,
    /// Records taken by [`RecordQueue::spill_until`] that could not be spilled.
    unspilled: Vec<Record>,
}

/// The name of the spill file written while the store opens (see [`RecordQueue::spill_until`]).
fn starting_spill_file(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(format!(
        "{}-starting.jsonl",
        crate::metrics::unix_ms(std::time::SystemTime::now())
    ))
}

impl RecordQueue {
    /// Takes the records that arrive before the store is open, until `open` is cancelled (or
    /// every sink is gone), and appends them to a spill file in `dir`
    /// (`<ms>-starting.jsonl`), synced once per `window`, so that a crash meanwhile loses
    /// none that was synced; then hands the queue
    /// back for the writer, which stores the spill before anything else. Records still
    /// queued at the handover stay queued. A release intent cannot be stored before the
    /// store is open: it is answered `false`, so its command is not sent (the lines hold
    /// every parcel meanwhile anyway: the clearance table is not loaded).
    ///
    /// If the spill file cannot be written, the records stay in memory and go to the writer
    /// with the queue, and an error is logged: the store is opening and will take them.
    pub async fn spill_until(
        mut self,
        dir: std::path::PathBuf,
        window: Duration,
        open: tokio_util::sync::CancellationToken,
    ) -> RecordQueue {
        use std::io::Write;
        let mut file: Option<(std::path::PathBuf, std::fs::File)> = None;
        // The file's length after the last synced batch: a batch that fails is cut off
        // again, so that it is not both in the file and kept in memory.
        let mut synced_len = 0u64;
        let mut failed = false;
        let mut spilled = 0u64;
        let mut batch = Vec::new();
        let (mut records_open, mut intents_open) = (true, true);
        while records_open || intents_open {
            tokio::select! {
                biased;
                _ = open.cancelled() => break,
                intent = self.intent_rx.recv(), if intents_open => match intent {
                    Some((record, done)) => {
                        error!(line = %record.line, parcel = record.parcel, "release decision before the journal store is open: not stored, its command is not sent");
                        let _ = done.send(false);
                    }
                    None => intents_open = false,
                },
                first = self.rx.recv(), if records_open && !failed => {
                    let Some(first) = first else {
                        records_open = false;
                        continue;
                    };
                    batch.push(first);
                    let deadline = Instant::now() + window;
                    while batch.len() < MAX_BATCH {
                        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                            Ok(Some(r)) => batch.push(r),
                            Ok(None) | Err(_) => break,
                        }
                    }
                    let written = (|| -> std::io::Result<()> {
                        if file.is_none() {
                            std::fs::create_dir_all(&dir)?;
                            let path = starting_spill_file(&dir);
                            let f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                            // The file's name must survive a crash too.
                            std::fs::File::open(&dir)?.sync_all()?;
                            file = Some((path, f));
                        }
                        let (_, f) = file.as_mut().expect("opened above");
                        let mut text = Vec::new();
                        for r in &batch {
                            serde_json::to_writer(&mut text, r)?;
                            text.push(b'\n');
                        }
                        let written = f.write_all(&text).and_then(|()| f.sync_data());
                        if written.is_err() {
                            // Cut the failed batch off again; if even that fails, the next
                            // start finds a torn line, which it skips.
                            let _ = f.set_len(synced_len).and_then(|()| f.sync_data());
                        }
                        written?;
                        synced_len += text.len() as u64;
                        Ok(())
                    })();
                    match written {
                        Ok(()) => {
                            spilled += batch.len() as u64;
                            batch.clear();
                        }
                        Err(e) => {
                            error!(dir = %dir.display(), error = %e, records = batch.len(), "records taken before the journal store is open cannot be spilled; they wait in memory for the store");
                            failed = true;
                        }
                    }
                }
            }
        }
        if let Some((path, _)) = &file {
            tracing::info!(records = spilled, file = %path.display(), "records taken while the journal store opened are in the spill; the writer stores them first");
        }
        self.unspilled = batch;
        self
    }
}

impl JournalWriter {
    /// The writer of `queue`'s records into `journal`, and the watch of the last accepted
    /// sequence.
    pub fn new(
        journal: Journal,
        queue: RecordQueue,
        window: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<(JournalWriter, watch::Receiver<u64>), super::JournalError> {
        let (last_seq, last_hash) = journal.chain_head()?;
        let (accepted, accepted_rx) = watch::channel(last_seq);
        let RecordQueue {
            rx,
            intent_rx,
            unspilled,
        } = queue;
        Ok((
            JournalWriter {
                journal,
                rx,
                intent_rx: Some(intent_rx),
                window,
                metrics,
                accepted,
                last_seq,
                last_hash,
                held: unspilled.into(),
                hold_limit: 200_000,
                alarms: None,
                store_failed: false,
                spill_dir: None,
                restored: Vec::new(),
                restored_held: 0,
                restored_stored: 0,
                on_restored: None,
                capacity: None,
                refused_now: 0,
                feed: broadcast::channel(FEED_CAPACITY).0,
            },
            accepted_rx,
        ))
    }

    /// Sets how many records may wait in memory while the disk is full, where alarms go, and
    /// where records still held at shutdown are spilled.
    ///
    /// The spill directory's records (of the last shutdown, or taken while the store
    /// opened) are stored first when the writer runs; their files go once they are.
    pub fn with_hold(
        mut self,
        hold_limit: usize,
        alarms: Alarms,
        spill_dir: std::path::PathBuf,
    ) -> JournalWriter {
        self.hold_limit = hold_limit;
        self.alarms = Some(alarms);
        self.spill_dir = Some(spill_dir);
        self
    }

    /// Checks the disk before every write, not only at the housekeeping's pace: a burst of
    /// held records must not run the disk full between two measurements.
    pub fn with_capacity(
        mut self,
        path: std::path::PathBuf,
        limits: super::capacity::Limits,
    ) -> JournalWriter {
        self.capacity = Some((path, limits));
        self
    }

    /// Resolves once the writer has stored the spill it reads when it starts (or holds it,
    /// the disk being full): what the store holds from then on includes those records.
    pub fn restored(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.on_restored = Some(tx);
        rx
    }

    /// Every record from now on, once accepted (flushed), in sequence order. Never slows
    /// the writer: a subscriber that falls behind gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.feed.subscribe()
    }

    /// Whether `bytes` more may be written now ([`super::capacity::writable`], the test the
    /// level is judged by).
    fn room_for(&self, bytes: u64) -> bool {
        let Some((path, limits)) = &self.capacity else {
            return true;
        };
        let Ok(free) = super::capacity::free_bytes(path) else {
            return false;
        };
        let budget = match self.metrics.journal_write_budget.load(Ordering::Relaxed) {
            0 => u64::MAX,
            b => b,
        };
        super::capacity::writable(*limits, self.journal.live_bytes(), free, budget, bytes)
    }

    /// Bytes the oldest held record needs (see [`Self::commit`]), 0 if none is held; the
    /// level is judged on it.
    fn publish_next_write(&self) {
        let next = self.held.front().map_or(0, |r| {
            let bytes = serde_json::to_vec(r).map_or(0, |b| b.len() as u64);
            // Numbers and hash as stamped at the write.
            bytes + 4 + super::lookup::INDEX_ALLOWANCE + STAMP_ALLOWANCE
        });
        self.metrics
            .journal_next_write
            .store(next, Ordering::Relaxed);
    }

    /// Runs until every [`RecordSink`] is dropped and the queue is empty, so a shutdown that
    /// stops the producers first loses nothing.
    /// The intents' own loop, to run on a thread of its own (the daemon's `bondline-intents`):
    /// a group commit's synchronous work (encoding, sled's inserts of a large batch, image
    /// chunks among them) then never delays a release's intent, as it does on one thread.
    /// Without this, [`JournalWriter::run`] serves the intents beside the records.
    pub fn take_intents(
        &mut self,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.intent_rx
            .take()
            .map(|rx| store_intents(rx, self.journal.clone(), self.metrics.clone()))
    }

    pub async fn run(mut self) {
        let intents = self.take_intents();
        let records = self.run_records();
        match intents {
            Some(intents) => {
                tokio::join!(records, intents);
            }
            None => records.await,
        }
    }

    async fn run_records(mut self) {
        self.restore_spill();
        self.write_held().await;
        if let Some(tx) = self.on_restored.take() {
            let _ = tx.send(());
        }
        let mut batch = Vec::with_capacity(256);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                // While records are held, look again now and then whether there is room.
                _ = tick.tick(), if !self.held.is_empty() => {
                    self.write_held().await;
                    continue;
                }
            };
            batch.push(first);
            let deadline = Instant::now() + self.window;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            if self.must_hold() {
                self.hold(&mut batch);
            } else {
                self.write_held().await;
                if self.held.is_empty() {
                    self.commit(&mut batch, None).await;
                }
                // Whatever the store did not take (it failed, or older records wait) is held.
                if !batch.is_empty() {
                    self.hold(&mut batch);
                }
            }
        }
        self.write_held().await;
        if self.held.is_empty() {
            return;
        }
        match self.spill() {
            Ok(path) => {
                // The new file holds what the restored ones still held.
                self.restored_held = 0;
                self.forget_restored();
                error!(
                    records = self.held.len(),
                    file = %path.display(),
                    "journal could not take the records it held; spilled them to a file that the next start stores"
                )
            }
            Err(e) => {
                error!(
                    records = self.held.len(),
                    error = %e,
                    "journal could not take the records it held and they cannot be spilled; writing them to the log"
                );
                for r in &self.held {
                    error!(record = %serde_json::to_string(r).unwrap_or_default(), "unstored record");
                }
            }
        }
    }

    /// Puts the spill directory's records in front of everything else (see
    /// [`crate::journal::read_spill`]); [`Self::write_held`] stores them first.
    fn restore_spill(&mut self) {
        let Some(dir) = &self.spill_dir else {
            return;
        };
        let (files, mut records) = super::read_spill(dir);
        if files.is_empty() {
            return;
        }
        // A restore that a crash interrupted stored the first records of the same files
        // already, and noted how many with them.
        let names = spill_names(&files);
        let skip = match self.journal.spill_progress() {
            Some(p) if names.starts_with(&p.files) => {
                let in_those: usize = files[..p.files.len()]
                    .iter()
                    .map(|f| super::read_spill_file(f).len())
                    .sum();
                (p.stored as usize).min(in_those)
            }
            _ => 0,
        };
        records.drain(..skip.min(records.len()));
        tracing::info!(
            records = records.len(),
            already_stored = skip,
            files = files.len(),
            "storing spilled records (of the last shutdown, or taken while the store opened) before anything else"
        );
        self.restored_held = records.len();
        self.restored_stored = skip as u64;
        for r in records.into_iter().rev() {
            self.held.push_front(r);
        }
        self.restored = files;
        if self.restored_held == 0 {
            // Nothing left to store from them (a torn line is logged by read_spill).
            self.forget_restored();
        }
    }

    /// Removes the spill files read at start: their records are stored (or spilled again).
    fn forget_restored(&mut self) {
        for f in self.restored.drain(..) {
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!(file = %f.display(), error = %e, "cannot remove a stored spill file");
            }
        }
        if let Err(e) = self.journal.clear_spill_progress() {
            tracing::warn!(error = %e, "cannot clear the spill restore's progress");
        }
    }

    /// Writes every held record as a JSON line to a new file in the spill directory.
    fn spill(&self) -> std::io::Result<std::path::PathBuf> {
        use std::io::Write;
        let dir = self
            .spill_dir
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no spill directory"))?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "{}.jsonl",
            crate::metrics::unix_ms(std::time::SystemTime::now())
        ));
        let tmp = path.with_extension("partial");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for r in &self.held {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    fn must_hold(&self) -> bool {
        self.store_failed
            || Level::from_u8(self.metrics.journal_level.load(Ordering::Relaxed)) == Level::Full
    }

    /// Keeps records in memory while the disk is full; refuses, loudly, beyond the limit.
    fn hold(&mut self, batch: &mut Vec<Record>) {
        for r in batch.drain(..) {
            if self.held.len() < self.hold_limit {
                self.held.push_back(r);
                continue;
            }
            self.metrics.records_refused.fetch_add(1, Ordering::Relaxed);
            self.refused_now += 1;
            let n = self.refused_now;
            error!(
                waybill = ?r.waybill(),
                line = %r.line(),
                record = %serde_json::to_string(&r).unwrap_or_default(),
                "journal full and hold limit reached: record refused"
            );
            if n == 1 || n % 1000 == 0 {
                if let Some(a) = &self.alarms {
                    a.raise(format!(
                        "journal full and {} records held in memory: {n} record(s) refused and logged only",
                        self.held.len()
                    ));
                }
            }
        }
        self.metrics
            .records_held
            .store(self.held.len() as u64, Ordering::Relaxed);
        self.publish_next_write();
    }

    /// Writes held records, in order, while there is room: in steps of at most [`HELD_STEP`]
    /// records, halved while a step does not fit, so that a little room is used as soon as it
    /// appears and whatever room the level sees is used.
    async fn write_held(&mut self) {
        if self.held.is_empty() {
            self.refused_now = 0;
        }
        let mut step = HELD_STEP;
        while !self.held.is_empty() && !self.must_hold() {
            let n = self.held.len().min(step);
            let drained: Vec<Record> = self.held.drain(..n).collect();
            let restored = n.min(self.restored_held);
            let progress = (restored > 0).then(|| super::SpillProgress {
                files: spill_names(&self.restored),
                stored: self.restored_stored + restored as u64,
            });
            // A restored record the store already holds at its stamp was committed before
            // it was spilled: the flush after its commit failed and the batch was held, but
            // the store kept it. Stored again it would go out twice, under two sequences.
            // It is skipped, but keeps its place should the rest not go in now.
            let mut stored = Vec::new();
            let mut batch = Vec::with_capacity(n);
            for (i, r) in drained.into_iter().enumerate() {
                if i < restored && self.journal.holds(&r) {
                    stored.push((i, r));
                } else {
                    batch.push(r);
                }
            }
            if !stored.is_empty() {
                tracing::info!(
                    records = stored.len(),
                    "spilled records already in the store (committed before their spill) are not stored again"
                );
            }
            if !batch.is_empty() {
                self.commit(&mut batch, progress.as_ref()).await;
            }
            if batch.is_empty() {
                self.restored_held -= restored;
                self.restored_stored += restored as u64;
                if restored > 0 && self.restored_held == 0 {
                    self.forget_restored();
                }
            } else {
                // No room after all, or the store failed: back in front, order kept, the
                // skipped ones in their places (so the restore's count stays in step).
                for (i, r) in stored {
                    batch.insert(i, r);
                }
                for r in batch.into_iter().rev() {
                    self.held.push_front(r);
                }
                if self.store_failed || n == 1 {
                    break;
                }
                step = n / 2;
            }
        }
        self.metrics
            .records_held
            .store(self.held.len() as u64, Ordering::Relaxed);
        self.publish_next_write();
    }

    /// Chains and writes `batch`, retrying on errors. On success the batch is emptied; if
    /// the store fails with a full disk the records are left in `batch` for the caller.
    async fn commit(&mut self, batch: &mut Vec<Record>, spill: Option<&super::SpillProgress>) {
        let started = Instant::now();
        let (seq0, hash0) = (self.last_seq, self.last_hash);
        let first = seq0 + 1;
        let (mut seq, mut hash) = (seq0, hash0);
        let mut records = Vec::with_capacity(batch.len());
        for r in batch.iter_mut() {
            seq += 1;
            let (bytes, next) = r.chain_after(seq, &hash);
            hash = next;
            records.push(bytes);
        }
        // Each record also gets a waybill index entry on disk (see `lookup`).
        let size: u64 = records
            .iter()
            .map(|r| r.len() as u64 + 4 + super::lookup::INDEX_ALLOWANCE)
            .sum();
        if !self.room_for(size) {
            // No room now: the caller holds the batch; numbers are given again next time.
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut committed = false;
        let mut failures = 0u32;
        loop {
            // Once the transaction is in, only the flush is retried.
            let result = if committed {
                self.journal.flush().await
            } else {
                match self
                    .journal
                    .mark_counted(counted_marks(batch))
                    .and_then(|()| {
                        self.journal
                            .commit_noting(first, &records, (seq, hash), spill)
                    }) {
                    Ok(()) => {
                        committed = true;
                        self.journal.flush().await
                    }
                    Err(e) => Err(e),
                }
            };
            let e = match result {
                Ok(()) => break,
                Err(e) => e,
            };
            self.metrics.journal_errors.fetch_add(1, Ordering::Relaxed);
            failures += 1;
            // sled keeps failing after a full disk, or after most I/O errors, until it is
            // reopened: after a full disk at once, after other errors once retries have failed.
            if e.is_storage_full() || failures >= MAX_COMMIT_FAILURES {
                self.store_failed = true;
                if let Some(a) = &self.alarms {
                    a.raise(format!(
                        "journal store failed ({e}): records are held in memory; fix the disk, then restart bondline: held records are spilled at stop and stored at the next start"
                    ));
                }
                return;
            }
            let wait = backoff.next_delay();
            error!(error = %e, records = records.len(), retry_in = ?wait, "journal commit failed");
            tokio::time::sleep(wait).await;
        }
        self.last_seq = seq;
        self.last_hash = hash;
        // The records are durable: their intents may go.
        let settle: Vec<_> = batch
            .iter()
            .filter_map(Record::as_parcel)
            .map(|p| (super::intents::intent_key(&p.line, p.parcel), p.revision))
            .collect();
        if let Err(e) = self.journal.settle_intents(&settle) {
            error!(error = %e, "settled intents could not be removed; they are checked again at the next start");
        }
        self.metrics.journal_flush_latency.record(started.elapsed());
        // Accepted now: only from here on may anyone else see these records.
        if self.feed.receiver_count() > 0 {
            for r in batch.drain(..) {
                let _ = self.feed.send(r);
            }
        }
        batch.clear();
        let n = records.len() as u64;
        Metrics::add(&self.metrics.records_accepted, n);
        Metrics::add(&self.metrics.backlog, n);
        self.accepted.send_replace(self.last_seq);
    }
}

/// The file names of spill files, as [`super::SpillProgress`] notes them.
fn spill_names(files: &[std::path::PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Serves the intent queue until every sink is gone: stores and flushes whatever intents
/// are waiting, then answers each (`true` once durable). Beside the records' loop, so a
/// release never waits behind a group commit.
async fn store_intents(
    mut rx: mpsc::UnboundedReceiver<Intent>,
    journal: Journal,
    metrics: Arc<Metrics>,
) {
    let mut intents = Vec::new();
    // The intents' log covers what it holds about once a second even while no release
    // comes (a quiet line), so that a crash replays little.
    let mut cover = tokio::time::interval(super::intent_wal::COVER_EVERY);
    cover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            first = rx.recv() => match first {
                Some(first) => first,
                None => break,
            },
            _ = cover.tick() => {
                journal.cover_intent_log_if_due();
                continue;
            }
        };
        intents.push(first);
        while let Ok(more) = rx.try_recv() {
            intents.push(more);
        }
        let started = Instant::now();
        let encoded: Vec<_> = intents
            .iter()
            .map(|(r, _)| super::intents::encode_intent(r))
            .collect();
        let stored = journal.store_intents(&encoded).await.is_ok();
        metrics.intent_flush_latency.record(started.elapsed());
        if !stored {
            metrics.journal_errors.fetch_add(1, Ordering::Relaxed);
            error!(
                intents = intents.len(),
                "release decisions could not be stored ahead of their commands; the commands are not sent"
            );
        }
        for (_, done) in intents.drain(..) {
            let _ = done.send(stored);
        }
    }
}

/// The parcels of `batch` that joined their consumer's history, with the local day they were
/// counted on (the UTC day for records written before decisions carried it), so the history
/// rebuilt after a restart counts the same days as before it.
fn counted_marks(batch: &[Record]) -> impl Iterator<Item = (&str, u32)> {
    batch.iter().filter_map(|r| {
        let p = r.as_parcel()?;
        let inputs = p.inputs.as_ref().filter(|i| i.counted)?;
        let waybill = p.waybill.as_deref()?;
        let day = inputs
            .counted_day
            .unwrap_or_else(|| crate::rules::history::day_of(p.scanned_at_ms));
        Some((waybill, day))
    })
}
