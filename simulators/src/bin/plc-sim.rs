//! `plc-sim`: a sorter PLC on Modbus TCP or RTU, for running bondline without a sorter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bondline_simulators::cli::{self, Want};
use bondline_simulators::plc::{self, PlcOptions, PlcSim, PlcState};
use clap::Parser;

/// Simulated sorter PLC: serves the register contract of a PLC profile over Modbus.
///
/// The controller writes a divert command (sequence, lane, parcel id) as four holding
/// registers; plc-sim logs it and copies the sequence into the acknowledge register, as the
/// real PLC program does. With a heartbeat in the profile, plc-sim counts its own heartbeat
/// register and watches the controller's: it starts in fail-safe mode (every parcel to the
/// fail-safe lane) and leaves it once the controller's counter moves, and re-enters it when
/// the counter stands still for the profile's timeout. Without a conveyor, each commanded
/// parcel is disposed --auto-dispose-ms after its first command and reported in the
/// disposition ring. Lane states stay "open"; they cannot be changed from the command line.
#[derive(Debug, Parser)]
#[command(name = "plc-sim", version)]
struct Args {
    /// Address to serve Modbus TCP on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:5020",
        conflicts_with = "serial"
    )]
    listen: SocketAddr,

    /// Serve Modbus RTU on this serial device instead of TCP (for a test, one end of
    /// `socat pty,raw,echo=0 pty,raw,echo=0`). Only requests for the profile's unit id are
    /// answered.
    #[arg(long, value_name = "PATH")]
    serial: Option<String>,

    /// Baud rate of the serial device, with --serial.
    #[arg(long, value_name = "N", default_value_t = 9600)]
    baud: u32,

    /// PLC profile giving the register map.
    #[arg(long, value_name = "NAME", default_value = "sorter-plc")]
    profile: String,

    /// Directory of extra profile files (*.toml), overriding built-ins by name.
    #[arg(long, value_name = "DIR")]
    profiles_dir: Option<PathBuf>,

    /// Wait this long before acknowledging each divert; beyond the profile's timeout_ms the
    /// controller sees handshake timeouts.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    ack_delay_ms: u64,

    /// Lane the PLC sends every parcel to while the controller's heartbeat is missing.
    #[arg(long, value_name = "LANE", default_value_t = 3, value_parser = lane)]
    fail_safe_lane: u16,

    /// Lane for parcels without a usable command ("no destination").
    #[arg(long, value_name = "LANE", default_value_t = 4, value_parser = lane)]
    exception_lane: u16,

    /// Lane for parcels whose commanded lane is full or disabled.
    #[arg(long, value_name = "LANE", default_value_t = 3, value_parser = lane)]
    overflow_lane: u16,

    /// Dispose each parcel this long after its first divert command, as if it reached its
    /// gate then, and report it in the disposition ring; 0 turns this off.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    auto_dispose_ms: u64,
}

fn lane(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(l) if (1..=plc::LANES).contains(&l) => Ok(l),
        _ => Err(format!(
            "`{s}` is not a lane number from 1 to {}",
            plc::LANES
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_tracing();
    let profile = cli::find_profile(&args.profile, args.profiles_dir.as_deref(), Want::Plc)
        .unwrap_or_else(|e| cli::usage_error(&e));
    let Some(map) = profile.plc().cloned() else {
        cli::usage_error(&format!("profile `{}` is not a plc profile", args.profile));
    };
    let ack_delay = Duration::from_millis(args.ack_delay_ms);
    let options = PlcOptions {
        fail_safe_lane: args.fail_safe_lane,
        exception_lane: args.exception_lane,
        overflow_lane: args.overflow_lane,
        auto_dispose_after: (args.auto_dispose_ms > 0)
            .then(|| Duration::from_millis(args.auto_dispose_ms)),
    };
    let result = match &args.serial {
        Some(path) => {
            let state = PlcState::with_map(&map, options);
            state.set_ack_delay(ack_delay);
            plc::serve_rtu(path, args.baud, map, state, cli::stop_signal()).await
        }
        None => match PlcSim::bind_with(args.listen, map, options).await {
            Ok(sim) => {
                sim.state().set_ack_delay(ack_delay);
                let state = sim.state();
                let res = sim.run(cli::stop_signal()).await;
                tracing::info!(
                    diverts = state.divert_count(),
                    dispositions = state.dispositions().len(),
                    "plc-sim stopped"
                );
                res
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", args.listen),
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
