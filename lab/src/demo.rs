//! `bondline-lab demo`: a whole line on this machine, on free local ports.
//!
//! It starts an embedded MQTT broker (rumqttd), `plc-sim` (Modbus TCP), `scanner-sim` (a TCP
//! scanning-and-weighing station, profile `dws-stx-etx`) and `platform-sim` (the clearance
//! platform), writes a configuration for them into the state directory, and runs the real
//! daemon on it: the same code path as `bondline run`.
//!
//! The platform pushes the demo rule set (`deploy/rules-demo.toml`, every rule kind), suspends
//! an enterprise, and declares and instructs parcels ahead of the scanner from a plan with a
//! parcel for every rule, so every lane and every rule is exercised. Each record the platform
//! receives is printed with the rule that decided and why; every 5 s the parcels are counted by
//! deciding rule; the final report checks every lane against the plan and lists which rule
//! kinds fired.
//!
//! The staff view is served on a free loopback port, printed at start.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bondline_devices::contract::{EventKind, ParcelRecord};
use bondline_devices::Profiles;
use bondline_simulators::audit::{RuleBook, DEMO_RULES};
use bondline_simulators::plan::{Mix, Plan};
use bondline_simulators::platform::{Expect, PlatformReport, PlatformSim};
use bondline_simulators::plc::{PlcOptions, PlcSim};
use bondline_simulators::scanner::ScannerSim;
use bondline_simulators::xray::{
    DriverConfig, ImageOrder, ImageSpec, Passage, XrayDriver, XrayImages, XraySim, XrayState,
};
use tokio_util::sync::CancellationToken;

use bondline::app::App;
use bondline::config::Config;
use bondline::metrics::Metrics;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// State directory for the journal and the generated configuration. Default: a new
    /// temporary directory, removed at exit.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Parcels per second sent by the scanner simulator.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Stop after this many seconds; default: run until Ctrl-C.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seed of the parcel plan (which waybills exist and what customs says about them).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one line per record the platform receives (on by default; `--quiet` turns off).
    #[arg(long)]
    pub quiet: bool,
}

const PREFIX: &str = "bondline/demo-gw";
/// The demo line's scanner: a scanning and weighing station.
const SCANNER_PROFILE: &str = "dws-stx-etx";
/// Parcels the platform declares ahead of the scanner.
const AHEAD: u64 = 50;
/// Where the X-ray tunnel starts, from the scanner, and when a parcel reaches it at the
/// default 2 m/s.
const XRAY_DISTANCE_M: f64 = 0.5;
const XRAY_OFFSET_MS: u64 = 250;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate <= 1000.0) {
        bail!("--rate must be above 0 and at most 1000 parcels/s");
    }
    let _tmp;
    let state_dir = match &args.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("bondline-demo-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    // Stopping goes along the line: the scanner first, then the daemon once it has handled
    // the last frames, then the PLC, so every scanned parcel gets its divert and its record.
    let scanner_stop = CancellationToken::new();
    let stop = CancellationToken::new();
    let sims_stop = CancellationToken::new();
    let profiles = Profiles::builtin();

    // The broker.
    let mqtt = free_port()?;
    start_broker(mqtt)?;
    wait_for_port(mqtt, Duration::from_secs(5)).await?;

    // The PLC.
    let plc_map = profiles
        .get("sorter-plc")
        .and_then(|p| p.plc())
        .context("built-in PLC profile")?
        .clone();
    // The PLC reports each parcel's disposition when it would reach its gate.
    let plc = PlcSim::bind_with(
        "127.0.0.1:0".parse()?,
        plc_map,
        PlcOptions {
            auto_dispose_after: Some(Duration::from_millis(1200)),
            ..Default::default()
        },
    )
    .await?;
    let plc_addr = plc.local_addr();
    let plc_state = plc.state();
    tokio::spawn(plc.run(sims_stop.clone().cancelled_owned()));

    // The scanner: a TCP scanner is a server the daemon connects to. It weighs, so the weight
    // rule has a scale reading to check.
    let framing = profiles
        .get(SCANNER_PROFILE)
        .and_then(|p| p.scanner())
        .context("built-in scanner profile")?
        .clone();
    let scan_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let scan_addr = scan_listener.local_addr()?;

    // The X-ray scanner after the barcode scanner: xray-sim on Modbus TCP, judging suspect
    // exactly the parcels the plan says (so the plan's outcomes stay exact) and writing two
    // small views of each scan to a spool directory, as an X-ray workstation does.
    let xray_map = profiles
        .get("xray-modbus")
        .and_then(|p| p.xray())
        .context("built-in X-ray profile")?
        .clone();
    let xray_state = XrayState::new(xray_map, &[1])?;
    let xray_sim = XraySim::bind("127.0.0.1:0".parse()?, xray_state.clone()).await?;
    let xray_addr = xray_sim.local_addr();
    tokio::spawn(xray_sim.run(sims_stop.clone().cancelled_owned()));
    let xray_spool = state_dir.join("xray-spool");
    let images = XrayImages::new(
        &xray_spool,
        ImageSpec {
            width: 320,
            height: 240,
            ..ImageSpec::default()
        },
    )?;
    let (xray_driver, xray_feed) = XrayDriver::new(
        DriverConfig {
            suspect_rate: 0.0,
            mark_rate: 0.0,
            processing: Duration::from_millis(300),
            image_order: ImageOrder::After(Duration::from_millis(100)),
            ..DriverConfig::default()
        },
        xray_state,
        Some(images),
    )?;
    tokio::spawn(xray_driver.run(sims_stop.clone().cancelled_owned()));
    // Each parcel the scanner sends enters the tunnel when the belt brings it there.
    let (scanned_tx, mut scanned_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    // The scanner simulator's plan, so the X-ray judge flags the parcels it plans as suspect.
    let xray_plan = Plan::with_mix(args.seed, Mix::every_rule());
    tokio::spawn(async move {
        while let Some(index) = scanned_rx.recv().await {
            let entered = bondline::metrics::unix_ms(std::time::SystemTime::now()) + XRAY_OFFSET_MS;
            xray_feed.pass(Passage {
                suspect: Some(xray_plan.parcel(index).kind.xray_suspect()),
                ..Passage::new(index as u32 + 1, entered)
            });
        }
    });

    // The platform's signing key, made for this run: the platform simulator signs every
    // message, the daemon believes only that key, as on a real line.
    let platform_key = bondline_devices::signing::SigningKey::generate(&mut rand::rngs::OsRng);
    let public_hex = hex::encode(platform_key.verifying_key().to_bytes());

    // The daemon, on a configuration written like any operator's.
    let config_path = state_dir.join("demo.toml");
    std::fs::write(
        &config_path,
        demo_config(
            &state_dir.join("journal"),
            mqtt,
            scan_addr,
            plc_addr,
            (xray_addr, &xray_spool),
            &public_hex,
        ),
    )?;
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = App::start(config, stop.clone()).await?;
    let metrics = app.metrics.clone();
    wait_until(Duration::from_secs(10), || {
        metrics.uplink_ready.load(Ordering::Relaxed)
    })
    .await
    .context("the daemon did not connect to the embedded broker")?;

    // The platform pushes the rule set, then suspends and declares the first parcels, all
    // before the scanner starts.
    let plan = Plan::with_mix(args.seed, Mix::every_rule());
    let book = RuleBook::demo();
    let expect = Expect {
        weighed: true,
        xray: true,
        rules: Some(book.clone()),
    };
    let mut platform = PlatformSim::connect(
        SocketAddr::from(([127, 0, 0, 1], mqtt)),
        PREFIX,
        "demo-platform",
    )
    .await?;
    platform.sign_with(
        DEMO_KEY_ID,
        platform_key,
        bondline_devices::signing::Target::gateway("demo-gw"),
    );
    push_rules(&platform, &book).await?;
    platform.publish_plan(&plan, 0..AHEAD).await?;
    let before = Instant::now();
    while Metrics::get(&metrics.platform_messages) == 0 && before.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let scanner = ScannerSim {
        framing,
        plan: plan.clone(),
        rate_per_s: args.rate,
        count: None,
        start_index: 0,
    };
    let scanner_task = tokio::spawn({
        let stop = scanner_stop.clone();
        async move {
            scanner
                .run_tcp_observed(scan_listener, stop.cancelled_owned(), Some(scanned_tx))
                .await
        }
    });

    println!("bondline-lab demo: a sorting line on this machine");
    println!("  MQTT broker (embedded)    127.0.0.1:{mqtt}   topics {PREFIX}/#");
    println!("  PLC simulator, Modbus TCP {plc_addr}");
    println!(
        "  X-ray simulator, Modbus TCP {xray_addr}   verdicts and images ({})",
        xray_spool.display()
    );
    println!(
        "  scanner simulator, TCP    {scan_addr}   {:.1} parcels/s, weighing ({SCANNER_PROFILE})",
        args.rate
    );
    match app.view_addr {
        Some(addr) => {
            println!("  staff view (browser)      http://{addr}/   lookup http://{addr}/parcel")
        }
        None => println!("  staff view                not started (see the log)"),
    }
    println!(
        "  customs rule set          {} from the platform (deploy/rules-demo.toml): {}",
        book.version,
        book.kinds.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    println!("  state directory           {}", state_dir.display());
    println!("  configuration             {}", config_path.display());
    println!("Ctrl-C stops everything.\n");

    let started = Instant::now();
    let shutdown = bondline::shutdown::on_signals();
    let mut declared = AHEAD;
    let mut printed = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_summary = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if args
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
        // Keep the platform's declarations ahead of the scanner.
        let scanned = (started.elapsed().as_secs_f64() * args.rate) as u64;
        if scanned + AHEAD > declared {
            let upto = scanned + 2 * AHEAD;
            platform.publish_plan(&plan, declared..upto).await?;
            declared = upto;
        }
        let records = platform.records();
        if !args.quiet {
            for r in records.iter().skip(printed) {
                println!("{}", record_line(r));
            }
        }
        printed = records.len();
        if last_summary.elapsed() >= Duration::from_secs(5) {
            last_summary = Instant::now();
            let scanned = (started.elapsed().as_secs_f64() * args.rate) as u64;
            let report = platform.report_with(&plan, 0..scanned, &expect);
            println!(
                "[{:>4}s] {} | PLC saw {} diverts | platform received {} records\n        {}\n        by deciding rule: {}",
                started.elapsed().as_secs(),
                metrics.summary(),
                plc_state.divert_count(),
                records.len(),
                metrics.timing_summary(),
                by_rule(&report)
            );
        }
    }

    println!("\nstopping...");
    scanner_stop.cancel();
    let scanned = match scanner_task.await {
        Ok(Ok(n)) => n,
        _ => declared,
    };
    // The last parcels' X-ray verdicts come some 600 ms after their scan.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    app.wait().await?;
    sims_stop.cancel();
    // Give the platform a moment to receive the last acknowledged records.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("daemon:   {}", metrics.summary());
    println!("          {}", metrics.timing_summary());
    let report = platform.report_with(&plan, 0..scanned, &expect);
    println!("platform: {report}");
    if report.kinds_never_fired.is_empty() {
        println!("every rule kind of {} fired at least once", book.version);
    } else {
        println!(
            "rule kinds of {} that have not fired yet (run longer): {}",
            book.version,
            report.kinds_never_fired.join(", ")
        );
    }
    Ok(())
}

/// Pushes the demo rule set from the platform and waits until the daemon has it in force.
/// The update id is new on every run, so a reused state directory applies it again.
async fn push_rules(platform: &PlatformSim, book: &RuleBook) -> anyhow::Result<()> {
    let update_id = format!(
        "demo-{}-{}",
        book.version,
        bondline::metrics::unix_ms(std::time::SystemTime::now())
    );
    platform.publish_rules(&update_id, DEMO_RULES).await?;
    let start = Instant::now();
    loop {
        let events = platform.events();
        if events
            .iter()
            .any(|e| e.kind == EventKind::RuleSetApplied && e.detail.contains(&update_id))
        {
            return Ok(());
        }
        if let Some(e) = events
            .iter()
            .find(|e| e.kind == EventKind::RejectedMessage && e.detail.contains(&update_id))
        {
            bail!("the daemon refused the demo rule set: {}", e.detail);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the daemon did not confirm the demo rule set within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One record as the demo prints it: where the parcel went, which rule decided and why, the
/// scale reading, and the other rules that fired.
fn record_line(r: &ParcelRecord) -> String {
    let weight = r
        .inputs
        .as_ref()
        .and_then(|i| i.measured_weight_g)
        .map(|g| format!("{}.{:03} kg", g / 1000, g % 1000))
        .unwrap_or_default();
    let mut line = format!(
        "  {} parcel {:>10}  {:<16} {:>10} -> lane {} {:<10} [{}] {}",
        r.line,
        r.parcel,
        r.waybill.as_deref().unwrap_or("(no read)"),
        weight,
        r.lane,
        r.lane_role.as_str(),
        r.rule,
        r.reason
    );
    let also: Vec<&str> = r
        .rules_fired
        .iter()
        .skip(1)
        .map(|f| f.rule.as_str())
        .collect();
    if !also.is_empty() {
        line.push_str(&format!(" (also fired: {})", also.join(", ")));
    }
    if r.revision > 0 {
        line.push_str(&format!(" (revision {})", r.revision));
    }
    line
}

/// Parcels per deciding rule, most frequent first.
fn by_rule(report: &PlatformReport) -> String {
    let mut rules: Vec<(&String, &usize)> = report.by_rule.iter().collect();
    rules.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    rules
        .iter()
        .map(|(rule, n)| format!("{rule} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The id of the demo platform's signing key.
const DEMO_KEY_ID: &str = "demo-platform";

/// The demo line's configuration, in the same format as deploy/bondline.toml. The staff view
/// listens on a free loopback port.
fn demo_config(
    journal: &Path,
    mqtt: u16,
    scanner: SocketAddr,
    plc: SocketAddr,
    (xray, spool): (SocketAddr, &Path),
    platform_key_hex: &str,
) -> String {
    format!(
        r#"# Generated by `bondline-lab demo`.
gateway_id = "demo-gw"

# Only messages signed by the demo platform's key (made for this run) steer the lanes.
[trust]
keys = [{{ id = "{DEMO_KEY_ID}", ed25519_public_hex = "{platform_key_hex}" }}]

[storage]
path = "{journal}"

[uplink]
broker = "127.0.0.1:{mqtt}"
client_id = "bondline-demo-gw"
topic_prefix = "{PREFIX}"
keep_alive_s = 5
reconnect_max_s = 5

[devices.scanner-1]
profile = "{SCANNER_PROFILE}"
tcp = "{scanner}"

[devices.plc-1]
profile = "sorter-plc"
tcp = "{plc}"

[devices.xray-1]
profile = "xray-modbus"
tcp = "{xray}"
spool = "{spool}"

[[lines]]
id = "L1"
scanner = "scanner-1"
plc = "plc-1"
xray = "xray-1"
geometry = {{ scan_to_xray_m = {XRAY_DISTANCE_M} }}
lanes = [
  {{ lane = 1, role = "release" }},
  {{ lane = 2, role = "inspection" }},
  {{ lane = 3, role = "hold" }},
  {{ lane = 4, role = "exception" }},
]

[view]
listen = "127.0.0.1:0"
"#,
        journal = journal.display(),
        spool = spool.display(),
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the embedded broker on its own thread; it lives as long as the process.
fn start_broker(port: u16) -> anyhow::Result<()> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 262144
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).context("embedded broker config")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
    Ok(())
}

async fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(timeout: Duration, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
