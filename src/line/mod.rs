//! One sorting line's pipeline: scan in, decision, divert job and record out.
//!
//! The decision path is this task's loop body: a read lock on the clearance table for the
//! length of [`crate::rules::decide`], then a non-blocking hand-off to the PLC task. It
//! never waits on the network, the disk or a device. If the PLC queue is full the parcel is
//! recorded as `overload` at once; the PLC's own default sends it to the exception lane.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bondline_devices::contract::{DivertOutcome, DivertStatus, ParcelRecord, ReadOutcome, SCHEMA};
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::LaneMap;
use crate::fieldbus::plc::DivertJob;
use crate::fieldbus::scanner::ScanEvent;
use crate::journal::RecordSink;
use crate::metrics::{unix_ms, Metrics};
use crate::rules::{decide, ClearanceTable, ScanRead};

/// What a line task needs besides its channels.
pub struct LineCtx {
    pub gateway: String,
    pub line: String,
    pub lanes: LaneMap,
    pub table: Arc<RwLock<ClearanceTable>>,
    pub metrics: Arc<Metrics>,
}

/// Runs until the scanner side closes its channel.
pub async fn run(
    ctx: LineCtx,
    mut scans: mpsc::Receiver<ScanEvent>,
    plc: mpsc::Sender<DivertJob>,
    sink: RecordSink,
) {
    // Parcel ids start at a random point so ids from before a restart, which the PLC may
    // still be tracking, are not reused at once.
    let mut parcel: u32 = rand::random::<u32>() >> 1;
    while let Some(scan) = scans.recv().await {
        parcel = parcel.wrapping_add(1);
        let decision = {
            let table = ctx.table.read().unwrap_or_else(|p| p.into_inner());
            decide(&table, &scan.read)
        };
        let lane = ctx.lanes.lane(decision.role);
        Metrics::add(&ctx.metrics.parcels, 1);
        ctx.metrics.count_lane(decision.role);
        let decided_at = SystemTime::now();
        let (read, waybill) = match scan.read {
            ScanRead::Waybill(w) => (ReadOutcome::Ok, Some(w)),
            ScanRead::NoRead => (ReadOutcome::NoRead, None),
        };
        let record = ParcelRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: ctx.gateway.clone(),
            line: ctx.line.clone(),
            parcel,
            read,
            waybill,
            lane,
            lane_role: decision.role,
            rule: decision.rule.to_string(),
            reason: decision.reason,
            instruction_id: decision.instruction_id,
            scanned_at_ms: unix_ms(scan.at),
            decided_at_ms: unix_ms(decided_at),
            divert: DivertOutcome {
                status: DivertStatus::Overload,
                plc_seq: None,
                detail: None,
                at_ms: unix_ms(decided_at),
            },
        };
        let job = DivertJob {
            lane,
            parcel,
            record,
            scanned: scan.instant,
        };
        if let Err(e) = plc.try_send(job) {
            let mut job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            warn!(line = %ctx.line, parcel, "PLC queue full; parcel left to the PLC default");
            job.record.divert.detail = Some("PLC command queue full".into());
            Metrics::add(&ctx.metrics.diverts_failed, 1);
            sink.push(job.record);
        }
    }
}
