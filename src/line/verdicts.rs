//! The line's side of the X-ray join: verdicts and images from the line's X-ray scanner
//! handed to the pure [`xray::Joiner`], the matched verdict given to its parcel (which is
//! decided again with it before its deadline), every join outcome recorded, and flags that
//! find no parcel or come too late alerted. The join's rules are [`xray`]'s.

use bondline_devices::contract::{AlertKind, ImageRecord, LaneRole, XrayJoin};
use bondline_devices::xray::XrayEvent;
use tracing::warn;

use super::effects::Turn;
use super::{xray, Line};
use crate::floor::XrayMsg;
use crate::metrics::{unix_ms, Metrics};
use crate::rules::engine::XrayInput;

impl Line {
    /// A message from the line's X-ray scanner.
    pub(super) fn on_xray(&mut self, msg: XrayMsg, turn: &mut Turn) {
        match msg {
            XrayMsg::Verdict { device, event } => self.on_verdict(device, event, turn),
            XrayMsg::Lost { device, detail } => self.alert(
                None,
                None,
                AlertKind::XrayEventsLost,
                format!("X-ray scanner {device}: {detail}"),
                turn,
            ),
        }
    }

    /// Joins a verdict to a parcel (see [`xray`]) and decides the parcel again with it.
    fn on_verdict(&mut self, device: String, event: XrayEvent, turn: &mut Turn) {
        let Some((_, geometry)) = self.ctx.xray else {
            return;
        };
        let now = turn.now.instant;
        let window = geometry.window.as_millis() as u64;
        // The same scan id with another tunnel-entry time is a new passage: the scanner
        // restarted its numbering.
        let known = self
            .joiner
            .joined(event.scan_id)
            .filter(|j| j.entered_at_ms.abs_diff(event.entered_at_ms) <= window);
        let (join, parcel) = match known {
            Some(j) => (XrayJoin::Update, j.parcel),
            None => {
                let offset = geometry.offset.as_millis() as u64;
                // Every tracked parcel counts, joined or not: see `xray::pick`.
                let candidates = self.tracker.iter().map(|t| {
                    (
                        t.parcel,
                        unix_ms(t.scanned_at) + offset,
                        // Past its deadline without a verdict, a parcel no longer waits.
                        t.xray == XrayInput::Pending && !t.xray_settled,
                    )
                });
                let (join, found) = match xray::pick(candidates, event.entered_at_ms, window) {
                    xray::Pick::One(p) => (XrayJoin::Matched, Some(p)),
                    xray::Pick::None => (XrayJoin::NoParcel, None),
                    // A flag is never dropped: it goes to the parcel it is closest to.
                    xray::Pick::Taken(p) if event.result.flags() => (XrayJoin::Update, Some(p)),
                    xray::Pick::Taken(p) => {
                        warn!(line = %self.ctx.line, scan_id = event.scan_id, parcel = p, "X-ray verdict's closest parcel already has its verdict; given to none");
                        (XrayJoin::NoParcel, None)
                    }
                    xray::Pick::Ambiguous { waiting, joined } => {
                        warn!(line = %self.ctx.line, scan_id = event.scan_id, ?waiting, ?joined, "X-ray verdict could belong to several parcels; given to none");
                        if event.result.flags() {
                            // Those waiting go to inspection without a verdict of their own;
                            // those with one get the flag, so none can be released on it.
                            for p in joined {
                                self.apply_verdict(p, &event, turn);
                            }
                        }
                        (XrayJoin::Ambiguous, None)
                    }
                };
                let waybill = found
                    .and_then(|p| self.tracker.get(p))
                    .and_then(|t| t.waybill().map(str::to_string));
                let joined = xray::Joined {
                    parcel: found,
                    waybill,
                    entered_at_ms: event.entered_at_ms,
                };
                for image in self.joiner.join(event.scan_id, joined, now) {
                    turn.record(image);
                }
                (join, found)
            }
        };
        let waybill = self
            .joiner
            .joined(event.scan_id)
            .and_then(|j| j.waybill.clone());
        match join {
            XrayJoin::NoParcel | XrayJoin::Ambiguous => {
                Metrics::add(&self.ctx.metrics.xray_unmatched, 1)
            }
            _ => Metrics::add(&self.ctx.metrics.xray_matched, 1),
        }
        let record = self.xray_record(
            &device,
            join,
            parcel,
            waybill.clone(),
            Some(&event),
            turn.now.wall,
        );
        turn.record(record);
        let Some(parcel) = parcel else {
            if event.result.flags() {
                self.alert(
                    None,
                    None,
                    AlertKind::XrayWithoutParcel,
                    format!(
                        "X-ray scanner {device} flagged scan {} ({}) and {}",
                        event.scan_id,
                        event.result.as_str(),
                        if join == XrayJoin::Ambiguous {
                            "it could belong to more than one parcel: none is released on it (those waiting go to inspection, those with a verdict were flagged too)"
                        } else {
                            "no tracked parcel was in the tunnel then"
                        }
                    ),
                    turn,
                );
            }
            return;
        };
        self.apply_verdict(parcel, &event, turn);
    }

    /// Gives `event` to `parcel` and decides it again before its deadline; past it, a flag
    /// on a released parcel raises `late_xray_mark`.
    fn apply_verdict(&mut self, parcel: u32, event: &XrayEvent, turn: &mut Turn) {
        let Some(t) = self.tracker.get_mut(parcel) else {
            return;
        };
        let waybill = t.waybill().map(str::to_string);
        // Flags stick: a later clear (a repeated automatic verdict) does not undo a suspect
        // verdict or an officer's mark.
        let flagged = matches!(t.xray, XrayInput::Verdict(r) if r.flags());
        if !flagged || event.result.flags() {
            t.xray = XrayInput::Verdict(event.result);
        }
        t.xray_settled = true;
        if turn.now.instant < t.deadline {
            self.redecide_with(parcel, true, turn);
            return;
        }
        // Past the deadline the parcel went where it went; a flag on a released parcel is
        // for customs to act on.
        let current = t.disposed_lane.or(t.committed_lane).unwrap_or(t.lane);
        if event.result.flags() && self.ctx.lanes.role_of(current) == Some(LaneRole::Release) {
            self.alert(
                Some(parcel),
                waybill,
                AlertKind::LateXrayMark,
                format!(
                    "X-ray verdict {} for scan {} came after the divert deadline; the parcel went to release lane {current}",
                    event.result.as_str(),
                    event.scan_id
                ),
                turn,
            );
        }
    }

    /// An image from the evidence pipeline: recorded once its scan is joined.
    pub(super) fn on_image(&mut self, image: ImageRecord, turn: &mut Turn) {
        if let Some(image) = self.joiner.image(image, turn.now.instant) {
            turn.record(image);
        }
    }

    /// Parcels past their deadline without a verdict are recorded as such (they were not
    /// released: release needs a clear verdict); images that waited too long are recorded
    /// without a parcel.
    pub(super) fn expire_xray(&mut self, turn: &mut Turn) {
        let Some((device, _)) = &self.ctx.xray else {
            return;
        };
        let now = turn.now.instant;
        let missing: Vec<u32> = self
            .tracker
            .iter()
            .filter(|t| !t.xray_settled && now >= t.deadline)
            .map(|t| t.parcel)
            .collect();
        for parcel in missing {
            let Some(t) = self.tracker.get_mut(parcel) else {
                continue;
            };
            t.xray_settled = true;
            Metrics::add(&self.ctx.metrics.xray_missing, 1);
            let waybill = t.waybill().map(str::to_string);
            turn.record(self.xray_record(
                device,
                XrayJoin::NoResult,
                Some(parcel),
                waybill,
                None,
                turn.now.wall,
            ));
        }
        for image in self.joiner.expire(now) {
            turn.record(image);
        }
    }
}
