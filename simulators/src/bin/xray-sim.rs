//! `xray-sim`: X-ray scanners on Modbus TCP or RTU, for running bondline without one.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bondline_devices::xray::XrayMap;
use bondline_simulators::cli::{self, Want};
use bondline_simulators::xray::{
    self, synthetic_passages, DriverConfig, ImageFormat, ImageOrder, ImageSpec, Palette,
    XrayDriver, XrayFault, XrayImages, XraySim, XrayState, MAX_UNIT,
};
use clap::Parser;

/// Default Modbus TCP address, next to plc-sim's 5020.
const DEFAULT_TCP: ([u8; 4], u16) = ([127, 0, 0, 1], 5030);
/// More passages per second than a sorter carries would only load the machine.
const MAX_RATE: f64 = 200.0;

/// Simulated X-ray scanners: serve the verdict ring of an X-ray profile over Modbus.
///
/// Each unit id is one X-ray device with its own ring of verdicts in input registers (read
/// with function 04) and its own fault mode; several units share one RS-485 bus or TCP port.
/// With --rate, every unit sees that many synthetic parcels a second: each gets an automatic
/// verdict (clear, or suspect at --suspect-rate) --processing-ms after it entered the tunnel,
/// with images in --spool, and at --mark-rate an operator mark --mark-latency-ms later.
/// Without --rate the rings stay empty. On RTU, requests for other unit ids get no answer;
/// on TCP they get the exception "gateway target device failed to respond".
#[derive(Debug, Parser)]
#[command(name = "xray-sim", version)]
struct Args {
    /// Serve Modbus TCP on this address [default: 127.0.0.1:5030].
    #[arg(long, value_name = "ADDR", conflicts_with = "rtu")]
    tcp: Option<SocketAddr>,

    /// Serve Modbus RTU on this serial device instead (for a test, one end of
    /// `socat -d -d pty,raw,echo=0 pty,raw,echo=0`).
    #[arg(long, value_name = "PATH")]
    rtu: Option<String>,

    /// Baud rate of the serial device, with --rtu.
    #[arg(long, value_name = "N", default_value_t = 9600)]
    baud: u32,

    /// Unit ids to host, comma separated [default: the profile's unit id].
    #[arg(long, value_name = "IDS", value_delimiter = ',', value_parser = unit)]
    units: Vec<u8>,

    /// X-ray profile giving the register map.
    #[arg(long, value_name = "NAME", default_value = "xray-modbus")]
    profile: String,

    /// Directory of extra profile files (*.toml), overriding built-ins by name.
    #[arg(long, value_name = "DIR")]
    profiles_dir: Option<PathBuf>,

    /// Write each scan's images here as <scan id>_<view>.<ext>; with several units, into
    /// one subdirectory per unit, unit-<id>. Without it no images are written.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,

    /// Synthetic passages per second through each unit's tunnel; 0 for none.
    #[arg(long, value_name = "N", default_value_t = 0.0, value_parser = rate)]
    rate: f64,

    /// Share of passages the automatic judge flags as suspect.
    #[arg(long, value_name = "SHARE", default_value_t = 0.05, value_parser = share)]
    suspect_rate: f64,

    /// Share of passages an officer marks after the automatic verdict.
    #[arg(long, value_name = "SHARE", default_value_t = 0.02, value_parser = share)]
    mark_rate: f64,

    /// From the automatic verdict to the operator mark.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    mark_latency_ms: u64,

    /// From tunnel entry to the automatic verdict.
    #[arg(long, value_name = "MS", default_value_t = 800)]
    processing_ms: u64,

    /// Write the images this long after the verdict, instead of just before it.
    #[arg(long, value_name = "MS")]
    images_after_ms: Option<u64>,

    /// Image file format: jpg or png.
    #[arg(long, value_name = "FORMAT", default_value = "jpg")]
    image_format: ImageFormat,

    /// Image size, WIDTHxHEIGHT.
    #[arg(long, value_name = "WxH", default_value = "640x480", value_parser = size)]
    image_size: (u32, u32),

    /// Image colours: dual-energy (pseudo-colour by material) or grey.
    #[arg(long, value_name = "PALETTE", default_value = "dual-energy")]
    palette: Palette,

    /// Start unit UNIT in fault mode MODE: normal, silent, garbage, exception or
    /// exception:N (N the Modbus exception code). Repeat for several units.
    #[arg(long, value_name = "UNIT:MODE", value_parser = unit_fault)]
    fault: Vec<(u8, XrayFault)>,

    /// Seed of the verdicts and marks (the images depend on the scan id only).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
}

fn unit(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(u) if (1..=MAX_UNIT).contains(&u) => Ok(u),
        _ => Err(format!("`{s}` is not a unit id from 1 to {MAX_UNIT}")),
    }
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.0..=MAX_RATE).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate from 0 to {MAX_RATE} per second"
        )),
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a share from 0 to 1")),
    }
}

fn size(s: &str) -> Result<(u32, u32), String> {
    s.split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
        .ok_or_else(|| format!("`{s}` is not a size WIDTHxHEIGHT, e.g. 640x480"))
}

fn unit_fault(s: &str) -> Result<(u8, XrayFault), String> {
    let (u, mode) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not UNIT:MODE, e.g. 2:silent"))?;
    Ok((unit(u)?, mode.parse()?))
}

/// The spool of `unit`: the directory itself for one unit, a subdirectory each for several
/// (two devices writing `<scan id>_<view>` into one directory would overwrite each other).
fn spool_of(dir: &Path, unit: u8, units: usize) -> PathBuf {
    if units == 1 {
        dir.to_path_buf()
    } else {
        dir.join(format!("unit-{unit}"))
    }
}

/// Validated settings, ready to run.
struct Setup {
    state: XrayState,
    images: Vec<(u8, Option<XrayImages>)>,
    driver: DriverConfig,
}

fn setup(args: &Args, map: XrayMap) -> Result<Setup, String> {
    let units = if args.units.is_empty() {
        vec![map.unit_id]
    } else {
        args.units.clone()
    };
    let state = XrayState::new(map, &units).map_err(|e| e.to_string())?;
    for (u, fault) in &args.fault {
        state
            .set_fault(*u, *fault)
            .map_err(|e| format!("--fault {u}: {e}"))?;
    }
    let spec = ImageSpec {
        width: args.image_size.0,
        height: args.image_size.1,
        format: args.image_format,
        palette: args.palette,
        ..ImageSpec::default()
    };
    let hosted = state.units();
    let mut images = Vec::new();
    for &u in &hosted {
        let writer = match &args.spool {
            Some(dir) => Some(
                XrayImages::new(spool_of(dir, u, hosted.len()), spec.clone())
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        images.push((u, writer));
    }
    let driver = DriverConfig {
        unit: hosted[0],
        seed: args.seed,
        suspect_rate: args.suspect_rate,
        mark_rate: args.mark_rate,
        processing: Duration::from_millis(args.processing_ms),
        mark_latency: Duration::from_millis(args.mark_latency_ms),
        image_order: match args.images_after_ms {
            Some(ms) => ImageOrder::After(Duration::from_millis(ms)),
            None => ImageOrder::Before,
        },
    };
    Ok(Setup {
        state,
        images,
        driver,
    })
}

/// Starts a driver and a synthetic feed per unit; the tasks end when aborted.
fn start_drivers(setup: &Setup, rate: f64) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if rate <= 0.0 {
        return tasks;
    }
    for (unit, images) in &setup.images {
        let config = DriverConfig {
            unit: *unit,
            // Each device judges on its own.
            seed: setup.driver.seed ^ u64::from(*unit).rotate_left(32),
            ..setup.driver.clone()
        };
        match XrayDriver::new(config, setup.state.clone(), images.clone()) {
            Ok((driver, feed)) => {
                tasks.push(tokio::spawn(async move {
                    driver.run(std::future::pending()).await;
                }));
                tasks.push(tokio::spawn(synthetic_passages(feed, rate, 1)));
            }
            Err(e) => tracing::error!(%e, unit, "no driver"),
        }
    }
    tasks
}

fn describe(args: &Args, setup: &Setup, listen: &str) -> std::io::Result<()> {
    let map = setup.state.map();
    let units: Vec<String> = setup.state.units().iter().map(u8::to_string).collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "xray-sim: {listen}, units {}; ring at input register {}, {} entries ({} registers)",
        units.join(", "),
        map.events,
        map.ring,
        map.ring_len()
    )?;
    for u in setup.state.units() {
        let fault = setup.state.fault(u).unwrap_or_default();
        if fault != XrayFault::Normal {
            writeln!(out, "  unit {u} fault mode  {fault}")?;
        }
    }
    for (u, images) in &setup.images {
        if let Some(i) = images {
            writeln!(out, "  unit {u} images      {}", i.spool().display())?;
        }
    }
    if args.rate > 0.0 {
        writeln!(
            out,
            "  passages          {} /s per unit, {:.1} % suspect after {} ms, {:.1} % marked {} ms later",
            args.rate,
            args.suspect_rate * 100.0,
            args.processing_ms,
            args.mark_rate * 100.0,
            args.mark_latency_ms
        )?;
    } else {
        writeln!(
            out,
            "  passages          none (--rate 0): the rings stay empty"
        )?;
    }
    out.flush()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_tracing();
    let profile = cli::find_profile(&args.profile, args.profiles_dir.as_deref(), Want::Xray)
        .unwrap_or_else(|e| cli::usage_error(&e));
    let Some(map) = profile.xray().cloned() else {
        cli::usage_error(&format!(
            "profile `{}` is not an xray profile",
            args.profile
        ));
    };
    let setup = setup(&args, map).unwrap_or_else(|e| cli::usage_error(&e));
    let result = match &args.rtu {
        Some(path) => {
            let listen = format!("Modbus RTU on {path} at {} baud", args.baud);
            serve(&args, &setup, &listen, |state| {
                xray::serve_rtu(path, args.baud, state, cli::stop_signal())
            })
            .await
        }
        None => {
            let addr = args.tcp.unwrap_or_else(|| SocketAddr::from(DEFAULT_TCP));
            match XraySim::bind(addr, setup.state.clone()).await {
                Ok(sim) => {
                    let listen = format!("Modbus TCP on {}", sim.local_addr());
                    serve(&args, &setup, &listen, |_| sim.run(cli::stop_signal())).await
                }
                Err(e) => Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}"),
                )),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the setup, starts the drivers, runs the server until it stops and logs the counts.
async fn serve<F>(
    args: &Args,
    setup: &Setup,
    listen: &str,
    server: impl FnOnce(XrayState) -> F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    describe(args, setup, listen)?;
    let tasks = start_drivers(setup, args.rate);
    let res = server(setup.state.clone()).await;
    for t in tasks {
        t.abort();
    }
    for u in setup.state.units() {
        if let Ok(s) = setup.state.stats(u) {
            tracing::info!(
                unit = u,
                reads = s.reads,
                exceptions = s.exceptions,
                unanswered = s.unanswered,
                entries = s.entries,
                "xray-sim stopped"
            );
        }
    }
    res
}
