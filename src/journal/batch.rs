//! How records are framed in the `batches` tree (see the journal's "Layout on disk"): the
//! entry size, the encoding of an entry's records, and reading a stored record back by its
//! sequence. Kept apart from the store's handle so that the one place that knows the byte
//! layout of an entry is small and whole.

use bondline_devices::contract::Record;

use super::{key_seq, seq_key, Journal, JournalError};

/// Most bytes of records in one `batches` entry; a larger group commit is stored as several
/// entries (in one transaction). sled writes any page larger than a quarter of its 512 KiB
/// segment to a blob file of its own, outside the space it reuses, and deletes the file only
/// after later writes; a leaf of the `batches` tree holds up to 17 entries, so entries of
/// this size keep the tree's pages inside the store's file, where the room that purging
/// frees is written again (see [`super::capacity`]). A single larger record is an entry of its own.
pub const ENTRY_BYTES: usize = 4 * 1024;

/// Splits records into consecutive groups of at most [`ENTRY_BYTES`] (at least one record).
pub(super) fn entry_groups(records: &[Vec<u8>]) -> Vec<&[Vec<u8>]> {
    let mut groups = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let len = r.len() + 4;
        if i > start && size + len > ENTRY_BYTES {
            groups.push(&records[start..i]);
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < records.len() {
        groups.push(&records[start..]);
    }
    groups
}

/// Encodes records as one batch value: per record a `u32` length and the bytes.
pub(super) fn encode_batch<'a>(records: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Splits a batch value into its records; `None` if it is malformed.
pub(crate) fn decode_batch(v: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        out.push(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    Some(out)
}

/// One batch: its first sequence number and its records' bytes.
pub(crate) struct Batch {
    pub first: u64,
    pub value: sled::IVec,
}

impl Batch {
    pub fn records(&self) -> Result<Vec<&[u8]>, JournalError> {
        decode_batch(&self.value).ok_or(JournalError::Corrupt {
            seq: self.first,
            reason: "batch framing is broken".into(),
        })
    }

    pub(super) fn from_entry(
        entry: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<Batch, JournalError> {
        let (k, value) = entry?;
        let first = key_seq(&k).ok_or(JournalError::Corrupt {
            seq: 0,
            reason: "batch key is not 8 bytes".into(),
        })?;
        Ok(Batch { first, value })
    }
}

impl Journal {
    /// The batch holding `seq`, if stored.
    pub(super) fn batch_of(&self, seq: u64) -> Result<Option<Batch>, JournalError> {
        match self.batches.range(..=seq_key(seq)).next_back() {
            Some(e) => Ok(Some(Batch::from_entry(e)?)),
            None => Ok(None),
        }
    }

    /// Batches from the one holding `from` onwards.
    pub(crate) fn batches_from(
        &self,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<Batch, JournalError>> + '_, JournalError> {
        let start = match self.batch_of(from)? {
            Some(b) => b.first,
            None => from,
        };
        Ok(self.batches.range(seq_key(start)..).map(Batch::from_entry))
    }

    /// One stored record's exact bytes.
    pub fn record_bytes(&self, seq: u64) -> Result<Option<Vec<u8>>, JournalError> {
        let Some(batch) = self.batch_of(seq)? else {
            return Ok(None);
        };
        let records = batch.records()?;
        Ok(records
            .get((seq - batch.first) as usize)
            .map(|b| b.to_vec()))
    }

    /// Whether the store holds `record` byte for byte at the sequence it is stamped with.
    /// Equal bytes at one place of the hash chain are the same record: a spilled record
    /// that was committed before its spill (its flush failed, but the store kept it).
    pub fn holds(&self, record: &Record) -> bool {
        let seq = record.seq();
        seq != 0
            && serde_json::to_vec(record).is_ok_and(|bytes| {
                self.record_bytes(seq)
                    .ok()
                    .flatten()
                    .is_some_and(|stored| stored == bytes)
            })
    }

    /// One stored record, parsed.
    pub fn record(&self, seq: u64) -> Result<Option<Record>, JournalError> {
        let Some(bytes) = self.record_bytes(seq)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                seq,
                reason: e.to_string(),
            })
    }
}
