//! The PLC's dispositions: where a parcel actually went. Each is recorded with what is
//! known of the parcel (this run's tracking, or an earlier run's record from the journal),
//! frees its waybill in the duplicate-label registry when it left the release path, and
//! raises an alert when it contradicts the decision: a parcel in the release lane without a
//! release decision, a sorted parcel in another lane than commanded, a disposition of a
//! parcel the journal has no decision for.

use bondline_devices::contract::{AlertKind, DispositionKind, LaneRole};
use bondline_devices::plc::{Disposition, DispositionCode};
use tracing::error;

use super::effects::Turn;
use super::Line;
use crate::metrics::Metrics;

/// Dispositions of unknown parcels kept while the line waits for the earlier run's parcels
/// (see [`Line::on_earlier`]); beyond this they are recorded at once with what is known. Far
/// above what a PLC's disposition ring holds of an earlier run.
pub(super) const DEFERRED_MAX: usize = 4096;

fn kind_of(code: DispositionCode) -> DispositionKind {
    match code {
        DispositionCode::Sorted => DispositionKind::Sorted,
        DispositionCode::Overflow => DispositionKind::Overflow,
        DispositionCode::NoDestination => DispositionKind::NoDestination,
        DispositionCode::Lost => DispositionKind::Lost,
        DispositionCode::FailSafe => DispositionKind::FailSafe,
    }
}

impl Line {
    pub(super) fn on_disposition(&mut self, d: Disposition, turn: &mut Turn) {
        Metrics::add(&self.ctx.metrics.dispositions, 1);
        let t = self.tracker.dispose(d.parcel, d.lane).cloned();
        let kind = kind_of(d.code);
        let role = self.ctx.lanes.role_of(d.lane);
        let Some(t) = t else {
            // Not a parcel this run tracks: the journal may know it from an earlier run, once
            // it has been read (this run's own expired parcels are known already).
            if self.earlier_pending
                && self.earlier.get(d.parcel).is_none()
                && self.deferred.len() < DEFERRED_MAX
            {
                self.deferred.push(d);
                return;
            }
            return self.on_earlier_disposition(d, kind, role, turn);
        };
        let waybill = t.waybill().map(str::to_string);
        if let Some(w) = &waybill {
            self.ctx
                .released
                .disposed(w, &self.ctx.line, d.parcel, d.lane, role);
        }
        turn.record(self.disposition_record(
            &d,
            kind,
            role,
            waybill.clone(),
            t.committed_lane,
            turn.now.wall,
        ));
        if role == Some(LaneRole::Release) && t.decision.role != LaneRole::Release {
            let detail = format!(
                "the PLC reports parcel {} in release lane {} without a release decision",
                d.parcel, d.lane
            );
            self.released_without_decision(d.parcel, waybill, detail, turn);
        } else if kind == DispositionKind::Sorted {
            if let Some(c) = t.committed_lane.filter(|c| *c != d.lane) {
                self.alert(
                    Some(d.parcel),
                    waybill,
                    AlertKind::WrongLane,
                    format!("commanded lane {c}, the PLC reports lane {}", d.lane),
                    turn,
                );
            }
        }
    }

    /// The PLC put a parcel in the release lane that its decision did not send there. The
    /// gateway never lets this happen; if the PLC reports it, customs must know.
    fn released_without_decision(
        &self,
        parcel: u32,
        waybill: Option<String>,
        detail: String,
        turn: &mut Turn,
    ) {
        Metrics::add(&self.ctx.metrics.released_without_decision, 1);
        error!(line = %self.ctx.line, parcel, "PLC reports a parcel in the release lane without a release decision");
        self.alert(
            Some(parcel),
            waybill,
            AlertKind::ReleasedWithoutDecision,
            detail,
            turn,
        );
    }

    /// What the store holds of an earlier run's parcels, read after the line started (the
    /// store opened behind it): remembered beside what this run remembers already, then the
    /// dispositions that waited for it are recorded.
    pub(super) fn on_earlier(
        &mut self,
        recent: std::collections::HashMap<u32, crate::floor::Recent>,
        turn: &mut Turn,
    ) {
        for (parcel, r) in recent {
            // This run's own memory of a parcel id wins.
            if self.earlier.get(parcel).is_none() {
                self.earlier.remember(parcel, r);
            }
        }
        self.earlier_pending = false;
        for d in std::mem::take(&mut self.deferred) {
            let role = self.ctx.lanes.role_of(d.lane);
            self.on_earlier_disposition(d, kind_of(d.code), role, turn);
        }
    }

    /// A disposition of a parcel this run does not track: recorded with what is known of it
    /// (an earlier run's record, or this run's expired tracking); a repeated ring entry is
    /// skipped; a parcel with no decision record at all is unexplained.
    fn on_earlier_disposition(
        &mut self,
        d: Disposition,
        kind: DispositionKind,
        role: Option<LaneRole>,
        turn: &mut Turn,
    ) {
        if self.earlier.disposed(d.parcel) {
            return;
        }
        let known = self.earlier.get(d.parcel).filter(|k| k.decided).cloned();
        let waybill = known.as_ref().and_then(|k| k.waybill.clone());
        let commanded = known.as_ref().filter(|k| k.acked).and_then(|k| k.lane);
        if let Some(w) = &waybill {
            self.ctx
                .released
                .disposed(w, &self.ctx.line, d.parcel, d.lane, role);
        }
        turn.record(self.disposition_record(
            &d,
            kind,
            role,
            waybill.clone(),
            commanded,
            turn.now.wall,
        ));
        let released = role == Some(LaneRole::Release);
        let role_text = role.map_or("no configured role", LaneRole::as_str);
        match known {
            None => {
                if released {
                    Metrics::add(&self.ctx.metrics.released_without_decision, 1);
                    error!(line = %self.ctx.line, parcel = d.parcel, "PLC reports a parcel in the release lane with no decision record");
                }
                self.alert(
                    Some(d.parcel),
                    None,
                    AlertKind::UnexplainedDisposition,
                    format!(
                        "the PLC reports parcel {} {} in lane {} ({role_text}){} and the journal holds no decision for it",
                        d.parcel,
                        kind.as_str(),
                        d.lane,
                        if released { ": the RELEASE lane," } else { "," },
                    ),
                    turn,
                );
            }
            Some(k) if released && k.role != Some(LaneRole::Release) => {
                let detail = format!(
                    "the PLC reports parcel {} in release lane {}; its last recorded decision was {} (lane {})",
                    d.parcel,
                    d.lane,
                    k.role.map_or("none", LaneRole::as_str),
                    k.lane.unwrap_or(0)
                );
                self.released_without_decision(d.parcel, waybill, detail, turn);
            }
            Some(_) => {}
        }
    }
}
