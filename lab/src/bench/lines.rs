//! `bondline-lab bench lines`: the whole daemon against 1 to 16 simulated lines at the peak
//! scenario's rate (optionally an X-ray tunnel with images on L0, a journal backlog draining
//! and a flood of platform declarations meanwhile), the simulators on a thread of their own;
//! prints each line's ledger and the daemon's decision latency.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use bondline::metrics::Metrics;

/// The peak scenario, compiled in so the benchmark runs from the binary alone.
const PEAK: &str = include_str!("../../../simulators/scenarios/peak.toml");
/// The X-ray stage of `bench lines --xray` on line L0: xray-line.toml's tunnel.
const XRAY_STAGE: &str = "
[xray]
scan_to_xray_m = 0.5
unit = 1
suspect_rate = 0.05
mark_rate = 0.03
processing_ms = 400
mark_latency_ms = 400
";

/// What `bench lines` puts on the daemon.
pub(super) struct Load {
    pub lines: u16,
    pub seconds: u64,
    pub backlog: u64,
    pub flood: u64,
    /// The daemon's `[uplink] platform_rate_while_sorting`; `None`: its default.
    pub platform_rate_while_sorting: Option<u32>,
    pub xray: bool,
    /// The daemon's `[floor] cpu_wake_latency_us`.
    pub cpu_wake_latency_us: Option<u32>,
    /// Idle clients held against the staff view for the whole run (0: no staff view).
    pub idle_http: usize,
    /// The last line's PLC goes off the network for [`PLC_DOWN_S`] half-way through the run,
    /// and the daemon must connect to it again.
    pub plc_restart: bool,
    /// Every line gets a scan camera (camera-sim, [`CAMERA_DISTANCE_M`] past the scanner)
    /// whose snapshot of every parcel the daemon fetches, decodes and keeps.
    pub cameras: bool,
}

/// Where `bench lines --cameras` puts each line's scan camera, metres past the scanner.
const CAMERA_DISTANCE_M: f64 = 0.6;

/// How long the PLC of `bench lines --plc-restart` stays off the network.
const PLC_DOWN_S: f64 = 2.0;

pub(super) async fn run(
    load: Load,
    sims: Sims,
    broker: Option<String>,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let Load {
        lines,
        seconds,
        backlog,
        flood,
        platform_rate_while_sorting,
        xray,
        cpu_wake_latency_us,
        idle_http,
        plc_restart,
        cameras,
    } = load;
    use bondline_simulators::platform::PlatformSim;

    anyhow::ensure!((1..=16).contains(&lines), "--lines must be 1 to 16");
    let (_tmp, dir) = super::work_dir(dir)?;
    let (_mosquitto, host, port) = super::broker::broker_or_mosquitto(broker, &dir)?;
    let store = dir.join("journal");
    if backlog > 0 {
        println!("filling a backlog of {backlog} records...");
        let (journal, _) = super::journal::fill(&store, backlog, Duration::from_millis(2)).await?;
        drop(journal);
    }
    let spec = FloorSpec {
        lines,
        seconds,
        xray,
        plc_restart,
        cameras,
        spool: dir.join("xray-spool"),
        platform: std::net::SocketAddr::new(host.parse()?, port),
    };
    let (scenarios, line_seeds) = scenarios(&spec)?;
    let mut floor = match sims {
        Sims::Process => SimFloor::process(&spec).await?,
        Sims::Thread => SimFloor::thread(&spec)?,
    };
    let addrs = floor.addrs.clone();
    let spool = spec.spool.clone();
    let mut config = format!(
        "gateway_id = \"bench-gw\"\n[trust]\nallow_unsigned = true\n[storage]\npath = \"{}\"\n[uplink]\nbroker = \"{host}:{port}\"\nclient_id = \"bondline-bench-lines\"\ntopic_prefix = \"bench/lines\"\n{}",
        store.display(),
        platform_rate_while_sorting
            .map(|r| format!("platform_rate_while_sorting = {r}\n"))
            .unwrap_or_default()
    );
    let mut lines_toml = String::new();
    for (i, (scenario, (scanner, plc, xray_addr, camera))) in
        scenarios.iter().zip(addrs).enumerate()
    {
        config.push_str(&format!(
            "[devices.scanner-{i}]\nprofile = \"scanner-stx-etx\"\ntcp = \"{scanner}\"\n[devices.plc-{i}]\nprofile = \"sorter-plc\"\ntcp = \"{plc}\"\n"
        ));
        if let Some(camera) = camera {
            config.push_str(&format!(
                "[cameras.scan-{i}]\nurl = \"http://{camera}/snapshot.jpg\"\nline = \"L{i}\"\npoint = \"scan\"\ndistance_m = {CAMERA_DISTANCE_M:?}\n"
            ));
        }
        let (xray_line, xray_geometry) = match (xray_addr, &scenario.xray) {
            (Some(addr), Some(stage)) => {
                config.push_str(&format!(
                    "[devices.xray-{i}]\nprofile = \"xray-modbus\"\ntcp = \"{addr}\"\nunit_id = {}\nspool = \"{}\"\n",
                    stage.unit,
                    spool.display()
                ));
                (
                    format!("xray = \"xray-{i}\"\n"),
                    format!(", scan_to_xray_m = {:?}", stage.scan_to_xray_m),
                )
            }
            _ => (String::new(), String::new()),
        };
        let r = scenario.lane_roles;
        lines_toml.push_str(&format!(
            "[[lines]]\nid = \"L{i}\"\nscanner = \"scanner-{i}\"\nplc = \"plc-{i}\"\n{xray_line}geometry = {{ belt_speed_m_s = {}, scan_to_gate_m = {}, margin_ms = 300{xray_geometry} }}\nlanes = [{{ lane = {}, role = \"release\" }}, {{ lane = {}, role = \"inspection\" }}, {{ lane = {}, role = \"hold\" }}, {{ lane = {}, role = \"exception\" }}]\n",
            scenario.belt_speed_m_s,
            scenario.gate_at_m - scenario.scanner_at_m,
            r.release,
            r.inspection,
            r.hold,
            r.exception
        ));
    }
    if let Some(us) = cpu_wake_latency_us {
        config.push_str(&format!("[floor]\ncpu_wake_latency_us = {us}\n"));
    }
    if idle_http > 0 {
        // The view's defaults: its connection limit, header and idle timeouts are the budget
        // under test.
        config.push_str("[view]\nlisten = \"127.0.0.1:0\"\n");
    }
    config.push_str(&lines_toml);
    let config = bondline::config::Config::parse("bench-lines.toml", &config)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let app = bondline::app::App::start(config, stop.clone()).await?;
    let metrics = app.metrics.clone();
    let start = Instant::now();
    while !metrics.uplink_ready.load(Ordering::Relaxed) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not connect to the broker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = match (idle_http, app.view_addr) {
        (0, _) => None,
        (n, Some(addr)) => {
            let idle = super::idle_http::IdleHttp::start(addr, n).await;
            println!(
                "{n} idle clients against the staff view at {addr}: {} connected",
                idle.open()
            );
            Some(idle)
        }
        (_, None) => anyhow::bail!("the staff view did not start"),
    };
    let backlog_at_start = Metrics::get(&metrics.backlog);
    println!(
        "{lines} line(s) at peak rate for {seconds} s each; backlog {backlog_at_start} records draining meanwhile; flood of {flood} declarations{}{}{}",
        if xray { "; X-ray tunnel with images on L0" } else { "" },
        if cameras { "; a scan camera on every line" } else { "" },
        if plc_restart {
            format!("; L{}'s PLC off the network for {PLC_DOWN_S} s at {} s", lines - 1, seconds / 2)
        } else {
            String::new()
        }
    );
    // Waybills of another plan than any line's: the flood changes no line's decisions.
    let flood_task = (flood > 0).then(|| {
        let mut seed = 4242u64;
        while line_seeds.contains(&(seed % 10_000)) {
            seed += 1;
        }
        let plan = bondline_simulators::plan::Plan::with_mix(
            seed,
            bondline_simulators::plan::Mix::only(bondline_simulators::plan::PlanKind::DeclaredOnly),
        );
        let host = host.clone();
        tokio::spawn(async move {
            let platform = PlatformSim::connect(
                std::net::SocketAddr::new(host.parse()?, port),
                "bench/lines",
                "bench-lines-flood",
            )
            .await?;
            platform.publish_plan(&plan, 0..flood).await
        })
    });
    let messages_at_start = Metrics::get(&metrics.platform_messages);
    let started = Instant::now();
    floor.go().await?;
    // The restarted PLC's link, watched while the lines run (once they end, the simulators
    // close and every link goes down): when it went down, when it came up again.
    let link_watch = plc_restart.then(|| {
        let metrics = metrics.clone();
        let name = format!("plc:plc-{}", lines - 1);
        let fault_at = Duration::from_secs_f64(seconds as f64 / 2.0);
        tokio::spawn(async move {
            let mut down_at: Option<Duration> = None;
            loop {
                let up = metrics.links().get(&name).map(|l| l.up);
                match (up, down_at) {
                    // Only the restart counts, not the link's first connect.
                    (Some(false), None) if started.elapsed() >= fault_at => {
                        down_at = Some(started.elapsed())
                    }
                    (Some(true), Some(d)) => return (d, started.elapsed()),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let FloorResult { ledgers, stalls } = floor.ledgers().await?;
    let elapsed = started.elapsed();
    let forwarded = Metrics::get(&metrics.records_forwarded);
    let ingested = Metrics::get(&metrics.platform_messages) - messages_at_start;
    let held = app.table.declarations();
    let plc_link = match link_watch {
        Some(w) if w.is_finished() => w.await.ok(),
        Some(w) => {
            w.abort();
            None
        }
        None => None,
    };
    // The view's gauge while the clients still stand against it.
    let view_open = Metrics::get(&metrics.view_http.connections);
    let idle = match idle {
        Some(idle) => Some(idle.finish().await),
        None => None,
    };
    if let Some(t) = flood_task {
        t.abort();
    }
    stop.cancel();
    app.wait().await?;

    let mut leaks = 0;
    let mut late = 0;
    let mut parcels = 0;
    for (i, l) in ledgers.into_iter().enumerate() {
        let l = l.map_err(|e| anyhow::anyhow!("line L{i}'s simulator: {e}"))?;
        leaks += l.leaks;
        late += l.late_diverts;
        parcels += l.parcels;
        println!(
            "line L{i}: {} parcels in {:.0} s ({:.0}/h), correct {}, leaks {}, late diverts {}, wrong {}, sim lag max {:.1} ms, frame→command (line-sim, exact) all {}; release (written ahead) {}; other lanes {}",
            l.parcels,
            l.scan_span_s,
            l.parcels as f64 * 3600.0 / l.scan_span_s.max(1e-9),
            l.correct,
            l.leaks,
            l.late_diverts,
            l.wrong_lanes,
            l.max_lag_ms,
            micros(&l.latency),
            micros(&l.release_latency),
            micros(&l.other_latency),
        );
    }
    println!(
        "all lines: {parcels} parcels, leaks {leaks}, late diverts {late} (ledger) / {} (daemon), deadlines missed {}",
        Metrics::get(&metrics.late_diverts),
        Metrics::get(&metrics.deadlines_missed)
    );
    println!("the machine meanwhile (a thread at the simulators' priority, beside them): {stalls}");
    println!(
        "daemon latency, scanner frame received → PLC-acknowledged divert (HDR histogram, within 1%): {}",
        metrics.decision_latency.percentiles()
    );
    println!(
        "release intents made durable (written and synced in their log: what a release command waits for): {}",
        metrics.intent_flush_latency.percentiles()
    );
    if let Some(idle) = idle {
        let v = &metrics.view_http;
        println!(
            "staff view meanwhile: {idle}; the view held {view_open} connections at the end, reached its limit {} times, timed out {}",
            Metrics::get(&v.connection_limit_reached),
            Metrics::get(&v.timed_out),
        );
    }
    if plc_restart {
        let line = lines - 1;
        let back_at = seconds as f64 / 2.0 + PLC_DOWN_S;
        match plc_link {
            Some((down, up)) => println!(
                "PLC restart on L{line}: link down at {:.2} s, up again at {:.2} s ({:.0} ms after the PLC came back at {back_at:.1} s)",
                down.as_secs_f64(),
                up.as_secs_f64(),
                (up.as_secs_f64() - back_at) * 1000.0
            ),
            None => println!("PLC restart on L{line}: NOT reconnected while the lines ran"),
        }
    }
    if xray {
        println!(
            "X-ray on L0: {} verdicts, {} joined to parcels, {} parcels without a verdict by their deadline; {} images ingested, {} with errors",
            Metrics::get(&metrics.xray_verdicts),
            Metrics::get(&metrics.xray_matched),
            Metrics::get(&metrics.xray_missing),
            Metrics::get(&metrics.images_ingested),
            Metrics::get(&metrics.images_with_errors),
        );
    }
    if cameras {
        println!(
            "cameras: {} snapshots taken and kept with their parcels, {} failed",
            Metrics::get(&metrics.snapshots_taken),
            Metrics::get(&metrics.snapshots_failed),
        );
    }
    if flood > 0 {
        println!(
            "platform meanwhile: {ingested} messages taken in ({:.0}/s), {held} declarations held at the end; ingest paced while the lines sort: {}",
            ingested as f64 / elapsed.as_secs_f64(),
            match platform_rate_while_sorting {
                Some(0) => "no".to_string(),
                Some(r) => format!("{r}/s"),
                None => "the daemon's default".to_string(),
            }
        );
    }
    println!(
        "uplink meanwhile: {forwarded} records forwarded in {:.1} s ({:.0}/s), backlog {} → {}",
        elapsed.as_secs_f64(),
        forwarded as f64 / elapsed.as_secs_f64(),
        backlog_at_start,
        Metrics::get(&metrics.backlog)
    );
    Ok(())
}

/// A line-sim latency summary in µs.
fn micros(l: &bondline_simulators::line::Latency) -> String {
    let us = |ms: Option<f64>| ms.unwrap_or(0.0) * 1000.0;
    format!(
        "p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs max {:.0} µs (n {})",
        us(l.p50_ms),
        us(l.p99_ms),
        us(l.p99_9_ms),
        us(l.max_ms),
        l.samples
    )
}

/// Where `bench lines` runs the simulated floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sims {
    /// A process of its own (this program again, `bench lines-sims`): nothing the daemon
    /// does in its process (its threads, its allocator's locks, its memory) can delay the
    /// simulators, so their lag stays out of the figures.
    Process,
    /// A real-time thread of this process, beside the daemon.
    Thread,
}

/// What the simulated floor is made of; built the same way in this process or in the
/// simulators' own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct FloorSpec {
    lines: u16,
    seconds: u64,
    xray: bool,
    plc_restart: bool,
    cameras: bool,
    /// The X-ray workstation's image spool (L0 with `xray`).
    spool: PathBuf,
    /// The broker the simulated platform publishes declarations on.
    platform: std::net::SocketAddr,
}

/// Each line's scanner, PLC, X-ray and camera addresses.
type Addrs = Vec<(
    std::net::SocketAddr,
    std::net::SocketAddr,
    Option<std::net::SocketAddr>,
    Option<std::net::SocketAddr>,
)>;

/// Each line's ledger, or why its simulator failed.
type Ledgers = Vec<Result<bondline_simulators::line::Ledger, String>>;

/// What the simulated floor reports at the end: each line's ledger, and the machine's own
/// scheduling stalls during the run (see `stalls`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FloorResult {
    ledgers: Ledgers,
    stalls: super::stalls::Stalls,
}

/// The peak scenario for every line (with the X-ray stage on L0 and the PLC outage on the
/// last line, as asked), each line with its own seed; and the seeds' plans (`seed % 10_000`).
fn scenarios(
    spec: &FloorSpec,
) -> anyhow::Result<(Vec<bondline_simulators::line::Scenario>, Vec<u64>)> {
    use bondline_simulators::line::{Fault, FaultKind, RunLength, Scenario};
    let mut scenarios = Vec::new();
    let mut line_seeds = Vec::new();
    for i in 0..spec.lines {
        let text = if spec.xray && i == 0 {
            format!("{PEAK}{XRAY_STAGE}")
        } else {
            PEAK.to_string()
        };
        let mut scenario = Scenario::from_toml(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        scenario.seed += i as u64 * 7919;
        line_seeds.push(scenario.seed % 10_000);
        scenario.length = RunLength::Seconds(spec.seconds as f64);
        if spec.plc_restart && i == spec.lines - 1 {
            scenario.faults.push(Fault {
                at_s: spec.seconds as f64 / 2.0,
                for_s: PLC_DOWN_S,
                kind: FaultKind::PlcDown,
            });
        }
        scenarios.push(scenario);
    }
    Ok((scenarios, line_seeds))
}

/// Binds every line's simulators (on the current runtime: their sockets belong to it).
async fn bind_floor(
    spec: &FloorSpec,
) -> anyhow::Result<(Vec<bondline_simulators::line::LineSim>, Addrs)> {
    use bondline_simulators::camera::{CameraSim, SimAuth};
    use bondline_simulators::line::{LineSim, XrayPort};
    use bondline_simulators::xray::{ImageSpec, XrayImages};
    let (framing, map) = super::builtin_devices()?;
    let xray_map = bondline_devices::Profiles::builtin()
        .get("xray-modbus")
        .and_then(|p| p.xray())
        .context("built-in X-ray profile")?
        .clone();
    let mut sims = Vec::new();
    let mut addrs = Vec::new();
    for scenario in scenarios(spec)?.0 {
        let mut sim = LineSim::bind(scenario, framing.clone(), map.clone()).await?;
        if sim.scenario().xray.is_some() {
            let images = XrayImages::new(&spec.spool, ImageSpec::default())?;
            let port = XrayPort::Tcp("127.0.0.1:0".parse()?);
            sim = sim.with_xray(xray_map.clone(), port, Some(images)).await?;
        }
        // Served until the process ends: the daemon may still fetch the last parcels' frames.
        let camera = if spec.cameras {
            let camera = CameraSim::new(SimAuth::Open);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(camera.clone().serve(listener, std::future::pending()));
            sim = sim.with_camera(camera, CAMERA_DISTANCE_M);
            Some(addr)
        } else {
            None
        };
        addrs.push((
            sim.scanner_addr().context("line-sim scanner is TCP")?,
            sim.plc_addr(),
            sim.xray_addr(),
            camera,
        ));
        sims.push(sim);
    }
    Ok((sims, addrs))
}

/// Runs every line to its end, the simulated platform declaring their parcels.
async fn run_floor(
    sims: Vec<bondline_simulators::line::LineSim>,
    platform: std::net::SocketAddr,
) -> anyhow::Result<Ledgers> {
    let platform = bondline_simulators::platform::PlatformSim::connect(
        platform,
        "bench/lines",
        "bench-lines-platform",
    )
    .await?;
    let runs = sims
        .into_iter()
        .map(|sim| sim.run(Some(&platform), std::future::pending::<()>()));
    Ok(futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.map_err(|e| format!("{e:#}")))
        .collect())
}

/// The simulated floor, bound and waiting for [`SimFloor::go`].
struct SimFloor {
    addrs: Addrs,
    run: FloorRun,
}

enum FloorRun {
    Thread {
        go: Option<tokio::sync::oneshot::Sender<()>>,
        /// Started with the belts.
        probe: Option<super::stalls::StallProbe>,
        job: tokio::task::JoinHandle<anyhow::Result<Ledgers>>,
        /// Kept while the floor runs.
        _thread: bondline::threads::Dedicated,
    },
    Process(Box<FloorProcess>),
}

/// The simulators' process and its pipes.
struct FloorProcess {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

/// Lines of the simulators' process that carry the protocol (everything else it prints is
/// passed through).
const ADDRS_LINE: &str = "bench-lines-sims addrs ";
const LEDGERS_LINE: &str = "bench-lines-sims ledgers ";

impl SimFloor {
    /// The floor on a thread of this process. It keeps time at the thread's priority
    /// (real-time when allowed: the devices of a real floor are other machines, which the
    /// daemon cannot delay); its blocking threads, which render and encode the X-ray
    /// workstation's images, run below it, as the daemon's own image ingest does.
    fn thread(spec: &FloorSpec) -> anyhow::Result<SimFloor> {
        let thread = bondline::threads::Dedicated::start_urgent_with(
            "bondline-bench-sims",
            bondline::threads::yield_to_floor,
        )?;
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let spec = spec.clone();
        let job = thread.spawn(async move {
            let (sims, addrs) = match bind_floor(&spec).await {
                Ok(bound) => bound,
                Err(e) => {
                    let _ = bound_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = bound_tx.send(Ok(addrs));
            go_rx.await?;
            run_floor(sims, spec.platform).await
        });
        let addrs = bound_rx
            .recv()
            .context("the simulators stopped")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(SimFloor {
            addrs,
            run: FloorRun::Thread {
                go: Some(go),
                probe: None,
                job,
                _thread: thread,
            },
        })
    }

    /// The floor in a process of its own: this program again, `bench lines-sims --spec`.
    async fn process(spec: &FloorSpec) -> anyhow::Result<SimFloor> {
        use tokio::io::AsyncBufReadExt as _;
        let exe = std::env::current_exe().context("this program's path")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["bench", "lines-sims", "--spec"])
            .arg(serde_json::to_string(spec)?)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the simulators' process")?;
        let stdin = child.stdin.take().context("the simulators' stdin")?;
        let mut stdout =
            tokio::io::BufReader::new(child.stdout.take().context("the simulators' stdout")?)
                .lines();
        let addrs = loop {
            let line = stdout
                .next_line()
                .await?
                .context("the simulators' process ended before it was bound")?;
            match line.strip_prefix(ADDRS_LINE) {
                Some(json) => break serde_json::from_str::<Addrs>(json)?,
                None => eprintln!("simulators: {line}"),
            }
        };
        Ok(SimFloor {
            addrs,
            run: FloorRun::Process(Box::new(FloorProcess {
                child,
                stdin,
                stdout,
            })),
        })
    }

    /// Starts the belts.
    async fn go(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        match &mut self.run {
            FloorRun::Thread { go, probe, .. } => {
                *probe = Some(super::stalls::StallProbe::start()?);
                if let Some(go) = go.take() {
                    let _ = go.send(());
                }
            }
            FloorRun::Process(p) => {
                p.stdin.write_all(b"go\n").await?;
                p.stdin.flush().await?;
            }
        }
        Ok(())
    }

    /// Waits for the end of every line's run.
    async fn ledgers(self) -> anyhow::Result<FloorResult> {
        match self.run {
            FloorRun::Thread { job, probe, .. } => {
                let ledgers = job.await??;
                let stalls = probe.map(|p| p.finish()).unwrap_or_default();
                Ok(FloorResult { ledgers, stalls })
            }
            FloorRun::Process(p) => {
                let FloorProcess {
                    mut child,
                    mut stdout,
                    stdin: _stdin,
                } = *p;
                let ledgers = loop {
                    let Some(line) = stdout.next_line().await? else {
                        let status = child.wait().await?;
                        anyhow::bail!("the simulators' process ended without ledgers ({status})");
                    };
                    match line.strip_prefix(LEDGERS_LINE) {
                        Some(json) => break serde_json::from_str::<FloorResult>(json)?,
                        None => eprintln!("simulators: {line}"),
                    }
                };
                child.wait().await?;
                Ok(ledgers)
            }
        }
    }
}

/// `bench lines-sims`: the simulators' side of `bench lines --sims process`. Binds the floor
/// of `spec` on a real-time thread, prints its addresses, waits for `go` on stdin, runs every
/// line and prints their ledgers.
pub(super) async fn serve_sims(spec: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let spec: FloorSpec = serde_json::from_str(spec).context("--spec")?;
    let mut floor = SimFloor::thread(&spec)?;
    println!("{ADDRS_LINE}{}", serde_json::to_string(&floor.addrs)?);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        if line.trim() == "go" {
            break;
        }
    }
    floor.go().await?;
    let result = floor.ledgers().await?;
    println!("{LEDGERS_LINE}{}", serde_json::to_string(&result)?);
    Ok(())
}
