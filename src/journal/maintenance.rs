//! Journal upkeep and inspection: statistics, chain verification, export, replay, parking
//! of records the broker refuses, and purging of forwarded records.
//!
//! Purging only ever removes whole batches whose records are all at or below the forwarded
//! watermark and none of them parked, oldest first, so the remaining records stay one
//! contiguous, verifiable chain: the last purged record's sequence and hash are kept as the
//! chain's `anchor`.

use std::io::Write;

use sled::Transactional;

use bondline_devices::contract::Record;

use super::{
    chain_hash, decode_link, key_seq, seq_key, Journal, JournalError, GENESIS_HASH, META_ANCHOR,
    META_FORWARDED, META_HEAD, META_LIVE,
};

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

/// One thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainProblem {
    /// Records are missing between `after` and `next`.
    Gap { after: u64, next: u64 },
    /// The record's `prev_hash` does not match its predecessor: the predecessor (or this
    /// record) was edited, or records were reordered.
    Broken { seq: u64 },
    /// Records `first..=last` are stored after record `after`, a later one: reordered. Their
    /// place in the sequence is not reported as a gap too, and the records after them are
    /// checked against the chain as usual, so one reordering is one problem.
    OutOfOrder { first: u64, last: u64, after: u64 },
    /// A record whose `seq` was already seen (copied).
    Duplicate { seq: u64 },
    /// The record (or its batch) does not parse.
    Unreadable { seq: u64, reason: String },
    /// The last record does not hash to the stored chain head: it was edited or dropped.
    Head { seq: u64 },
    /// The stored chain head's tag does not verify under the integrity key: the head was
    /// recomputed without the key (a consistent rewrite of the chain), or the key is another
    /// gateway's.
    HeadTag { seq: u64 },
    /// The stored anchor's tag does not verify under the integrity key: the chain's start
    /// was moved.
    AnchorTag { seq: u64 },
    /// The head or anchor (`link`) of a keyed store carries no tag.
    Unkeyed { link: String, seq: u64 },
}

/// Result of [`Journal::verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Whether the head and anchor tags were checked (an integrity key was at hand).
    pub keyed: bool,
    pub checked: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub problems: Vec<ChainProblem>,
    /// Stored platform entries that fail their integrity check (with a key only; filled by
    /// `bondline journal verify`).
    pub refused_state: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.refused_state.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON record per line, byte for byte as stored and sent.
    Jsonl,
    /// One row per record with the main fields.
    Csv,
}

impl Journal {
    /// Visits every stored record in order with its sequence (by position) and bytes.
    /// Calls `f` with every stored record, in sequence order, until it returns false.
    pub fn each_record(&self, mut f: impl FnMut(&Record) -> bool) -> Result<(), ExportError> {
        self.for_each_record(|seq, bytes| {
            let r: Record = serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
                seq,
                reason: e.to_string(),
            })?;
            Ok(f(&r))
        })
    }

    /// Whether retention or a short disk has removed records from this store.
    pub fn has_purged(&self) -> Result<bool, JournalError> {
        Ok(self.meta.get(META_ANCHOR)?.is_some())
    }

    fn for_each_record(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, ExportError>,
    ) -> Result<(), ExportError> {
        for batch in self.batches.iter() {
            let batch = super::Batch::from_entry(batch)?;
            for (i, bytes) in batch.records()?.into_iter().enumerate() {
                if !f(batch.first + i as u64, bytes)? {
                    return Ok(());
                }
            }
        }
        Ok(())
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

    /// Walks the whole chain: contiguous sequence, each `prev_hash` equal to the SHA-256 of
    /// the previous record's bytes, the first one matching the anchor (or genesis), the last
    /// one matching the stored head.
    ///
    /// With an integrity key set, the stored head's and anchor's tags are checked too
    /// (see [`super::chain_key`]): a consistent rewrite fails there.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        let mut report = self.walk_chain(None)?;
        report.problems.extend(self.check_chain_tags(false)?);
        Ok(report)
    }

    /// Walks the chain up to the head read before, while the writer may append: the records
    /// after that head are not looked at, and a walk that raced a purge of old records (the
    /// anchor moved under it) is walked again. For the check at start, off the decision path.
    pub fn verify_running(&self) -> Result<VerifyReport, JournalError> {
        let mut tries = 0;
        loop {
            let anchor = self.meta.get(META_ANCHOR)?;
            let head = self.chain_head()?;
            let report = self.walk_chain(Some(head))?;
            tries += 1;
            if report.ok() || tries == 3 || self.meta.get(META_ANCHOR)? == anchor {
                return Ok(report);
            }
        }
    }

    /// The walk of [`Journal::verify`]; `head`: check up to this head instead of the stored
    /// one.
    fn walk_chain(&self, head: Option<(u64, [u8; 32])>) -> Result<VerifyReport, JournalError> {
        let anchor = match self.meta.get(META_ANCHOR)? {
            Some(v) => decode_link(&v),
            None => None,
        };
        let (mut expected, mut prev_hash) = match anchor {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS_HASH),
        };
        let mut report = VerifyReport {
            keyed: self.integrity_key.get().is_some(),
            checked: 0,
            refused_state: Vec::new(),
            first: None,
            last: None,
            problems: Vec::new(),
        };
        // Sequence numbers skipped so far (inclusive ranges): a gap, unless a reordered
        // record fills it later.
        let mut skipped: Vec<(u64, u64)> = Vec::new();
        let limit = head.map(|(seq, _)| seq);
        'walk: for batch in self.batches.iter() {
            let batch = super::Batch::from_entry(batch)?;
            let Ok(records) = batch.records() else {
                report.problems.push(ChainProblem::Unreadable {
                    seq: batch.first,
                    reason: "batch framing is broken".into(),
                });
                continue;
            };
            for bytes in records {
                report.checked += 1;
                let seq = match serde_json::from_slice::<Record>(bytes) {
                    Err(e) => {
                        report.problems.push(ChainProblem::Unreadable {
                            seq: expected,
                            reason: e.to_string(),
                        });
                        expected
                    }
                    Ok(r) => r.seq(),
                };
                if limit.is_some_and(|l| seq > l) {
                    report.checked -= 1;
                    break 'walk;
                }
                if seq < expected {
                    // Behind the chain: a reordered record (it fills a skipped place) or a
                    // copy. The chain goes on from the record before it.
                    match skipped
                        .iter()
                        .position(|&(lo, hi)| (lo..=hi).contains(&seq))
                    {
                        Some(i) => {
                            let (lo, hi) = skipped.remove(i);
                            if seq > lo {
                                skipped.push((lo, seq - 1));
                            }
                            if seq < hi {
                                skipped.push((seq + 1, hi));
                            }
                            let after = expected - 1;
                            match report.problems.last_mut() {
                                Some(ChainProblem::OutOfOrder { last, after: a, .. })
                                    if *last + 1 == seq && *a == after =>
                                {
                                    *last = seq
                                }
                                _ => report.problems.push(ChainProblem::OutOfOrder {
                                    first: seq,
                                    last: seq,
                                    after,
                                }),
                            }
                        }
                        None => report.problems.push(ChainProblem::Duplicate { seq }),
                    }
                    report.first = Some(report.first.map_or(seq, |f| f.min(seq)));
                    continue;
                }
                if seq > expected {
                    // Its predecessor is not here (yet): its `prev_hash` cannot be checked.
                    skipped.push((expected, seq - 1));
                } else if let Ok(r) = serde_json::from_slice::<Record>(bytes) {
                    if r.prev_hash() != hex::encode(prev_hash) {
                        report.problems.push(ChainProblem::Broken { seq });
                    }
                }
                report.first.get_or_insert(seq);
                report.last = Some(seq);
                prev_hash = chain_hash(bytes);
                expected = seq + 1;
            }
        }
        skipped.sort_unstable();
        report
            .problems
            .extend(skipped.into_iter().map(|(lo, hi)| ChainProblem::Gap {
                after: lo - 1,
                next: hi + 1,
            }));
        let stored_head = match head {
            Some(h) => Some(h),
            None => self.meta.get(META_HEAD)?.and_then(|v| decode_link(&v)),
        };
        if let Some((head_seq, head_hash)) = stored_head.filter(|&(seq, _)| seq > 0) {
            let last = expected - 1;
            if last < head_seq {
                report.problems.push(ChainProblem::Gap {
                    after: last,
                    next: head_seq + 1,
                });
            } else if report.checked > 0 && prev_hash != head_hash {
                report.problems.push(ChainProblem::Head { seq: last });
            }
        }
        Ok(report)
    }

    /// Writes records of `[from_ms, to_ms)` (scan time for parcel records, event time for
    /// the others) to `out`. Returns how many.
    pub fn export(
        &self,
        from_ms: u64,
        to_ms: u64,
        format: ExportFormat,
        out: &mut dyn Write,
    ) -> Result<u64, ExportError> {
        let mut n = 0;
        if format == ExportFormat::Csv {
            writeln!(
                out,
                "seq,msg_id,kind,line,parcel,waybill,lane,lane_role,rule,reason,instruction_id,at_ms,divert_status,forwarded"
            )?;
        }
        let w = self.forwarded_watermark();
        self.for_each_record(|seq, bytes| {
            let r: Record = serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
                seq,
                reason: e.to_string(),
            })?;
            if r.at_ms() < from_ms || r.at_ms() >= to_ms {
                return Ok(true);
            }
            n += 1;
            match format {
                ExportFormat::Jsonl => {
                    out.write_all(bytes)?;
                    out.write_all(b"\n")?;
                }
                ExportFormat::Csv => {
                    let forwarded = (seq <= w && !self.parked.contains_key(seq_key(seq))?)
                        || self.acked.contains_key(seq_key(seq))?;
                    let row = csv_row(&r, forwarded);
                    writeln!(out, "{}", row.join(","))?;
                }
            }
            Ok(true)
        })?;
        Ok(n)
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

/// Errors of [`Journal::export`]: the store or the output.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sled::Error> for ExportError {
    fn from(e: sled::Error) -> Self {
        ExportError::Journal(JournalError::Store(e))
    }
}

/// One CSV row; columns that do not apply to a record kind stay empty.
fn csv_row(r: &Record, forwarded: bool) -> Vec<String> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let (kind, parcel, lane, role, rule, reason, instruction, status) = match r {
        Record::Parcel(p) => (
            "parcel",
            Some(p.parcel.to_string()),
            Some(p.lane.to_string()),
            Some(p.lane_role.as_str().to_string()),
            p.rule.clone(),
            p.reason.clone(),
            p.instruction_id.clone(),
            Some(bondline_devices::contract::wire_name(&p.divert.status)),
        ),
        Record::Disposition(d) => (
            "disposition",
            Some(d.parcel.to_string()),
            Some(d.lane.to_string()),
            d.lane_role.map(|r| r.as_str().to_string()),
            bondline_devices::contract::wire_name(&d.disposition),
            d.commanded_lane
                .map(|l| format!("commanded lane {l}"))
                .unwrap_or_default(),
            None,
            None,
        ),
        Record::Alert(a) => (
            "alert",
            a.parcel.map(|p| p.to_string()),
            None,
            None,
            bondline_devices::contract::wire_name(&a.alert),
            a.detail.clone(),
            None,
            None,
        ),
        Record::Xray(x) => (
            "xray",
            x.parcel.map(|p| p.to_string()),
            None,
            None,
            x.result.map_or("none", |r| r.as_str()).to_string(),
            format!(
                "{} scan {}: {}",
                x.device,
                x.scan_id.map_or("-".to_string(), |s| s.to_string()),
                bondline_devices::contract::wire_name(&x.join)
            ),
            None,
            None,
        ),
        Record::Image(i) => (
            "image",
            i.parcel.map(|p| p.to_string()),
            None,
            None,
            format!("{} scan {} view {}", i.device, i.scan_id, i.view),
            i.error.clone().unwrap_or_else(|| i.sha256.clone()),
            None,
            None,
        ),
        Record::Snapshot(s) => (
            "snapshot",
            Some(s.parcel.to_string()),
            s.lane.map(|l| l.to_string()),
            None,
            format!(
                "{} at {}",
                s.camera,
                bondline_devices::contract::wire_name(&s.point)
            ),
            s.error
                .clone()
                .or_else(|| s.sha256.clone())
                .unwrap_or_default(),
            None,
            None,
        ),
        Record::ImageChunk(c) => (
            "image_chunk",
            None,
            None,
            None,
            format!("chunk {}/{}", c.index + 1, c.count),
            c.sha256.clone(),
            None,
            None,
        ),
        Record::Report(m) => (
            "report",
            None,
            None,
            None,
            "monthly_report".to_string(),
            format!(
                "{}: {} parcels scanned{}",
                m.report.month,
                m.report.total.scanned,
                if m.report.complete {
                    ""
                } else {
                    " (incomplete)"
                }
            ),
            None,
            None,
        ),
    };
    vec![
        r.seq().to_string(),
        csv_field(r.msg_id()),
        kind.to_string(),
        csv_field(r.line()),
        opt(parcel),
        csv_field(r.waybill().unwrap_or("")),
        opt(lane),
        opt(role),
        csv_field(&rule),
        csv_field(&reason),
        csv_field(&opt(instruction)),
        r.at_ms().to_string(),
        opt(status),
        forwarded.to_string(),
    ]
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
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
    use crate::journal::record_sink;
    use crate::metrics::Metrics;

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
    }

    #[tokio::test]
    async fn an_edited_record_breaks_the_chain_at_its_successor() {
        let (_dir, journal) = filled(10).await;
        edit(&journal, 4, |r| r.lane_role = LaneRole::Release);
        let report = journal.verify().unwrap();
        assert_eq!(report.problems, vec![ChainProblem::Broken { seq: 5 }]);
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
