//! New clearance for parcels already on the belt. Before a parcel's divert deadline a
//! change (a declaration, an instruction, a reload, the table done loading, an X-ray
//! verdict) decides it again and, if its lane changes, re-commits it with the next
//! revision; after the deadline the parcel went where it went, and a lane that would now
//! differ is a `late_instruction` alert.

use bondline_devices::contract::AlertKind;

use super::effects::Turn;
use super::tracking::Change;
use super::Line;
use crate::floor::ScanRead;
use crate::metrics::{unix_ms, Metrics};

impl Line {
    /// New clearance that may concern any parcel: re-decide every one before its deadline.
    pub(super) fn on_change_all(&mut self, turn: &mut Turn) {
        for parcel in self.tracker.before_deadline(turn.now.instant) {
            self.redecide(parcel, turn);
        }
    }

    /// The line fell behind the table's changes and `missed` of them were dropped from its
    /// queue (a platform flood): which waybills they named is not known, so every parcel
    /// before its deadline is decided again, as on a change that may concern any of them.
    /// Keeping the decisions instead would release a parcel whose hold order was among the
    /// dropped changes.
    pub(super) fn on_changes_missed(&mut self, missed: u64, turn: &mut Turn) {
        tracing::warn!(line = %self.ctx.line, missed, "clearance changes missed: every parcel before its deadline is decided again");
        Metrics::add(&self.ctx.metrics.changes_missed, missed);
        self.on_change_all(turn);
    }

    /// Retention forgot `waybill`: its parcels before their deadline are decided again
    /// (see [`crate::floor::ClearanceChange::Forgotten`]).
    pub(super) fn on_forgotten(&mut self, waybill: &str, turn: &mut Turn) {
        for change in self.tracker.changes_for(waybill, turn.now.instant) {
            if let Change::Redecide(p) = change {
                self.redecide(p, turn);
            }
        }
    }

    /// Decides a tracked parcel again; re-commits it if its lane changes.
    pub(super) fn redecide(&mut self, parcel: u32, turn: &mut Turn) {
        self.redecide_with(parcel, false, turn);
    }

    /// Like [`Line::redecide`]; with `flag_matters`, a decision that newly flags the parcel
    /// is re-committed even to the same lane, so its record and anomaly name the rule (an
    /// X-ray verdict on a parcel already bound for inspection while it waited for it).
    pub(super) fn redecide_with(&mut self, parcel: u32, flag_matters: bool, turn: &mut Turn) {
        let Some(t) = self.tracker.get_mut(parcel) else {
            return;
        };
        if t.decision.rule == crate::rules::STATE_LOADING {
            // Scanned while the table loaded, when the platform's clock was known only as
            // far as the load had read: the time it counts at is taken again, now that it
            // is known (a clock set back at boot is just when a load runs).
            t.counting_ms = self.ctx.table.counting_ms(unix_ms(t.scanned_at));
        }
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        let (mut decision, mut lane) = self.decide(
            &t.read,
            t.weight_g,
            t.counting_ms,
            t.decision.inputs.as_ref(),
            t.xray,
        );
        let read = t.read.clone();
        let (weight_g, scanned_at, counting_ms) = (t.weight_g, t.scanned_at, t.counting_ms);
        let duplicate = self.one_release(
            parcel,
            &read,
            weight_g,
            scanned_at,
            &mut decision,
            &mut lane,
        );
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        if let (Some(new), Some(old)) = (decision.inputs.as_mut(), t.decision.inputs.as_ref()) {
            new.counted = old.counted;
            new.counted_day = old.counted_day;
        }
        // Decided while the clearance table was loading: the real decision replaces the
        // stand-in hold (its record names the rule).
        let was_loading = t.decision.rule == crate::rules::STATE_LOADING
            && decision.rule != crate::rules::STATE_LOADING;
        // A parcel joins its consumer's history once, on the day of its scan: at the scan,
        // or on the first decision that knows its consumer (the table done loading, or a
        // declaration that came after the scan). Left uncounted, a parcel released on a late
        // declaration would be missing from every later window of its consumer.
        let mut counted_now = false;
        if let (ScanRead::Waybill(w), Some(inputs)) = (&read, decision.inputs.as_mut()) {
            if inputs.consumer.is_some() && !inputs.counted {
                let day = self.ctx.calendar.day_of(counting_ms);
                inputs.counted = self.ctx.table.count(w, day);
                inputs.counted_day = inputs.counted.then_some(day);
                counted_now = inputs.counted;
            }
        }
        let newly_flagged =
            flag_matters && decision.is_anomaly() && decision.rule != t.decision.rule;
        // Counted now, the parcel is committed again even to the same lane: the journal keeps
        // the count's mark with the new revision's record, for the next start.
        // A take-back known not taken (the PLC still holds another lane it acknowledged, a
        // release above all) is tried again; other commands not taken are not repeated, so
        // a full queue or a link down is not fed more of them.
        let retry = t.not_taken && t.committed_lane.is_some_and(|c| c != lane);
        if lane == t.disposed_lane.unwrap_or(t.lane)
            && !newly_flagged
            && !was_loading
            && !counted_now
            && !retry
        {
            return;
        }
        Metrics::add(&self.ctx.metrics.recommits, 1);
        if let Some(t) = self.tracker.get_mut(parcel) {
            self.ctx.metrics.move_lane(t.decision.role, decision.role);
            t.decision = decision;
            t.decided_at = turn.now.wall;
            t.lane = lane;
            t.revision += 1;
            t.not_taken = false;
        }
        self.anomaly(parcel, turn);
        if let Some(detail) = duplicate {
            self.duplicate_alert(parcel, detail, turn);
        }
        self.send(parcel, turn);
    }

    /// New clearance information for `waybill`: re-decide tracked parcels before their
    /// deadline, alert for those past it whose lane would now differ.
    pub(super) fn on_change(&mut self, waybill: &str, turn: &mut Turn) {
        let now = turn.now.instant;
        for change in self.tracker.changes_for(waybill, now) {
            let parcel = match change {
                Change::Redecide(p) => {
                    self.redecide(p, turn);
                    continue;
                }
                Change::Late(p) => p,
            };
            let Some(t) = self.tracker.get(parcel) else {
                continue;
            };
            let (decision, lane) = self.decide(
                &t.read,
                t.weight_g,
                t.counting_ms,
                t.decision.inputs.as_ref(),
                t.xray,
            );
            // Where the parcel is, or is going: the PLC's word once it has spoken (the lane it
            // reported, or the last it acknowledged: a newer command may not have been taken).
            let current = t.disposed_lane.or(t.committed_lane).unwrap_or(t.lane);
            if lane == current {
                continue;
            }
            let detail = format!(
                "new clearance for {waybill} after the divert deadline: it would now go to {} (lane {lane}: {}), but the parcel {} lane {current}",
                decision.role.as_str(),
                decision.reason,
                if t.disposed_lane.is_some() { "is in" } else { "was diverted to" },
            );
            self.alert(
                Some(parcel),
                Some(waybill.to_string()),
                AlertKind::LateInstruction,
                detail,
                turn,
            );
        }
    }
}
