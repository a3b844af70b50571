//! A scan's decision: the clearance table and the rule set in force give a lane role, the
//! lane states may make it stricter (never towards release), and the duplicate-label rule
//! (see [`duplicates`]) may turn a second release of a waybill into inspection. The new
//! parcel is then tracked, its anomaly raised, its command handed to the PLC and the
//! scan-point snapshots asked for. Re-decisions ([`super::redecide`]) use the same
//! [`Line::decide`].

use std::time::SystemTime;

use bondline_devices::contract::{AlertKind, LaneRole};

use super::duplicates;
use super::effects::{Effect, Turn};
use super::tracking::Tracked;
use super::Line;
use crate::floor::{ScanEvent, ScanRead};
use crate::metrics::{unix_ms, Metrics};
use crate::rules::engine::XrayInput;
use crate::rules::{decide, Decision, Scan};

impl Line {
    /// Decides a parcel; `prior` is its previous decision's inputs when it is decided again.
    pub(super) fn decide(
        &self,
        read: &ScanRead,
        weight_g: Option<u32>,
        counting_ms: u64,
        prior: Option<&bondline_devices::contract::DecisionInputs>,
        xray: XrayInput,
    ) -> (Decision, u16) {
        let scan = Scan {
            read,
            weight_g,
            weighing: self.ctx.weighing,
            day: self.ctx.calendar.day_of(counting_ms),
            calendar: &self.ctx.calendar,
            prior,
            xray,
        };
        let mut decision = {
            // One rule set for the whole decision, whatever a reload does meanwhile.
            let rules = self.ctx.rules.load_full();
            decide(&self.ctx.table, &rules, scan)
        };
        let wanted = self.ctx.lanes.lane(decision.role);
        let mut role = decision.role;
        while !self.ctx.lane_states.available(self.ctx.lanes.lane(role)) {
            let Some(stricter) = stricter(role) else {
                break;
            };
            role = stricter;
        }
        if role != decision.role {
            decision.reason = format!(
                "{}; lane {wanted} is {}, so {}",
                decision.reason,
                self.ctx.lane_states.describe(wanted),
                role.as_str()
            );
            decision.role = role;
        }
        let lane = self.ctx.lanes.lane(decision.role);
        (decision, lane)
    }

    pub(super) fn on_scan(&mut self, scan: ScanEvent, turn: &mut Turn) {
        self.next_parcel = self.next_parcel.wrapping_add(1);
        let parcel = self.next_parcel;
        let xray = if self.ctx.xray.is_some() {
            XrayInput::Pending
        } else {
            XrayInput::NotOnLine
        };
        // The time the parcel counts at in its consumer's history, fixed at its scan (see
        // `ClearanceTable::counting_ms`): its decisions all count it on the same day.
        let counting_ms = self.ctx.table.counting_ms(unix_ms(scan.at));
        let (mut decision, mut lane) =
            self.decide(&scan.read, scan.weight_g, counting_ms, None, xray);
        let duplicate = self.one_release(
            parcel,
            &scan.read,
            scan.weight_g,
            scan.at,
            &mut decision,
            &mut lane,
        );
        if let (ScanRead::Waybill(w), Some(inputs)) = (&scan.read, decision.inputs.as_mut()) {
            if inputs.consumer.is_some() {
                // The parcel joins its consumer's history once, at its first scan; the record
                // says so, and the journal keeps the mark with the record.
                let day = self.ctx.calendar.day_of(counting_ms);
                inputs.counted = self.ctx.table.count(w, day);
                inputs.counted_day = inputs.counted.then_some(day);
            }
        }
        Metrics::add(&self.ctx.metrics.parcels, 1);
        self.ctx.metrics.last_scan_ms.store(
            crate::metrics::mono_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.ctx.metrics.count_lane(decision.role);
        let deadline = self.ctx.geometry.deadline(scan.instant);
        self.tracker.insert(Tracked {
            parcel,
            read: scan.read,
            weight_g: scan.weight_g,
            scanned_at: scan.at,
            counting_ms,
            scanned: scan.instant,
            deadline,
            decision,
            decided_at: turn.now.wall,
            lane,
            revision: 0,
            committed_lane: None,
            committed_revision: None,
            release_sent: false,
            not_taken: false,
            take_back_tries: 0,
            retry_at: scan.instant,
            disposed_lane: None,
            xray,
            xray_settled: false,
            lane_camera_asked: false,
        });
        self.anomaly(parcel, turn);
        self.send(parcel, turn);
        // The scan-point snapshots, named as their records are (camera/line/parcel), join
        // the duplicate-label evidence of this parcel.
        let mut snapshots = Vec::new();
        if let Some(cams) = &self.ctx.cameras {
            if let Some(t) = self.tracker.get(parcel) {
                let captures = crate::camera::schedule::captures(
                    &cams.watches,
                    crate::camera::schedule::At::Scan,
                    parcel,
                    t.waybill(),
                    t.scanned,
                    t.scanned_at,
                );
                snapshots = captures
                    .iter()
                    .map(|c| format!("{}/{}/{parcel}", c.camera, self.ctx.line))
                    .collect();
                if let Some(w) = t.waybill() {
                    for id in &snapshots {
                        self.ctx
                            .released
                            .snapshot(w, &self.ctx.line, parcel, id.clone());
                    }
                }
                if !captures.is_empty() {
                    turn.push(Effect::Snapshots(captures));
                }
            }
        }
        if let Some(detail) = duplicate {
            let detail = format!("{detail}, camera snapshots [{}]", snapshots.join(", "));
            self.duplicate_alert(parcel, detail, turn);
        }
    }

    /// The duplicate-label rule (see [`duplicates`]): a release of a waybill already released
    /// on this gateway is admitted only as the same parcel come round again. Otherwise the
    /// decision becomes inspection (or stricter, if that lane is unavailable) under the rule
    /// `duplicate_label`, and the evidence of both parcels is returned for the alert. A
    /// parcel once released and then decided to another lane keeps its mark: the command to
    /// release may still have reached the PLC. Its disposition in another lane lets the same
    /// parcel be released on a later scan.
    pub(super) fn one_release(
        &self,
        parcel: u32,
        read: &ScanRead,
        weight_g: Option<u32>,
        scanned_at: SystemTime,
        decision: &mut Decision,
        lane: &mut u16,
    ) -> Option<String> {
        let ScanRead::Waybill(waybill) = read else {
            return None;
        };
        if decision.role != LaneRole::Release {
            return None;
        }
        let scan = duplicates::NewScan {
            line: self.ctx.line.clone(),
            parcel,
            scanned_at_ms: unix_ms(scanned_at),
            weight_g,
        };
        // A waybill declared for several pieces admits as many released parcels.
        let pieces = decision.inputs.as_ref().and_then(|i| i.pieces).unwrap_or(1);
        let earlier = match self.ctx.released.admit(waybill, pieces, &scan, *lane) {
            duplicates::Admission::Admitted => return None,
            duplicates::Admission::Recirculated(old) => {
                tracing::info!(line = %self.ctx.line, parcel, waybill = %waybill, earlier = %duplicates::describe(&old), "re-scan of a released waybill taken as the same parcel come round again");
                return None;
            }
            duplicates::Admission::Duplicate(earlier) => earlier,
        };
        let mut evidence: Vec<String> = earlier.iter().map(duplicates::describe).collect();
        evidence.push(format!(
            "this parcel {parcel} on line {} scanned at {} ms, weight {}",
            self.ctx.line,
            scan.scanned_at_ms,
            weight_g.map_or("not weighed".to_string(), |w| format!("{w} g")),
        ));
        let reason = format!(
            "waybill {waybill} was already released: {}",
            evidence.join("; ")
        );
        let mut role = LaneRole::Inspection;
        while !self.ctx.lane_states.available(self.ctx.lanes.lane(role)) {
            let Some(stricter) = stricter(role) else {
                break;
            };
            role = stricter;
        }
        decision.fired.insert(
            0,
            crate::rules::engine::Fired {
                rule: duplicates::DUPLICATE_LABEL.into(),
                target: LaneRole::Inspection,
                reason: reason.clone(),
                rule_kind_instruction: false,
            },
        );
        decision.role = role;
        decision.rule = duplicates::DUPLICATE_LABEL.into();
        decision.reason = reason.clone();
        decision.instruction_id = None;
        *lane = self.ctx.lanes.lane(role);
        Some(reason)
    }

    /// Raises the `duplicate_label` alert of a parcel [`Line::one_release`] refused.
    pub(super) fn duplicate_alert(&self, parcel: u32, detail: String, turn: &mut Turn) {
        Metrics::add(&self.ctx.metrics.duplicate_labels, 1);
        let waybill = self
            .tracker
            .get(parcel)
            .and_then(|t| t.waybill().map(str::to_string));
        self.alert(
            Some(parcel),
            waybill,
            AlertKind::DuplicateLabel,
            detail,
            turn,
        );
    }
}

/// The next stricter lane role when a lane is unavailable; never towards release.
pub(super) fn stricter(role: LaneRole) -> Option<LaneRole> {
    match role {
        LaneRole::Release | LaneRole::Inspection => Some(LaneRole::Hold),
        LaneRole::Hold => Some(LaneRole::Exception),
        LaneRole::Exception => None,
    }
}
