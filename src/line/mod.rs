//! One sorting line's pipeline: scan in, decision, divert job out; acknowledges and
//! dispositions back; records to the journal.
//!
//! The decision path is this task's handling of a scan: a lookup in the clearance table (one
//! shard's read lock while one entry is copied out, see [`crate::rules::clearance`]),
//! [`crate::rules::decide`], a look at the lane states, then a non-blocking
//! hand-off to the PLC task. It never waits on the network, the disk or a device. If the PLC
//! queue is full the parcel is recorded as `overload` at once; the PLC's own default sends it
//! to the exception lane.
//!
//! Lanes the PLC reports full or disabled are not chosen; a parcel falls back to a stricter
//! lane (release → hold, inspection → hold, hold → exception), never towards release.
//!
//! [`tracking`] follows each parcel to its disposition; new clearance information for a
//! tracked waybill re-decides it before its deadline, or raises an alert after it.

pub mod duplicates;
mod earlier;
pub mod tracking;
pub mod xray;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use bondline_devices::contract::{
    AlertKind, AlertRecord, Anomaly, DispositionKind, DispositionRecord, DivertOutcome,
    DivertStatus, FiredRule, ImageRecord, LaneRole, ParcelRecord, ReadOutcome, XrayJoin,
    XrayRecord, SCHEMA,
};
use bondline_devices::plc::{Disposition, DispositionCode};
use bondline_devices::xray::XrayEvent;
use tokio::sync::{broadcast, mpsc};
use tracing::{error, warn};

use crate::config::LaneMap;
use crate::fieldbus::plc::{DivertJob, LaneStates, PlcEvent};
use crate::fieldbus::scanner::ScanEvent;
use crate::fieldbus::xray::XrayMsg;
use crate::journal::intents::Recent;
use crate::journal::RecordSink;
use crate::metrics::{unix_ms, Metrics};
use crate::rules::engine::{RuleSet, XrayInput};
use crate::rules::{decide, ClearanceTable, Decision, Scan, ScanRead};
use tracking::{Change, Geometry, Tracked, Tracker};

/// New clearance information, from the uplink to every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearanceChange {
    /// A declaration or instruction for this waybill: its tracked parcels are decided again
    /// before their deadline; past it, a changed lane raises a `late_instruction` alert.
    Waybill(String),
    /// An enterprise notice or a new rule set: every tracked parcel before its deadline is
    /// decided again. Parcels past it went where the rules in force sent them; no alert.
    All,
}

/// What a line task needs besides its channels.
pub struct LineCtx {
    pub gateway: String,
    pub line: String,
    pub lanes: LaneMap,
    pub geometry: Geometry,
    pub table: Arc<ClearanceTable>,
    /// The rule set in force; replaced whole on a reload.
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    pub lane_states: Arc<LaneStates>,
    pub metrics: Arc<Metrics>,
    /// Whether the PLC reports dispositions (its profile has a status section).
    pub dispositions: bool,
    /// Whether the line's scanner station weighs parcels (its profile has a weight field).
    pub weighing: bool,
    /// The time zone consumers' days and windows are counted in.
    pub calendar: crate::rules::calendar::Calendar,
    /// Beats on every tick of the line's loop, for the service watchdog.
    pub beat: crate::service::Beat,
    /// The line's X-ray scanner (its name) and where its tunnel is.
    pub xray: Option<(String, crate::config::XrayGeometry)>,
    /// The line's cameras: requests leave with `try_send`, never waiting.
    pub cameras: Option<crate::camera::LineCameras>,
    /// What the journal holds of parcels an earlier run handled, by parcel id: the PLC's
    /// dispositions of those parcels are recorded with their waybill and lane, and one with
    /// no decision record at all raises `unexplained_disposition`.
    pub recent: HashMap<u32, Recent>,
    /// Waybills released on any line of the gateway (the duplicate-label rule).
    pub released: Arc<duplicates::Released>,
}

/// The line task's channels.
pub struct LineIo {
    pub scans: mpsc::Receiver<ScanEvent>,
    pub plc: mpsc::Sender<DivertJob>,
    pub plc_events: mpsc::UnboundedReceiver<PlcEvent>,
    /// Clearance that changed.
    pub changes: broadcast::Receiver<ClearanceChange>,
    pub sink: RecordSink,
    /// Anomalies for the uplink to send at once; full means the uplink is behind, and the
    /// parcel's record carries the same facts.
    pub anomalies: mpsc::Sender<Anomaly>,
    /// Verdicts from the line's X-ray scanner.
    pub xray: Option<mpsc::UnboundedReceiver<XrayMsg>>,
    /// Processed images from the line's X-ray scanner, to be joined to parcels.
    pub images: Option<mpsc::Receiver<ImageRecord>>,
}

/// The next message of an optional channel; never ready once it is gone.
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_unbounded<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs until the scanner side closes its channel and the PLC has answered every job sent.
pub async fn run(mut ctx: LineCtx, mut io: LineIo) {
    let recent = std::mem::take(&mut ctx.recent);
    let mut line = Line {
        earlier: earlier::Earlier::from_journal(recent),
        // Parcel ids start at a random point so ids from before a restart, which the PLC may
        // still be tracking, are not reused at once.
        next_parcel: rand::random::<u32>() >> 1,
        tracker: Tracker::default(),
        joiner: xray::Joiner::default(),
        in_flight: 0,
        ctx,
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut scanning = true;
    loop {
        tokio::select! {
            scan = io.scans.recv(), if scanning => match scan {
                Some(scan) => line.on_scan(scan, &io),
                None => scanning = false,
            },
            ev = io.plc_events.recv() => match ev {
                Some(ev) => line.on_plc(ev, &io.sink),
                None => break,
            },
            w = io.changes.recv() => match w {
                Ok(ClearanceChange::Waybill(w)) => line.on_change(&w, &io),
                Ok(ClearanceChange::All) => line.on_change_all(&io),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(line = %line.ctx.line, missed = n, "clearance changes missed; parcels keep their decisions");
                }
                Err(broadcast::error::RecvError::Closed) => {}
            },
            msg = next_unbounded(&mut io.xray) => match msg {
                Some(msg) => line.on_xray(msg, &io),
                None => io.xray = None,
            },
            image = next(&mut io.images) => match image {
                Some(image) => line.on_image(image, &io.sink),
                None => io.images = None,
            },
            _ = tick.tick() => {
                line.ctx.beat.beat();
                line.expire(&io.sink);
            }
        }
        if !scanning && line.in_flight == 0 {
            break;
        }
    }
    // What is still queued is taken in, not dropped: verdicts already left the scanner's
    // ring and images their spool. Images still waiting for a verdict are recorded without a
    // parcel rather than lost.
    if let Some(mut rx) = io.xray.take() {
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            line.on_xray(msg, &io);
        }
    }
    if let Some(mut rx) = io.images.take() {
        rx.close();
        while let Ok(image) = rx.try_recv() {
            line.on_image(image, &io.sink);
        }
    }
    for image in line.joiner.drain_waiting() {
        io.sink.push(image);
    }
}

struct Line {
    ctx: LineCtx,
    /// Parcels no longer tracked: an earlier run's, and this run's once tracking ended.
    earlier: earlier::Earlier,
    next_parcel: u32,
    tracker: Tracker,
    /// X-ray verdicts and images joined to parcels.
    joiner: xray::Joiner,
    /// Jobs sent to the PLC and not yet answered.
    in_flight: usize,
}

impl Line {
    /// Decides a parcel; `prior` is its previous decision's inputs when it is decided again.
    fn decide(
        &self,
        read: &ScanRead,
        weight_g: Option<u32>,
        scanned_at: SystemTime,
        prior: Option<&bondline_devices::contract::DecisionInputs>,
        xray: XrayInput,
    ) -> (Decision, u16) {
        let scan = Scan {
            read,
            weight_g,
            weighing: self.ctx.weighing,
            day: self.ctx.calendar.day_of(unix_ms(scanned_at)),
            calendar: &self.ctx.calendar,
            prior,
            xray,
        };
        let mut decision = {
            // One rule set for the whole decision, whatever a reload does meanwhile.
            let rules = self
                .ctx
                .rules
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
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

    fn on_scan(&mut self, scan: ScanEvent, io: &LineIo) {
        self.next_parcel = self.next_parcel.wrapping_add(1);
        let parcel = self.next_parcel;
        let xray = if self.ctx.xray.is_some() {
            XrayInput::Pending
        } else {
            XrayInput::NotOnLine
        };
        let (mut decision, mut lane) = self.decide(&scan.read, scan.weight_g, scan.at, None, xray);
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
                let day = self.ctx.calendar.day_of(unix_ms(scan.at));
                inputs.counted = self.ctx.table.count(w, day);
                inputs.counted_day = inputs.counted.then_some(day);
            }
        }
        Metrics::add(&self.ctx.metrics.parcels, 1);
        self.ctx.metrics.count_lane(decision.role);
        let deadline = self.ctx.geometry.deadline(scan.instant);
        self.tracker.insert(Tracked {
            parcel,
            read: scan.read,
            weight_g: scan.weight_g,
            scanned_at: scan.at,
            scanned: scan.instant,
            deadline,
            decision,
            decided_at: SystemTime::now(),
            lane,
            revision: 0,
            committed_lane: None,
            disposed_lane: None,
            xray,
            xray_settled: false,
            lane_camera_asked: false,
        });
        self.anomaly(parcel, io);
        self.send(parcel, io);
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
                cams.request(captures, &io.sink, &self.ctx.metrics);
            }
        }
        if let Some(detail) = duplicate {
            let detail = format!("{detail}, camera snapshots [{}]", snapshots.join(", "));
            self.duplicate_alert(parcel, detail, &io.sink);
        }
    }

    /// The duplicate-label rule (see [`duplicates`]): a release of a waybill already released
    /// on this gateway is admitted only as the same parcel come round again. Otherwise the
    /// decision becomes inspection (or stricter, if that lane is unavailable) under the rule
    /// `duplicate_label`, and the evidence of both parcels is returned for the alert. A
    /// parcel once released and then decided to another lane keeps its mark: the command to
    /// release may still have reached the PLC. Its disposition in another lane lets the same
    /// parcel be released on a later scan.
    fn one_release(
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
    fn duplicate_alert(&self, parcel: u32, detail: String, sink: &RecordSink) {
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
            sink,
        );
    }

    /// Asks the lane cameras for parcels whose divert deadline has passed: the lane is final
    /// then (see [`crate::camera::schedule`]). The lane is the one the PLC acknowledged, or
    /// the decided one when no acknowledgement came.
    fn ask_lane_cameras(&mut self, sink: &RecordSink) {
        let Some(cams) = &self.ctx.cameras else {
            return;
        };
        let now = Instant::now();
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
        cams.request(captures, sink, &self.ctx.metrics);
    }

    /// Sends the parcel's current decision as an anomaly if a rule flagged it.
    fn anomaly(&self, parcel: u32, io: &LineIo) {
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        if !t.decision.is_anomaly() {
            return;
        }
        let Some(inputs) = t.decision.inputs.clone() else {
            return;
        };
        let anomaly = Anomaly {
            schema: SCHEMA,
            anomaly_id: format!(
                "{}-{}-{}-{}",
                self.ctx.gateway, self.ctx.line, parcel, t.revision
            ),
            gateway: self.ctx.gateway.clone(),
            line: self.ctx.line.clone(),
            parcel,
            waybill: t.waybill().map(str::to_string),
            lane: t.lane,
            lane_role: t.decision.role,
            rule_set: t.decision.rule_set.clone(),
            rules_fired: fired_rules(&t.decision),
            inputs,
            scanned_at_ms: unix_ms(t.scanned_at),
            at_ms: unix_ms(t.decided_at),
        };
        Metrics::add(&self.ctx.metrics.anomalies, 1);
        if io.anomalies.try_send(anomaly).is_err() {
            Metrics::add(&self.ctx.metrics.anomalies_dropped, 1);
            warn!(line = %self.ctx.line, parcel, "anomaly queue full; the parcel's record carries the anomaly");
        }
    }

    /// Hands the parcel's current decision to the PLC, or records why it could not.
    fn send(&mut self, parcel: u32, io: &LineIo) {
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        // A release is written ahead: its command waits for the decision to be durable.
        let durable = (t.decision.role == LaneRole::Release).then(|| {
            let outcome = DivertOutcome {
                status: DivertStatus::Interrupted,
                plc_seq: None,
                detail: Some(
                    "the gateway stopped after storing this decision and before recording the PLC's answer"
                        .into(),
                ),
                at_ms: unix_ms(SystemTime::now()),
                late: false,
            };
            io.sink.push_intent(self.parcel_record(t, outcome))
        });
        let job = DivertJob {
            parcel,
            lane: t.lane,
            revision: t.revision,
            deadline: t.deadline.into(),
            durable,
        };
        match io.plc.try_send(job) {
            Ok(()) => self.in_flight += 1,
            Err(_) => {
                warn!(line = %self.ctx.line, parcel, "PLC queue full; parcel left to the PLC default");
                Metrics::add(&self.ctx.metrics.diverts_failed, 1);
                let outcome = DivertOutcome {
                    status: DivertStatus::Overload,
                    plc_seq: None,
                    detail: Some("PLC command queue full".into()),
                    at_ms: unix_ms(SystemTime::now()),
                    late: false,
                };
                self.record_decision(parcel, outcome, &io.sink);
            }
        }
    }

    fn record_decision(&mut self, parcel: u32, outcome: DivertOutcome, sink: &RecordSink) {
        let Some(t) = self.tracker.get_mut(parcel) else {
            return;
        };
        if outcome.status == DivertStatus::Acked {
            t.committed_lane = Some(t.lane);
        }
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        let record = self.parcel_record(t, outcome);
        let late = record.divert.late;
        let waybill = record.waybill.clone();
        sink.push(record);
        if late {
            self.alert(
                Some(parcel),
                waybill,
                AlertKind::LateDivert,
                "the PLC acknowledged the divert after the parcel's deadline".into(),
                sink,
            );
        }
    }

    /// The parcel record of a tracked parcel's current decision with `outcome`.
    fn parcel_record(&self, t: &Tracked, outcome: DivertOutcome) -> ParcelRecord {
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

    fn on_plc(&mut self, ev: PlcEvent, sink: &RecordSink) {
        match ev {
            PlcEvent::Outcome {
                parcel,
                revision,
                outcome,
                at,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                let Some(t) = self.tracker.get(parcel) else {
                    return;
                };
                // An answer to a revision that has since been superseded changes nothing.
                if t.revision != revision {
                    return;
                }
                // Latency of the first decision only: a re-commit is timed by its instruction.
                if outcome.status == DivertStatus::Acked && revision == 0 {
                    self.ctx
                        .metrics
                        .decision_latency
                        .record(at.into_std().saturating_duration_since(t.scanned));
                }
                self.record_decision(parcel, outcome, sink);
            }
            PlcEvent::Disposition(d) => self.on_disposition(d, sink),
            PlcEvent::DispositionsMissed(n) => self.alert(
                None,
                None,
                AlertKind::DispositionsMissed,
                format!("{n} disposition(s) overwritten in the PLC's ring before they were read"),
                sink,
            ),
            PlcEvent::LateAck { written, after } => self.on_late_ack(written, after, sink),
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
                        sink,
                    );
                }
            }
        }
    }

    /// The PLC took a command whose job had ended without its acknowledge: the parcel's
    /// record says `timeout` (or `link_down`), so the journal must say where it may now go.
    fn on_late_ack(
        &mut self,
        w: crate::fieldbus::handshake::Written,
        after: std::time::Duration,
        sink: &RecordSink,
    ) {
        let parcel = (w.command.parcel != 0).then_some(w.command.parcel);
        let lane = w.command.lane;
        let role = self.ctx.lanes.role_of(lane);
        let tracked = parcel.and_then(|p| self.tracker.get_mut(p));
        let waybill = tracked
            .as_ref()
            .and_then(|t| t.waybill().map(str::to_string));
        // The command the PLC took is the parcel's current one: it holds that lane now.
        if let Some(t) = tracked {
            if w.command.revision == Some(t.revision) {
                t.committed_lane = Some(lane);
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
            sink,
        );
    }

    fn on_disposition(&mut self, d: Disposition, sink: &RecordSink) {
        Metrics::add(&self.ctx.metrics.dispositions, 1);
        let t = self.tracker.dispose(d.parcel, d.lane).cloned();
        let kind = match d.code {
            DispositionCode::Sorted => DispositionKind::Sorted,
            DispositionCode::Overflow => DispositionKind::Overflow,
            DispositionCode::NoDestination => DispositionKind::NoDestination,
            DispositionCode::Lost => DispositionKind::Lost,
            DispositionCode::FailSafe => DispositionKind::FailSafe,
        };
        let role = self.ctx.lanes.role_of(d.lane);
        let Some(t) = t else {
            // Not this run's parcel: the journal may know it from an earlier run.
            return self.on_earlier_disposition(d, kind, role, sink);
        };
        let waybill = t.waybill().map(str::to_string);
        if let Some(w) = &waybill {
            self.ctx
                .released
                .disposed(w, &self.ctx.line, d.parcel, d.lane, role);
        }
        sink.push(self.disposition_record(&d, kind, role, waybill.clone(), t.committed_lane));
        if role == Some(LaneRole::Release) && t.decision.role != LaneRole::Release {
            let detail = format!(
                "the PLC reports parcel {} in release lane {} without a release decision",
                d.parcel, d.lane
            );
            self.released_without_decision(d.parcel, waybill, detail, sink);
        } else if kind == DispositionKind::Sorted {
            if let Some(c) = t.committed_lane.filter(|c| *c != d.lane) {
                self.alert(
                    Some(d.parcel),
                    waybill,
                    AlertKind::WrongLane,
                    format!("commanded lane {c}, the PLC reports lane {}", d.lane),
                    sink,
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
        sink: &RecordSink,
    ) {
        Metrics::add(&self.ctx.metrics.released_without_decision, 1);
        error!(line = %self.ctx.line, parcel, "PLC reports a parcel in the release lane without a release decision");
        self.alert(
            Some(parcel),
            waybill,
            AlertKind::ReleasedWithoutDecision,
            detail,
            sink,
        );
    }

    fn disposition_record(
        &self,
        d: &Disposition,
        kind: DispositionKind,
        role: Option<LaneRole>,
        waybill: Option<String>,
        commanded_lane: Option<u16>,
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
            at_ms: unix_ms(SystemTime::now()),
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
        sink: &RecordSink,
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
        sink.push(self.disposition_record(&d, kind, role, waybill.clone(), commanded));
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
                    sink,
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
                self.released_without_decision(d.parcel, waybill, detail, sink);
            }
            Some(_) => {}
        }
    }

    /// New clearance that may concern any parcel: re-decide every one before its deadline.
    fn on_change_all(&mut self, io: &LineIo) {
        for parcel in self.tracker.before_deadline(Instant::now()) {
            self.redecide(parcel, io);
        }
    }

    /// Decides a tracked parcel again; re-commits it if its lane changes.
    fn redecide(&mut self, parcel: u32, io: &LineIo) {
        self.redecide_with(parcel, false, io);
    }

    /// Like [`Line::redecide`]; with `flag_matters`, a decision that newly flags the parcel
    /// is re-committed even to the same lane, so its record and anomaly name the rule (an
    /// X-ray verdict on a parcel already bound for inspection while it waited for it).
    fn redecide_with(&mut self, parcel: u32, flag_matters: bool, io: &LineIo) {
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        let (mut decision, mut lane) = self.decide(
            &t.read,
            t.weight_g,
            t.scanned_at,
            t.decision.inputs.as_ref(),
            t.xray,
        );
        let read = t.read.clone();
        let (weight_g, scanned_at) = (t.weight_g, t.scanned_at);
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
        }
        // Decided while the clearance table was loading: the real decision replaces the
        // stand-in hold (its record names the rule), and the parcel joins its consumer's
        // history now, as it would have at its scan.
        let was_loading = t.decision.rule == crate::rules::STATE_LOADING
            && decision.rule != crate::rules::STATE_LOADING;
        if was_loading {
            if let (ScanRead::Waybill(w), Some(inputs)) = (&read, decision.inputs.as_mut()) {
                if inputs.consumer.is_some() && !inputs.counted {
                    let day = self.ctx.calendar.day_of(unix_ms(scanned_at));
                    inputs.counted = self.ctx.table.count(w, day);
                    inputs.counted_day = inputs.counted.then_some(day);
                }
            }
        }
        let newly_flagged =
            flag_matters && decision.is_anomaly() && decision.rule != t.decision.rule;
        if lane == t.disposed_lane.unwrap_or(t.lane) && !newly_flagged && !was_loading {
            return;
        }
        Metrics::add(&self.ctx.metrics.recommits, 1);
        if let Some(t) = self.tracker.get_mut(parcel) {
            self.ctx.metrics.move_lane(t.decision.role, decision.role);
            t.decision = decision;
            t.decided_at = SystemTime::now();
            t.lane = lane;
            t.revision += 1;
        }
        self.anomaly(parcel, io);
        if let Some(detail) = duplicate {
            self.duplicate_alert(parcel, detail, &io.sink);
        }
        self.send(parcel, io);
    }

    /// New clearance information for `waybill`: re-decide tracked parcels before their
    /// deadline, alert for those past it whose lane would now differ.
    fn on_change(&mut self, waybill: &str, io: &LineIo) {
        let now = Instant::now();
        for change in self.tracker.changes_for(waybill, now) {
            let parcel = match change {
                Change::Redecide(p) => {
                    self.redecide(p, io);
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
                t.scanned_at,
                t.decision.inputs.as_ref(),
                t.xray,
            );
            // Where the parcel is, or is going: the PLC's word once it has spoken.
            let current = t.disposed_lane.unwrap_or(t.lane);
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
                &io.sink,
            );
        }
    }

    /// Stops tracking parcels overdue for a disposition (alerting, where the PLC reports
    /// dispositions). Without dispositions a parcel stays tracked until then anyway, so that
    /// a late instruction still finds it for an alert.
    fn expire(&mut self, sink: &RecordSink) {
        self.expire_xray(sink);
        self.ask_lane_cameras(sink);
        let overdue = self
            .tracker
            .expire(Instant::now(), self.ctx.geometry.disposition_timeout);
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
                sink,
            );
        }
    }

    /// A message from the line's X-ray scanner.
    fn on_xray(&mut self, msg: XrayMsg, io: &LineIo) {
        match msg {
            XrayMsg::Verdict { device, event } => self.on_verdict(device, event, io),
            XrayMsg::Lost { device, detail } => self.alert(
                None,
                None,
                AlertKind::XrayEventsLost,
                format!("X-ray scanner {device}: {detail}"),
                &io.sink,
            ),
        }
    }

    /// Joins a verdict to a parcel (see [`xray`]) and decides the parcel again with it.
    fn on_verdict(&mut self, device: String, event: XrayEvent, io: &LineIo) {
        let Some((_, geometry)) = self.ctx.xray else {
            return;
        };
        let now = Instant::now();
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
                                self.apply_verdict(p, &event, io);
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
                    io.sink.push(image);
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
        io.sink
            .push(self.xray_record(&device, join, parcel, waybill.clone(), Some(&event)));
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
                    &io.sink,
                );
            }
            return;
        };
        self.apply_verdict(parcel, &event, io);
    }

    /// Gives `event` to `parcel` and decides it again before its deadline; past it, a flag
    /// on a released parcel raises `late_xray_mark`.
    fn apply_verdict(&mut self, parcel: u32, event: &XrayEvent, io: &LineIo) {
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
        if Instant::now() < t.deadline {
            self.redecide_with(parcel, true, io);
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
                &io.sink,
            );
        }
    }

    /// The record of one join outcome; `event` is the verdict, absent for `no_result`.
    fn xray_record(
        &self,
        device: &str,
        join: XrayJoin,
        parcel: Option<u32>,
        waybill: Option<String>,
        event: Option<&XrayEvent>,
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
            at_ms: unix_ms(SystemTime::now()),
        }
    }

    /// An image from the evidence pipeline: recorded once its scan is joined.
    fn on_image(&mut self, image: ImageRecord, sink: &RecordSink) {
        if let Some(image) = self.joiner.image(image, Instant::now()) {
            sink.push(image);
        }
    }

    /// Parcels past their deadline without a verdict are recorded as such (they were not
    /// released: release needs a clear verdict); images that waited too long are recorded
    /// without a parcel.
    fn expire_xray(&mut self, sink: &RecordSink) {
        let Some((device, _)) = &self.ctx.xray else {
            return;
        };
        let now = Instant::now();
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
            sink.push(self.xray_record(device, XrayJoin::NoResult, Some(parcel), waybill, None));
        }
        for image in self.joiner.expire(now) {
            sink.push(image);
        }
    }

    fn alert(
        &self,
        parcel: Option<u32>,
        waybill: Option<String>,
        alert: AlertKind,
        detail: String,
        sink: &RecordSink,
    ) {
        Metrics::add(&self.ctx.metrics.alerts, 1);
        warn!(line = %self.ctx.line, ?parcel, ?alert, %detail, "alert");
        sink.push(AlertRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: self.ctx.gateway.clone(),
            line: self.ctx.line.clone(),
            parcel,
            waybill,
            alert,
            detail,
            at_ms: unix_ms(SystemTime::now()),
        });
    }
}

/// The next stricter lane role when a lane is unavailable; never towards release.
fn stricter(role: LaneRole) -> Option<LaneRole> {
    match role {
        LaneRole::Release | LaneRole::Inspection => Some(LaneRole::Hold),
        LaneRole::Hold => Some(LaneRole::Exception),
        LaneRole::Exception => None,
    }
}

fn fired_rules(d: &Decision) -> Vec<FiredRule> {
    d.fired
        .iter()
        .map(|f| FiredRule {
            rule: f.rule.clone(),
            target: f.target,
            reason: f.reason.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_only_ever_gets_stricter() {
        for role in LaneRole::ALL {
            let mut r = role;
            while let Some(next) = stricter(r) {
                assert_ne!(next, LaneRole::Release);
                r = next;
            }
            assert_eq!(r, LaneRole::Exception);
        }
    }
}
