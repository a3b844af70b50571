//! The record chain through salvage: reading the old chain's good run (step 4 of the
//! module's doc) and writing the fresh store's chain, continued or restarted, with the
//! salvage record (step 6). The two live together because they share what a kept record is
//! and the rule that decides whether the chain may continue.

use std::path::Path;

use bondline_devices::contract::{AlertKind, AlertRecord, Record};

use super::{ChainMode, SalvageError, SalvageReport, COMMIT_RECORDS};
use crate::journal::{chain_hash, decode_link, encode_link, Journal, GENESIS_HASH};
use crate::journal::{META_ANCHOR, META_FORWARDED};

/// What [`read_chain`] found: the kept records, the old anchor, the old forwarded watermark.
pub(super) type GoodRun = (Vec<Kept>, Option<(u64, [u8; 32])>, u64);

/// One kept record of the old chain, with its delivery state.
pub(super) struct Kept {
    pub(super) bytes: Vec<u8>,
    pub(super) record: Record,
    /// The broker had acknowledged it.
    pub(super) forwarded: bool,
    pub(super) parked: Option<String>,
}

/// Reads the old chain's good run (see the module's doc, step 4). Returns the kept records,
/// the old anchor when the run starts at it, and the old forwarded watermark.
pub(super) fn read_chain(old: &Journal, report: &mut SalvageReport) -> GoodRun {
    let head = old.meta.get(crate::journal::META_HEAD).ok().flatten();
    let mut head = head.and_then(|v| decode_link(&v));
    // The head mark outlives a log that lost its tail: it is the old head then.
    if let Some(marked) = read_mark(&old.path) {
        if head.is_none_or(|(h, hash)| marked.0 > h || (marked.0 == h && marked.1 != hash)) {
            head = Some(marked);
        }
    }
    report.old_head = head.map(|h| h.0);
    let anchor = old
        .meta
        .get(META_ANCHOR)
        .ok()
        .flatten()
        .and_then(|v| decode_link(&v));
    let watermark = crate::journal::decode_u64(old.meta.get(META_FORWARDED).ok().flatten());
    let (mut expected, mut prev) = anchor.map_or((1, GENESIS_HASH), |(s, h)| (s + 1, h));
    let mut kept = Vec::new();
    'batches: for entry in old.batches.iter() {
        let Ok(batch) = crate::journal::Batch::from_entry(entry) else {
            break;
        };
        let Ok(records) = batch.records() else {
            break;
        };
        for bytes in records {
            let Ok(record) = serde_json::from_slice::<Record>(bytes) else {
                break 'batches;
            };
            if record.seq() != expected || record.prev_hash() != hex::encode(prev) {
                break 'batches;
            }
            let seq = record.seq();
            let key = crate::journal::seq_key(seq);
            let parked = old
                .parked
                .get(key)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            let acked = old.acked.contains_key(key).unwrap_or(false);
            kept.push(Kept {
                bytes: bytes.to_vec(),
                record,
                forwarded: parked.is_none() && (seq <= watermark || acked),
                parked,
            });
            prev = chain_hash(bytes);
            expected += 1;
        }
    }
    let last = expected - 1;
    if !kept.is_empty() || anchor.is_some() {
        report.last_good = Some((last, hex::encode(prev)));
    }
    report.records_lost = head.map(|(h, _)| h.saturating_sub(last));
    let whole = head.is_some_and(|(h, hash)| h == last && hash == prev);
    if whole && report.last_good.is_some() {
        report.chain = ChainMode::Continued;
    }
    (kept, anchor, watermark.min(last))
}

/// The head mark of a store, if it reads.
pub(super) fn read_mark(dir: &Path) -> Option<(u64, [u8; 32])> {
    let text = std::fs::read_to_string(dir.join(crate::journal::HEAD_MARK)).ok()?;
    let mut parts = text.split_whitespace();
    let seq = parts.next()?.parse().ok()?;
    let hash: [u8; 32] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    Some((seq, hash))
}

/// Writes the kept records and the salvage record into the fresh store (step 6).
pub(super) fn write_chain(
    fresh: &Journal,
    gateway: &str,
    report: &mut SalvageReport,
    kept: Vec<Kept>,
    anchor: Option<(u64, [u8; 32])>,
    watermark: u64,
    now: u64,
) -> Result<(), SalvageError> {
    let mut salvage = Record::Alert(AlertRecord::new(
        gateway,
        "",
        AlertKind::JournalSalvaged,
        "",
        now,
    ));
    let mut parked = Vec::new();
    match report.chain {
        ChainMode::Continued => {
            // The good run starts right after the anchor (or at 1).
            let first = anchor.map_or(1, |a| a.0 + 1);
            if let Some((seq, hash)) = anchor {
                fresh
                    .meta
                    .insert(META_ANCHOR, &encode_link(seq, &hash)[..])?;
            }
            let mut seq = first;
            let mut prev = anchor.map_or(GENESIS_HASH, |a| a.1);
            let mut acked = Vec::new();
            for chunk in kept.chunks(COMMIT_RECORDS) {
                let bytes: Vec<Vec<u8>> = chunk.iter().map(|k| k.bytes.clone()).collect();
                prev = chain_hash(bytes.last().expect("chunks are not empty"));
                let last = seq + chunk.len() as u64 - 1;
                fresh.commit(seq, &bytes, (last, prev))?;
                for (i, k) in chunk.iter().enumerate() {
                    let s = seq + i as u64;
                    if let Some(reason) = &k.parked {
                        parked.push((s, reason.clone()));
                    } else if k.forwarded && s > watermark {
                        acked.push(s);
                    }
                }
                seq = last + 1;
            }
            fresh
                .meta
                .insert(META_FORWARDED, &watermark.to_be_bytes()[..])?;
            fresh.state().forwarded = watermark;
            for s in acked {
                fresh.acked.insert(crate::journal::seq_key(s), &[][..])?;
            }
            salvage_record(fresh, report, &mut salvage, seq, prev)?;
        }
        ChainMode::Restarted => {
            let mut prev = salvage_record(fresh, report, &mut salvage, 1, GENESIS_HASH)?;
            let mut seq = 2;
            for chunk in kept.chunks(COMMIT_RECORDS) {
                let mut bytes = Vec::with_capacity(chunk.len());
                for (i, k) in chunk.iter().enumerate() {
                    let mut r = k.record.clone();
                    let (payload, hash) = r.chain_after(seq + i as u64, &prev);
                    bytes.push(payload);
                    prev = hash;
                    if let Some(reason) = &k.parked {
                        parked.push((seq + i as u64, reason.clone()));
                    }
                }
                let last = seq + chunk.len() as u64 - 1;
                fresh.commit(seq, &bytes, (last, prev))?;
                seq = last + 1;
            }
        }
    }
    fresh.db.flush()?;
    for (seq, reason) in parked {
        fresh.park(seq, &reason)?;
    }
    Ok(())
}

/// Writes the salvage record as `seq`, after a record hashing to `prev`; returns its hash.
fn salvage_record(
    fresh: &Journal,
    report: &mut SalvageReport,
    record: &mut Record,
    seq: u64,
    prev: [u8; 32],
) -> Result<[u8; 32], SalvageError> {
    report.salvage_seq = seq;
    if let Record::Alert(a) = record {
        a.detail = report.summary();
    }
    let (payload, hash) = record.chain_after(seq, &prev);
    fresh.commit(seq, &[payload], (seq, hash))?;
    Ok(hash)
}
