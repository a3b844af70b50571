//! `scanner-sim`: a barcode scanner sending plan parcels, for running bondline without a line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bondline_simulators::cli::{self, MixArg, Want};
use bondline_simulators::plan::Plan;
use bondline_simulators::scanner::ScannerSim;
use clap::{ArgGroup, Parser};

/// Simulated barcode scanner: sends one frame per parcel of a seeded plan, in a scanner
/// profile's framing, to a serial port or to a TCP client.
///
/// Run platform-sim with the same --seed so the platform has declared the waybills this
/// scanner reads. The plan mixes released, inspected, held, undeclared parcels, no-reads and
/// line noise (and, with --mix every-rule, a parcel for every customs rule). A weighing
/// profile (dws-stx-etx) sends each parcel's scale reading with its waybill.
#[derive(Debug, Parser)]
#[command(name = "scanner-sim", version)]
#[command(group(ArgGroup::new("output").required(true).args(["serial", "tcp_listen"])))]
struct Args {
    /// Write frames to this serial device (for a test, one end of
    /// `socat pty,raw,echo=0 pty,raw,echo=0`).
    #[arg(long, value_name = "PATH")]
    serial: Option<String>,

    /// Baud rate of the serial device, with --serial.
    #[arg(long, value_name = "N", default_value_t = 9600)]
    baud: u32,

    /// Act as a network scanner: listen here and send frames to the connected client,
    /// resuming with the next parcel when a client reconnects.
    #[arg(long, value_name = "ADDR")]
    tcp_listen: Option<SocketAddr>,

    /// Parcels per second.
    #[arg(long, value_name = "N", default_value_t = 10.0, value_parser = positive_rate)]
    rate: f64,

    /// Stop after this many parcels (default: run until stopped).
    #[arg(long, value_name = "N")]
    count: Option<u64>,

    /// Seed of the parcel plan; must match platform-sim's.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Parcel mix of the plan; must match platform-sim's.
    #[arg(long, value_enum, default_value = "default")]
    mix: MixArg,

    /// Index of the first plan parcel to send.
    #[arg(long, value_name = "N", default_value_t = 0)]
    start: u64,

    /// Scanner profile giving the framing.
    #[arg(long, value_name = "NAME", default_value = "scanner-stx-etx")]
    profile: String,

    /// Directory of extra profile files (*.toml), overriding built-ins by name.
    #[arg(long, value_name = "DIR")]
    profiles_dir: Option<PathBuf>,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a positive number of parcels per second"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_tracing();
    let profile = cli::find_profile(&args.profile, args.profiles_dir.as_deref(), Want::Scanner)
        .unwrap_or_else(|e| cli::usage_error(&e));
    let Some(framing) = profile.scanner().cloned() else {
        cli::usage_error(&format!(
            "profile `{}` is not a scanner profile",
            args.profile
        ));
    };
    let sim = ScannerSim {
        framing,
        plan: Plan::with_mix(args.seed, args.mix.mix()),
        rate_per_s: args.rate,
        count: args.count,
        start_index: args.start,
    };
    let result = match (&args.serial, args.tcp_listen) {
        (Some(path), _) => sim.run_serial(path, args.baud, cli::stop_signal()).await,
        (None, Some(addr)) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => sim.run_tcp(listener, cli::stop_signal()).await,
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot listen on {addr}"))),
        },
        (None, None) => cli::usage_error("one of --serial or --tcp-listen is required"),
    };
    match result {
        Ok(n) => {
            tracing::info!(parcels = n, next = args.start + n, "scanner-sim stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
