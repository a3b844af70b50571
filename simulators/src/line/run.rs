//! The belt's scheduler: one task runs every event of a run in time order on tokio time
//! (scanner frames, gate dispositions, late marks, fault switches, lane drain ticks), then
//! turns the parcels' traces into the [`Ledger`]. [`LineSim::run`](super::LineSim::run)
//! sets it up; this module owns what happens once the belt moves.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bondline_devices::plc::Disposition;
use tokio::sync::mpsc;

use super::correlator::Correlator;
use super::link::Link;
use super::xray::XrayHook;
use super::{
    Belt, BeltParcel, Correlation, LaneSpec, Ledger, ParcelOutcome, PlcFaults, Scenario,
    XrayOutcome,
};
use crate::plan::{Plan, PlanKind, PlannedParcel};
use crate::platform::PlatformSim;
use crate::plc::{PlcState, LANES};
use crate::scanner::ScannerSim;

/// After the last parcel passed its gate: time for late commands to arrive and be counted.
const TAIL: Duration = Duration::from_secs(1);

/// How stale the controller's view of the lane states may be when it decides.
const BLOCKED_SLACK: Duration = Duration::from_millis(250);

/// Lane drain and full-bit period.
const TICK_US: u64 = 100_000;

/// Whether `shutdown` has completed: a completed future must not be polled again.
#[derive(Debug, Default)]
pub(super) struct Stop {
    pub(super) stopped: bool,
}

impl Stop {
    /// Sleeps `d`; true if shutdown came first (or before).
    pub(super) async fn sleep<S: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Pin<&mut S>,
        d: Duration,
    ) -> bool {
        if self.stopped {
            return true;
        }
        tokio::select! {
            () = shutdown.as_mut() => { self.stopped = true; true }
            () = tokio::time::sleep(d) => false,
        }
    }
}

/// Scheduler events; the order breaks ties at equal times (fault switches first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Event {
    Faults,
    Gate(usize),
    Mark(usize),
    Scan,
    Tick,
}

/// One parcel's life in the run.
#[derive(Debug)]
pub(super) struct Trace {
    parcel: BeltParcel,
    /// Delivery index and write start of its frame, if delivered.
    frame: Option<(u64, Instant)>,
    gate_at: Option<Instant>,
    disposition: Option<Disposition>,
    mark_at: Option<Instant>,
    pub(super) xray: Option<XrayOutcome>,
}

#[derive(Debug)]
pub(super) struct LaneTrack {
    spec: LaneSpec,
    count: f64,
}

/// The scheduler's state.
pub(super) struct Run {
    pub(super) scenario: Scenario,
    scanner: ScannerSim,
    link: Link,
    plc: PlcState,
    start: Instant,
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    order: u64,
    belt: Belt,
    next_parcel: Option<BeltParcel>,
    traces: Vec<Trace>,
    /// Gate and mark events still to come.
    pending: usize,
    corr: Correlator,
    lanes: Vec<LaneTrack>,
    forced_full: BTreeSet<u16>,
    /// Full bits last written, lanes 1..=16 at index lane - 1.
    full_written: [bool; LANES as usize],
    last_tick_us: u64,
    faults: PlcFaults,
    marks: Option<mpsc::UnboundedSender<String>>,
    garbage_frames: u64,
    end: Option<Instant>,
    /// Every change of a lane's full bit: when, lane, full.
    lane_history: Vec<(Instant, u16, bool)>,
    /// Latest an event ran behind its time.
    max_lag: Duration,
    pub(super) xray: Option<XrayHook>,
    pub(super) camera: Option<(crate::camera::CameraSim, Duration)>,
}

pub(super) fn micros(s: f64) -> u64 {
    (s * 1e6).round().max(0.0) as u64
}

impl Run {
    pub(super) fn new(
        scenario: Scenario,
        scanner: ScannerSim,
        link: Link,
        plc: PlcState,
        start: Instant,
        marks: Option<mpsc::UnboundedSender<String>>,
    ) -> Run {
        let mut belt = scenario.belt();
        let next_parcel = belt.next();
        let lanes = scenario
            .lanes
            .iter()
            .map(|spec| LaneTrack {
                spec: *spec,
                count: 0.0,
            })
            .collect();
        let mut run = Run {
            scanner,
            link,
            plc,
            start,
            heap: BinaryHeap::new(),
            order: 0,
            belt,
            traces: Vec::new(),
            pending: 0,
            corr: Correlator::default(),
            lanes,
            forced_full: BTreeSet::new(),
            full_written: [false; LANES as usize],
            last_tick_us: 0,
            faults: PlcFaults::default(),
            marks,
            garbage_frames: 0,
            end: None,
            lane_history: Vec::new(),
            max_lag: Duration::ZERO,
            xray: None,
            camera: None,
            scenario,
            next_parcel,
        };
        if let Some(p) = &run.next_parcel {
            let at = micros(p.scan_s);
            run.push(at, Event::Scan);
        }
        for t in run.scenario.fault_boundaries() {
            run.push(micros(t), Event::Faults);
        }
        run.push(0, Event::Tick);
        run
    }

    fn push(&mut self, at_us: u64, event: Event) {
        self.order += 1;
        self.heap.push(Reverse((at_us, self.order, event)));
    }

    /// Runs every event in time order until the last parcel has passed its gate (plus the
    /// tail) or shutdown.
    pub(super) async fn schedule<S: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Pin<&mut S>,
        stop: &mut Stop,
    ) {
        let tstart = tokio::time::Instant::from_std(self.start);
        loop {
            if self.next_parcel.is_none() && self.pending == 0 {
                break;
            }
            let Some(Reverse((at_us, _, _))) = self.heap.peek().copied() else {
                break;
            };
            let deadline = tstart + Duration::from_micros(at_us);
            if stop.stopped {
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.as_mut() => { stop.stopped = true; break; }
                () = tokio::time::sleep_until(deadline) => {}
                event = self.link.next_event() => {
                    if self.link.apply(event).await {
                        self.corr.new_connection();
                    }
                    continue;
                }
            }
            let Some(Reverse((at_us, _, event))) = self.heap.pop() else {
                break;
            };
            self.max_lag = self
                .max_lag
                .max(tokio::time::Instant::now().saturating_duration_since(deadline));
            match event {
                Event::Scan => self.scan().await,
                Event::Gate(n) => self.gate(n),
                Event::Mark(n) => self.mark(n),
                Event::Faults => self.switch_faults(at_us),
                Event::Tick => self.tick(at_us),
            }
        }
        if !stop.stopped {
            // Late commands still count; the scanner connection stays open meanwhile.
            let tail = tokio::time::Instant::now() + TAIL;
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => { stop.stopped = true; break; }
                    () = tokio::time::sleep_until(tail) => break,
                    event = self.link.next_event() => {
                        if self.link.apply(event).await {
                            self.corr.new_connection();
                        }
                    }
                }
            }
        }
        self.corr.follow(&self.plc);
        self.end = Some(Instant::now());
    }

    async fn scan(&mut self) {
        let Some(p) = self.next_parcel.take() else {
            return;
        };
        self.next_parcel = self.belt.next();
        if let Some(next) = &self.next_parcel {
            let at = micros(next.scan_s);
            self.push(at, Event::Scan);
        }
        let mut bytes = Vec::new();
        let plan = &self.scanner.plan;
        for idx in &p.noise_before {
            bytes.extend(self.scanner.frame_for(&plan.parcel(*idx)));
        }
        if p.extra_noise {
            bytes.extend(self.scanner.frame_for(&PlannedParcel {
                index: p.n,
                waybill: String::new(),
                kind: PlanKind::Garbage,
            }));
        }
        let noise = p.noise_before.len() as u64 + u64::from(p.extra_noise);
        bytes.extend(self.scanner.frame_for(&PlannedParcel {
            index: p.plan_index,
            waybill: p.waybill.clone(),
            kind: p.kind,
        }));
        // Taken before the write, so a command can never seem to precede its frame.
        let at = Instant::now();
        let xray = self.xray.as_mut().and_then(|x| x.enter(at, self.start));
        if let Some((camera, offset)) = &self.camera {
            let waybill = (!p.waybill.is_empty()).then(|| p.waybill.clone());
            camera.enter(waybill, at + *offset);
        }
        let frame = if self.link.write(&bytes).await {
            self.garbage_frames += noise;
            Some((self.corr.frame(at), at))
        } else {
            None
        };
        let n = self.traces.len();
        self.push(micros(p.gate_s), Event::Gate(n));
        self.pending += 1;
        if let Some(m) = p.late_mark_s {
            self.push(micros(m), Event::Mark(n));
            self.pending += 1;
        }
        self.traces.push(Trace {
            parcel: p,
            frame,
            gate_at: None,
            disposition: None,
            mark_at: None,
            xray,
        });
    }

    fn gate(&mut self, n: usize) {
        self.pending = self.pending.saturating_sub(1);
        self.corr.follow(&self.plc);
        let Some(trace) = self.traces.get_mut(n) else {
            return;
        };
        let id = trace
            .frame
            .and_then(|(k, _)| self.corr.id_of(k))
            .unwrap_or(0);
        let d = self.plc.dispose_at_gate(id, &self.scenario.plc);
        trace.gate_at = Some(Instant::now());
        trace.disposition = Some(d);
        if let Some(l) = self.lanes.iter_mut().find(|l| l.spec.lane == d.lane) {
            l.count += 1.0;
        }
        self.refresh_lanes();
    }

    fn mark(&mut self, n: usize) {
        self.pending = self.pending.saturating_sub(1);
        let Some(trace) = self.traces.get_mut(n) else {
            return;
        };
        trace.mark_at = Some(Instant::now());
        if let Some(tx) = &self.marks {
            let _ = tx.send(trace.parcel.waybill.clone());
        }
    }

    fn switch_faults(&mut self, at_us: u64) {
        let f = self.scenario.plc_faults_at(at_us as f64 / 1e6);
        if f == self.faults {
            return;
        }
        tracing::info!(
            at_s = at_us as f64 / 1e6,
            down = f.down,
            refuse = f.refuse,
            ack_delay_ms = f.ack_delay.as_millis() as u64,
            full_lanes = ?f.full_lanes,
            "line-sim faults"
        );
        self.plc.set_down(f.down);
        self.plc.set_refuse(f.refuse);
        self.plc.set_ack_delay(f.ack_delay);
        self.forced_full = f.full_lanes.clone();
        self.faults = f;
        self.refresh_lanes();
    }

    fn tick(&mut self, at_us: u64) {
        let dt = at_us.saturating_sub(self.last_tick_us) as f64 / 1e6;
        self.last_tick_us = at_us;
        for l in &mut self.lanes {
            l.count = (l.count - l.spec.drain_per_s * dt).max(0.0);
        }
        self.refresh_lanes();
        if self.next_parcel.is_some() || self.pending > 0 {
            self.push(at_us + TICK_US, Event::Tick);
        }
    }

    /// Writes each lane's full bit where it changed: full while its count is at capacity or
    /// a `lane_full` fault holds it.
    fn refresh_lanes(&mut self) {
        for lane in 1..=LANES {
            let by_count = self
                .lanes
                .iter()
                .find(|l| l.spec.lane == lane)
                .is_some_and(|l| l.count >= f64::from(l.spec.capacity));
            let full = by_count || self.forced_full.contains(&lane);
            let slot = &mut self.full_written[usize::from(lane - 1)];
            if *slot != full {
                *slot = full;
                tracing::debug!(lane, full, "lane state");
                self.plc.set_lane_state(lane, full, false);
                self.lane_history.push((Instant::now(), lane, full));
            }
        }
    }

    /// Whether `lane` was full at any moment from `from` to `to`.
    fn full_during(&self, lane: u16, from: Instant, to: Instant) -> bool {
        let mut full = false;
        for (at, l, f) in &self.lane_history {
            if *l != lane {
                continue;
            }
            if *at <= from {
                full = *f;
            } else if *at <= to {
                full |= *f;
            } else {
                break;
            }
        }
        full
    }

    /// The ledger of the parcels that reached their gate.
    pub(super) fn ledger(
        &self,
        platform: Option<&PlatformSim>,
        plan: &Plan,
        wall_start_ms: u64,
    ) -> Ledger {
        let since = |t: Instant| t.saturating_duration_since(self.start);
        let diverts = self.plc.diverts();
        let mut by_id: HashMap<u32, Vec<Duration>> = HashMap::new();
        let mut unmatched = 0u64;
        for d in &diverts {
            if self.corr.frame_of(d.parcel).is_none() {
                unmatched += 1;
            }
            by_id.entry(d.parcel).or_default().push(since(d.at));
        }
        let outcomes: Vec<ParcelOutcome> = self
            .traces
            .iter()
            .filter_map(|t| {
                let d = t.disposition?;
                let commands = t
                    .frame
                    .and_then(|(k, _)| self.corr.id_of(k))
                    .and_then(|id| by_id.get(&id))
                    .cloned()
                    .unwrap_or_default();
                // The controller reads lane states every `poll_ms`: what it knew at the scan
                // may be that old (BLOCKED_SLACK covers it).
                let plan_lane_blocked = match (t.frame, t.parcel.kind.expected_role()) {
                    (Some((_, scanned)), Some(role)) => {
                        let last = commands.iter().max().map_or(scanned, |c| self.start + *c);
                        self.full_during(
                            self.scenario.lane_roles.lane(role),
                            scanned.checked_sub(BLOCKED_SLACK).unwrap_or(scanned),
                            last,
                        )
                    }
                    _ => false,
                };
                Some(ParcelOutcome {
                    plan_index: t.parcel.plan_index,
                    kind: t.parcel.kind,
                    waybill: t.parcel.waybill.clone(),
                    frame_at: t.frame.map(|(_, at)| since(at)),
                    gate_at: t.gate_at.map(since).unwrap_or_default(),
                    commands,
                    code: d.code,
                    lane: d.lane,
                    late_mark_at: t.mark_at.map(since),
                    xray: t.xray,
                    plan_lane_blocked,
                })
            })
            .collect();
        let mut ledger = Ledger::tally(&self.scenario.name, &outcomes, &self.scenario.lane_roles);
        ledger.run_s = self
            .end
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.start)
            .as_secs_f64();
        let scanned = self.traces.iter().filter(|t| t.disposition.is_some());
        let (first, last) = scanned.fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
            (lo.min(t.parcel.scan_s), hi.max(t.parcel.scan_s))
        });
        ledger.scan_span_s = (last - first).max(0.0);
        ledger.garbage_frames = self.garbage_frames;
        ledger.max_lag_ms = self.max_lag.as_secs_f64() * 1000.0;
        ledger.correlation = Correlation {
            base: self.corr.base().and_then(|b| u32::try_from(b).ok()),
            epochs: self.corr.epochs.len() as u32,
            adjustments: self.corr.adjustments(),
            unmatched_commands: unmatched,
            records_checked: None,
            record_mismatches: None,
        };
        if let Some(p) = platform {
            let by_index: HashMap<u64, &Trace> = self
                .traces
                .iter()
                .map(|t| (t.parcel.plan_index, t))
                .collect();
            let (mut checked, mut bad) = (0u64, 0u64);
            // Records of earlier runs on the same broker and seed are not this run's.
            let this_run = wall_start_ms.saturating_sub(1000);
            for r in p.records() {
                if r.scanned_at_ms < this_run {
                    continue;
                }
                let expected = r
                    .waybill
                    .as_deref()
                    .and_then(|w| plan.index_of(w))
                    .and_then(|i| by_index.get(&i))
                    .and_then(|t| t.frame)
                    .and_then(|(k, _)| self.corr.id_of(k));
                if let Some(id) = expected {
                    checked += 1;
                    if r.parcel != id {
                        bad += 1;
                    }
                }
            }
            ledger.correlation.records_checked = Some(checked);
            ledger.correlation.record_mismatches = Some(bad);
        }
        ledger
    }
}
