//! Export of stored records: every record in sequence order to a visitor, and
//! `bondline journal export` as JSON lines (byte for byte as stored and sent) or CSV rows.
//! Kept apart from the outbox and verification: export reads records for people and reports,
//! and decides nothing about delivery or the chain.

use std::io::Write;

use bondline_devices::contract::Record;

use super::{seq_key, Journal, JournalError};

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
