//! The divert job of a parcel and the PLC's answers to it: the command handed to the PLC
//! link (a release written ahead), the link's queue refusing it (`overload`), the
//! acknowledge or its failure recorded with the parcel's decision, and the PLC's reports
//! about commands (late acknowledges, commands dropped by its restart, dispositions missed).
//! Dispositions themselves are [`super::disposition`]'s.

use bondline_devices::contract::{AlertKind, DivertOutcome, DivertStatus, LaneRole};
use tracing::warn;

use super::effects::{Divert, Effect, Turn};
use super::Line;
use crate::floor::PlcEvent;
use crate::metrics::{unix_ms, Metrics};

/// How often the tick tries again a take-back the PLC did not take, per parcel (the count
/// starts again once one is taken).
const TAKE_BACK_TRIES: u8 = 3;
/// How long after a command's answer the tick tries its take-back again: a link down answers
/// at once, and tries that close together would all be spent before it can reconnect.
const TAKE_BACK_GAP: std::time::Duration = std::time::Duration::from_millis(250);

impl Line {
    /// On the tick: a take-back of a lane the PLC acknowledged (a release, above all) that
    /// was not taken (a timeout, the link down, a full queue) is tried again before the
    /// parcel's deadline, up to [`TAKE_BACK_TRIES`] times, without waiting for the parcel's
    /// next decision: the link may be back, and the PLC replaces a parcel's command until
    /// the parcel reaches its gate. Each try waits for the answer to the one before (a
    /// command in flight is not `not_taken`) and then [`TAKE_BACK_GAP`].
    pub(super) fn retry_take_backs(&mut self, turn: &mut Turn) {
        let now = turn.now.instant;
        let due: Vec<u32> = self
            .tracker
            .iter()
            .filter(|t| {
                t.not_taken
                    && now >= t.retry_at
                    && now < t.deadline
                    && t.take_back_tries < TAKE_BACK_TRIES
                    && t.committed_lane.is_some_and(|c| c != t.lane)
            })
            .map(|t| t.parcel)
            .collect();
        for parcel in due {
            if let Some(t) = self.tracker.get_mut(parcel) {
                t.take_back_tries += 1;
            }
            self.redecide(parcel, turn);
        }
    }

    /// Hands the parcel's current decision to the PLC: a command, written ahead when it is a
    /// release (see [`Divert`]).
    pub(super) fn send(&mut self, parcel: u32, turn: &mut Turn) {
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        let release = t.decision.role == LaneRole::Release;
        let withdraws_release = t.release_sent && !release;
        let intent = release.then(|| {
            let outcome = DivertOutcome {
                status: DivertStatus::Interrupted,
                plc_seq: None,
                detail: Some(
                    "the gateway stopped after storing this decision and before recording the PLC's answer"
                        .into(),
                ),
                at_ms: unix_ms(turn.now.wall),
                late: false,
            };
            Box::new(self.parcel_record(t, outcome))
        });
        turn.push(Effect::Divert(Divert {
            parcel,
            lane: t.lane,
            revision: t.revision,
            deadline: t.deadline,
            intent,
            withdraws_release,
        }));
        if release {
            if let Some(t) = self.tracker.get_mut(parcel) {
                t.release_sent = true;
            }
        }
    }

    /// The PLC link's queue could not take the parcel's command: the parcel is left to the
    /// PLC's default and recorded as `overload`.
    pub(super) fn divert_refused(&mut self, parcel: u32, turn: &mut Turn) {
        warn!(line = %self.ctx.line, parcel, "PLC queue full; parcel left to the PLC default");
        Metrics::add(&self.ctx.metrics.diverts_failed, 1);
        let outcome = DivertOutcome {
            status: DivertStatus::Overload,
            plc_seq: None,
            detail: Some("PLC command queue full".into()),
            at_ms: unix_ms(turn.now.wall),
            late: false,
        };
        self.record_decision(parcel, outcome, turn);
    }

    fn record_decision(&mut self, parcel: u32, outcome: DivertOutcome, turn: &mut Turn) {
        let Some(t) = self.tracker.get_mut(parcel) else {
            return;
        };
        if outcome.status == DivertStatus::Acked {
            let (lane, revision) = (t.lane, t.revision);
            t.acknowledged(lane, revision);
            t.take_back_tries = 0;
        }
        t.not_taken = outcome.status != DivertStatus::Acked;
        t.retry_at = turn.now.instant + TAKE_BACK_GAP;
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        // The PLC still holds an earlier release for the parcel: the change away from it
        // could not be carried out, and the record's lane is not where the parcel may go.
        let release_stands = (outcome.status != DivertStatus::Acked)
            .then_some(t.committed_lane)
            .flatten()
            .filter(|&c| c != t.lane && self.ctx.lanes.role_of(c) == Some(LaneRole::Release));
        let status = outcome.status;
        let record = self.parcel_record(t, outcome);
        let late = record.divert.late;
        let waybill = record.waybill.clone();
        let decided = (t.lane, t.decision.role, t.revision);
        turn.record(record);
        if let Some(c) = release_stands {
            self.alert(
                Some(parcel),
                waybill.clone(),
                AlertKind::LateInstruction,
                format!(
                    "revision {} sends the parcel to lane {} ({}), but its command was not taken ({}): the PLC holds an earlier release command (lane {c}), so the parcel may reach the release lane",
                    decided.2,
                    decided.0,
                    decided.1.as_str(),
                    status.as_str(),
                ),
                turn,
            );
        }
        if late {
            self.alert(
                Some(parcel),
                waybill,
                AlertKind::LateDivert,
                "the PLC acknowledged the divert after the parcel's deadline".into(),
                turn,
            );
        }
    }

    pub(super) fn on_plc(&mut self, ev: PlcEvent, turn: &mut Turn) {
        match ev {
            PlcEvent::Outcome {
                parcel,
                revision,
                lane,
                outcome,
                at,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                let Some(t) = self.tracker.get_mut(parcel) else {
                    return;
                };
                // An answer to a revision since superseded is not recorded, but the lane it
                // acknowledges is the PLC's until a newer command is taken.
                if t.revision != revision {
                    if outcome.status == DivertStatus::Acked {
                        t.acknowledged(lane, revision);
                    }
                    return;
                }
                // Latency of the first decision only: a re-commit is timed by its instruction.
                if outcome.status == DivertStatus::Acked && revision == 0 {
                    self.ctx
                        .metrics
                        .decision_latency
                        .record(at.into_std().saturating_duration_since(t.scanned));
                }
                self.record_decision(parcel, outcome, turn);
            }
            PlcEvent::Disposition(d) => self.on_disposition(d, turn),
            PlcEvent::DispositionsMissed(n) => self.alert(
                None,
                None,
                AlertKind::DispositionsMissed,
                format!("{n} disposition(s) overwritten in the PLC's ring before they were read"),
                turn,
            ),
            PlcEvent::LateAck { written, after } => self.on_late_ack(written, after, turn),
            PlcEvent::CommandsDropped(dropped) => {
                for w in dropped {
                    let parcel = (w.command.parcel != 0).then_some(w.command.parcel);
                    let waybill = parcel
                        .and_then(|p| self.tracker.get(p))
                        .and_then(|t| t.waybill().map(str::to_string));
                    self.alert(
                        parcel,
                        waybill,
                        AlertKind::CommandsDropped,
                        format!(
                            "the PLC restarted before acknowledging command {} (lane {}): it can no longer take it, so the parcel gets the PLC's default",
                            w.seq, w.command.lane
                        ),
                        turn,
                    );
                }
            }
        }
    }

    /// The PLC took a command whose job had ended without its acknowledge: the parcel's
    /// record says `timeout` (or `link_down`), so the journal must say where it may now go.
    fn on_late_ack(
        &mut self,
        w: crate::floor::Written,
        after: std::time::Duration,
        turn: &mut Turn,
    ) {
        let parcel = (w.command.parcel != 0).then_some(w.command.parcel);
        let lane = w.command.lane;
        let role = self.ctx.lanes.role_of(lane);
        let tracked = parcel.and_then(|p| self.tracker.get_mut(p));
        let waybill = tracked
            .as_ref()
            .and_then(|t| t.waybill().map(str::to_string));
        // The PLC holds the lane of the command it took now, unless it acknowledged a newer
        // revision already: the parcel's current one, or one since superseded (a take-back
        // tried again on the tick supersedes the try whose acknowledge comes late). The
        // current command counts as taken if the PLC holds its lane.
        if let (Some(t), Some(revision)) = (tracked, w.command.revision) {
            t.acknowledged(lane, revision);
            if t.committed_lane == Some(t.lane) {
                t.not_taken = false;
            }
        }
        let whose = match (parcel, w.command.revision) {
            (Some(p), Some(r)) => format!("parcel {p} (revision {r})"),
            (Some(p), None) => format!("parcel {p}, written before the gateway's restart"),
            (None, _) => "a command written before the gateway's restart".to_string(),
        };
        let lane_text = if lane == 0 {
            String::new()
        } else {
            format!(
                " to lane {lane} ({})",
                role.map_or("no configured role", LaneRole::as_str)
            )
        };
        self.alert(
            parcel,
            waybill,
            AlertKind::LateAcknowledge,
            format!(
                "the PLC acknowledged command {} for {whose}{lane_text} {} ms after it was written, after the gateway had given up waiting: the parcel may go there",
                w.seq,
                after.as_millis()
            ),
            turn,
        );
    }
}
