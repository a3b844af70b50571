//! Journal upkeep and inspection: statistics, chain verification, export, replay, parking
//! of records the broker refuses, and purging of forwarded records.
//!
//! Purging only ever removes records that are no longer in the outbox (the platform has
//! acknowledged them) and only from the front of the sequence, so the remaining records stay
//! one contiguous, verifiable chain: the last purged record's sequence and hash are kept as
//! the chain's `anchor`.

use std::io::Write;

use bondline_devices::contract::ParcelRecord;

use super::{
    decode_link, encode_link, key_seq, seq_key, sha256, Journal, JournalError, GENESIS_HASH,
    META_ANCHOR, META_HEAD,
};

/// Counts for `bondline journal stats` and the staff view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalStats {
    pub records: usize,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    /// Records waiting for a PUBACK.
    pub backlog: usize,
    /// The oldest record waiting for a PUBACK: its sequence and scan time.
    pub oldest_unforwarded: Option<(u64, u64)>,
    /// Records the broker refused, kept aside until replayed.
    pub parked: usize,
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
    /// The record's own `seq` field differs from its position.
    Misplaced { key: u64, inside: u64 },
    /// The record does not parse.
    Unreadable { seq: u64, reason: String },
    /// The last record does not hash to the stored chain head: it was edited or dropped.
    Head { seq: u64 },
}

/// Result of [`Journal::verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub problems: Vec<ChainProblem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
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
    pub fn stats(&self) -> Result<JournalStats, JournalError> {
        let first_seq = match self.records.first()? {
            Some((k, _)) => key_seq(&k),
            None => None,
        };
        let (last_seq, _) = self.chain_head()?;
        let oldest_unforwarded = match self.outbox.first()? {
            Some((k, _)) => {
                let seq = key_seq(&k).unwrap_or(0);
                let at = self.record(seq)?.map(|r| r.scanned_at_ms).unwrap_or(0);
                Some((seq, at))
            }
            None => None,
        };
        Ok(JournalStats {
            records: self.records.len(),
            first_seq,
            last_seq,
            backlog: self.outbox.len(),
            oldest_unforwarded,
            parked: self.parked.len(),
            size_on_disk: self.db.size_on_disk()?,
        })
    }

    /// Walks the whole chain: contiguous sequence, each `prev_hash` equal to the SHA-256 of
    /// the previous record's bytes, the first one matching the anchor (or genesis), the last
    /// one matching the stored head.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        let anchor = match self.meta.get(META_ANCHOR)? {
            Some(v) => decode_link(&v),
            None => None,
        };
        let mut prev: Option<(u64, [u8; 32])> = anchor.or(Some((0, GENESIS_HASH)));
        let mut report = VerifyReport {
            checked: 0,
            first: None,
            last: None,
            problems: Vec::new(),
        };
        for entry in self.records.iter() {
            let (k, v) = entry?;
            let Some(seq) = key_seq(&k) else {
                report.problems.push(ChainProblem::Unreadable {
                    seq: 0,
                    reason: "key is not 8 bytes".into(),
                });
                continue;
            };
            report.checked += 1;
            report.first.get_or_insert(seq);
            report.last = Some(seq);
            match serde_json::from_slice::<ParcelRecord>(&v) {
                Err(e) => report.problems.push(ChainProblem::Unreadable {
                    seq,
                    reason: e.to_string(),
                }),
                Ok(r) => {
                    if r.seq != seq {
                        report.problems.push(ChainProblem::Misplaced {
                            key: seq,
                            inside: r.seq,
                        });
                    }
                    if let Some((pseq, phash)) = prev {
                        if seq != pseq + 1 {
                            report.problems.push(ChainProblem::Gap {
                                after: pseq,
                                next: seq,
                            });
                        } else if r.prev_hash != hex::encode(phash) {
                            report.problems.push(ChainProblem::Broken { seq });
                        }
                    }
                }
            }
            prev = Some((seq, sha256(&v)));
        }
        if let Some(head) = self.meta.get(META_HEAD)?.and_then(|v| decode_link(&v)) {
            match prev {
                Some(last) if last == head => {}
                Some((seq, _)) if seq < head.0 => report.problems.push(ChainProblem::Gap {
                    after: seq,
                    next: head.0 + 1,
                }),
                Some((seq, _)) => report.problems.push(ChainProblem::Head { seq }),
                None => {}
            }
        }
        Ok(report)
    }

    /// Writes records scanned in `[from_ms, to_ms)` to `out`. Returns how many.
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
                "seq,msg_id,line,parcel,read,waybill,lane,lane_role,rule,reason,instruction_id,scanned_at_ms,decided_at_ms,divert_status,forwarded"
            )?;
        }
        for entry in self.records.iter() {
            let (k, v) = entry?;
            let seq = key_seq(&k).unwrap_or(0);
            let r: ParcelRecord =
                serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt {
                    seq,
                    reason: e.to_string(),
                })?;
            if r.scanned_at_ms < from_ms || r.scanned_at_ms >= to_ms {
                continue;
            }
            n += 1;
            match format {
                ExportFormat::Jsonl => {
                    out.write_all(&v)?;
                    out.write_all(b"\n")?;
                }
                ExportFormat::Csv => {
                    let forwarded = !self.outbox.contains_key(&k)?;
                    writeln!(
                        out,
                        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                        r.seq,
                        csv_field(&r.msg_id),
                        csv_field(&r.line),
                        r.parcel,
                        json_word(&r.read),
                        csv_field(r.waybill.as_deref().unwrap_or("")),
                        r.lane,
                        r.lane_role.as_str(),
                        csv_field(&r.rule),
                        csv_field(&r.reason),
                        csv_field(r.instruction_id.as_deref().unwrap_or("")),
                        r.scanned_at_ms,
                        r.decided_at_ms,
                        json_word(&r.divert.status),
                        forwarded
                    )?;
                }
            }
        }
        Ok(n)
    }

    /// Puts the stored records `from..=to` back into the outbox (and out of the parked set),
    /// so the uplink sends them again. Returns how many were queued.
    pub fn replay(&self, from: u64, to: u64) -> Result<u64, JournalError> {
        let mut n = 0;
        for entry in self.records.range(seq_key(from)..=seq_key(to)).keys() {
            let k = entry?;
            self.outbox.insert(&k, &[][..])?;
            self.parked.remove(&k)?;
            n += 1;
        }
        self.db.flush()?;
        Ok(n)
    }

    /// Takes a record out of the outbox and keeps it aside with the reason the broker would
    /// not take it. The record itself stays in the journal.
    pub fn park(&self, seq: u64, reason: &str) -> Result<(), JournalError> {
        let k = seq_key(seq);
        self.parked.insert(k, reason.as_bytes())?;
        self.outbox.remove(k)?;
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

    /// Removes up to `max` forwarded records from the front of the journal whose scan time is
    /// before `before_ms`, stopping at the first record still waiting for its PUBACK (or
    /// parked): unforwarded records are never purged. Returns how many were removed.
    pub fn purge_forwarded(&self, before_ms: u64, max: usize) -> Result<usize, JournalError> {
        let mut removed = 0;
        let mut anchor = None;
        for entry in self.records.iter().take(max) {
            let (k, v) = entry?;
            if self.outbox.contains_key(&k)? || self.parked.contains_key(&k)? {
                break;
            }
            let at = serde_json::from_slice::<ParcelRecord>(&v)
                .map(|r| r.scanned_at_ms)
                .unwrap_or(0);
            if at >= before_ms {
                break;
            }
            let Some(seq) = key_seq(&k) else { break };
            anchor = Some(encode_link(seq, &sha256(&v)));
            self.records.remove(&k)?;
            removed += 1;
        }
        if let Some(a) = anchor {
            self.meta.insert(META_ANCHOR, &a[..])?;
        }
        Ok(removed)
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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The snake_case word serde writes for a unit enum variant.
fn json_word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
            },
        }
    }

    /// A journal in a temp dir holding `n` records scanned at 1000, 2000, ...
    pub(crate) async fn filled(n: u32) -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (sink, writer, _) = record_sink(
            journal.clone(),
            Duration::from_millis(1),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        for i in 1..=n {
            sink.push(record(i, i as u64 * 1000));
        }
        drop(sink);
        writer.run().await;
        (dir, journal)
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
        let mut r = journal.record(4).unwrap().unwrap();
        r.lane_role = LaneRole::Release;
        journal
            .records
            .insert(seq_key(4), serde_json::to_vec(&r).unwrap())
            .unwrap();
        let report = journal.verify().unwrap();
        assert_eq!(report.problems, vec![ChainProblem::Broken { seq: 5 }]);
        // Editing the last record is caught by the stored head.
        let mut r = journal.record(10).unwrap().unwrap();
        r.reason = "edited".into();
        journal
            .records
            .insert(seq_key(10), serde_json::to_vec(&r).unwrap())
            .unwrap();
        assert!(journal
            .verify()
            .unwrap()
            .problems
            .contains(&ChainProblem::Head { seq: 10 }));
    }

    #[tokio::test]
    async fn dropped_and_reordered_records_are_found() {
        let (_dir, journal) = filled(10).await;
        journal.records.remove(seq_key(6)).unwrap();
        assert_eq!(
            journal.verify().unwrap().problems,
            vec![ChainProblem::Gap { after: 5, next: 7 }]
        );
        let (_dir2, journal) = filled(10).await;
        let a = journal.records.get(seq_key(2)).unwrap().unwrap();
        let b = journal.records.get(seq_key(3)).unwrap().unwrap();
        journal.records.insert(seq_key(2), b).unwrap();
        journal.records.insert(seq_key(3), a).unwrap();
        let problems = journal.verify().unwrap().problems;
        assert!(problems.contains(&ChainProblem::Misplaced { key: 2, inside: 3 }));
        assert!(problems
            .iter()
            .any(|p| matches!(p, ChainProblem::Broken { .. })));
        // Dropping the last record shows as a gap before the stored head.
        let (_dir3, journal) = filled(10).await;
        journal.records.remove(seq_key(10)).unwrap();
        assert_eq!(
            journal.verify().unwrap().problems,
            vec![ChainProblem::Gap { after: 9, next: 11 }]
        );
    }

    #[tokio::test]
    async fn purge_takes_only_old_forwarded_records_and_keeps_the_chain_verifiable() {
        let (_dir, journal) = filled(20).await;
        for seq in 1..=8 {
            journal.mark_forwarded(seq).unwrap();
        }
        journal.mark_forwarded(10).unwrap();
        // Records 1..=8 are forwarded; 9 is not, so purging stops there even though 10 is.
        let removed = journal.purge_forwarded(u64::MAX, 100).unwrap();
        assert_eq!(removed, 8);
        let stats = journal.stats().unwrap();
        assert_eq!(stats.first_seq, Some(9));
        assert_eq!(stats.backlog, 11);
        assert_eq!(stats.oldest_unforwarded, Some((9, 9000)));
        let report = journal.verify().unwrap();
        assert!(report.ok(), "{report:?}");
        // The time bound holds too: nothing scanned at or after 9000 goes.
        journal.mark_forwarded(9).unwrap();
        assert_eq!(journal.purge_forwarded(9000, 100).unwrap(), 0);
        assert_eq!(journal.purge_forwarded(10_001, 100).unwrap(), 2);
        assert!(journal.verify().unwrap().ok());
        // New records after a purge continue the chain.
        assert_eq!(journal.chain_head().unwrap().0, 20);
    }

    #[tokio::test]
    async fn parked_records_leave_the_outbox_and_replay_brings_them_back() {
        let (_dir, journal) = filled(5).await;
        journal.park(3, "too big").unwrap();
        assert_eq!(journal.parked().unwrap(), vec![(3, "too big".to_string())]);
        let seqs: Vec<u64> = journal
            .outbox_from(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![1, 2, 4, 5]);
        // A parked record is never purged, even when everything around it is forwarded.
        for s in [1, 2, 4, 5] {
            journal.mark_forwarded(s).unwrap();
        }
        assert_eq!(journal.purge_forwarded(u64::MAX, 10).unwrap(), 2);
        assert_eq!(journal.replay(1, 5).unwrap(), 3);
        assert!(journal.parked().unwrap().is_empty());
        assert_eq!(journal.stats().unwrap().backlog, 3);
    }

    #[tokio::test]
    async fn export_filters_by_time_and_writes_csv_and_jsonl() {
        let (_dir, journal) = filled(10).await;
        let mut out = Vec::new();
        let n = journal
            .export(3000, 6000, ExportFormat::Jsonl, &mut out)
            .unwrap();
        assert_eq!(n, 3);
        let lines: Vec<ParcelRecord> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.iter().map(|r| r.seq).collect::<Vec<_>>(),
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
        assert!(row.starts_with("1,gw-1,L1,"), "{row}");
        assert!(
            row.contains("\"no declaration, for \"\"test\"\", ok\""),
            "{row}"
        );
        assert!(row.ends_with(",acked,true"), "{row}");
    }
}
