//! Journal upkeep: statistics for `bondline journal stats` and the staff view, and purging
//! of forwarded records (retention). The outbox, verification and export are modules of
//! their own ([`super::outbox`], [`super::verify`], [`super::export`]); this module's tests
//! hold the fixtures the journal's other tests share.
//!
//! Purging only ever removes whole batches whose records are all at or below the forwarded
//! watermark and none of them parked, oldest first, so the remaining records stay one
//! contiguous, verifiable chain: the last purged record's sequence and hash are kept as the
//! chain's `anchor`.

use sled::Transactional;

use bondline_devices::contract::Record;

use super::{chain_hash, key_seq, seq_key, Journal, JournalError, META_ANCHOR, META_LIVE};

/// Where verification's problems were defined before they had a module of their own.
pub(super) use super::verify::ChainProblem;

/// Counts for `bondline journal stats` and the staff view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalStats {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    /// Every record at or below this one is acknowledged or parked.
    pub forwarded_watermark: u64,
    /// Records waiting for a PUBACK.
    pub backlog: usize,
    /// The oldest record waiting for a PUBACK: its sequence and scan time (Unix ms).
    pub oldest_unforwarded: Option<(u64, u64)>,
    /// Records the broker refused, kept aside until replayed.
    pub parked: usize,
    /// Bytes of stored records.
    pub live_bytes: u64,
    /// Size of the store's files (sled reuses freed space but never shrinks them).
    pub size_on_disk: u64,
}

impl Journal {
    /// Whether retention or a short disk has removed records from this store.
    pub fn has_purged(&self) -> Result<bool, JournalError> {
        Ok(self.meta.get(META_ANCHOR)?.is_some())
    }

    pub fn stats(&self) -> Result<JournalStats, JournalError> {
        let first_seq = match self.batches.first()? {
            Some((k, _)) => key_seq(&k),
            None => None,
        };
        let (last_seq, _) = self.chain_head()?;
        let w = self.forwarded_watermark();
        let backlog = self.backlog_len();
        let oldest_unforwarded = match self.outbox_from(w + 1, last_seq, 1)?.pop() {
            Some((seq, bytes)) => {
                let at = serde_json::from_slice::<Record>(&bytes)
                    .map(|r| r.at_ms())
                    .unwrap_or(0);
                Some((seq, at))
            }
            None => None,
        };
        Ok(JournalStats {
            records: first_seq.map_or(0, |f| last_seq + 1 - f),
            first_seq,
            last_seq,
            forwarded_watermark: w,
            backlog,
            oldest_unforwarded,
            parked: self.parked.len(),
            live_bytes: self.live_bytes(),
            size_on_disk: self.db.size_on_disk()?,
        })
    }

    /// Removes up to `max_batches` batches of forwarded records from the front of the journal
    /// whose newest record was scanned before `before_ms`, stopping at the first batch that
    /// holds a record still waiting for its PUBACK or parked: unforwarded records are never
    /// purged. Returns how many records were removed.
    pub fn purge_forwarded(&self, before_ms: u64, max_batches: usize) -> Result<u64, JournalError> {
        let mut removed = 0;
        let w = self.forwarded_watermark();
        for entry in self.batches.iter().take(max_batches) {
            let batch = super::Batch::from_entry(entry)?;
            let records = batch.records()?;
            let Some(last_bytes) = records.last() else {
                break;
            };
            let last = batch.first + records.len() as u64 - 1;
            if last > w
                || self
                    .parked
                    .range(seq_key(batch.first)..=seq_key(last))
                    .next()
                    .is_some()
            {
                break;
            }
            let at = serde_json::from_slice::<Record>(last_bytes)
                .map(|r| r.at_ms())
                .unwrap_or(0);
            if at >= before_ms {
                break;
            }
            let (anchor, anchor_tag) =
                super::chain_key::tagged_link(self, b"anchor", last, &chain_hash(last_bytes));
            let index = super::lookup::index_keys(batch.first, &records);
            let mut state = self.state();
            let live = state
                .live_bytes
                .saturating_sub(batch.value.len() as u64 + super::lookup::index_bytes(&index));
            // Anchor, size, removal and index entries together: a crash leaves all or none.
            (&self.batches, &self.meta, &self.by_waybill)
                .transaction(|(batches, meta, by_waybill)| {
                    meta.insert(META_ANCHOR, &anchor[..])?;
                    if let Some(tag) = &anchor_tag {
                        meta.insert(super::chain_key::META_ANCHOR_TAG, &tag[..])?;
                    }
                    meta.insert(META_LIVE, &live.to_be_bytes()[..])?;
                    batches.remove(&seq_key(batch.first)[..])?;
                    for k in &index {
                        by_waybill.remove(&k[..])?;
                    }
                    Ok(())
                })
                .map_err(|e: sled::transaction::TransactionError<()>| match e {
                    sled::transaction::TransactionError::Storage(e) => JournalError::Store(e),
                    other => JournalError::Transaction(format!("{other:?}")),
                })?;
            state.live_bytes = live;
            removed += records.len() as u64;
        }
        Ok(removed)
    }

    /// Test access: rewrites the batch holding `seq` through `f`.
    #[cfg(test)]
    pub(crate) fn rewrite_batch_of(&self, seq: u64, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let batch = self.batch_of(seq).unwrap().unwrap();
        let mut records: Vec<Vec<u8>> = batch
            .records()
            .unwrap()
            .iter()
            .map(|b| b.to_vec())
            .collect();
        f(&mut records);
        let value = super::encode_batch(records.iter().map(Vec::as_slice));
        self.batches.insert(seq_key(batch.first), value).unwrap();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bondline_devices::contract::{
        DivertOutcome, DivertStatus, LaneRole, ParcelRecord, ReadOutcome, SCHEMA,
    };

    use super::*;
    use crate::journal::{record_sink, ExportFormat, JournalWriter};
    use crate::metrics::Metrics;
    use tokio_util::sync::CancellationToken;

    /// A disposition of line L1's parcel `n` (sorted into the hold lane it was sent to).
    pub(crate) fn disposition(n: u32, at_ms: u64) -> bondline_devices::contract::Record {
        use bondline_devices::contract::{DispositionKind, DispositionRecord, Record};
        Record::Disposition(DispositionRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            parcel: n,
            waybill: None,
            disposition: DispositionKind::Sorted,
            lane: 3,
            lane_role: Some(LaneRole::Hold),
            commanded_lane: Some(3),
            at_ms,
        })
    }

    pub(crate) fn record(n: u32, scanned_at_ms: u64) -> ParcelRecord {
        ParcelRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            parcel: n,
            read: ReadOutcome::Ok,
            waybill: Some(format!("BL{n:08}")),
            lane: 3,
            lane_role: LaneRole::Hold,
            rule: "undeclared".into(),
            reason: "no declaration, for \"test\", ok".into(),
            instruction_id: None,
            scanned_at_ms,
            decided_at_ms: scanned_at_ms,
            divert: DivertOutcome {
                status: DivertStatus::Acked,
                plc_seq: Some(1),
                detail: None,
                at_ms: scanned_at_ms,
                late: false,
            },
            revision: 0,
            deadline_ms: None,
            rule_set: None,
            rules_fired: Vec::new(),
            inputs: None,
        }
    }

    fn edit(journal: &Journal, seq: u64, f: impl FnOnce(&mut ParcelRecord)) {
        let batch_first = journal.batch_of(seq).unwrap().unwrap().first;
        journal.rewrite_batch_of(seq, |rs| {
            let i = (seq - batch_first) as usize;
            let mut r: Record = serde_json::from_slice(&rs[i]).unwrap();
            if let Record::Parcel(p) = &mut r {
                f(p);
            }
            rs[i] = serde_json::to_vec(&r).unwrap();
        });
    }

    /// The parcel ids of every stored parcel record, in sequence order.
    fn stored_parcels(journal: &Journal) -> Vec<u32> {
        journal
            .outbox_from(1, u64::MAX, 100_000)
            .unwrap()
            .iter()
            .filter_map(|(_, b)| {
                serde_json::from_slice::<Record>(b)
                    .ok()?
                    .as_parcel()
                    .map(|p| p.parcel)
            })
            .collect()
    }

    /// A journal in a temp dir holding `n` records scanned at 1000, 2000, ..., committed in
    /// batches of 3 so that purging and tampering cross batch boundaries.
    pub(crate) async fn filled(n: u32) -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (sink, writer, mut accepted) = record_sink(
            journal.clone(),
            Duration::from_millis(1),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let writer = tokio::spawn(writer.run());
        for i in 1..=n {
            sink.push(record(i, i as u64 * 1000));
            // Each group of three is stored before the next is queued, whatever the timing.
            if i % 3 == 0 || i == n {
                accepted.wait_for(|s| *s >= i as u64).await.unwrap();
            }
        }
        drop(sink);
        writer.await.unwrap();
        (dir, journal)
    }

    /// Runs a writer on `journal` until it has stored the spill in `spill`, then stops it.
    async fn restore_spill(journal: &Journal, spill: &std::path::Path) {
        let metrics = Arc::new(Metrics::default());
        let (sink, writer, _) =
            record_sink(journal.clone(), Duration::from_millis(1), metrics).unwrap();
        let mut writer =
            writer.with_hold(1000, crate::alarm::Alarms::new("gw"), spill.to_path_buf());
        let restored = writer.restored();
        let run = tokio::spawn(writer.run());
        restored.await.unwrap();
        drop(sink);
        run.await.unwrap();
    }

    #[tokio::test]
    async fn records_held_at_shutdown_are_spilled_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let journal = Journal::open(&store).unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.journal_level.store(
            crate::journal::capacity::Level::Full.as_u8(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let (sink, writer, _) =
            record_sink(journal.clone(), Duration::from_millis(1), metrics.clone()).unwrap();
        let spill = crate::journal::spill_dir(&store);
        let writer = writer.with_hold(1000, crate::alarm::Alarms::new("gw"), spill.clone());
        for i in 1..=5 {
            sink.push(record(i, 1000));
        }
        drop(sink);
        writer.run().await;
        assert_eq!(
            journal.chain_head().unwrap().0,
            0,
            "nothing stored while full"
        );
        let (files, records) = crate::journal::read_spill(&spill);
        assert_eq!(files.len(), 1);
        assert_eq!(
            records
                .iter()
                .map(|r| r.as_parcel().map(|p| p.parcel))
                .collect::<Option<Vec<_>>>()
                .unwrap(),
            vec![1, 2, 3, 4, 5]
        );
    }

    /// The lines' records taken while the store opens (`spill_until`) are synced to a spill
    /// file as they come, so a crash meanwhile keeps them; the writer that takes the queue
    /// over stores them first, in order, before the records queued since, and removes the
    /// file. A release intent before the store is open is refused.
    #[tokio::test]
    async fn records_taken_while_the_store_opens_are_spilled_then_stored_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let spill = crate::journal::spill_dir(&store);
        let metrics = Arc::new(Metrics::default());
        let (sink, queue) = crate::journal::record_queue(metrics.clone());
        let open = tokio_util::sync::CancellationToken::new();
        let before =
            tokio::spawn(queue.spill_until(spill.clone(), Duration::from_millis(1), open.clone()));
        for i in 1..=3 {
            sink.push(record(i, 1000));
        }
        let intent = sink.push_intent(record(9, 1000));
        assert!(
            !intent.await.unwrap(),
            "no intent is stored before the store"
        );
        // Synced before the store opens: what a crash now would leave for the next start.
        let mut spilled = Vec::new();
        for _ in 0..500 {
            spilled = crate::journal::read_spill(&spill).1;
            if spilled.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(spilled.len(), 3);
        open.cancel();
        let queue = before.await.unwrap();
        sink.push(record(4, 1000));

        let journal = Journal::open(&store).unwrap();
        let (writer, _) =
            JournalWriter::new(journal.clone(), queue, Duration::from_millis(1), metrics).unwrap();
        let writer = writer.with_hold(1000, crate::alarm::Alarms::new("gw"), spill.clone());
        drop(sink);
        writer.run().await;
        let stored = stored_parcels(&journal);
        assert_eq!(stored, vec![1, 2, 3, 4]);
        assert!(
            crate::journal::read_spill(&spill).0.is_empty(),
            "the spill file goes once stored"
        );
    }

    /// A restore of spill files that a crash interrupted after some of their records were
    /// stored (and noted with them) stores only the rest at the next start, once, and then
    /// removes the files and the note.
    #[tokio::test]
    async fn an_interrupted_restore_stores_each_spilled_record_once() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let spill = crate::journal::spill_dir(&store);
        std::fs::create_dir_all(&spill).unwrap();
        let file = spill.join("1000-starting.jsonl");
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 1..=5 {
            let r = Record::from(record(i, 1000));
            writeln!(f, "{}", serde_json::to_string(&r).unwrap()).unwrap();
        }
        // A torn last line, as a crash in the middle of a write leaves it.
        f.write_all(b"{\"parcel\":").unwrap();
        drop(f);
        let journal = Journal::open(&store).unwrap();
        // The interrupted restore had stored the first three.
        journal
            .meta
            .insert(
                super::super::META_SPILL_RESTORED,
                serde_json::to_vec(&crate::journal::SpillProgress {
                    files: vec!["1000-starting.jsonl".into()],
                    stored: 3,
                })
                .unwrap(),
            )
            .unwrap();
        restore_spill(&journal, &spill).await;
        let stored = stored_parcels(&journal);
        assert_eq!(stored, vec![4, 5]);
        assert!(!file.exists());
        assert_eq!(journal.spill_progress(), None);
    }

    /// Records spilled although their batch was committed (the flush after the commit
    /// failed, the batch was held, and the store kept it anyway) are not stored a second
    /// time under new sequences at the next start; a record stamped for a commit that never
    /// went in is stored.
    #[tokio::test]
    async fn spilled_records_the_store_already_holds_are_not_stored_again() {
        use std::io::Write as _;
        let (dir, journal) = filled(3).await;
        let spill = crate::journal::spill_dir(dir.path());
        std::fs::create_dir_all(&spill).unwrap();
        let file = spill.join("2000.jsonl");
        let mut f = std::fs::File::create(&file).unwrap();
        // The held batch: parcels 2 and 3 as the commit stamped them, then parcel 4
        // stamped for a commit that found no room (its sequence holds nothing), and 5,
        // never stamped.
        let mut lines = vec![
            journal.record(2).unwrap().unwrap(),
            journal.record(3).unwrap().unwrap(),
        ];
        let mut unstored = Record::from(record(4, 4000));
        unstored.stamp(4, "00".repeat(32));
        lines.push(unstored);
        lines.push(Record::from(record(5, 5000)));
        for r in &lines {
            writeln!(f, "{}", serde_json::to_string(r).unwrap()).unwrap();
        }
        drop(f);
        restore_spill(&journal, &spill).await;
        assert_eq!(stored_parcels(&journal), vec![1, 2, 3, 4, 5]);
        assert!(!file.exists());
        assert!(journal.verify().unwrap().ok(), "one unbroken chain");
    }

    /// The same when the disk still has no room as the restore begins: the skipped record
    /// keeps its place, so once room comes the rest is stored, the restore is complete and
    /// its file goes (left behind with part of it noted as stored, the next start would
    /// store the rest a second time).
    #[tokio::test]
    async fn a_restore_that_first_finds_no_room_stores_each_record_once() {
        use std::io::Write as _;
        let (dir, journal) = filled(3).await;
        let spill = crate::journal::spill_dir(dir.path());
        std::fs::create_dir_all(&spill).unwrap();
        let file = spill.join("2000.jsonl");
        let mut f = std::fs::File::create(&file).unwrap();
        for r in [
            journal.record(3).unwrap().unwrap(),
            Record::from(record(4, 4000)),
        ] {
            writeln!(f, "{}", serde_json::to_string(&r).unwrap()).unwrap();
        }
        drop(f);
        let metrics = Arc::new(Metrics::default());
        // The disk short of its free-space floor (twice what is free), so that only the
        // room measured in the store's file may be written: none at first.
        let free = crate::journal::capacity::free_bytes(dir.path()).unwrap();
        metrics
            .journal_write_budget
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let (sink, writer, mut accepted) =
            record_sink(journal.clone(), Duration::from_millis(1), metrics.clone()).unwrap();
        let mut writer = writer
            .with_hold(1000, crate::alarm::Alarms::new("gw"), spill.clone())
            .with_capacity(
                dir.path().to_path_buf(),
                crate::journal::capacity::Limits {
                    quota_bytes: u64::MAX / 4,
                    min_free_bytes: free * 2,
                },
            );
        let restored = writer.restored();
        let run = tokio::spawn(writer.run());
        restored.await.unwrap();
        assert_eq!(stored_parcels(&journal), vec![1, 2, 3], "no room yet");
        metrics
            .journal_write_budget
            .store(u64::MAX / 2, std::sync::atomic::Ordering::Relaxed);
        sink.push(record(9, 9000));
        accepted.wait_for(|&s| s >= 5).await.unwrap();
        drop(sink);
        run.await.unwrap();
        assert_eq!(stored_parcels(&journal), vec![1, 2, 3, 4, 9]);
        assert!(!file.exists(), "the restore is complete: its file goes");
        assert_eq!(journal.spill_progress(), None);
    }

    /// A large group commit is stored as entries of at most `ENTRY_BYTES` (sled keeps them
    /// in its file, see `capacity`), counted once even when written again, and purging all of
    /// them gives back exactly what they counted.
    #[test]
    fn a_large_commit_is_stored_in_small_entries_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut hash = crate::journal::GENESIS_HASH;
        let mut records = Vec::new();
        for i in 1..=40u32 {
            let mut r = Record::from(record(i, 1000));
            r.stamp(i as u64, hex::encode(hash));
            let bytes = serde_json::to_vec(&r).unwrap();
            hash = crate::journal::sha256(&bytes);
            records.push(bytes);
        }
        // One record far larger than an entry stays whole.
        let mut big = Record::from(record(41, 1000));
        if let Record::Parcel(p) = &mut big {
            p.reason = "x".repeat(3 * crate::journal::ENTRY_BYTES);
        }
        big.stamp(41, hex::encode(hash));
        let bytes = serde_json::to_vec(&big).unwrap();
        hash = crate::journal::sha256(&bytes);
        records.push(bytes);
        journal.commit(1, &records, (41, hash)).unwrap();
        let live = journal.live_bytes();
        journal.commit(1, &records, (41, hash)).unwrap();
        assert_eq!(journal.live_bytes(), live, "a retry is not counted twice");
        let entries: Vec<_> = journal
            .batches
            .iter()
            .values()
            .map(|v| v.unwrap())
            .collect();
        assert!(entries.len() > 5, "{} entries", entries.len());
        for v in &entries[..entries.len() - 1] {
            assert!(v.len() <= crate::journal::ENTRY_BYTES);
        }
        assert!(entries.last().unwrap().len() > crate::journal::ENTRY_BYTES);
        assert!(journal.verify().unwrap().ok());
        assert_eq!(
            journal
                .record(17)
                .unwrap()
                .unwrap()
                .as_parcel()
                .unwrap()
                .parcel,
            17
        );
        for seq in 1..=41 {
            journal.mark_forwarded(seq).unwrap();
        }
        assert_eq!(journal.purge_forwarded(u64::MAX, 1000).unwrap(), 41);
        assert_eq!(journal.live_bytes(), 0);
    }

    #[tokio::test]
    async fn the_outbox_never_hands_out_records_past_the_accepted_ceiling() {
        let (_dir, journal) = filled(10).await;
        let seqs: Vec<u64> = journal
            .outbox_from(0, 5, 100)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn committing_a_batch_again_does_not_count_its_size_twice() {
        let (_dir, journal) = filled(3).await;
        let live = journal.live_bytes();
        let head = journal.chain_head().unwrap();
        let bytes = journal.record_bytes(3).unwrap().unwrap();
        // Re-write the last batch (as a retry after a failed flush would).
        let first = journal.batch_of(3).unwrap().unwrap().first;
        let records: Vec<Vec<u8>> = (first..=3)
            .map(|s| journal.record_bytes(s).unwrap().unwrap())
            .collect();
        journal.commit(first, &records, head).unwrap();
        assert_eq!(journal.live_bytes(), live);
        assert_eq!(journal.record_bytes(3).unwrap().unwrap(), bytes);
        assert!(journal.verify().unwrap().ok());
    }

    #[tokio::test]
    async fn a_whole_chain_verifies_and_survives_reopen() {
        let (dir, journal) = filled(50).await;
        let r = journal.verify().unwrap();
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.checked, r.first, r.last), (50, Some(1), Some(50)));
        drop(journal);
        let journal = Journal::open(dir.path()).unwrap();
        assert!(journal.verify().unwrap().ok());
        assert_eq!(journal.chain_head().unwrap().0, 50);
        // The check at start ends at once when the daemon stops.
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(matches!(
            journal.verify_running(&stop),
            Err(JournalError::Stopped)
        ));
    }

    #[tokio::test]
    async fn an_edited_record_breaks_the_chain_at_its_successor() {
        let (_dir, journal) = filled(10).await;
        edit(&journal, 4, |r| r.lane_role = LaneRole::Release);
        let report = journal.verify().unwrap();
        assert_eq!(report.problems, vec![ChainProblem::Broken { seq: 5 }]);
        // The check at start reads links only and finds the same break.
        assert_eq!(
            journal
                .verify_running(&CancellationToken::new())
                .unwrap()
                .problems,
            report.problems
        );
        // Editing the last record is caught by the stored head.
        edit(&journal, 10, |r| r.reason = "edited".into());
        assert!(journal
            .verify()
            .unwrap()
            .problems
            .contains(&ChainProblem::Head { seq: 10 }));
    }

    #[tokio::test]
    async fn dropped_and_reordered_records_are_found() {
        let (_dir, journal) = filled(10).await;
        journal.rewrite_batch_of(6, |rs| {
            rs.remove(2);
        });
        assert_eq!(
            journal.verify().unwrap().problems,
            vec![ChainProblem::Gap { after: 5, next: 7 }]
        );
        assert_eq!(
            journal
                .verify_running(&CancellationToken::new())
                .unwrap()
                .problems,
            journal.verify().unwrap().problems
        );
        let (_dir2, journal) = filled(10).await;
        journal.rewrite_batch_of(2, |rs| rs.swap(1, 2));
        // Stored as 1 3 2 4 …: one problem, the reordering, and no record beyond the journal.
        let report = journal.verify().unwrap();
        assert_eq!(
            report.problems,
            vec![ChainProblem::OutOfOrder {
                first: 2,
                last: 2,
                after: 3
            }]
        );
        assert_eq!(
            (report.first, report.last, report.checked),
            (Some(1), Some(10), 10)
        );
        // A whole run moved behind later records is one problem too: 1 2 3 7 8 9 4 5 6 10.
        let (_dir4, journal) = filled(10).await;
        let records = |seq| -> Vec<Vec<u8>> {
            let batch = journal.batch_of(seq).unwrap().unwrap();
            batch
                .records()
                .unwrap()
                .iter()
                .map(|b| b.to_vec())
                .collect()
        };
        let (four, seven) = (records(4), records(7));
        journal.rewrite_batch_of(4, |rs| *rs = seven);
        journal.rewrite_batch_of(7, |rs| *rs = four);
        let report = journal.verify().unwrap();
        assert_eq!(
            report.problems,
            vec![ChainProblem::OutOfOrder {
                first: 4,
                last: 6,
                after: 9
            }]
        );
        assert_eq!((report.first, report.last), (Some(1), Some(10)));
        // Dropping the last record shows as a gap before the stored head.
        let (_dir3, journal) = filled(10).await;
        journal.rewrite_batch_of(10, |rs| {
            rs.pop();
        });
        assert_eq!(
            journal.verify().unwrap().problems,
            vec![ChainProblem::Gap { after: 9, next: 11 }]
        );
    }

    #[tokio::test]
    async fn acknowledges_in_a_batch_move_the_watermark_as_one_by_one_would() {
        let (_a_dir, one_by_one) = filled(20).await;
        let (_b_dir, batched) = filled(20).await;
        // In order, out of order, a duplicate, one behind a parked record.
        batched.park(12, "test").unwrap();
        one_by_one.park(12, "test").unwrap();
        let acks = [1, 2, 5, 3, 3, 7, 4, 9, 6, 11, 13];
        let mut cleared = 0;
        for s in acks {
            cleared += u64::from(one_by_one.mark_forwarded(s).unwrap());
        }
        assert_eq!(batched.mark_forwarded_many(&acks).unwrap(), cleared);
        assert_eq!(batched.forwarded_watermark(), 7);
        assert_eq!(one_by_one.forwarded_watermark(), 7);
        assert_eq!(
            batched.mark_forwarded_many(&[8, 10, 9]).unwrap(),
            2,
            "9 was in"
        );
        assert_eq!(batched.forwarded_watermark(), 13, "over the parked 12");
        assert_eq!(batched.stats().unwrap().backlog, 7);
        assert_eq!(batched.mark_forwarded_many(&[]).unwrap(), 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Spill files (some with a torn last line), a restore that a crash interrupted
        /// after storing some of the first files' records, and records queued meanwhile:
        /// the writer stores every spilled record exactly once, in order, before the queued
        /// ones, across its 256-record steps; the files and the note go.
        #[test]
        fn spilled_records_are_stored_exactly_once_whatever_the_interrupted_restore(
            files in proptest::collection::vec((0u32..300, proptest::bool::ANY), 1..4),
            prefix_pick in 0usize..4,
            stored_pick in 0u32..1000,
            queued in 0u32..5,
        ) {
            use std::io::Write as _;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("journal");
            let spill = crate::journal::spill_dir(&store);
            std::fs::create_dir_all(&spill).unwrap();
            let mut all = Vec::new();
            let mut names = Vec::new();
            let mut counts = Vec::new();
            let mut next = 1u32;
            for (i, (n, torn)) in files.iter().enumerate() {
                let name = format!("{}-starting.jsonl", 1000 + i);
                let mut f = std::fs::File::create(spill.join(&name)).unwrap();
                for _ in 0..*n {
                    let r = Record::from(record(next, 1000));
                    writeln!(f, "{}", serde_json::to_string(&r).unwrap()).unwrap();
                    all.push(next);
                    next += 1;
                }
                if *torn {
                    f.write_all(b"{\"parcel\":").unwrap();
                }
                names.push(name);
                counts.push(*n);
            }
            let journal = Journal::open(&store).unwrap();
            let prefix = prefix_pick % (files.len() + 1);
            let in_prefix: u32 = counts[..prefix].iter().sum();
            let stored = if prefix == 0 { 0 } else { stored_pick % (in_prefix + 1) };
            if prefix > 0 {
                // What the interrupted restore stored, and noted.
                journal
                    .meta
                    .insert(
                        super::super::META_SPILL_RESTORED,
                        serde_json::to_vec(&crate::journal::SpillProgress {
                            files: names[..prefix].to_vec(),
                            stored: stored as u64,
                        })
                        .unwrap(),
                    )
                    .unwrap();
            }
            let metrics = Arc::new(Metrics::default());
            let (sink, writer, _) =
                record_sink(journal.clone(), Duration::from_millis(1), metrics).unwrap();
            for q in 0..queued {
                sink.push(record(10_000 + q, 1000));
            }
            let writer = writer.with_hold(100_000, crate::alarm::Alarms::new("gw"), spill.clone());
            drop(sink);
            rt.block_on(writer.run());
            let got = stored_parcels(&journal);
            let mut want: Vec<u32> = all[stored as usize..].to_vec();
            want.extend((0..queued).map(|q| 10_000 + q));
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(crate::journal::read_spill(&spill).0.is_empty());
            proptest::prop_assert_eq!(journal.spill_progress(), None);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Whatever the order of PUBACKs (duplicates, gaps, parked records between), clearing
        /// them in batches leaves the outbox exactly as clearing them one by one.
        #[test]
        fn batched_acknowledges_agree_with_one_by_one(
            parked in proptest::collection::btree_set(1u64..=24, 0..4),
            batches in proptest::collection::vec(proptest::collection::vec(1u64..=26, 0..12), 1..6),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (_a, one_by_one) = rt.block_on(filled(24));
            let (_b, batched) = rt.block_on(filled(24));
            for &p in &parked {
                one_by_one.park(p, "test").unwrap();
                batched.park(p, "test").unwrap();
            }
            for batch in &batches {
                let mut cleared = 0;
                for &s in batch {
                    cleared += u64::from(one_by_one.mark_forwarded(s).unwrap());
                }
                proptest::prop_assert_eq!(batched.mark_forwarded_many(batch).unwrap(), cleared);
                proptest::prop_assert_eq!(batched.forwarded_watermark(), one_by_one.forwarded_watermark());
                proptest::prop_assert_eq!(batched.stats().unwrap().backlog, one_by_one.stats().unwrap().backlog);
                proptest::prop_assert_eq!(
                    batched.outbox_from(0, u64::MAX, 100).unwrap(),
                    one_by_one.outbox_from(0, u64::MAX, 100).unwrap()
                );
            }
        }
    }

    #[tokio::test]
    async fn purge_takes_only_old_forwarded_records_and_keeps_the_chain_verifiable() {
        let (_dir, journal) = filled(20).await;
        assert_eq!(
            journal.batch_of(4).unwrap().unwrap().first,
            4,
            "batches of 3"
        );
        for seq in 1..=8 {
            assert!(journal.mark_forwarded(seq).unwrap());
        }
        journal.mark_forwarded(10).unwrap();
        assert_eq!(journal.forwarded_watermark(), 8);
        // Batches [1..3] and [4..6] are wholly forwarded; [7..9] holds unforwarded 9.
        let removed = journal.purge_forwarded(u64::MAX, 100).unwrap();
        assert_eq!(removed, 6);
        let stats = journal.stats().unwrap();
        assert_eq!(stats.first_seq, Some(7));
        assert_eq!(stats.backlog, 11);
        assert_eq!(stats.oldest_unforwarded, Some((9, 9000)));
        let report = journal.verify().unwrap();
        assert!(report.ok(), "{report:?}");
        // The time bound holds too: a batch goes only when its newest record is older.
        journal.mark_forwarded(9).unwrap();
        assert_eq!(
            journal.forwarded_watermark(),
            10,
            "the out-of-order ack of 10 is covered"
        );
        assert_eq!(journal.purge_forwarded(9000, 100).unwrap(), 0);
        assert_eq!(journal.purge_forwarded(9001, 100).unwrap(), 3);
        assert!(journal.verify().unwrap().ok());
        assert_eq!(journal.chain_head().unwrap().0, 20);
        assert!(journal.live_bytes() > 0);
    }

    #[tokio::test]
    async fn parked_records_leave_the_outbox_and_replay_brings_them_back() {
        let (_dir, journal) = filled(5).await;
        journal.park(3, "too big").unwrap();
        assert_eq!(journal.parked().unwrap(), vec![(3, "too big".to_string())]);
        let seqs: Vec<u64> = journal
            .outbox_from(0, u64::MAX, 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![1, 2, 4, 5]);
        // A parked record is never purged, even when everything around it is forwarded.
        for s in [1, 2, 4, 5] {
            journal.mark_forwarded(s).unwrap();
        }
        assert_eq!(journal.forwarded_watermark(), 5);
        assert_eq!(journal.backlog_len(), 0);
        assert_eq!(
            journal.purge_forwarded(u64::MAX, 10).unwrap(),
            0,
            "batch [1..3] holds 3"
        );
        // Replaying 2..=4 sends exactly those again, 3 included, and not 5.
        assert_eq!(journal.replay(2, 4).unwrap(), 3);
        assert!(journal.parked().unwrap().is_empty());
        let seqs: Vec<u64> = journal
            .outbox_from(0, u64::MAX, 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(journal.stats().unwrap().backlog, 3);
        for s in [3, 2, 4] {
            journal.mark_forwarded(s).unwrap();
        }
        assert_eq!(journal.forwarded_watermark(), 5);
    }

    #[tokio::test]
    async fn export_filters_by_time_and_writes_csv_and_jsonl() {
        let (_dir, journal) = filled(10).await;
        let mut out = Vec::new();
        let n = journal
            .export(3000, 6000, ExportFormat::Jsonl, &mut out)
            .unwrap();
        assert_eq!(n, 3);
        let lines: Vec<Record> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.iter().map(|r| r.seq()).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let mut out = Vec::new();
        journal.mark_forwarded(1).unwrap();
        journal
            .export(0, 2000, ExportFormat::Csv, &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut rows = text.lines();
        assert!(rows.next().unwrap().starts_with("seq,msg_id"));
        let row = rows.next().unwrap();
        assert!(row.starts_with("1,gw-1,parcel,L1,"), "{row}");
        assert!(
            row.contains("\"no declaration, for \"\"test\"\", ok\""),
            "{row}"
        );
        assert!(row.ends_with(",acked,true"), "{row}");
    }
}
