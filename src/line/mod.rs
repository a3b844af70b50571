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
//!
//! [`Line`] is a state machine: each handler takes one input and the turn's time and
//! returns effects (records, divert commands with their write-ahead intent, anomalies,
//! snapshot requests; see [`effects`]). It reads no clock and holds no channel. [`run`] is
//! its I/O: it waits for the next input, reads the clocks once, calls the handler and carries
//! the effects out in order. The tests drive the machine directly, without sockets, over
//! arbitrary interleavings of scans, platform orders, lane states, PLC answers and time.

pub mod duplicates;
mod earlier;
pub mod effects;
pub mod tracking;
pub mod xray;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

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
use crate::floor::{
    ClearanceChange, DivertJob, LaneStates, PlcEvent, ScanEvent, ScanRead, XrayMsg,
};
use crate::journal::intents::Recent;
use crate::journal::RecordSink;
use crate::metrics::{unix_ms, Metrics};
use crate::rules::engine::XrayInput;
use crate::rules::{decide, ClearanceTable, Decision, Scan};
use effects::{Divert, Effect, Now, Turn};
use tracking::{Change, Geometry, Tracked, Tracker};

/// What a line task needs besides its channels.
pub struct LineCtx {
    pub gateway: String,
    pub line: String,
    pub lanes: LaneMap,
    pub geometry: Geometry,
    pub table: Arc<ClearanceTable>,
    /// The rule set in force; replaced whole on a reload.
    pub rules: crate::policy::SharedRules,
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
/// The task is the machine's I/O: it waits for the next input, reads the clocks once, hands
/// both to one handler of [`Line`] and carries out the effects ([`effects`]).
pub async fn run(mut ctx: LineCtx, mut io: LineIo) {
    let recent = std::mem::take(&mut ctx.recent);
    let mut line = Line::new(
        ctx,
        recent,
        // Parcel ids start at a random point so ids from before a restart, which the PLC may
        // still be tracking, are not reused at once.
        rand::random::<u32>() >> 1,
    );
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut scanning = true;
    loop {
        tokio::select! {
            scan = io.scans.recv(), if scanning => match scan {
                Some(scan) => step(&mut line, &io, |l, t| l.on_scan(scan, t)),
                None => scanning = false,
            },
            ev = io.plc_events.recv() => match ev {
                Some(ev) => step(&mut line, &io, |l, t| l.on_plc(ev, t)),
                None => break,
            },
            w = io.changes.recv() => match w {
                Ok(ClearanceChange::Waybill(w)) => step(&mut line, &io, |l, t| l.on_change(&w, t)),
                Ok(ClearanceChange::All) => step(&mut line, &io, |l, t| l.on_change_all(t)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(line = %line.ctx.line, missed = n, "clearance changes missed; parcels keep their decisions");
                }
                Err(broadcast::error::RecvError::Closed) => {}
            },
            msg = next_unbounded(&mut io.xray) => match msg {
                Some(msg) => step(&mut line, &io, |l, t| l.on_xray(msg, t)),
                None => io.xray = None,
            },
            image = next(&mut io.images) => match image {
                Some(image) => step(&mut line, &io, |l, t| l.on_image(image, t)),
                None => io.images = None,
            },
            _ = tick.tick() => {
                line.ctx.beat.beat();
                step(&mut line, &io, |l, t| l.expire(t));
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
            step(&mut line, &io, |l, t| l.on_xray(msg, t));
        }
    }
    if let Some(mut rx) = io.images.take() {
        rx.close();
        while let Ok(image) = rx.try_recv() {
            step(&mut line, &io, |l, t| l.on_image(image, t));
        }
    }
    for image in line.joiner.drain_waiting() {
        io.sink.push(image);
    }
}

/// One turn: the clocks read once, one handler, its effects carried out.
fn step(line: &mut Line, io: &LineIo, handler: impl FnOnce(&mut Line, &mut Turn)) {
    let mut turn = Turn::at(Now::read());
    handler(line, &mut turn);
    carry_out(line, io, turn);
}

/// Carries out a turn's effects in order. A command the PLC link's queue cannot take is
/// handed back to the machine, whose answer (the parcel recorded as `overload`) is carried
/// out before anything that followed the command.
fn carry_out(line: &mut Line, io: &LineIo, turn: Turn) {
    let now = turn.now;
    let mut queue: VecDeque<Effect> = turn.effects.into();
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::Record(r) => io.sink.push(*r),
            Effect::Anomaly(a) => {
                let parcel = a.parcel;
                if io.anomalies.try_send(*a).is_err() {
                    Metrics::add(&line.ctx.metrics.anomalies_dropped, 1);
                    warn!(line = %line.ctx.line, parcel, "anomaly queue full; the parcel's record carries the anomaly");
                }
            }
            Effect::Snapshots(captures) => {
                if let Some(cams) = &line.ctx.cameras {
                    cams.request(captures, &io.sink, &line.ctx.metrics);
                }
            }
            Effect::Divert(d) => {
                // A release is written ahead: its command waits for the decision to be durable.
                let durable = d.intent.map(|r| io.sink.push_intent(*r));
                let job = DivertJob {
                    parcel: d.parcel,
                    lane: d.lane,
                    revision: d.revision,
                    deadline: d.deadline.into(),
                    durable,
                };
                match io.plc.try_send(job) {
                    Ok(()) => line.in_flight += 1,
                    Err(_) => {
                        let mut answer = Turn::at(now);
                        line.divert_refused(d.parcel, &mut answer);
                        for e in answer.effects.into_iter().rev() {
                            queue.push_front(e);
                        }
                    }
                }
            }
        }
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
    fn new(ctx: LineCtx, recent: HashMap<u32, Recent>, first_parcel: u32) -> Line {
        Line {
            earlier: earlier::Earlier::from_journal(recent),
            next_parcel: first_parcel,
            tracker: Tracker::default(),
            joiner: xray::Joiner::default(),
            in_flight: 0,
            ctx,
        }
    }

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

    fn on_scan(&mut self, scan: ScanEvent, turn: &mut Turn) {
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
            decided_at: turn.now.wall,
            lane,
            revision: 0,
            committed_lane: None,
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
    fn duplicate_alert(&self, parcel: u32, detail: String, turn: &mut Turn) {
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

    /// Sends the parcel's current decision as an anomaly if a rule flagged it.
    fn anomaly(&self, parcel: u32, turn: &mut Turn) {
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
        turn.push(Effect::Anomaly(Box::new(anomaly)));
    }

    /// Hands the parcel's current decision to the PLC: a command, written ahead when it is a
    /// release (see [`Divert`]).
    fn send(&mut self, parcel: u32, turn: &mut Turn) {
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        let intent = (t.decision.role == LaneRole::Release).then(|| {
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
        }));
    }

    /// The PLC link's queue could not take the parcel's command: the parcel is left to the
    /// PLC's default and recorded as `overload`.
    fn divert_refused(&mut self, parcel: u32, turn: &mut Turn) {
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
            t.committed_lane = Some(t.lane);
        }
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        let record = self.parcel_record(t, outcome);
        let late = record.divert.late;
        let waybill = record.waybill.clone();
        turn.record(record);
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

    fn on_plc(&mut self, ev: PlcEvent, turn: &mut Turn) {
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
            turn,
        );
    }

    fn on_disposition(&mut self, d: Disposition, turn: &mut Turn) {
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

    fn disposition_record(
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

    /// New clearance that may concern any parcel: re-decide every one before its deadline.
    fn on_change_all(&mut self, turn: &mut Turn) {
        for parcel in self.tracker.before_deadline(turn.now.instant) {
            self.redecide(parcel, turn);
        }
    }

    /// Decides a tracked parcel again; re-commits it if its lane changes.
    fn redecide(&mut self, parcel: u32, turn: &mut Turn) {
        self.redecide_with(parcel, false, turn);
    }

    /// Like [`Line::redecide`]; with `flag_matters`, a decision that newly flags the parcel
    /// is re-committed even to the same lane, so its record and anomaly name the rule (an
    /// X-ray verdict on a parcel already bound for inspection while it waited for it).
    fn redecide_with(&mut self, parcel: u32, flag_matters: bool, turn: &mut Turn) {
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
            t.decided_at = turn.now.wall;
            t.lane = lane;
            t.revision += 1;
        }
        self.anomaly(parcel, turn);
        if let Some(detail) = duplicate {
            self.duplicate_alert(parcel, detail, turn);
        }
        self.send(parcel, turn);
    }

    /// New clearance information for `waybill`: re-decide tracked parcels before their
    /// deadline, alert for those past it whose lane would now differ.
    fn on_change(&mut self, waybill: &str, turn: &mut Turn) {
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
                turn,
            );
        }
    }

    /// Stops tracking parcels overdue for a disposition (alerting, where the PLC reports
    /// dispositions). Without dispositions a parcel stays tracked until then anyway, so that
    /// a late instruction still finds it for an alert.
    fn expire(&mut self, turn: &mut Turn) {
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

    /// A message from the line's X-ray scanner.
    fn on_xray(&mut self, msg: XrayMsg, turn: &mut Turn) {
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

    /// The record of one join outcome; `event` is the verdict, absent for `no_result`.
    fn xray_record(
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

    /// An image from the evidence pipeline: recorded once its scan is joined.
    fn on_image(&mut self, image: ImageRecord, turn: &mut Turn) {
        if let Some(image) = self.joiner.image(image, turn.now.instant) {
            turn.record(image);
        }
    }

    /// Parcels past their deadline without a verdict are recorded as such (they were not
    /// released: release needs a clear verdict); images that waited too long are recorded
    /// without a parcel.
    fn expire_xray(&mut self, turn: &mut Turn) {
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

    fn alert(
        &self,
        parcel: Option<u32>,
        waybill: Option<String>,
        alert: AlertKind,
        detail: String,
        turn: &mut Turn,
    ) {
        Metrics::add(&self.ctx.metrics.alerts, 1);
        warn!(line = %self.ctx.line, ?parcel, ?alert, %detail, "alert");
        turn.record(AlertRecord {
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
            at_ms: unix_ms(turn.now.wall),
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
    use crate::rules::engine::RuleSet;
    use bondline_devices::contract::{Action, Declaration, Instruction, Record};
    use bondline_devices::plc::LANE_FULL;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};

    const WAYBILLS: [&str; 3] = ["BL000001", "BL000002", "BL000003"];
    const RELEASE_LANE: u16 = 1;

    /// A line with the built-in rule set, numbered lanes (1 release … 4 exception), no
    /// cameras and no X-ray: only the machine, no task and no channel.
    fn machine() -> Line {
        let ctx = LineCtx {
            gateway: "gw".into(),
            line: "L1".into(),
            lanes: LaneMap::numbered(),
            geometry: Geometry {
                travel: Duration::from_millis(2_000),
                margin: Duration::from_millis(200),
                disposition_timeout: Duration::from_secs(5),
            },
            table: Arc::new(ClearanceTable::default()),
            rules: Arc::new(arc_swap::ArcSwap::from_pointee(RuleSet::builtin())),
            lane_states: Arc::new(LaneStates::default()),
            metrics: Arc::new(Metrics::default()),
            dispositions: true,
            weighing: false,
            calendar: Default::default(),
            beat: crate::service::Liveness::default().register("line"),
            xray: None,
            cameras: None,
            recent: HashMap::new(),
            released: Arc::new(duplicates::Released::new(
                duplicates::Settings {
                    recirculation: false,
                    ..Default::default()
                },
                86_400_000,
            )),
        };
        Line::new(ctx, HashMap::new(), 1_000)
    }

    fn declaration(waybill: &str) -> Declaration {
        serde_json::from_value(serde_json::json!({
            "schema": SCHEMA,
            "waybill": waybill,
            "enterprise": "E1",
            "identity_verified": true,
        }))
        .unwrap()
    }

    fn instruction(waybill: &str, action: Action, n: u64) -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: format!("i-{n}"),
            waybill: waybill.into(),
            action,
            reason: String::new(),
            issued_at_ms: Some(n),
            signature: None,
        }
    }

    /// What can happen around a line, in any order.
    #[derive(Debug, Clone)]
    enum Op {
        /// A parcel with this waybill (an index past the list: a no-read).
        Scan(usize),
        Declare(usize),
        /// 0 release, 1 inspect, 2 hold.
        Order(usize, u8),
        /// A lane reported full (or free again).
        Lane(u16, bool),
        /// The PLC link's queue refuses commands from now (or takes them again).
        QueueFull(bool),
        /// The PLC answers its oldest command: acknowledged, or timed out.
        Answer(bool),
        /// The PLC reports its oldest answered parcel in a lane.
        Dispose(u16),
        Wait(u64),
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4usize).prop_map(Op::Scan),
            2 => (0..3usize).prop_map(Op::Declare),
            3 => (0..3usize, 0..3u8).prop_map(|(w, a)| Op::Order(w, a)),
            1 => (1..5u16, any::<bool>()).prop_map(|(l, f)| Op::Lane(l, f)),
            1 => any::<bool>().prop_map(Op::QueueFull),
            3 => any::<bool>().prop_map(Op::Answer),
            1 => (1..5u16).prop_map(Op::Dispose),
            3 => (0..1_500u64).prop_map(Op::Wait),
            1 => Just(Op::Tick),
        ]
    }

    /// The world around the machine: the platform's current word, the lanes, the PLC's
    /// queue, and every release command given so far.
    struct World {
        line: Line,
        now: Now,
        declared: BTreeSet<String>,
        orders: BTreeMap<String, Action>,
        full: BTreeSet<u16>,
        queue_full: bool,
        jobs: VecDeque<Divert>,
        answered: VecDeque<u32>,
        released: BTreeMap<String, BTreeSet<u32>>,
        stamp: u64,
    }

    impl World {
        fn new() -> World {
            World {
                line: machine(),
                now: Now {
                    instant: Instant::now(),
                    wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                },
                declared: BTreeSet::new(),
                orders: BTreeMap::new(),
                full: BTreeSet::new(),
                queue_full: false,
                jobs: VecDeque::new(),
                answered: VecDeque::new(),
                released: BTreeMap::new(),
                stamp: 0,
            }
        }

        /// One turn of the machine, its effects carried out as the line task does, every
        /// command checked against the promises.
        fn turn(&mut self, handler: impl FnOnce(&mut Line, &mut Turn)) {
            let mut turn = Turn::at(self.now);
            handler(&mut self.line, &mut turn);
            let mut queue: VecDeque<Effect> = turn.effects.into();
            while let Some(effect) = queue.pop_front() {
                let Effect::Divert(d) = effect else {
                    continue;
                };
                self.check(&d);
                if self.queue_full {
                    let mut answer = Turn::at(self.now);
                    self.line.divert_refused(d.parcel, &mut answer);
                    for e in answer.effects.into_iter().rev() {
                        queue.push_front(e);
                    }
                } else {
                    self.line.in_flight += 1;
                    self.jobs.push_back(d);
                }
            }
        }

        /// Fail closed and one release one parcel: a command to the release lane only for a
        /// waybill declared and ordered released now, before its deadline, to a lane not
        /// full, written ahead, and for one parcel of the waybill at most.
        fn check(&mut self, d: &Divert) {
            let role = self.line.ctx.lanes.role_of(d.lane);
            let record_lane = d.intent.as_ref().map(|r| (r.lane, r.lane_role));
            if d.lane != RELEASE_LANE {
                assert!(d.intent.is_none(), "only a release is written ahead");
                return;
            }
            assert_eq!(role, Some(LaneRole::Release));
            let waybill = self
                .line
                .tracker
                .get(d.parcel)
                .and_then(|t| t.waybill().map(str::to_string))
                .expect("a released parcel is tracked and has a waybill");
            assert!(
                self.declared.contains(&waybill),
                "{waybill} released undeclared"
            );
            assert_eq!(
                self.orders.get(&waybill),
                Some(&Action::Release),
                "{waybill} released without a release order in force"
            );
            assert!(
                self.now.instant < d.deadline,
                "a release commanded past its deadline"
            );
            assert!(
                !self.full.contains(&RELEASE_LANE),
                "a release into a full lane"
            );
            assert_eq!(
                record_lane,
                Some((RELEASE_LANE, LaneRole::Release)),
                "a release is written ahead with its own decision"
            );
            let parcels = self.released.entry(waybill.clone()).or_default();
            parcels.insert(d.parcel);
            assert!(
                parcels.len() <= 1,
                "{waybill} released as parcels {parcels:?}"
            );
        }

        fn apply(&mut self, op: Op) {
            match op {
                Op::Scan(i) => {
                    let read = WAYBILLS
                        .get(i)
                        .map_or(ScanRead::NoRead, |w| ScanRead::Waybill(w.to_string()));
                    let scan = ScanEvent {
                        read,
                        weight_g: None,
                        at: self.now.wall,
                        instant: self.now.instant,
                    };
                    self.turn(|l, t| l.on_scan(scan, t));
                }
                Op::Declare(i) => {
                    let w = WAYBILLS[i];
                    self.line.ctx.table.apply_declaration(&declaration(w));
                    self.declared.insert(w.to_string());
                    self.turn(|l, t| l.on_change(w, t));
                }
                Op::Order(i, a) => {
                    let w = WAYBILLS[i];
                    let action = [Action::Release, Action::Inspect, Action::Hold][a as usize];
                    self.stamp += 1;
                    self.line
                        .ctx
                        .table
                        .apply_instruction(&instruction(w, action, self.stamp));
                    self.orders.insert(w.to_string(), action);
                    self.turn(|l, t| l.on_change(w, t));
                }
                Op::Lane(lane, full) => {
                    let state = if full { LANE_FULL } else { 0 };
                    self.line.ctx.lane_states.set(lane, state);
                    if full {
                        self.full.insert(lane);
                    } else {
                        self.full.remove(&lane);
                    }
                }
                Op::QueueFull(full) => self.queue_full = full,
                Op::Answer(acked) => {
                    let Some(job) = self.jobs.pop_front() else {
                        return;
                    };
                    let outcome = DivertOutcome {
                        status: if acked {
                            DivertStatus::Acked
                        } else {
                            DivertStatus::Timeout
                        },
                        plc_seq: acked.then_some(1),
                        detail: None,
                        at_ms: unix_ms(self.now.wall),
                        late: false,
                    };
                    let ev = PlcEvent::Outcome {
                        parcel: job.parcel,
                        revision: job.revision,
                        outcome,
                        at: tokio::time::Instant::from_std(self.now.instant),
                    };
                    self.answered.push_back(job.parcel);
                    self.turn(|l, t| l.on_plc(ev, t));
                }
                Op::Dispose(lane) => {
                    let Some(parcel) = self.answered.pop_front() else {
                        return;
                    };
                    let d = Disposition {
                        seq: 1,
                        parcel,
                        code: DispositionCode::Sorted,
                        lane,
                    };
                    self.turn(|l, t| l.on_plc(PlcEvent::Disposition(d), t));
                }
                Op::Wait(ms) => {
                    self.now.instant += Duration::from_millis(ms);
                    self.now.wall += Duration::from_millis(ms);
                }
                Op::Tick => self.turn(|l, t| l.expire(t)),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any interleaving of scans, declarations, orders, lane states, a full PLC queue,
        /// the PLC's answers and dispositions and the passing of time: every command to the
        /// release lane keeps the promises of [`World::check`].
        #[test]
        fn no_interleaving_releases_against_the_platform_or_twice(
            ops in proptest::collection::vec(op(), 1..80)
        ) {
            let mut world = World::new();
            for op in ops {
                world.apply(op);
            }
        }
    }

    /// A held parcel whose release order arrives before its deadline is commanded to the
    /// release lane, written ahead; after its deadline it is not commanded again.
    #[test]
    fn a_release_order_re_decides_a_held_parcel_only_before_its_deadline() {
        let mut world = World::new();
        world.apply(Op::Declare(0));
        world.apply(Op::Scan(0));
        let first = world.jobs.back().cloned().expect("a command for the scan");
        assert_eq!(first.lane, 3, "declared without an order: hold");
        world.apply(Op::Order(0, 0));
        let again = world
            .jobs
            .back()
            .cloned()
            .expect("a command after the order");
        assert_eq!((again.parcel, again.lane), (first.parcel, RELEASE_LANE));
        assert!(again.intent.is_some());
        assert_eq!(again.revision, 1);
        // Past the deadline an order changes nothing on the belt.
        world.apply(Op::Wait(2_000));
        let commands = world.jobs.len();
        world.apply(Op::Order(0, 2));
        assert_eq!(
            world.jobs.len(),
            commands,
            "nothing re-commanded past the deadline"
        );
    }

    /// A full PLC queue records the parcel as `overload` in the same turn, after the
    /// command's intent (if any) and before what followed it.
    #[test]
    fn a_refused_command_is_recorded_as_overload() {
        let mut world = World::new();
        world.apply(Op::QueueFull(true));
        let mut turn = Turn::at(world.now);
        let scan = ScanEvent {
            read: ScanRead::NoRead,
            weight_g: None,
            at: world.now.wall,
            instant: world.now.instant,
        };
        world.line.on_scan(scan, &mut turn);
        let Some(Effect::Divert(d)) = turn.effects.first().cloned() else {
            panic!("the scan's first effect is its command: {:?}", turn.effects);
        };
        let mut answer = Turn::at(world.now);
        world.line.divert_refused(d.parcel, &mut answer);
        let overload = answer.effects.iter().any(|e| {
            matches!(e, Effect::Record(r) if matches!(r.as_ref(), Record::Parcel(p) if p.divert.status == DivertStatus::Overload))
        });
        assert!(overload, "{:?}", answer.effects);
    }

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
