//! What the passing of time does to tracked parcels, on the line task's tick: take-backs
//! of a release the PLC did not take tried again (see [`super::divert`]), X-ray
//! verdicts that did not come (see [`super::verdicts`]), the lane cameras asked once a
//! parcel's lane is final, and parcels overdue for a disposition dropped from tracking
//! (remembered as earlier parcels, and alerted where the PLC reports dispositions).

use bondline_devices::contract::AlertKind;

use super::effects::{Effect, Turn};
use super::Line;
use crate::floor::Recent;

impl Line {
    /// Stops tracking parcels overdue for a disposition (alerting, where the PLC reports
    /// dispositions). Without dispositions a parcel stays tracked until then anyway, so that
    /// a late instruction still finds it for an alert.
    pub(super) fn expire(&mut self, turn: &mut Turn) {
        self.retry_take_backs(turn);
        self.expire_xray(turn);
        self.ask_lane_cameras(turn);
        let overdue = self
            .tracker
            .expire(turn.now.instant, self.ctx.geometry.disposition_timeout);
        for t in &overdue {
            self.earlier.remember(
                t.parcel,
                Recent {
                    waybill: t.waybill().map(str::to_string),
                    lane: Some(t.committed_lane.unwrap_or(t.lane)),
                    role: Some(t.decision.role),
                    revision: t.revision,
                    decided: true,
                    acked: t.committed_lane.is_some(),
                    disposed: t.disposed_lane.is_some(),
                },
            );
        }
        if !self.ctx.dispositions {
            return;
        }
        for t in overdue.into_iter().filter(|t| t.disposed_lane.is_none()) {
            let waybill = t.waybill().map(str::to_string);
            self.alert(
                Some(t.parcel),
                waybill,
                AlertKind::NoDisposition,
                format!(
                    "no disposition from the PLC within {:?} of the deadline",
                    self.ctx.geometry.disposition_timeout
                ),
                turn,
            );
        }
    }

    /// Asks the lane cameras for parcels whose divert deadline has passed: the lane is final
    /// then (see [`crate::camera::schedule`]). The lane is the one the PLC acknowledged, or
    /// the decided one when no acknowledgement came.
    fn ask_lane_cameras(&mut self, turn: &mut Turn) {
        let Some(cams) = &self.ctx.cameras else {
            return;
        };
        let now = turn.now.instant;
        let mut captures = Vec::new();
        for t in self.tracker.iter_mut() {
            if t.lane_camera_asked || now < t.deadline {
                continue;
            }
            t.lane_camera_asked = true;
            let lane = t.committed_lane.unwrap_or(t.lane);
            if cams.watches_lane(lane) {
                captures.extend(crate::camera::schedule::captures(
                    &cams.watches,
                    crate::camera::schedule::At::Lane(lane),
                    t.parcel,
                    t.waybill(),
                    t.scanned,
                    t.scanned_at,
                ));
            }
        }
        if !captures.is_empty() {
            turn.push(Effect::Snapshots(captures));
        }
    }
}
