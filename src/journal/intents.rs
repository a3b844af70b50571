//! Release decisions written ahead of their command, and what the journal remembers of recent
//! parcels for the PLC's dispositions after a restart.
//!
//! # Invariants
//! - **Written ahead.** A command to the release lane reaches the PLC only after its
//!   *intent* (the parcel record as it stands before the PLC's answer: waybill, lane,
//!   deciding rule, instruction id, rule set) is flushed in the `intents` tree. The writer
//!   stores intents as soon as they arrive, without waiting for the group-commit window.
//! - **A store of its own.** Intents live in a small sled store beside the journal
//!   (`<store>-intents`), so that the journal's own writes (group commits, the uplink's
//!   acknowledges during a backlog drain) never stand in front of a release.
//! - **A log ahead of that store.** In the daemon an intent is durable once it is in the
//!   intents' write-ahead log (`<store>-intents/wal.0` and `wal.1`, see [`super::intent_log`]):
//!   one `fdatasync` of a pre-written file, where a flush of the store would wait for sled's
//!   log and the filesystem's metadata behind the drain's writes. The store reaches the disk
//!   with its own flush; a start replays into it what only the log holds.
//! - **Settled after the record.** An intent is removed once a parcel record of the same line
//!   and parcel with the same or a later revision is durable in the journal, so at every
//!   instant a release command has its parcel record, or its intent, or both.
//! - **Recovered at start.** An intent still stored at start whose parcel has no such record
//!   in the journal belongs to a decision whose outcome was never recorded (the gateway
//!   stopped in between): it becomes a parcel record with status `interrupted` and a
//!   `divert_interrupted` alert, which settles it. One whose record is there (the gateway
//!   stopped between the record and the intent's removal) is removed.
//!
//! - **Released waybills remembered.** Each release intent is also stored, in the same
//!   batch and under the same flush, in the `released-by-waybill` tree of the intent store,
//!   which settling does not touch: at start the gateway reloads from it which waybills it
//!   already released (see [`crate::line::duplicates`]). A waybill's marks go when the
//!   clearance table forgets the waybill, not after a time: while a release order may be in
//!   force, a clone is judged against them. Keyed by waybill, line, parcel id and scan time
//!   (parcel ids repeat across runs). The `released` tree of earlier builds (keyed like the
//!   intents, so a later run's parcel with the same id replaced a mark) is moved into it at
//!   start.
//!
//! Layout: key = line id + 0x00 + parcel id (big-endian `u32`), value = revision
//! (big-endian `u32`) + the parcel record's JSON. Inspection, hold and exception commands
//! are not written ahead: those lanes are safe, and a record lost with a crash is made
//! visible by the parcel's disposition (`unexplained_disposition`).

use std::collections::HashMap;

use bondline_devices::contract::{AlertKind, AlertRecord, DivertStatus, LaneRole, ParcelRecord};
use serde::{Deserialize, Serialize};

pub use crate::floor::Recent;

use super::intent_wal::{recover_wal, IntentWal, SledIntents};
use super::{decode_batch, intent_log, Journal, JournalError};

/// Removes the intents of `settle` whose stored revision is not newer than the record's.
pub(super) fn settle_intents(db: &sled::Db, settle: &[(Vec<u8>, u32)]) -> Result<(), JournalError> {
    for (key, revision) in settle {
        let stored = db.get(&key[..])?;
        if stored
            .as_deref()
            .and_then(intent_revision)
            .is_some_and(|r| r <= *revision)
        {
            db.remove(&key[..])?;
        }
    }
    Ok(())
}

/// The tree of the intent store that kept every release decision for the duplicate-label
/// rule in earlier builds, keyed like the intents; moved into [`RELEASED_BY_WAYBILL`].
const RELEASED: &str = "released";

/// The tree that keeps every release decision for the duplicate-label rule (not settled
/// with the intents), keyed by [`released_key`].
const RELEASED_BY_WAYBILL: &str = "released-by-waybill";

/// A released mark's key: waybill, 0x00, line, 0x00, parcel id and scan time (big-endian).
/// A parcel decided again keeps its key; a waybill's marks share a prefix.
fn released_key(waybill: &str, m: &ReleasedMark) -> Vec<u8> {
    let mut k = Vec::with_capacity(waybill.len() + m.line.len() + 14);
    k.extend_from_slice(waybill.as_bytes());
    k.push(0);
    k.extend_from_slice(m.line.as_bytes());
    k.push(0);
    k.extend_from_slice(&m.parcel.to_be_bytes());
    k.extend_from_slice(&m.scanned_at_ms.to_be_bytes());
    k
}

/// The prefix of a waybill's released marks.
fn released_prefix(waybill: &str) -> Vec<u8> {
    let mut k = waybill.as_bytes().to_vec();
    k.push(0);
    k
}

/// The key of a parcel's intent.
pub fn intent_key(line: &str, parcel: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(line.len() + 5);
    k.extend_from_slice(line.as_bytes());
    k.push(0);
    k.extend_from_slice(&parcel.to_be_bytes());
    k
}

/// An intent ready to store: its key and value.
pub fn encode_intent(record: &ParcelRecord) -> (Vec<u8>, Vec<u8>) {
    let mut value = record.revision.to_be_bytes().to_vec();
    // A parcel record always serializes; an empty value would only fail to recover.
    value.extend(serde_json::to_vec(record).unwrap_or_default());
    (intent_key(&record.line, record.parcel), value)
}

pub(crate) fn intent_revision(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// Where the intents of the journal at `path` are kept.
pub fn intents_dir(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-intents");
    path.with_file_name(name)
}

/// Opens (or creates) the intent store of the journal at `path`: a small cache, and no flush
/// but the writer's (a removal reaches the disk with the next intent's flush, or sled's own
/// within a second).
/// Release intents still only in the write-ahead log (a crash came before the store's
/// flush) are replayed into it here.
pub(super) fn open(path: &std::path::Path) -> Result<sled::Db, JournalError> {
    let dir = intents_dir(path);
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(1024 * 1024)
        .flush_every_ms(Some(1000))
        .open()
        .map_err(|source| JournalError::Open {
            path: dir.display().to_string(),
            source,
        })?;
    recover_wal(&dir, &SledIntents(db.clone()))?;
    Ok(db)
}

/// Applies intents to the intent store, in memory: each intent under its key and, for a
/// release, its released mark (a few facts, not the whole record, since marks are kept for
/// the clearance period). Durable with the store's next flush, or ahead of it in the
/// write-ahead log.
pub(super) fn apply_intents(
    db: &sled::Db,
    intents: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), JournalError> {
    let mut batch = sled::Batch::default();
    for (k, v) in intents {
        batch.insert(&k[..], &v[..]);
    }
    let mut released = sled::Batch::default();
    for (_, v) in intents {
        let mark = v
            .get(4..)
            .and_then(|json| serde_json::from_slice::<ReleasedMark>(json).ok())
            .filter(|m| m.lane_role == LaneRole::Release);
        if let Some((w, mark)) = mark.and_then(|m| Some((m.waybill.clone()?, m))) {
            released.insert(
                released_key(&w, &mark),
                serde_json::to_vec(&mark).unwrap_or_default(),
            );
        }
    }
    db.open_tree(RELEASED_BY_WAYBILL)?.apply_batch(released)?;
    db.apply_batch(batch)?;
    Ok(())
}

impl Journal {
    /// Stores intents and makes them durable before returning: in the write-ahead log once
    /// [`Journal::prepare_intent_log`] ran, else with the intent store's flush.
    pub(crate) async fn store_intents(
        &self,
        intents: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), JournalError> {
        {
            let mut wal = self.intent_wal.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(wal) = wal.as_mut() {
                return wal.store(intents);
            }
        }
        apply_intents(&self.intents, intents)?;
        self.intents.flush_async().await?;
        Ok(())
    }

    /// Covers the intents' log if it holds frames written longer ago than
    /// `intent_wal::COVER_EVERY` (see [`super::intent_log`]); called on a timer by the
    /// intents' loop. Nothing waits for the cover.
    pub(crate) fn cover_intent_log_if_due(&self) {
        if let Some(wal) = self
            .intent_wal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            wal.cover_if_due();
        }
    }

    /// Opens the release intents' write-ahead log (creating its segments, zeroed, on a first
    /// start), so that [`Journal::store_intents`] waits for one `fdatasync` of the log rather
    /// than a flush of the intent store. The daemon prepares it before its lines start.
    pub fn prepare_intent_log(&self) -> Result<(), JournalError> {
        let mut slot = self.intent_wal.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            // Prepared already: a second log over the same files would write over the first.
            return Ok(());
        }
        let wal = IntentWal::open(
            &intents_dir(&self.path),
            intent_log::SEGMENT_BYTES,
            SledIntents(self.intents.clone()),
        )?;
        *self
            .intent_settler
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(wal.settler());
        *slot = Some(wal);
        Ok(())
    }

    /// Removes intents whose parcel record is durable (`settle`: key and the record's
    /// revision; an intent of a newer revision stays).
    pub fn settle_intents(&self, settle: &[(Vec<u8>, u32)]) -> Result<(), JournalError> {
        let settler = self
            .intent_settler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match settler {
            // After their intents' apply, on the intent store's thread.
            Some(s) => s.settle(settle),
            None => settle_intents(&self.intents, settle),
        }
    }

    /// Every stored release decision, newest revision of each parcel. The marks an earlier
    /// build kept (scanned since `since_ms`; older ones it would have forgotten) are moved
    /// in first. Unreadable entries are skipped: they can only make a later parcel of their
    /// waybill look fresh, and they are logged.
    pub fn released_marks(&self, since_ms: u64) -> Result<Vec<ReleasedMark>, JournalError> {
        let tree = self.intents.open_tree(RELEASED_BY_WAYBILL)?;
        let old = self.intents.open_tree(RELEASED)?;
        if !old.is_empty() {
            let mut moved = 0usize;
            for e in old.iter() {
                let (_, v) = e?;
                let mark = serde_json::from_slice::<ReleasedMark>(&v).ok();
                if let Some((w, m)) = mark
                    .filter(|m| m.scanned_at_ms >= since_ms)
                    .and_then(|m| Some((m.waybill.clone()?, m)))
                {
                    tree.insert(released_key(&w, &m), v)?;
                    moved += 1;
                }
            }
            tree.flush()?;
            old.clear()?;
            tracing::info!(
                marks = moved,
                "released marks of an earlier build moved to the waybill-keyed tree"
            );
        }
        let mut out = Vec::new();
        for e in tree.iter() {
            let (k, v) = e?;
            match serde_json::from_slice::<ReleasedMark>(&v).ok() {
                Some(r) => out.push(r),
                None => {
                    tracing::error!(key = %String::from_utf8_lossy(&k), "a stored released mark does not decode; skipped");
                }
            }
        }
        Ok(out)
    }

    /// Removes the stored released marks of `waybills` (the clearance table forgot them).
    pub fn forget_released(&self, waybills: &[String]) -> Result<(), JournalError> {
        let tree = self.intents.open_tree(RELEASED_BY_WAYBILL)?;
        let mut batch = sled::Batch::default();
        for w in waybills {
            for e in tree.scan_prefix(released_prefix(w)) {
                batch.remove(e?.0);
            }
        }
        tree.apply_batch(batch)?;
        Ok(())
    }

    /// Removes the stored released marks whose waybill `held` says the clearance table no
    /// longer holds; returns those waybills.
    pub fn forget_released_unheld(
        &self,
        held: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, JournalError> {
        let tree = self.intents.open_tree(RELEASED_BY_WAYBILL)?;
        let mut gone: Vec<String> = Vec::new();
        for e in tree.iter() {
            let (k, _) = e?;
            let w = k.split(|&b| b == 0).next().unwrap_or_default();
            let w = String::from_utf8_lossy(w);
            if !held(&w) {
                tree.remove(&k)?;
                if gone.last().map(String::as_str) != Some(&*w) {
                    gone.push(w.into_owned());
                }
            }
        }
        Ok(gone)
    }

    /// Every stored intent's parcel record; an unreadable one is reported as corrupt.
    pub fn intents(&self) -> Result<Vec<ParcelRecord>, JournalError> {
        let mut out = Vec::new();
        for e in self.intents.iter() {
            let (k, v) = e?;
            let record = v
                .get(4..)
                .and_then(|json| serde_json::from_slice::<ParcelRecord>(json).ok());
            match record {
                Some(r) => out.push(r),
                None => {
                    return Err(JournalError::Corrupt {
                        seq: 0,
                        reason: format!("intent {} does not decode", String::from_utf8_lossy(&k)),
                    })
                }
            }
        }
        Ok(out)
    }

    /// What the journal's most recent records say of each line's parcels: scanning back from
    /// the head until records are older than `since_ms` *and* every line has at least
    /// `min_disposed` dispositions (a quiet line's ring still holds older ones), or
    /// `max_records` were read.
    pub fn recent_parcels(
        &self,
        since_ms: u64,
        min_disposed: usize,
        max_records: usize,
    ) -> Result<RecentParcels, JournalError> {
        let mut out = RecentParcels::default();
        let mut read = 0usize;
        let mut disposed: HashMap<String, usize> = HashMap::new();
        'batches: for e in self.batches.iter().rev() {
            let (_, value) = e?;
            let Some(records) = decode_batch(&value) else {
                continue;
            };
            for bytes in records.into_iter().rev() {
                read += 1;
                let Ok(r) = serde_json::from_slice::<Light>(bytes) else {
                    continue;
                };
                let at = r.at_ms.or(r.scanned_at_ms).unwrap_or(0);
                let quiet_lines_done = disposed.values().all(|n| *n >= min_disposed);
                if read > max_records || (at < since_ms && quiet_lines_done) {
                    break 'batches;
                }
                let (Some(line), Some(parcel)) = (r.line, r.parcel) else {
                    continue;
                };
                let entry = out.lines.entry(line.clone()).or_default().entry(parcel);
                let known = entry.or_default();
                match r.kind.as_str() {
                    // Newest first: the first parcel record seen is the last revision.
                    "parcel" if !known.decided => {
                        known.decided = true;
                        known.waybill = r.waybill;
                        known.lane = r.lane;
                        known.role = r.lane_role;
                        known.revision = r.revision.unwrap_or(0);
                        known.acked = r.divert.is_some_and(|d| d.status == DivertStatus::Acked);
                    }
                    "disposition" => {
                        known.disposed = true;
                        *disposed.entry(line).or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

/// An intent found at start, as its parcel record (status `interrupted`, as stored) and the
/// alert that goes with it.
pub fn interrupted(mut r: ParcelRecord, now_ms: u64) -> (ParcelRecord, AlertRecord) {
    r.divert.status = DivertStatus::Interrupted;
    r.divert.at_ms = now_ms;
    let detail = format!(
        "the gateway stopped after storing the release decision for parcel {} (lane {}, revision {}) and before recording the PLC's answer: the command may have reached the PLC",
        r.parcel, r.lane, r.revision
    );
    let alert = AlertRecord::new(
        &r.gateway,
        &r.line,
        AlertKind::DivertInterrupted,
        detail,
        now_ms,
    )
    .about(Some(r.parcel), r.waybill.clone());
    (r, alert)
}

/// What is kept of a release decision for the duplicate-label rule (read from the release
/// intent's parcel record, whose other fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedMark {
    pub line: String,
    pub parcel: u32,
    pub waybill: Option<String>,
    pub lane: u16,
    pub lane_role: LaneRole,
    pub scanned_at_ms: u64,
    #[serde(default)]
    pub inputs: Option<MarkInputs>,
}

/// The weight the scale measured, from the decision's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkInputs {
    #[serde(default)]
    pub measured_weight_g: Option<u32>,
}

/// The few fields of a record that [`Journal::recent_parcels`] needs.
#[derive(Deserialize)]
struct Light {
    kind: String,
    line: Option<String>,
    parcel: Option<u32>,
    waybill: Option<String>,
    lane: Option<u16>,
    lane_role: Option<LaneRole>,
    revision: Option<u32>,
    scanned_at_ms: Option<u64>,
    at_ms: Option<u64>,
    divert: Option<LightDivert>,
}

#[derive(Deserialize)]
struct LightDivert {
    status: DivertStatus,
}

/// Recent parcels by line and parcel id.
#[derive(Debug, Default)]
pub struct RecentParcels {
    pub lines: HashMap<String, HashMap<u32, Recent>>,
}

impl RecentParcels {
    /// One line's parcels, taken out.
    pub fn take(&mut self, line: &str) -> HashMap<u32, Recent> {
        self.lines.remove(line).unwrap_or_default()
    }

    /// Adds a decision that is being recorded now (a recovered intent).
    pub fn decided(&mut self, r: &ParcelRecord) {
        let known = self
            .lines
            .entry(r.line.clone())
            .or_default()
            .entry(r.parcel)
            .or_default();
        if !known.decided || known.revision <= r.revision {
            known.decided = true;
            known.waybill = r.waybill.clone();
            known.lane = Some(r.lane);
            known.role = Some(r.lane_role);
            known.revision = r.revision;
            known.acked = r.divert.status == DivertStatus::Acked;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::journal::maintenance::tests::{disposition, record};
    use crate::journal::record_sink;
    use crate::metrics::Metrics;

    /// A running journal writer over `journal`: its sink, task and accepted watch.
    fn writer(
        journal: &Journal,
        window: Duration,
    ) -> (
        crate::journal::RecordSink,
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Receiver<u64>,
    ) {
        let (sink, writer, accepted) =
            record_sink(journal.clone(), window, Arc::new(Metrics::default())).unwrap();
        (sink, tokio::spawn(writer.run()), accepted)
    }

    fn release(parcel: u32, revision: u32) -> ParcelRecord {
        let mut r = record(parcel, 1_000);
        r.lane = 1;
        r.lane_role = LaneRole::Release;
        r.revision = revision;
        r.divert.status = DivertStatus::Interrupted;
        r
    }

    #[tokio::test]
    async fn an_intent_is_durable_before_its_answer_and_settled_by_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (sink, task, mut accepted) = writer(&journal, Duration::from_millis(50));

        // The answer comes without waiting for the 50 ms window, and the intent is stored.
        let started = std::time::Instant::now();
        assert!(sink.push_intent(release(7, 0)).await.unwrap());
        assert!(started.elapsed() < Duration::from_millis(45));
        assert_eq!(journal.intents().unwrap(), vec![release(7, 0)]);

        // A newer revision's intent replaces it; the older revision's record does not
        // settle the newer intent, the newer revision's record does.
        assert!(sink.push_intent(release(7, 1)).await.unwrap());
        let mut old = release(7, 0);
        old.divert.status = DivertStatus::Timeout;
        sink.push(old);
        accepted.changed().await.unwrap();
        assert_eq!(journal.intents().unwrap(), vec![release(7, 1)]);
        let mut new = release(7, 1);
        new.divert.status = DivertStatus::Acked;
        sink.push(new);
        accepted.changed().await.unwrap();
        assert!(journal.intents().unwrap().is_empty());
        drop(sink);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_intent_left_by_a_crash_is_recovered_as_interrupted_and_settled() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            journal
                .store_intents(&[encode_intent(&release(9, 2))])
                .await
                .unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        let found = journal.intents().unwrap();
        assert_eq!(found, vec![release(9, 2)]);
        let (sink, task, mut accepted) = writer(&journal, Duration::from_millis(1));
        let (r, alert) = interrupted(found[0].clone(), 5_000);
        assert_eq!(r.divert.status, DivertStatus::Interrupted);
        assert_eq!(alert.alert, AlertKind::DivertInterrupted);
        assert_eq!(alert.parcel, Some(9));
        sink.push(r);
        sink.push(alert);
        while *accepted.borrow_and_update() < 2 {
            accepted.changed().await.unwrap();
        }
        assert!(journal.intents().unwrap().is_empty());
        drop(sink);
        task.await.unwrap();
    }

    /// An earlier build's marks, keyed like the intents, are moved (those within its
    /// horizon), then kept and forgotten by waybill.
    #[test]
    fn an_earlier_build_s_released_marks_are_moved_by_waybill() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            let old = journal.intents.open_tree(RELEASED).unwrap();
            for (parcel, at) in [(1u32, 5_000u64), (2, 100)] {
                let mut r = release(parcel, 0);
                r.scanned_at_ms = at;
                let (k, _) = encode_intent(&r);
                old.insert(k, serde_json::to_vec(&r).unwrap()).unwrap();
            }
            let marks = journal.released_marks(1_000).unwrap();
            assert_eq!(marks.iter().map(|m| m.parcel).collect::<Vec<_>>(), vec![1]);
            assert!(old.is_empty());
            journal
                .forget_released(&[marks[0].waybill.clone().unwrap()])
                .unwrap();
            assert!(journal.released_marks(0).unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn released_marks_outlive_their_settled_intents_until_their_waybill_goes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            let (sink, task, mut accepted) = writer(&journal, Duration::from_millis(1));
            assert!(sink.push_intent(release(7, 0)).await.unwrap());
            let mut done = release(7, 0);
            done.divert.status = DivertStatus::Acked;
            sink.push(done);
            accepted.changed().await.unwrap();
            assert!(journal.intents().unwrap().is_empty());
            drop(sink);
            task.await.unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        let marks = journal.released_marks(0).unwrap();
        assert_eq!(marks.len(), 1);
        assert_eq!(
            (marks[0].parcel, marks[0].lane_role),
            (7, LaneRole::Release)
        );
        // Not with time: with the waybill.
        let waybill = marks[0].waybill.clone().unwrap();
        assert_eq!(journal.released_marks(u64::MAX).unwrap().len(), 1);
        assert!(journal
            .forget_released_unheld(|w| w == waybill)
            .unwrap()
            .is_empty());
        journal
            .forget_released(std::slice::from_ref(&waybill))
            .unwrap();
        assert!(journal.released_marks(0).unwrap().is_empty());
    }

    #[tokio::test]
    async fn recent_parcels_know_each_line_s_last_decision_and_disposition() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (sink, task, mut accepted) = writer(&journal, Duration::from_millis(1));
        let mut first = release(1, 0);
        first.divert.status = DivertStatus::Acked;
        let mut second = record(1, 1_000);
        second.revision = 1;
        sink.push(first);
        sink.push(second);
        sink.push(disposition(1, 2_000));
        sink.push(release(2, 0));
        while *accepted.borrow_and_update() < 4 {
            accepted.changed().await.unwrap();
        }
        let mut recent = journal.recent_parcels(0, 1, 1_000).unwrap();
        let l1 = recent.take("L1");
        let p1 = &l1[&1];
        assert!(p1.decided && p1.disposed && p1.acked);
        assert_eq!(
            (p1.revision, p1.lane, p1.role),
            (1, Some(3), Some(LaneRole::Hold))
        );
        let p2 = &l1[&2];
        assert!(p2.decided && !p2.disposed && !p2.acked);
        assert_eq!(p2.role, Some(LaneRole::Release));
        drop(sink);
        task.await.unwrap();
    }
}
