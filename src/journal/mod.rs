//! The journal: the durable store of scan records, the outbox of records the platform has not
//! acknowledged, and the platform's declarations and instructions.
//!
//! # Invariants
//! - **Accepted means durable.** A record is *accepted* once the group commit that holds it
//!   has been flushed to disk. Only then is it counted, and only then may the uplink send it.
//!   A crash before the flush loses at most the records of that one open batch, none of which
//!   was reported as accepted.
//! - **Sequence.** Records get gap-free, strictly increasing sequence numbers (`seq`, stored as
//!   big-endian `u64` keys), continued across restarts from the last stored record. Sending
//!   follows the sequence, so the platform sees each line's records in order.
//! - **Chain.** Each record carries `prev_hash`, the SHA-256 of the previous record's exact
//!   stored bytes (which are the exact MQTT payload). The first record points at 64 zeros.
//! - **Outbox.** A record and its outbox entry are written in one transaction. The outbox entry
//!   is removed only when the broker's PUBACK for that very record arrives, never when the
//!   publish was merely queued. After a crash the outbox may still hold a record that was
//!   acknowledged: it is sent again (at least once; the platform deduplicates on `msg_id`).
//! - **Platform state.** A declaration or instruction is stored and flushed before the MQTT
//!   message that carried it is acknowledged, so the broker redelivers what a crash lost.
//! - **Failures.** A failed commit is retried with the same bytes until it succeeds; the
//!   decision path never waits for it (records reach the writer through an unbounded queue,
//!   whose depth is a metric).

mod maintenance;
mod writer;

use std::path::Path;

use bondline_devices::contract::{Declaration, Instruction, ParcelRecord};
use sled::Tree;

use crate::rules::ClearanceTable;

pub use maintenance::{ChainProblem, ExportError, ExportFormat, JournalStats, VerifyReport};
pub use writer::{record_sink, JournalWriter, RecordSink};

/// The chain's starting point: the `prev_hash` of the very first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("journal store: {0}")]
    Store(#[from] sled::Error),
    #[error("journal store: transaction failed: {0}")]
    Transaction(String),
    #[error("journal record {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: String },
}

/// Handle to the store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Journal {
    db: sled::Db,
    records: Tree,
    outbox: Tree,
    declarations: Tree,
    instructions: Tree,
    /// Ids of every instruction ever stored, so redeliveries stay idempotent across restarts.
    instruction_ids: Tree,
    /// Records taken out of the outbox because the broker will not take them (seq → reason).
    parked: Tree,
    /// Chain bookkeeping: `head` (last record's seq and hash), `anchor` (last purged record's).
    meta: Tree,
}

const META_HEAD: &[u8] = b"head";
const META_ANCHOR: &[u8] = b"anchor";

fn encode_link(seq: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(hash);
    v
}

fn decode_link(v: &[u8]) -> Option<(u64, [u8; 32])> {
    if v.len() != 40 {
        return None;
    }
    let seq = u64::from_be_bytes(v[..8].try_into().ok()?);
    let hash: [u8; 32] = v[8..].try_into().ok()?;
    Some((seq, hash))
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| JournalError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Journal {
            records: db.open_tree("records")?,
            outbox: db.open_tree("outbox")?,
            declarations: db.open_tree("declarations")?,
            instructions: db.open_tree("instructions")?,
            instruction_ids: db.open_tree("instruction_ids")?,
            parked: db.open_tree("parked")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// The last stored sequence number and the hash that the next record must point at.
    /// The `head` entry is written in the same transaction as the records, so it survives
    /// even when retention has purged every record.
    pub fn chain_head(&self) -> Result<(u64, [u8; 32]), JournalError> {
        if let Some(v) = self.meta.get(META_HEAD)? {
            return decode_link(&v).ok_or(JournalError::Corrupt {
                seq: 0,
                reason: "chain head entry is not 40 bytes".into(),
            });
        }
        match self.records.last()? {
            None => Ok((0, GENESIS_HASH)),
            Some((k, v)) => {
                let seq = key_seq(&k).ok_or(JournalError::Corrupt {
                    seq: 0,
                    reason: "record key is not 8 bytes".into(),
                })?;
                Ok((seq, sha256(&v)))
            }
        }
    }

    /// Number of records waiting for a PUBACK. Walks the outbox: call at start-up, not per parcel.
    pub fn backlog_len(&self) -> usize {
        self.outbox.len()
    }

    /// Up to `max` unacknowledged records with `seq >= from`, in sequence order, with their
    /// exact stored bytes.
    pub fn outbox_from(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, sled::IVec)>, JournalError> {
        let mut out = Vec::with_capacity(max.min(1024));
        for entry in self.outbox.range(seq_key(from)..).keys().take(max) {
            let key = entry?;
            let Some(seq) = key_seq(&key) else { continue };
            match self.records.get(&key)? {
                Some(bytes) => out.push((seq, bytes)),
                // An outbox entry without its record cannot be sent; drop the dangling entry.
                None => {
                    self.outbox.remove(&key)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes a record from the outbox after its PUBACK. Returns whether it was still there.
    pub fn mark_forwarded(&self, seq: u64) -> Result<bool, JournalError> {
        Ok(self.outbox.remove(seq_key(seq))?.is_some())
    }

    /// One stored record, parsed.
    pub fn record(&self, seq: u64) -> Result<Option<ParcelRecord>, JournalError> {
        let Some(bytes) = self.records.get(seq_key(seq))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                seq,
                reason: e.to_string(),
            })
    }

    /// Stores a declaration durably (flushed on return).
    pub async fn store_declaration(&self, d: &Declaration) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(d).expect("declarations always serialize");
        self.declarations.insert(d.waybill.as_bytes(), bytes)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Stores an instruction durably (flushed on return). Callers store only instructions
    /// that [`ClearanceTable::instruction_is_new`] accepts, so a stale one never overwrites.
    pub async fn store_instruction(&self, i: &Instruction) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(i).expect("instructions always serialize");
        self.instruction_ids
            .insert(i.instruction_id.as_bytes(), i.waybill.as_bytes())?;
        self.instructions.insert(i.waybill.as_bytes(), bytes)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Rebuilds the clearance table from what was stored, for a restart.
    pub fn load_clearance(&self) -> Result<ClearanceTable, JournalError> {
        let mut table = ClearanceTable::default();
        for entry in self.instruction_ids.iter() {
            let (id, _) = entry?;
            table.mark_instruction_seen(&String::from_utf8_lossy(&id));
        }
        for entry in self.declarations.iter() {
            let (_, v) = entry?;
            if let Ok(d) = serde_json::from_slice::<Declaration>(&v) {
                table.apply_declaration(d);
            }
        }
        for entry in self.instructions.iter() {
            let (_, v) = entry?;
            if let Ok(i) = serde_json::from_slice::<Instruction>(&v) {
                table.restore_instruction(i);
            }
        }
        Ok(table)
    }

    pub async fn flush(&self) -> Result<(), JournalError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Writes a batch of already chained records, their outbox entries and the new chain head
    /// in one transaction.
    fn commit(
        &self,
        entries: &[(u64, Vec<u8>)],
        head: (u64, [u8; 32]),
    ) -> Result<(), JournalError> {
        use sled::Transactional;
        let head = encode_link(head.0, &head.1);
        (&self.records, &self.outbox, &self.meta)
            .transaction(|(records, outbox, meta)| {
                for (seq, bytes) in entries {
                    let key = seq_key(*seq);
                    records.insert(&key[..], &bytes[..])?;
                    outbox.insert(&key[..], &[][..])?;
                }
                meta.insert(META_HEAD, &head[..])?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| {
                JournalError::Transaction(format!("{e:?}"))
            })
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
