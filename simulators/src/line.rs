//! `line-sim`: a physical conveyor that plays the barcode scanner and the sorter PLC against a
//! running bondline daemon, and ends with a [`Ledger`] of where every parcel physically went.
//!
//! # Model
//! A [`Scenario`] describes the belt (speed, parcel lengths and gaps drawn uniformly, so the
//! arrival rate follows), the scanner and the divert gate positions, the lanes (capacity and
//! drain), the parcel mix and fault windows. Parcel `n`'s leading edge passes the scanner at
//! `t_scan` and the gate at `t_gate = t_scan + (gate_at_m - scanner_at_m) / speed`. One task
//! runs every event in time order on tokio time:
//! - at `t_scan` the scanner frame of the parcel's plan entry ([`ScannerSim::frame_for`]) is
//!   written to the daemon's scanner connection (`line-sim` listens on TCP like
//!   `scanner-sim --tcp-listen`, or writes to a serial port). The plan's garbage entries are
//!   no parcels: their noise is written just ahead of the next parcel's frame;
//! - at `t_gate` the in-process PLC ([`PlcSim`], served on TCP for the daemon) disposes of the
//!   parcel ([`PlcState::dispose_at_gate`]): fail-safe, no destination, overflow or sorted,
//!   and reports it in its disposition ring; the lane's count goes up;
//! - every 100 ms the lanes drain and their full bits follow their counts (and `lane_full`
//!   faults); PLC faults switch at their window edges.
//!
//! With an X-ray stage (the scenario's `[xray]` table and [`LineSim::with_xray`]), each
//! parcel also enters an X-ray tunnel `scan_to_xray_m` after the scanner, served by an
//! in-process `xray-sim` on Modbus TCP or RTU: its workstation publishes a verdict (clear, or
//! suspect at the stage's rate) after the processing time, writes the images into the spool
//! if one is given, and sometimes an officer's mark later. Scan ids count from 1. The ledger
//! counts an X-ray-flagged parcel in the inspection lane as correct (the daemon releases
//! nothing flagged) and reports flagged parcels that were released anyway.
//!
//! With a [`PlatformSim`], the plan's declarations and instructions are published about 20 s
//! of belt ahead of the scanner (like `bondline-lab demo`), and `late_instructions` faults publish
//! an extra inspect instruction `late_ms` after a parcel passed the scanner.
//!
//! # Matching the daemon's parcel ids to parcels
//! The daemon numbers the parcels of a line consecutively from a random base, one id per
//! frame it decodes (reads and no-reads; garbage gets none), and sends that id in its divert
//! commands. So delivered frame `k` is parcel id `base + k`. `line-sim` learns `base` from the
//! commands: a command for id `q` that arrives when `m` frames have started to be written can
//! only be for one of those frames, so `base >= q - (m - 1)`; the estimate is the largest
//! such bound seen. It is exact as soon as one command arrives before the next frame is
//! written (in practice the first one: decisions take milliseconds, frames come every 90 ms
//! or more), and it never overshoots, so a parcel is never matched with a later parcel's
//! command. Each scanner connection gets a base of its own, so a daemon restarted during the
//! run (new random base) or a reconnect that lost frames in the dying connection is followed.
//!
//! Limits: a frame written into a connection that is dying but not yet seen closed may be
//! counted as delivered though the daemon never decoded it, which shifts the later ids of
//! that connection by one; two daemons on one line (or commands from a previous daemon still
//! arriving after a new one connected) confuse the match; if every command of a connection
//! until some point came only after the next frame had been written, parcels disposed of
//! until then may have been matched with an earlier parcel's command. The ledger shows all
//! of these: `correlation.adjustments` > 0 (the estimate moved), `unmatched_commands`, and,
//! with a platform, `record_mismatches` (the daemon's records name the parcel id of each
//! waybill, which is checked against the match).
//! A parcel the PLC has no id for (no command has arrived on its connection yet, or its frame
//! was not delivered) is disposed and reported with parcel id 0.

mod ledger;
mod scenario;
mod xray;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::future::{self, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use bondline_devices::contract::{unix_ms, Action, Instruction, SCHEMA};
use bondline_devices::framing::ScannerFraming;
use bondline_devices::plc::{Disposition, PlcMap};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

pub use ledger::{
    Correlation, LateMarks, Latency, Ledger, Misplaced, ParcelOutcome, XrayFlags, XrayOutcome,
};
pub use scenario::{
    Belt, BeltParcel, Fault, FaultKind, LaneRoles, LaneSpec, PlcFaults, RunLength, Scenario,
    ScenarioError, XrayStage,
};
pub use xray::XrayPort;

use crate::plan::{Plan, PlanKind, PlannedParcel};
use crate::platform::PlatformSim;
use crate::plc::{PlcSim, PlcState, LANES};
use crate::scanner::ScannerSim;
use crate::xray::{XrayImages, XrayState};
use xray::{XrayAttachment, XrayHook};

/// How far ahead of the scanner (in seconds of belt) the platform declares parcels.
const AHEAD_S: f64 = 20.0;
/// How long `run` waits for the daemon to connect to the scanner port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `run` waits for the controller's heartbeat to take the PLC out of fail-safe mode
/// before it starts the belt anyway.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(5);
/// Between the first declarations and the belt's start: time for the daemon to take them in.
const SETTLE: Duration = Duration::from_millis(500);
/// A frame write that takes longer means the daemon stopped reading; the connection is
/// dropped and the frame counts as not delivered.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// After the last parcel passed its gate: time for late commands to arrive and be counted.
const TAIL: Duration = Duration::from_secs(1);
/// How stale the controller's view of the lane states may be when it decides.
const BLOCKED_SLACK: Duration = Duration::from_millis(250);
/// Lane drain and full-bit period.
const TICK_US: u64 = 100_000;

/// Where the scanner frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScannerPort {
    /// Listen here; the daemon connects as to a network scanner.
    Tcp(SocketAddr),
    /// Write to this serial device (e.g. one end of a `socat` pty pair).
    Serial { path: String, baud: u32 },
}

/// A bound line simulator, not yet running.
#[derive(Debug)]
pub struct LineSim {
    scenario: Scenario,
    framing: ScannerFraming,
    link: Link,
    scanner_addr: Option<SocketAddr>,
    plc: PlcSim,
    plc_state: PlcState,
    plc_addr: SocketAddr,
    heartbeat: bool,
    xray: Option<XrayAttachment>,
    /// A camera over the belt and the time a parcel takes from the scanner to its field.
    camera: Option<(crate::camera::CameraSim, Duration)>,
}

impl LineSim {
    /// Binds the scanner listener and the PLC's Modbus TCP port on 127.0.0.1, on free ports.
    pub async fn bind(
        scenario: Scenario,
        framing: ScannerFraming,
        map: PlcMap,
    ) -> io::Result<LineSim> {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        LineSim::bind_with(scenario, framing, map, ScannerPort::Tcp(local), local).await
    }

    /// Binds the scanner side (TCP listener or serial port) and the PLC on `plc`.
    pub async fn bind_with(
        scenario: Scenario,
        framing: ScannerFraming,
        map: PlcMap,
        scanner: ScannerPort,
        plc: SocketAddr,
    ) -> io::Result<LineSim> {
        let (link, scanner_addr) = match scanner {
            ScannerPort::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("scanner port {addr}: {e}")))?;
                let local = listener.local_addr()?;
                (
                    Link::Tcp {
                        listener,
                        conn: None,
                    },
                    Some(local),
                )
            }
            ScannerPort::Serial { path, baud } => {
                use tokio_serial::SerialPortBuilderExt as _;
                let port = tokio_serial::new(&path, baud)
                    .open_native_async()
                    .map_err(io::Error::from)
                    .map_err(|e| io::Error::new(e.kind(), format!("serial port {path}: {e}")))?;
                (Link::Serial { port, path }, None)
            }
        };
        let heartbeat = map.heartbeat.is_some();
        let plc_sim = PlcSim::bind_with(plc, map, scenario.plc.clone())
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("PLC port {plc}: {e}")))?;
        Ok(LineSim {
            framing,
            link,
            scanner_addr,
            plc_state: plc_sim.state(),
            plc_addr: plc_sim.local_addr(),
            plc: plc_sim,
            heartbeat,
            scenario,
            xray: None,
            camera: None,
        })
    }

    /// Puts `camera` over the belt `distance_m` past the scanner: each parcel comes under it
    /// that long (at the scenario's belt speed) after its scan frame is written, and stays
    /// the one it shows until the next arrives. Serving the camera is the caller's part.
    pub fn with_camera(mut self, camera: crate::camera::CameraSim, distance_m: f64) -> LineSim {
        // A negative, infinite or NaN distance puts the camera at the scanner.
        let offset = Duration::try_from_secs_f64(distance_m / self.scenario.belt_speed_m_s)
            .unwrap_or(Duration::ZERO);
        self.camera = Some((camera, offset));
        self
    }

    /// Adds the scenario's X-ray stage: an X-ray device with `map`'s registers at the
    /// stage's unit id, served on `port` while the belt runs, writing images with `images`
    /// if given. Binds a TCP port at once. Errors: the scenario has no `[xray]` table, or
    /// the port cannot be bound.
    pub async fn with_xray(
        mut self,
        map: bondline_devices::xray::XrayMap,
        port: XrayPort,
        images: Option<XrayImages>,
    ) -> io::Result<LineSim> {
        let Some(stage) = &self.scenario.xray else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("scenario {} has no [xray] table", self.scenario.name),
            ));
        };
        self.xray = Some(XrayAttachment::bind(stage, map, port, images).await?);
        Ok(self)
    }

    /// The X-ray's Modbus TCP address; `None` without an X-ray or when it serves RTU.
    pub fn xray_addr(&self) -> Option<SocketAddr> {
        self.xray.as_ref().and_then(XrayAttachment::addr)
    }

    /// A handle to the simulated X-ray (its ring, fault modes, counters), if attached.
    pub fn xray_state(&self) -> Option<XrayState> {
        self.xray.as_ref().map(|x| x.state.clone())
    }

    /// The scanner's TCP address the daemon connects to; `None` when writing to a serial port.
    pub fn scanner_addr(&self) -> Option<SocketAddr> {
        self.scanner_addr
    }

    /// The PLC's Modbus TCP address.
    pub fn plc_addr(&self) -> SocketAddr {
        self.plc_addr
    }

    /// A handle to the simulated PLC (commands received, dispositions, registers).
    pub fn plc_state(&self) -> PlcState {
        self.plc_state.clone()
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Runs the scenario against the daemon and returns the ledger.
    ///
    /// In order: the simulator waits up to 60 s for the daemon to connect to the scanner port
    /// (TCP), then up to 5 s for the controller's heartbeat to reach the PLC (profiles with a
    /// heartbeat; it starts anyway, in fail-safe mode, after that); the platform (if any)
    /// declares the first 20 s of parcels and the simulator gives the daemon half a second to
    /// take them in (the daemon's uplink should be subscribed by the time it connects to the
    /// scanner: declarations published earlier are lost, as with a real platform); then the
    /// belt runs until the last parcel has passed its gate, plus one second for late
    /// commands. `shutdown` ends the run early; the ledger then
    /// covers the parcels that reached their gate. Errors: the daemon never connected, or the
    /// platform could not publish the first declarations.
    pub async fn run(
        self,
        platform: Option<&PlatformSim>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Ledger> {
        let LineSim {
            scenario,
            framing,
            mut link,
            plc,
            plc_state,
            heartbeat,
            xray,
            camera,
            ..
        } = self;
        // Serving from the start, like the PLC: the daemon connects to it at startup.
        let xray = xray
            .zip(scenario.xray.as_ref())
            .map(|(x, stage)| x.start(stage, scenario.seed, scenario.belt_speed_m_s));
        let (plc_stop, plc_stopped) = oneshot::channel::<()>();
        let plc_task = tokio::spawn(plc.run(async move {
            let _ = plc_stopped.await;
        }));
        let mut shutdown = pin!(shutdown);
        let mut stop = Stop::default();
        let plan = scenario.plan();

        if !link.wait_connected(&mut shutdown, &mut stop).await? {
            return Ok(Ledger {
                scenario: scenario.name.clone(),
                ..Ledger::default()
            });
        }
        if heartbeat {
            let waited = Instant::now();
            while plc_state.fail_safe() && waited.elapsed() < HEARTBEAT_WAIT {
                if stop.sleep(&mut shutdown, Duration::from_millis(20)).await {
                    break;
                }
            }
            if plc_state.fail_safe() {
                tracing::warn!(
                    "the controller's heartbeat has not reached the PLC; the belt starts with \
                     the PLC in fail-safe mode"
                );
            }
        }

        // The daemon is up (it connected to the scanner): declare the first stretch of belt
        // now, not earlier, since nobody keeps messages for a subscriber not yet there.
        let mut ahead = Ahead::new(scenario.belt());
        if let Some(p) = platform {
            let upto = ahead.target(AHEAD_S);
            p.publish_plan(&plan, 0..upto)
                .await
                .context("publishing the first declarations")?;
            ahead.declared = upto;
            if stop.sleep(&mut shutdown, SETTLE).await {
                return Ok(Ledger {
                    scenario: scenario.name.clone(),
                    ..Ledger::default()
                });
            }
        }

        let start = Instant::now();
        let wall_start_ms = unix_ms(SystemTime::now());
        let (marks_tx, marks_rx) = mpsc::unbounded_channel();
        let mut run = Run::new(
            scenario,
            ScannerSim::new(framing, plan.clone()),
            link,
            plc_state,
            start,
            platform.is_some().then_some(marks_tx),
        );
        run.xray = xray;
        run.camera = camera;
        tracing::info!(
            scenario = %run.scenario.name,
            rate_per_h = (run.scenario.mean_rate_per_s() * 3600.0).round(),
            "line-sim: belt running"
        );
        let helpers = async {
            if let Some(p) = platform {
                let tstart = tokio::time::Instant::from_std(start);
                tokio::join!(
                    keep_declared_ahead(p, &plan, ahead, tstart),
                    publish_marks(p, marks_rx)
                );
            }
            future::pending::<()>().await
        };
        tokio::select! {
            () = run.schedule(&mut shutdown, &mut stop) => {}
            () = helpers => {}
        }
        let _ = plc_stop.send(());
        if let Ok(Err(e)) = plc_task.await {
            tracing::warn!(%e, "plc-sim stopped with an error");
        }
        Ok(run.ledger(platform, &plan, wall_start_ms))
    }
}

/// Whether `shutdown` has completed: a completed future must not be polled again.
#[derive(Debug, Default)]
struct Stop {
    stopped: bool,
}

impl Stop {
    /// Sleeps `d`; true if shutdown came first (or before).
    async fn sleep<S: Future<Output = ()>>(
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

/// The scanner's side of the daemon's scanner connection.
#[derive(Debug)]
enum Link {
    Tcp {
        listener: TcpListener,
        conn: Option<TcpStream>,
    },
    Serial {
        port: tokio_serial::SerialStream,
        path: String,
    },
}

enum LinkEvent {
    Connected(TcpStream, SocketAddr),
    Closed,
    AcceptFailed(io::Error),
}

impl Link {
    /// Waits for the daemon to connect (TCP); false on shutdown.
    async fn wait_connected<S: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Pin<&mut S>,
        stop: &mut Stop,
    ) -> anyhow::Result<bool> {
        let Link::Tcp { listener, conn } = self else {
            return Ok(!stop.stopped);
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "line-sim scanner waiting for the daemon to connect");
        }
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while conn.is_none() {
            if stop.stopped {
                return Ok(false);
            }
            tokio::select! {
                () = shutdown.as_mut() => { stop.stopped = true; return Ok(false); }
                () = tokio::time::sleep_until(deadline) => bail!(
                    "the daemon did not connect to the scanner port within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
                res = listener.accept() => match res {
                    Ok((stream, peer)) => {
                        tracing::info!(%peer, "scanner client connected");
                        *conn = Some(stream);
                    }
                    Err(e) => {
                        tracing::warn!(%e, "scanner accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        Ok(true)
    }

    /// Completes when a client connects or the current one goes away (TCP); never on serial.
    async fn next_event(&mut self) -> LinkEvent {
        match self {
            Link::Serial { .. } => future::pending().await,
            Link::Tcp { listener, conn } => {
                let closed = async {
                    let mut buf = [0u8; 256];
                    match conn.as_mut() {
                        // Whatever a client sends a scanner is read and ignored.
                        Some(c) => loop {
                            match c.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        },
                        None => future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    res = listener.accept() => match res {
                        Ok((stream, peer)) => LinkEvent::Connected(stream, peer),
                        Err(e) => LinkEvent::AcceptFailed(e),
                    },
                    () = closed => LinkEvent::Closed,
                }
            }
        }
    }

    /// Applies a link event; true if a new client connected.
    async fn apply(&mut self, event: LinkEvent) -> bool {
        let Link::Tcp { conn, .. } = self else {
            return false;
        };
        match event {
            LinkEvent::Connected(stream, peer) => {
                tracing::info!(%peer, "scanner client connected");
                *conn = Some(stream);
                return true;
            }
            LinkEvent::Closed => {
                tracing::warn!("scanner client disconnected; frames are lost until it is back");
                *conn = None;
            }
            LinkEvent::AcceptFailed(e) => {
                tracing::warn!(%e, "scanner accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        false
    }

    /// Writes one parcel's bytes; true if they were handed to the connection.
    async fn write(&mut self, bytes: &[u8]) -> bool {
        async fn put<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> bool {
            let io = async {
                w.write_all(bytes).await?;
                w.flush().await
            };
            matches!(tokio::time::timeout(WRITE_TIMEOUT, io).await, Ok(Ok(())))
        }
        match self {
            Link::Serial { port, path } => {
                let ok = put(port, bytes).await;
                if !ok {
                    tracing::warn!(path, "scanner serial write failed or timed out");
                }
                ok
            }
            Link::Tcp { conn, .. } => match conn {
                None => false,
                Some(c) => {
                    let ok = put(c, bytes).await;
                    if !ok {
                        tracing::warn!("scanner write failed or timed out; dropping the client");
                        *conn = None;
                    }
                    ok
                }
            },
        }
    }
}

/// Matches the daemon's parcel ids to delivered frames (see the module documentation).
///
/// Each scanner connection is an epoch with its own base: a daemon that restarted numbers
/// its parcels from a new random base, and one that only reconnected may have lost frames
/// written into the dying connection; either way the frames of the new connection are
/// numbered consecutively from a base of their own.
#[derive(Debug, Clone, Default)]
struct Correlator {
    /// When each delivered frame's write started, by delivery index.
    frames: Vec<Instant>,
    /// By first frame, ascending.
    epochs: Vec<Epoch>,
    /// A new scanner connection began: the next frame starts a new epoch.
    new_epoch: bool,
    /// Commands taken into account so far (index into the PLC's command list).
    seen: usize,
}

#[derive(Debug, Clone)]
struct Epoch {
    /// Delivery index of the epoch's first frame.
    first: u64,
    /// The daemon's parcel id of that frame, as far as known.
    base: Option<u64>,
    adjustments: u32,
}

impl Correlator {
    /// A new scanner client connected.
    fn new_connection(&mut self) {
        self.new_epoch = true;
    }

    /// Records a frame whose write started at `at`; returns its delivery index.
    fn frame(&mut self, at: Instant) -> u64 {
        let k = self.frames.len() as u64;
        let reuse = self.epochs.last().is_some_and(|e| e.first == k);
        if (self.epochs.is_empty() || self.new_epoch) && !reuse {
            self.epochs.push(Epoch {
                first: k,
                base: None,
                adjustments: 0,
            });
        }
        self.new_epoch = false;
        self.frames.push(at);
        k
    }

    fn epoch_of(&self, k: u64) -> Option<usize> {
        self.epochs.partition_point(|e| e.first <= k).checked_sub(1)
    }

    /// Frames in epoch `e`.
    fn epoch_len(&self, e: usize) -> u64 {
        let end = self
            .epochs
            .get(e + 1)
            .map_or(self.frames.len() as u64, |n| n.first);
        self.epochs.get(e).map_or(0, |ep| end - ep.first)
    }

    /// Takes a command for parcel id `parcel` that arrived at `at` into account.
    fn command(&mut self, parcel: u32, at: Instant) {
        // The command is for one of the frames whose write had started by `at`, so for
        // frame `last` or before it: the epoch's base is at least `parcel - (last - first)`.
        let started = self.frames.partition_point(|t| *t <= at) as u64;
        let Some(last) = started.checked_sub(1) else {
            // No frame had been written: not a command for this run.
            return;
        };
        let Some(e) = self.epoch_of(last) else {
            return;
        };
        let epoch = &mut self.epochs[e];
        let Some(bound) = u64::from(parcel).checked_sub(last - epoch.first) else {
            return;
        };
        match epoch.base {
            None => epoch.base = Some(bound),
            Some(b) if bound > b => {
                tracing::warn!(
                    from = b,
                    to = bound,
                    "parcel id base raised: earlier parcels may have been matched with an \
                     earlier command"
                );
                epoch.base = Some(bound);
                epoch.adjustments += 1;
            }
            Some(_) => {}
        }
    }

    fn follow(&mut self, plc: &PlcState) {
        let new = plc.diverts_since(self.seen);
        self.seen += new.len();
        for d in new {
            self.command(d.parcel, d.at);
        }
    }

    /// The daemon's parcel id of delivered frame `k`, once its epoch's base is known.
    fn id_of(&self, k: u64) -> Option<u32> {
        let e = &self.epochs[self.epoch_of(k)?];
        u32::try_from(e.base? + (k - e.first)).ok()
    }

    /// The delivered frame a parcel id belongs to.
    fn frame_of(&self, id: u32) -> Option<u64> {
        self.epochs.iter().enumerate().find_map(|(i, e)| {
            let off = u64::from(id).checked_sub(e.base?)?;
            (off < self.epoch_len(i)).then_some(e.first + off)
        })
    }

    /// The first epoch's base.
    fn base(&self) -> Option<u64> {
        self.epochs.first().and_then(|e| e.base)
    }

    fn adjustments(&self) -> u32 {
        self.epochs.iter().map(|e| e.adjustments).sum()
    }
}

/// Scheduler events; the order breaks ties at equal times (fault switches first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Faults,
    Gate(usize),
    Mark(usize),
    Scan,
    Tick,
}

/// One parcel's life in the run.
#[derive(Debug)]
struct Trace {
    parcel: BeltParcel,
    /// Delivery index and write start of its frame, if delivered.
    frame: Option<(u64, Instant)>,
    gate_at: Option<Instant>,
    disposition: Option<Disposition>,
    mark_at: Option<Instant>,
    xray: Option<XrayOutcome>,
}

#[derive(Debug)]
struct LaneTrack {
    spec: LaneSpec,
    count: f64,
}

/// The scheduler's state.
struct Run {
    scenario: Scenario,
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
    xray: Option<XrayHook>,
    camera: Option<(crate::camera::CameraSim, Duration)>,
}

fn micros(s: f64) -> u64 {
    (s * 1e6).round().max(0.0) as u64
}

impl Run {
    fn new(
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
    async fn schedule<S: Future<Output = ()>>(
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
    fn ledger(&self, platform: Option<&PlatformSim>, plan: &Plan, wall_start_ms: u64) -> Ledger {
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

/// Tracks how far along the belt the platform has declared.
struct Ahead {
    belt: Belt,
    pending: Option<BeltParcel>,
    /// Plan index after the last parcel up to the current horizon.
    upto: u64,
    exhausted: bool,
    declared: u64,
}

impl Ahead {
    fn new(belt: Belt) -> Ahead {
        Ahead {
            belt,
            pending: None,
            upto: 0,
            exhausted: false,
            declared: 0,
        }
    }

    /// The plan index up to which parcels reaching the scanner by `horizon_s` lie.
    fn target(&mut self, horizon_s: f64) -> u64 {
        loop {
            let Some(p) = self.pending.take().or_else(|| self.belt.next()) else {
                self.exhausted = true;
                return self.upto;
            };
            if p.scan_s <= horizon_s {
                self.upto = p.plan_index + 1;
            } else {
                self.pending = Some(p);
                return self.upto;
            }
        }
    }
}

/// Keeps the platform's declarations and instructions 20 s of belt ahead of the scanner.
/// Publishing errors are logged and retried; parcels that reach the scanner undeclared are
/// held by a correct daemon, which the ledger shows as explained, never as leaks.
async fn keep_declared_ahead(
    platform: &PlatformSim,
    plan: &Plan,
    mut ahead: Ahead,
    start: tokio::time::Instant,
) {
    loop {
        let horizon = start.elapsed().as_secs_f64() + AHEAD_S;
        let upto = ahead.target(horizon);
        if upto > ahead.declared {
            match platform.publish_plan(plan, ahead.declared..upto).await {
                Ok(()) => ahead.declared = upto,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "platform publish failed; retrying")
                }
            }
        }
        if ahead.exhausted && ahead.declared >= ahead.upto {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Publishes a late inspect instruction for each waybill received.
async fn publish_marks(platform: &PlatformSim, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(waybill) = rx.recv().await {
        let instruction = Instruction {
            schema: SCHEMA,
            instruction_id: format!("LATE-{waybill}"),
            waybill,
            action: Action::Inspect,
            reason: "late X-ray mark".to_string(),
            issued_at_ms: Some(unix_ms(SystemTime::now())),
            signature: None,
        };
        if let Err(e) = platform.publish_instruction(&instruction).await {
            tracing::warn!(error = %format!("{e:#}"), waybill = %instruction.waybill, "late mark not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::framing::{Frame, FrameDecoder};
    use bondline_devices::plc::DivertCommand;
    use bondline_devices::Profiles;
    use tokio_modbus::client::Writer as _;

    /// The daemon's harness spawns this; it only has to compile.
    #[allow(dead_code)]
    fn run_future_is_send(sim: LineSim, platform: &PlatformSim) {
        fn send<T: Send>(_: T) {}
        send(sim.run(Some(platform), async {}));
    }

    fn framing() -> ScannerFraming {
        Profiles::builtin()
            .get("scanner-stx-etx")
            .and_then(|p| p.scanner().cloned())
            .expect("built-in scanner profile")
    }

    fn map() -> PlcMap {
        Profiles::builtin()
            .get("sorter-plc")
            .and_then(|p| p.plc().cloned())
            .expect("built-in sorter-plc profile")
    }

    const SCENARIOS: [(&str, &str); 7] = [
        (
            "normal-shift",
            include_str!("../scenarios/normal-shift.toml"),
        ),
        ("peak", include_str!("../scenarios/peak.toml")),
        ("plc-outage", include_str!("../scenarios/plc-outage.toml")),
        (
            "scanner-garbage",
            include_str!("../scenarios/scanner-garbage.toml"),
        ),
        ("late-marks", include_str!("../scenarios/late-marks.toml")),
        ("lane-full", include_str!("../scenarios/lane-full.toml")),
        ("xray-line", include_str!("../scenarios/xray-line.toml")),
    ];

    #[test]
    fn shipped_scenarios_are_valid() {
        for (name, text) in SCENARIOS {
            let s = Scenario::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, name);
            assert!((s.scanner_to_gate_s() - 1.5).abs() < 1e-9, "{name}");
            assert_eq!(s.lane_roles, LaneRoles::default(), "{name}");
        }
    }

    /// The time model: parcels reach the scanner at the rate speed / mean pitch, and peak.toml
    /// is the 40,000 parcels/h the domain names.
    #[test]
    fn peak_arrival_rate_is_40000_per_hour() {
        let text = SCENARIOS[1].1;
        let s = Scenario::from_toml(text).expect("peak");
        let RunLength::Seconds(d) = s.length else {
            panic!("peak runs for a duration");
        };
        let parcels = s.belt().count() as f64;
        let per_h = parcels * 3600.0 / d;
        assert!((36_000.0..=44_000.0).contains(&per_h), "{per_h}");
        assert!((s.mean_rate_per_s() * 3600.0 - 40_000.0).abs() < 400.0);
        let normal = Scenario::from_toml(SCENARIOS[0].1).expect("normal");
        let per_h = normal.mean_rate_per_s() * 3600.0;
        assert!((18_000.0..=22_000.0).contains(&per_h), "{per_h}");
    }

    #[test]
    fn correlator_finds_the_base_and_never_overshoots() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Frames every 100 ms; the daemon's ids start at 5000.
        let mut c = Correlator::default();
        for i in 0..5 {
            assert_eq!(c.frame(at(i * 100)), i);
        }
        // A command from before any frame is ignored.
        c.command(4999, t0 - Duration::from_millis(1));
        assert_eq!(c.base(), None);
        assert_eq!(c.id_of(0), None);
        // Frame 0's command was lost; frame 1's arrived late, after frame 3 was written.
        c.command(5001, at(350));
        assert_eq!(c.base(), Some(4998), "a lower bound only");
        // Frame 2's command arrived before frame 3: exact.
        c.command(5002, at(250));
        assert_eq!(c.base(), Some(5000));
        assert_eq!(c.adjustments(), 1);
        // Slow commands never raise it beyond the truth.
        c.command(5003, at(450));
        c.command(5004, at(460));
        assert_eq!(c.base(), Some(5000));
        assert_eq!(c.id_of(3), Some(5003));
        assert_eq!(c.frame_of(5004), Some(4));
        assert_eq!(c.frame_of(5005), None);
        assert_eq!(c.frame_of(4999), None);
    }

    #[test]
    fn correlator_starts_a_new_base_per_scanner_connection() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Correlator::default();
        c.new_connection();
        for i in 0..3 {
            c.frame(at(i * 100));
        }
        c.command(100, at(10));
        // The daemon restarted: a new connection, ids from a new random base, lower than
        // the old one. A connection that carried no frame does not count.
        c.new_connection();
        c.new_connection();
        for i in 3..6 {
            c.frame(at(i * 100));
        }
        c.command(7, at(310));
        assert_eq!(c.epochs.len(), 2);
        assert_eq!(c.base(), Some(100));
        assert_eq!(
            (0..6).map(|k| c.id_of(k)).collect::<Vec<_>>(),
            vec![Some(100), Some(101), Some(102), Some(7), Some(8), Some(9)]
        );
        assert_eq!(c.frame_of(102), Some(2));
        assert_eq!(c.frame_of(103), None, "past the first epoch's frames");
        assert_eq!(c.frame_of(9), Some(5));
        assert_eq!(c.adjustments(), 0);
    }

    /// A fake daemon: reads the scanner port, decides the plan's lane at once (no-read to
    /// exception), writes the divert block to the PLC over Modbus TCP and keeps the
    /// controller heartbeat going. The ledger must be all correct.
    async fn fake_daemon(scanner: SocketAddr, plc: SocketAddr, plan: Plan, roles: LaneRoles) {
        let map = map();
        let hb = map.heartbeat.clone().expect("heartbeat");
        let mut hb_ctx = tokio_modbus::client::tcp::connect(plc).await.expect("plc");
        tokio::spawn(async move {
            let mut n: u16 = 0;
            loop {
                n = n.wrapping_add(1);
                if hb_ctx
                    .write_single_register(hb.controller, n)
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut ctx = tokio_modbus::client::tcp::connect(plc).await.expect("plc");
        let mut stream = TcpStream::connect(scanner).await.expect("scanner");
        let mut decoder = FrameDecoder::new(framing());
        let mut buf = [0u8; 4096];
        let mut frames = Vec::new();
        let base: u32 = 700_000;
        let mut next_id = base;
        let mut seq: u16 = 0;
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            decoder.push(&buf[..n], &mut frames);
            for frame in frames.drain(..) {
                let role = match frame {
                    Frame::Read(w) | Frame::Weighed(w, _) => plan
                        .index_of(&w)
                        .and_then(|i| plan.parcel(i).kind.expected_role()),
                    Frame::NoRead => PlanKind::NoRead.expected_role(),
                    Frame::Reject(_) => continue,
                };
                let lane = roles.lane(role.expect("plan waybill"));
                next_id += 1;
                seq = bondline_devices::plc::next_seq(seq);
                let cmd = DivertCommand {
                    seq,
                    lane,
                    parcel: next_id,
                };
                if ctx
                    .write_multiple_registers(map.divert.block, &cmd.to_registers())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    #[tokio::test]
    async fn line_against_a_fake_daemon_is_all_correct() {
        let text = r#"
name = "fake-daemon"
seed = 11
duration_s = 2.0
belt_speed_m_s = 2.0
parcel_length_m = [0.10, 0.15]
gap_m = [0.05, 0.10]
scanner_at_m = 0.2
gate_at_m = 1.2
"#;
        let scenario = Scenario::from_toml(text).expect("scenario");
        let plan = scenario.plan();
        let roles = scenario.lane_roles;
        let sim = LineSim::bind(scenario, framing(), map())
            .await
            .expect("bind");
        let (scanner, plc) = (sim.scanner_addr().expect("tcp"), sim.plc_addr());
        let state = sim.plc_state();
        let daemon = tokio::spawn(fake_daemon(scanner, plc, plan, roles));
        let ledger =
            tokio::time::timeout(Duration::from_secs(30), sim.run(None, future::pending()))
                .await
                .expect("run ends")
                .expect("run");
        daemon.abort();
        println!("{ledger}");
        assert!(ledger.parcels >= 10, "{ledger}");
        assert_eq!(ledger.leaks, 0, "{ledger}");
        assert_eq!(ledger.late_diverts, 0, "{ledger}");
        assert_eq!(ledger.wrong_lanes, 0, "{ledger}");
        assert_eq!(ledger.correct, ledger.parcels, "{ledger}");
        assert_eq!(ledger.sorted, ledger.parcels, "{ledger}");
        assert_eq!(ledger.no_command + ledger.unscanned, 0, "{ledger}");
        assert_eq!(ledger.latency.samples, ledger.parcels, "{ledger}");
        assert_eq!(ledger.correlation.base, Some(700_001), "{ledger}");
        assert_eq!(ledger.correlation.adjustments, 0, "{ledger}");
        assert_eq!(ledger.correlation.unmatched_commands, 0, "{ledger}");
        assert!(ledger.garbage_frames > 0, "default mix has noise: {ledger}");
        // Every disposition is in the PLC's ring history with the daemon's ids.
        let d = state.dispositions();
        assert_eq!(d.len() as u64, ledger.parcels);
        assert!(d.iter().all(|d| d.parcel > 700_000));
    }

    /// The X-ray stage: every parcel passes the tunnel once, in belt order, entering it the
    /// scanner-to-tunnel time after its scan; verdicts, marks and images come out of an
    /// xray-sim the daemon reads over Modbus TCP.
    #[tokio::test]
    async fn xray_stage_sends_every_parcel_through_the_tunnel() {
        use bondline_devices::xray::{new_events, XrayResult};
        use tokio_modbus::client::Reader as _;

        let text = r#"
name = "xray-stage"
seed = 5
duration_s = 1.0
belt_speed_m_s = 2.0
parcel_length_m = [0.10, 0.15]
gap_m = [0.10, 0.15]
scanner_at_m = 0.2
gate_at_m = 1.2
[xray]
scan_to_xray_m = 0.4
suspect_rate = 0.5
mark_rate = 0.5
processing_ms = 100
mark_latency_ms = 100
"#;
        let scenario = Scenario::from_toml(text).expect("scenario");
        let plan = scenario.plan();
        let roles = scenario.lane_roles;
        let spool = tempfile::tempdir().expect("spool");
        let spec = crate::xray::ImageSpec {
            width: 64,
            height: 48,
            ..crate::xray::ImageSpec::default()
        };
        let images = XrayImages::new(spool.path(), spec).expect("images");
        let xray_map = Profiles::builtin()
            .get("xray-modbus")
            .and_then(|p| p.xray().cloned())
            .expect("built-in xray profile");
        let sim = LineSim::bind(scenario, framing(), map())
            .await
            .expect("bind")
            .with_xray(
                xray_map.clone(),
                XrayPort::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
                Some(images),
            )
            .await
            .expect("x-ray");
        let (scanner, plc) = (sim.scanner_addr().expect("tcp"), sim.plc_addr());
        let xray_addr = sim.xray_addr().expect("x-ray on tcp");
        let state = sim.xray_state().expect("x-ray state");
        let daemon = tokio::spawn(fake_daemon(scanner, plc, plan, roles));
        let reader = tokio::spawn(async move {
            // Reads the ring as the daemon would, while the belt runs.
            let mut ctx =
                tokio_modbus::client::tcp::connect_slave(xray_addr, tokio_modbus::Slave(1))
                    .await
                    .expect("connect");
            let (mut last, mut seen) = (0u16, Vec::new());
            loop {
                let Ok(Ok(regs)) = ctx
                    .read_input_registers(xray_map.events, xray_map.ring_len())
                    .await
                else {
                    return seen;
                };
                let n = new_events(&regs, last);
                assert_eq!((n.missed, n.errors.len()), (0, 0), "{n:?}");
                last = n.events.last().map_or(last, |e| e.seq);
                seen.extend(n.events);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let ledger =
            tokio::time::timeout(Duration::from_secs(30), sim.run(None, future::pending()))
                .await
                .expect("run ends")
                .expect("run");
        daemon.abort();
        // The server stopped with the run: the reader's connection ended.
        let seen = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("reader ends")
            .expect("reader");
        println!("{ledger}");
        assert!(ledger.parcels >= 5, "{ledger}");
        assert_eq!(ledger.xray.passages, ledger.parcels, "{ledger}");
        assert!(
            ledger.xray.flagged > 0 && ledger.xray.before_gate > 0,
            "{ledger}"
        );
        assert_eq!(ledger.leaks, 0, "{ledger}");

        let events = state.events(1).expect("unit 1");
        let verdicts: Vec<_> = events
            .iter()
            .filter(|e| e.result != XrayResult::OperatorMark)
            .collect();
        assert_eq!(verdicts.len() as u64, ledger.parcels);
        let mut ids: Vec<u32> = verdicts.iter().map(|e| e.scan_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=ledger.parcels as u32).collect::<Vec<_>>());
        // Entry times follow the belt: consecutive parcels at least a minimal pitch apart.
        let mut entries: Vec<u64> = verdicts.iter().map(|e| e.entered_at_ms).collect();
        entries.sort_unstable();
        assert!(entries.windows(2).all(|w| w[1] - w[0] >= 90), "{entries:?}");
        assert!(events.iter().any(|e| e.result == XrayResult::OperatorMark));
        // The daemon-side reader saw what the ring held while it ran.
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|e| events.contains(e)));
        assert!(spool.path().join("1_top.jpg").exists());
    }
}
