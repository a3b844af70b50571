//! Release decisions written ahead of their command, and what the journal remembers of recent
//! parcels for the PLC's dispositions after a restart.
//!
//! # Invariants
//! - **Written ahead.** A command to the release lane reaches the PLC only after its
//!   *intent* (the parcel record as it stands before the PLC's answer: waybill, lane,
//!   deciding rule, instruction id, rule set) is flushed in the `intents` tree. The writer
//!   stores intents as soon as they arrive, without waiting for the group-commit window.
//! - **Settled with the record.** An intent is removed in the same transaction that stores a
//!   parcel record of the same line and parcel with the same or a later revision, so at every
//!   instant a release command has its parcel record, or its intent, or both.
//! - **Recovered at start.** An intent still stored at start belongs to a decision whose
//!   outcome was never recorded (the gateway stopped in between): it becomes a parcel record
//!   with status `interrupted` and a `divert_interrupted` alert, which settles it.
//!
//! Layout: `intents`, key = line id + 0x00 + parcel id (big-endian `u32`), value = revision
//! (big-endian `u32`) + the parcel record's JSON. Inspection, hold and exception commands
//! are not written ahead: those lanes are safe, and a record lost with a crash is made
//! visible by the parcel's disposition (`unexplained_disposition`).

use std::collections::HashMap;

use bondline_devices::contract::{
    AlertKind, AlertRecord, DivertStatus, LaneRole, ParcelRecord, SCHEMA,
};
use serde::Deserialize;

use super::{decode_batch, Journal, JournalError};

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

impl Journal {
    /// Stores intents (not yet flushed: the writer flushes before it answers).
    pub(crate) fn store_intents(&self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError> {
        let mut batch = sled::Batch::default();
        for (k, v) in intents {
            batch.insert(&k[..], &v[..]);
        }
        self.intents.apply_batch(batch)?;
        Ok(())
    }

    /// Keys and revisions of every stored intent (the writer's picture at start).
    pub(crate) fn intent_revisions(&self) -> Result<HashMap<Vec<u8>, u32>, JournalError> {
        let mut out = HashMap::new();
        for e in self.intents.iter() {
            let (k, v) = e?;
            out.insert(k.to_vec(), intent_revision(&v).unwrap_or(0));
        }
        Ok(out)
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
    let alert = AlertRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: r.gateway.clone(),
        line: r.line.clone(),
        parcel: Some(r.parcel),
        waybill: r.waybill.clone(),
        alert: AlertKind::DivertInterrupted,
        detail: format!(
            "the gateway stopped after storing the release decision for parcel {} (lane {}, revision {}) and before recording the PLC's answer: the command may have reached the PLC",
            r.parcel, r.lane, r.revision
        ),
        at_ms: now_ms,
    };
    (r, alert)
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

/// What the journal knows of a parcel an earlier run handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent {
    pub waybill: Option<String>,
    /// The lane of its last recorded decision.
    pub lane: Option<u16>,
    pub role: Option<LaneRole>,
    pub revision: u32,
    /// A parcel record exists.
    pub decided: bool,
    /// Its last recorded decision was acknowledged by the PLC.
    pub acked: bool,
    /// A disposition record exists.
    pub disposed: bool,
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
