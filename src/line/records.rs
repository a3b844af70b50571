//! The journal records the line writes about its parcels: a parcel's decision with its
//! divert outcome, a PLC disposition, an X-ray join outcome. Built in one place from the
//! tracked parcel and the line's identity, so that every handler records the same facts
//! the same way.

use std::time::SystemTime;

use bondline_devices::contract::{
    DispositionKind, DispositionRecord, DivertOutcome, FiredRule, LaneRole, ParcelRecord,
    ReadOutcome, XrayJoin, XrayRecord, SCHEMA,
};
use bondline_devices::plc::Disposition;
use bondline_devices::xray::XrayEvent;

use super::tracking::Tracked;
use super::Line;
use crate::floor::ScanRead;
use crate::metrics::unix_ms;
use crate::rules::Decision;

impl Line {
    /// The parcel record of a tracked parcel's current decision with `outcome`.
    pub(super) fn parcel_record(&self, t: &Tracked, outcome: DivertOutcome) -> ParcelRecord {
        let parcel = t.parcel;
        let (read, waybill) = match &t.read {
            ScanRead::Waybill(w) => (ReadOutcome::Ok, Some(w.clone())),
            ScanRead::NoRead => (ReadOutcome::NoRead, None),
        };
        let deadline_at = t.scanned_at + t.deadline.saturating_duration_since(t.scanned);
        ParcelRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: self.ctx.gateway.clone(),
            line: self.ctx.line.clone(),
            parcel,
            read,
            waybill,
            lane: t.lane,
            lane_role: t.decision.role,
            rule: t.decision.rule.clone(),
            reason: t.decision.reason.clone(),
            instruction_id: t.decision.instruction_id.clone(),
            scanned_at_ms: unix_ms(t.scanned_at),
            decided_at_ms: unix_ms(t.decided_at),
            divert: outcome,
            revision: t.revision,
            deadline_ms: Some(unix_ms(deadline_at)),
            rule_set: Some(t.decision.rule_set.clone()),
            rules_fired: fired_rules(&t.decision),
            inputs: t.decision.inputs.clone().map(Box::new),
        }
    }

    pub(super) fn disposition_record(
        &self,
        d: &Disposition,
        kind: DispositionKind,
        role: Option<LaneRole>,
        waybill: Option<String>,
        commanded_lane: Option<u16>,
        at: SystemTime,
    ) -> DispositionRecord {
        DispositionRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: self.ctx.gateway.clone(),
            line: self.ctx.line.clone(),
            parcel: d.parcel,
            waybill,
            disposition: kind,
            lane: d.lane,
            lane_role: role,
            commanded_lane,
            at_ms: unix_ms(at),
        }
    }

    /// The record of one join outcome; `event` is the verdict, absent for `no_result`.
    pub(super) fn xray_record(
        &self,
        device: &str,
        join: XrayJoin,
        parcel: Option<u32>,
        waybill: Option<String>,
        event: Option<&XrayEvent>,
        at: SystemTime,
    ) -> XrayRecord {
        XrayRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: self.ctx.gateway.clone(),
            line: self.ctx.line.clone(),
            device: device.to_string(),
            scan_id: event.map(|e| e.scan_id),
            parcel,
            waybill,
            result: event.map(|e| e.result),
            material: event.and_then(|e| e.material),
            entered_at_ms: event.map(|e| e.entered_at_ms),
            join,
            at_ms: unix_ms(at),
        }
    }
}

pub(super) fn fired_rules(d: &Decision) -> Vec<FiredRule> {
    d.fired
        .iter()
        .map(|f| FiredRule {
            rule: f.rule.clone(),
            target: f.target,
            reason: f.reason.clone(),
        })
        .collect()
}
