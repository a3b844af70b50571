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
//!
//! # Layout
//! - `scenario`: the scenario file, the belt model and the fault plan.
//! - `link`: the scanner connection (TCP listener or serial port).
//! - `correlator`: the match of the daemon's parcel ids to delivered frames.
//! - `run`: the event scheduler while the belt moves, and the ledger it ends with.
//! - `platform_feed`: declarations kept ahead of the belt, late instructions.
//! - `xray`: the optional X-ray tunnel stage.
//! - `ledger`: where each parcel went, tallied against the plan.

mod correlator;
mod ledger;
mod link;
mod platform_feed;
mod run;
mod scenario;
mod xray;

use std::future::{self, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bondline_devices::contract::unix_ms;
use bondline_devices::framing::ScannerFraming;
use bondline_devices::plc::PlcMap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use ledger::{
    Correlation, LateMarks, Latency, Ledger, Misplaced, ParcelOutcome, XrayFlags, XrayOutcome,
};
pub use link::ScannerPort;
pub use scenario::{
    Belt, BeltParcel, Fault, FaultKind, LaneRoles, LaneSpec, PlcFaults, RunLength, Scenario,
    ScenarioError, XrayStage,
};
pub use xray::XrayPort;

use crate::platform::PlatformSim;
use crate::plc::{PlcSim, PlcState};
use crate::scanner::ScannerSim;
use crate::xray::{XrayImages, XrayState};
use link::Link;
use platform_feed::{keep_declared_ahead, publish_marks, Ahead, AHEAD_S};
use run::{Run, Stop};
use xray::XrayAttachment;

/// How long `run` waits for the controller's heartbeat to take the PLC out of fail-safe mode
/// before it starts the belt anyway.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(5);
/// Between the first declarations and the belt's start: time for the daemon to take them in.
const SETTLE: Duration = Duration::from_millis(500);

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

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::framing::{Frame, FrameDecoder};
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpStream;

    use crate::plan::{Plan, PlanKind};
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
