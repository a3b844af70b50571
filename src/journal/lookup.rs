//! Lookups for people: every record of one waybill, the records of a time range, and where
//! each record stands on its way to the platform.
//!
//! The `by_waybill` tree indexes records by waybill. Key: the waybill's bytes, a 0x00 byte,
//! and the record's `seq` (big-endian `u64`); the value is empty. Entries are written *behind*
//! the journal writer, by [`Journal::index_pending`] (a background task of the daemon), up to
//! the meta key `by_waybill_upto`: writing them in the commit transaction cut the append rate
//! by three quarters, and the append path is what absorbs bursts and outages. A lookup reads
//! the index and scans the few batches above `by_waybill_upto`, so it never misses a stored
//! record. Entries are removed in the same transaction as the batch that retention purges;
//! an entry written for a batch purged at the same moment names a record that is gone and is
//! skipped. A crash between a batch's entries and the mark only means they are written again.
//! A store from before the index is indexed from the start the same way.
//!
//! Records without a waybill (no-reads, line-wide alerts) are not in the index; they are
//! found by time.

use std::borrow::Cow;

use bondline_devices::contract::Record;
use serde::Deserialize;

use super::{key_seq, seq_key, Journal, JournalError};

/// How far (ms) a record's own time may lie before the time of records committed before it.
/// Parcel records are committed after their divert outcome and dispositions after the parcel
/// reaches its gate, so a record's time trails its commit by seconds; an hour leaves room for
/// a long PLC outage. Records stored later than that after they happened (spilled at a full
/// disk and stored at the next start) can be missed by [`Journal::records_between`]; the
/// waybill lookup finds them.
pub const TIME_SLACK_MS: u64 = 3_600_000;

/// Where a stored record stands on its way to the platform.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Forwarding {
    /// The broker acknowledged it (PUBACK).
    Forwarded,
    /// Waiting in the outbox for its PUBACK.
    Outbox,
    /// Kept aside: the broker will not take it (`reason`); it waits for a replay.
    Parked { reason: String },
}

/// Just the waybill of a stored record; everything else in the bytes is skipped.
#[derive(Deserialize)]
struct WaybillOnly<'a> {
    #[serde(borrow, default)]
    waybill: Option<Cow<'a, str>>,
}

const WAYBILL_KEY: &[u8] = b"\"waybill\":";

/// The waybill of a stored record, read without parsing the whole record: the index is
/// written in the commit path and at purge, and a full parse of every record there halved
/// the journal's append rate. Every record kind serializes `waybill` as a top-level field
/// before any nested object, and a quote inside a JSON string is always escaped, so the
/// first `"waybill":` is that field; only its value is parsed. Records without the key fall
/// back to a full parse. (A lookup also checks each record's waybill after reading it.)
fn waybill_of(bytes: &[u8]) -> Option<Cow<'_, str>> {
    let Some(at) = bytes
        .windows(WAYBILL_KEY.len())
        .position(|w| w == WAYBILL_KEY)
    else {
        let w: WaybillOnly = serde_json::from_slice(bytes).ok()?;
        return w.waybill;
    };
    let value = &bytes[at + WAYBILL_KEY.len()..];
    let mut values =
        serde_json::Deserializer::from_slice(value).into_iter::<Option<Cow<'_, str>>>();
    values.next()?.ok()?
}

/// Disk the store spends on one index entry beyond its key, as measured: appending 50,000
/// parcel records took about 15 MiB more with the index than without (sled logs every
/// entry with its own headers). Counted in the journal's stored size so the capacity policy
/// sees what the disk sees.
pub(super) const INDEX_ENTRY_BYTES: u64 = 300;

/// Room the writer keeps for one record's index entry before it writes: the entry's disk
/// cost and a generous key (a waybill of 40 bytes, separator and sequence).
pub(super) const INDEX_ALLOWANCE: u64 = INDEX_ENTRY_BYTES + 49;

/// Stored size charged for a batch's index entries.
pub(super) fn index_bytes(keys: &[Vec<u8>]) -> u64 {
    keys.iter()
        .map(|k| k.len() as u64 + INDEX_ENTRY_BYTES)
        .sum()
}

/// The index key of the record `seq` with `waybill`.
pub(super) fn index_key(waybill: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(waybill.len() + 9);
    k.extend_from_slice(waybill);
    k.push(0);
    k.extend_from_slice(&seq_key(seq));
    k
}

/// The index keys of a batch of records (contiguous from `first`). Records that do not
/// parse or have no waybill get none: the index is for finding, the batch stays the evidence.
pub(super) fn index_keys(first: u64, records: &[&[u8]]) -> Vec<Vec<u8>> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, bytes)| {
            let w = waybill_of(bytes)?;
            (!w.is_empty()).then(|| index_key(w.as_bytes(), first + i as u64))
        })
        .collect()
}

/// The last sequence the index covers.
const META_INDEX_UPTO: &[u8] = b"by_waybill_upto";

impl Journal {
    fn indexed_upto(&self) -> Result<u64, JournalError> {
        Ok(super::decode_u64(self.meta.get(META_INDEX_UPTO)?))
    }

    /// Indexes up to `max_batches` stored batches not yet in the waybill index; returns how
    /// many batches it indexed (0: caught up). Runs off the append path.
    pub fn index_pending(&self, max_batches: usize) -> Result<usize, JournalError> {
        let upto = self.indexed_upto()?;
        let mut done = 0;
        let mut last = upto;
        let mut entries = sled::Batch::default();
        for batch in self.batches.range(seq_key(upto + 1)..).take(max_batches) {
            let batch = super::Batch::from_entry(batch)?;
            let records = batch.records()?;
            for k in index_keys(batch.first, &records) {
                entries.insert(k, &[][..]);
            }
            last = batch.first + records.len().saturating_sub(1) as u64;
            done += 1;
        }
        if done > 0 {
            self.by_waybill.apply_batch(entries)?;
            self.meta.insert(META_INDEX_UPTO, &last.to_be_bytes()[..])?;
        }
        Ok(done)
    }

    /// Indexes every stored batch not yet in the index (tests, tools).
    pub fn index_all(&self) -> Result<(), JournalError> {
        while self.index_pending(1024)? > 0 {}
        Ok(())
    }

    /// Every stored record of `waybill`, in sequence order: its parcel decisions (first and
    /// re-decisions), dispositions and alerts.
    pub fn waybill_records(&self, waybill: &str) -> Result<Vec<Record>, JournalError> {
        let prefix = index_key(waybill.as_bytes(), 0);
        let prefix = &prefix[..prefix.len() - 8];
        let upto = self.indexed_upto()?;
        let mut out = Vec::new();
        for k in self.by_waybill.scan_prefix(prefix).keys() {
            let k = k?;
            // A longer waybill holding a 0x00 byte could share the prefix: the key must be
            // exactly prefix + 8 bytes, and the record must carry the same waybill.
            let Some(seq) = k.get(prefix.len()..).and_then(key_seq) else {
                continue;
            };
            if seq > upto {
                continue;
            }
            if let Some(r) = self.record(seq)? {
                if r.waybill() == Some(waybill) {
                    out.push(r);
                }
            }
        }
        // The batches the index does not cover yet, read directly.
        for batch in self.batches.range(seq_key(upto + 1)..) {
            let batch = super::Batch::from_entry(batch)?;
            for (i, bytes) in batch.records()?.into_iter().enumerate() {
                let seq = batch.first + i as u64;
                if seq <= upto || waybill_of(bytes).as_deref() != Some(waybill) {
                    continue;
                }
                let r: Record =
                    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
                        seq,
                        reason: e.to_string(),
                    })?;
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Up to `limit` records whose own time (scan time for parcels) lies in
    /// `[from_ms, to_ms)`, newest first by sequence, and whether more were left out. Walks the
    /// journal backwards and stops once batches are older than `from_ms` by more than
    /// [`TIME_SLACK_MS`].
    pub fn records_between(
        &self,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<(Vec<Record>, bool), JournalError> {
        let mut out = Vec::new();
        for batch in self.batches.iter().rev() {
            let batch = super::Batch::from_entry(batch)?;
            let mut newest = 0u64;
            let mut found = Vec::new();
            for (i, bytes) in batch.records()?.into_iter().enumerate() {
                let seq = batch.first + i as u64;
                let r: Record =
                    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
                        seq,
                        reason: e.to_string(),
                    })?;
                newest = newest.max(r.at_ms());
                if (from_ms..to_ms).contains(&r.at_ms()) {
                    found.push(r);
                }
            }
            for r in found.into_iter().rev() {
                if out.len() >= limit {
                    return Ok((out, true));
                }
                out.push(r);
            }
            if newest.saturating_add(TIME_SLACK_MS) < from_ms {
                break;
            }
        }
        Ok((out, false))
    }

    /// Where the stored record `seq` stands: acknowledged, waiting, or parked. A sequence
    /// that was never stored reads as in the outbox; callers ask only about records they read.
    pub fn forwarding(&self, seq: u64) -> Result<Forwarding, JournalError> {
        if let Some(reason) = self.parked.get(seq_key(seq))? {
            return Ok(Forwarding::Parked {
                reason: String::from_utf8_lossy(&reason).into_owned(),
            });
        }
        if seq <= self.forwarded_watermark() || self.acked.contains_key(seq_key(seq))? {
            return Ok(Forwarding::Forwarded);
        }
        Ok(Forwarding::Outbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::maintenance::tests::{filled, record};

    #[tokio::test]
    async fn waybill_lookup_finds_every_record_of_a_waybill_and_no_other() {
        let (_dir, journal) = filled(12).await;
        let rs = journal.waybill_records("BL00000005").unwrap();
        assert_eq!(rs.iter().map(Record::seq).collect::<Vec<_>>(), vec![5]);
        assert!(journal.waybill_records("BL0000000").unwrap().is_empty());
        assert!(journal.waybill_records("").unwrap().is_empty());
        assert!(journal.waybill_records("\0\0").unwrap().is_empty());
    }

    #[tokio::test]
    async fn purged_records_leave_the_index_and_the_index_is_rebuilt_for_old_stores() {
        let (dir, journal) = filled(9).await;
        // Before the indexer ran, lookups read the batches themselves.
        assert_eq!(journal.by_waybill.len(), 0);
        assert_eq!(journal.waybill_records("BL00000004").unwrap().len(), 1);
        journal.index_all().unwrap();
        assert_eq!(journal.by_waybill.len(), 9);
        for seq in 1..=6 {
            journal.mark_forwarded(seq).unwrap();
        }
        assert_eq!(journal.purge_forwarded(u64::MAX, 100).unwrap(), 6);
        assert!(journal.waybill_records("BL00000002").unwrap().is_empty());
        assert_eq!(
            journal.by_waybill.len(),
            3,
            "entries of purged records are gone"
        );
        assert_eq!(journal.waybill_records("BL00000008").unwrap().len(), 1);

        // A store from before the index: drop the index and its mark, open again.
        journal.by_waybill.clear().unwrap();
        journal.meta.remove(META_INDEX_UPTO).unwrap();
        journal.db.flush().unwrap();
        drop(journal);
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.waybill_records("BL00000008").unwrap().len(), 1);
        journal.index_all().unwrap();
        assert_eq!(journal.by_waybill.len(), 3);
        assert_eq!(journal.waybill_records("BL00000008").unwrap().len(), 1);
    }

    #[tokio::test]
    async fn time_range_is_newest_first_bounded_and_reports_truncation() {
        let (_dir, journal) = filled(10).await;
        let (rs, more) = journal.records_between(3000, 7000, 100).unwrap();
        assert_eq!(
            rs.iter().map(Record::seq).collect::<Vec<_>>(),
            vec![6, 5, 4, 3]
        );
        assert!(!more);
        let (rs, more) = journal.records_between(0, u64::MAX, 2).unwrap();
        assert_eq!(rs.iter().map(Record::seq).collect::<Vec<_>>(), vec![10, 9]);
        assert!(more);
        assert!(journal
            .records_between(50_000, 60_000, 10)
            .unwrap()
            .0
            .is_empty());
    }

    #[tokio::test]
    async fn forwarding_state_follows_acks_and_parking() {
        let (_dir, journal) = filled(4).await;
        journal.mark_forwarded(1).unwrap();
        journal.mark_forwarded(3).unwrap();
        journal.park(4, "too big").unwrap();
        assert_eq!(journal.forwarding(1).unwrap(), Forwarding::Forwarded);
        assert_eq!(journal.forwarding(2).unwrap(), Forwarding::Outbox);
        assert_eq!(journal.forwarding(3).unwrap(), Forwarding::Forwarded);
        assert_eq!(
            journal.forwarding(4).unwrap(),
            Forwarding::Parked {
                reason: "too big".into()
            }
        );
    }

    #[test]
    fn the_waybill_is_read_from_the_top_level_field_of_every_kind() {
        let mut tricky = record(3, 1000);
        tricky.reason = "says \"waybill\":\"FAKE\" inside".into();
        tricky.gateway = "gw\"waybill\":\"X\"".into();
        let mut no_read = record(4, 1000);
        no_read.waybill = None;
        let alert = Record::Alert(bondline_devices::contract::AlertRecord {
            schema: 1,
            msg_id: "gw-9".into(),
            seq: 9,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            parcel: Some(3),
            waybill: Some("BL\u{e9}\\\"x".into()),
            alert: bondline_devices::contract::AlertKind::LateDivert,
            detail: "\"waybill\":\"no\"".into(),
            at_ms: 1,
        });
        for r in [Record::Parcel(tricky), Record::Parcel(no_read), alert] {
            let bytes = serde_json::to_vec(&r).unwrap();
            assert_eq!(waybill_of(&bytes).as_deref(), r.waybill(), "{r:?}");
        }
        assert_eq!(waybill_of(b"{\"waybill\": \"A\"}").as_deref(), Some("A"));
        assert_eq!(waybill_of(b"not json"), None);
    }

    #[test]
    fn index_keys_skip_records_without_a_waybill_or_unreadable() {
        let mut no_read = record(1, 1000);
        no_read.waybill = None;
        let a = serde_json::to_vec(&Record::Parcel(no_read)).unwrap();
        let b = serde_json::to_vec(&Record::Parcel(record(2, 1000))).unwrap();
        let keys = index_keys(7, &[&a, b"not json", &b]);
        assert_eq!(keys, vec![index_key(b"BL00000002", 9)]);
    }
}
