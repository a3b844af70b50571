//! [`Record`], the envelope of every journal record sent on `P/records`: the `kind` tag, the
//! conversions from each record kind, the fields all kinds share and the chaining the journal
//! applies. The record kinds themselves live in their own modules.

use serde::{Deserialize, Serialize};

use super::{
    chain_hash, AlertRecord, DispositionRecord, ImageChunkRecord, ImageRecord, ParcelRecord,
    ReportRecord, SnapshotRecord, XrayRecord,
};

/// Any record of the journal, as sent on `P/records`: the `kind` field tells which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Parcel(ParcelRecord),
    Disposition(DispositionRecord),
    Alert(AlertRecord),
    Report(ReportRecord),
    Xray(XrayRecord),
    Image(ImageRecord),
    ImageChunk(ImageChunkRecord),
    Snapshot(SnapshotRecord),
}

impl From<ParcelRecord> for Record {
    fn from(r: ParcelRecord) -> Record {
        Record::Parcel(r)
    }
}

impl From<DispositionRecord> for Record {
    fn from(r: DispositionRecord) -> Record {
        Record::Disposition(r)
    }
}

impl From<AlertRecord> for Record {
    fn from(r: AlertRecord) -> Record {
        Record::Alert(r)
    }
}

impl From<ReportRecord> for Record {
    fn from(r: ReportRecord) -> Record {
        Record::Report(r)
    }
}

impl From<XrayRecord> for Record {
    fn from(r: XrayRecord) -> Record {
        Record::Xray(r)
    }
}

impl From<ImageRecord> for Record {
    fn from(r: ImageRecord) -> Record {
        Record::Image(r)
    }
}

impl From<ImageChunkRecord> for Record {
    fn from(r: ImageChunkRecord) -> Record {
        Record::ImageChunk(r)
    }
}

impl From<SnapshotRecord> for Record {
    fn from(r: SnapshotRecord) -> Record {
        Record::Snapshot(r)
    }
}

/// Applies the same expression to whichever record kind `$record` holds.
macro_rules! each_kind {
    ($record:expr, $r:ident => $e:expr) => {
        match $record {
            Record::Parcel($r) => $e,
            Record::Disposition($r) => $e,
            Record::Alert($r) => $e,
            Record::Report($r) => $e,
            Record::Xray($r) => $e,
            Record::Image($r) => $e,
            Record::ImageChunk($r) => $e,
            Record::Snapshot($r) => $e,
        }
    };
}

impl Record {
    pub fn seq(&self) -> u64 {
        each_kind!(self, r => r.seq)
    }

    pub fn msg_id(&self) -> &str {
        each_kind!(self, r => &r.msg_id)
    }

    pub fn prev_hash(&self) -> &str {
        each_kind!(self, r => &r.prev_hash)
    }

    pub fn gateway(&self) -> &str {
        each_kind!(self, r => &r.gateway)
    }

    pub fn line(&self) -> &str {
        each_kind!(self, r => &r.line)
    }

    pub fn waybill(&self) -> Option<&str> {
        each_kind!(self, r => r.waybill.as_deref())
    }

    pub fn schema(&self) -> u32 {
        each_kind!(self, r => r.schema)
    }

    /// When it happened (Unix ms): the scan for a parcel record.
    pub fn at_ms(&self) -> u64 {
        match self {
            Record::Parcel(r) => r.scanned_at_ms,
            Record::Disposition(r) => r.at_ms,
            Record::Alert(r) => r.at_ms,
            Record::Report(r) => r.at_ms,
            Record::Xray(r) => r.at_ms,
            Record::Image(r) => r.at_ms,
            Record::ImageChunk(r) => r.at_ms,
            Record::Snapshot(r) => r.at_ms,
        }
    }

    /// Sets what the journal fills in: sequence, message id and chain link.
    pub fn stamp(&mut self, seq: u64, prev_hash: String) {
        let msg_id = format!("{}-{}", self.gateway(), seq);
        each_kind!(self, r => {
            r.seq = seq;
            r.msg_id = msg_id;
            r.prev_hash = prev_hash;
        })
    }

    /// Makes this record the `seq`-th of a chain whose previous record hashes to `prev`: stamps
    /// it ([`Record::stamp`]) and returns its payload, the compact JSON the gateway stores and
    /// sends byte for byte, with the payload's [`chain_hash`]. The journal writer chains every
    /// record with it.
    pub fn chain_after(&mut self, seq: u64, prev: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
        self.stamp(seq, hex::encode(prev));
        let payload = serde_json::to_vec(&*self).expect("records always serialize");
        let hash = chain_hash(&payload);
        (payload, hash)
    }

    pub fn as_parcel(&self) -> Option<&ParcelRecord> {
        match self {
            Record::Parcel(r) => Some(r),
            _ => None,
        }
    }
}
