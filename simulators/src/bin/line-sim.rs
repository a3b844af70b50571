//! `line-sim`: a whole sorting line (belt, scanner, sorter PLC) against a running bondline.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bondline_simulators::camera::{CameraSim, SimAuth};
use bondline_simulators::cli::{self, Want};
use bondline_simulators::line::{LineSim, RunLength, ScannerPort, Scenario, XrayPort};
use bondline_simulators::platform::PlatformSim;
use bondline_simulators::xray::{ImageSpec, XrayImages};
use clap::Parser;

/// Simulated sorting line: a conveyor model from a scenario file plays the barcode scanner and
/// the sorter PLC against a running bondline daemon, and prints a ledger of where every parcel
/// physically went.
///
/// Each parcel's frame is written to the daemon's scanner connection when its leading edge
/// passes the scanner; when it reaches the divert gate, the simulated PLC sends it where the
/// daemon's latest command says (or to its fail-safe, overflow or exception lane) and reports
/// the disposition. With --broker, a simulated customs platform declares the parcels ahead of
/// the scanner on the daemon's MQTT broker and publishes late marks.
///
/// A scenario with an `[xray]` table adds an X-ray tunnel between scanner and gate: an
/// X-ray device on Modbus (--xray-listen, or --xray-serial) publishes a verdict for every
/// parcel, with images in --xray-spool if given. Configure the daemon's line with an X-ray
/// device of profile --xray-profile at the stage's unit id and its geometry.scan_to_xray_m.
///
/// Configure the daemon's line with the scenario's lane map, a TCP scanner at
/// --scanner-listen and a PLC at --plc-listen; line-sim waits up to 60 s for the daemon to
/// connect to the scanner port. Exit status: 0 when no parcel leaked into the release lane,
/// 1 when any did, 2 on an error, 64 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "line-sim", version)]
struct Args {
    /// Scenario file (see simulators/scenarios/*.toml).
    #[arg(long, value_name = "FILE")]
    scenario: PathBuf,

    /// MQTT broker of the daemon's uplink. Without it nothing is declared, and a correct
    /// daemon holds every parcel.
    #[arg(long, value_name = "ADDR")]
    broker: Option<SocketAddr>,

    /// Topic prefix of the gateway (its uplink.topic_prefix).
    #[arg(long, value_name = "PREFIX", default_value = "bondline/gw-01")]
    prefix: String,

    /// MQTT client id of the simulated platform.
    #[arg(long, value_name = "ID", default_value = "line-sim-platform")]
    client_id: String,

    /// Address the scanner listens on; the daemon connects to it as to a network scanner.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:5101",
        conflicts_with = "scanner_serial"
    )]
    scanner_listen: SocketAddr,

    /// Write scanner frames to this serial device instead (one end of
    /// `socat pty,raw,echo=0 pty,raw,echo=0`, the daemon on the other).
    #[arg(long, value_name = "PATH")]
    scanner_serial: Option<String>,

    /// Baud rate of the serial device, with --scanner-serial.
    #[arg(long, value_name = "N", default_value_t = 9600)]
    baud: u32,

    /// Address the PLC serves Modbus TCP on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5020")]
    plc_listen: SocketAddr,

    /// Scanner profile giving the framing; must match the daemon's scanner device.
    #[arg(long, value_name = "NAME", default_value = "scanner-stx-etx")]
    scanner_profile: String,

    /// PLC profile giving the register map; must match the daemon's PLC device.
    #[arg(long, value_name = "NAME", default_value = "sorter-plc")]
    plc_profile: String,

    /// Directory of extra profile files (*.toml), overriding built-ins by name.
    #[arg(long, value_name = "DIR")]
    profiles_dir: Option<PathBuf>,

    /// Run the scenario this many times shorter (its duration and fault windows divided).
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0, value_parser = factor)]
    shorten: f64,

    /// Address the X-ray serves Modbus TCP on, for a scenario with an [xray] table.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:5030",
        conflicts_with = "xray_serial"
    )]
    xray_listen: SocketAddr,

    /// Serve the X-ray's Modbus RTU on this serial device instead.
    #[arg(long, value_name = "PATH")]
    xray_serial: Option<String>,

    /// Baud rate of the X-ray's serial device, with --xray-serial.
    #[arg(long, value_name = "N", default_value_t = 9600)]
    xray_baud: u32,

    /// X-ray profile giving the register map; must match the daemon's X-ray device.
    #[arg(long, value_name = "NAME", default_value = "xray-modbus")]
    xray_profile: String,

    /// Write each scan's X-ray images (<scan id>_top.jpg, <scan id>_side.jpg) here.
    #[arg(long, value_name = "DIR")]
    xray_spool: Option<PathBuf>,

    /// Size of the X-ray images, WIDTHxHEIGHT. Smaller is cheaper: two 640x480 views take
    /// about 25 ms of CPU per parcel in a release build, 200 ms in a debug build.
    #[arg(long, value_name = "WxH", default_value = "640x480", value_parser = size)]
    xray_image_size: (u32, u32),

    /// Serve a camera-sim snapshot endpoint (GET /snapshot.jpg) here, showing each parcel
    /// --camera-distance-m past the scanner; configure it as the daemon's scan camera.
    #[arg(long, value_name = "ADDR")]
    camera_listen: Option<SocketAddr>,

    /// Belt distance from the scanner to the camera's field, metres; the daemon's
    /// `distance_m` for that camera.
    #[arg(long, value_name = "M", default_value_t = 0.5)]
    camera_distance_m: f64,

    /// Print the ledger as JSON on stdout (the port lines then go to stderr).
    #[arg(long)]
    json: bool,
}

fn size(s: &str) -> Result<(u32, u32), String> {
    s.split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
        .ok_or_else(|| format!("`{s}` is not a size WIDTHxHEIGHT, e.g. 640x480"))
}

fn factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 1.0 => Ok(f),
        _ => Err(format!("`{s}` is not a factor of at least 1")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_tracing();
    let scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s.shortened(args.shorten),
        Err(e) => cli::usage_error(&e.to_string()),
    };
    let dir = args.profiles_dir.as_deref();
    let framing = cli::find_profile(&args.scanner_profile, dir, Want::Scanner)
        .map(|p| p.scanner().cloned())
        .unwrap_or_else(|e| cli::usage_error(&e));
    let map = cli::find_profile(&args.plc_profile, dir, Want::Plc)
        .map(|p| p.plc().cloned())
        .unwrap_or_else(|e| cli::usage_error(&e));
    let (Some(framing), Some(map)) = (framing, map) else {
        cli::usage_error("the scanner or PLC profile lacks its section");
    };
    let xray = scenario
        .xray
        .is_some()
        .then(|| xray_setup(&args))
        .transpose()
        .unwrap_or_else(|e| cli::usage_error(&e));
    match run(args, scenario, framing, map, xray).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The X-ray's register map, port and image writer, for a scenario with an X-ray stage.
type XraySetup = (
    bondline_devices::xray::XrayMap,
    XrayPort,
    Option<XrayImages>,
);

fn xray_setup(args: &Args) -> Result<XraySetup, String> {
    let map = cli::find_profile(&args.xray_profile, args.profiles_dir.as_deref(), Want::Xray)?
        .xray()
        .cloned()
        .ok_or_else(|| format!("profile `{}` lacks its [xray] table", args.xray_profile))?;
    let port = match &args.xray_serial {
        Some(path) => XrayPort::Rtu {
            path: path.clone(),
            baud: args.xray_baud,
        },
        None => XrayPort::Tcp(args.xray_listen),
    };
    let images = match &args.xray_spool {
        Some(dir) => {
            let spec = ImageSpec {
                width: args.xray_image_size.0,
                height: args.xray_image_size.1,
                ..ImageSpec::default()
            };
            Some(XrayImages::new(dir, spec).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    Ok((map, port, images))
}

async fn run(
    args: Args,
    scenario: Scenario,
    framing: bondline_devices::framing::ScannerFraming,
    map: bondline_devices::plc::PlcMap,
    xray: Option<XraySetup>,
) -> anyhow::Result<u64> {
    let port = match &args.scanner_serial {
        Some(path) => ScannerPort::Serial {
            path: path.clone(),
            baud: args.baud,
        },
        None => ScannerPort::Tcp(args.scanner_listen),
    };
    let platform = match args.broker {
        Some(broker) => Some(
            PlatformSim::connect(broker, &args.prefix, &args.client_id)
                .await
                .with_context(|| format!("connecting the platform to {broker}"))?,
        ),
        None => None,
    };
    let mut sim = LineSim::bind_with(scenario, framing, map, port, args.plc_listen).await?;
    if let Some((xray_map, xray_port, images)) = xray {
        sim = sim.with_xray(xray_map, xray_port, images).await?;
    }
    // Served until the process ends: the daemon may still fetch the last parcels' frames.
    let camera_addr = match args.camera_listen {
        Some(addr) => {
            let camera = CameraSim::new(SimAuth::Open);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("camera: listening on {addr}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            tokio::spawn(camera.clone().serve(listener, std::future::pending()));
            sim = sim.with_camera(camera, args.camera_distance_m);
            Some(bound)
        }
        None => None,
    };
    let mut info: Box<dyn std::io::Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let s = sim.scenario();
    let length = match s.length {
        RunLength::Seconds(d) => format!("{d:.0} s"),
        RunLength::Parcels(n) => format!("{n} parcels"),
    };
    let r = s.lane_roles;
    writeln!(
        info,
        "line-sim: scenario {} ({length}, about {:.0} parcels/h, {:.2} s from scanner to gate)",
        s.name,
        s.mean_rate_per_s() * 3600.0,
        s.scanner_to_gate_s()
    )?;
    match sim.scanner_addr() {
        Some(addr) => writeln!(info, "  scanner (TCP, the daemon connects)  {addr}")?,
        None => writeln!(
            info,
            "  scanner (serial)                    {}",
            args.scanner_serial.as_deref().unwrap_or("")
        )?,
    }
    writeln!(
        info,
        "  PLC (Modbus TCP)                    {}",
        sim.plc_addr()
    )?;
    if let Some(addr) = camera_addr {
        writeln!(
            info,
            "  camera (HTTP, scan point)           http://{addr}/snapshot.jpg, {} m past the scanner",
            args.camera_distance_m
        )?;
    }
    writeln!(
        info,
        "  lanes                               release {}, inspection {}, hold {}, exception {}",
        r.release, r.inspection, r.hold, r.exception
    )?;
    if let (Some(stage), Some(to_xray_s)) = (&s.xray, s.scanner_to_xray_s()) {
        let (label, at) = match (sim.xray_addr(), &args.xray_serial) {
            (Some(addr), _) => (
                format!("X-ray (Modbus TCP, unit {})", stage.unit),
                addr.to_string(),
            ),
            (None, path) => (
                format!("X-ray (Modbus RTU, unit {})", stage.unit),
                format!(
                    "{} at {} baud",
                    path.as_deref().unwrap_or(""),
                    args.xray_baud
                ),
            ),
        };
        writeln!(info, "  {label:<36}{at}")?;
        writeln!(
            info,
            "  X-ray tunnel                        {:.2} m after the scanner (scan_to_xray_m), {:.2} s; profile {}",
            stage.scan_to_xray_m, to_xray_s, args.xray_profile
        )?;
        if let Some(dir) = &args.xray_spool {
            writeln!(
                info,
                "  X-ray images                        {}",
                dir.display()
            )?;
        }
    }
    match args.broker {
        Some(b) => writeln!(
            info,
            "  platform (MQTT)                     {b}, topics {}/#",
            args.prefix
        )?,
        None => writeln!(
            info,
            "  platform                            none (nothing declared)"
        )?,
    }
    info.flush()?;
    let ledger = sim.run(platform.as_ref(), cli::stop_signal()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ledger)?);
    } else {
        println!("{ledger}");
    }
    Ok(ledger.leaks)
}
