//! `camera-sim`: an IP camera's snapshot endpoint, for running bondline's video evidence
//! without a camera.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bondline_simulators::camera::{CameraFault, CameraSim, SimAuth};
use bondline_simulators::cli;
use clap::Parser;

/// Serve `GET /snapshot.jpg`: JPEG frames stamped with the time and the waybill under the
/// camera (--waybill, or none), optionally behind basic or digest credentials, optionally
/// faulty (--fail STATUS, --hang, --garbage, --slow-ms N).
#[derive(Debug, Parser)]
#[command(name = "camera-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8554")]
    listen: SocketAddr,
    /// The waybill shown under the camera.
    #[arg(long)]
    waybill: Option<String>,
    /// `basic` or `digest`; needs --username and --password-file.
    #[arg(long, requires_all = ["username", "password_file"])]
    auth: Option<String>,
    #[arg(long)]
    username: Option<String>,
    /// File whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Answer every request with this HTTP status.
    #[arg(long, conflicts_with_all = ["hang", "garbage", "slow_ms"])]
    fail: Option<u16>,
    /// Never answer.
    #[arg(long)]
    hang: bool,
    /// Answer with bytes that are not an image.
    #[arg(long)]
    garbage: bool,
    /// Answer after this many milliseconds.
    #[arg(long)]
    slow_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_tracing();
    let auth = match (args.auth.as_deref(), args.username, args.password_file) {
        (None, _, _) => SimAuth::Open,
        (Some(scheme), Some(username), Some(file)) => {
            let password = match std::fs::read_to_string(&file) {
                Ok(t) => t.lines().next().unwrap_or("").to_string(),
                Err(e) => cli::usage_error(&format!("{}: {e}", file.display())),
            };
            match scheme {
                "basic" => SimAuth::Basic { username, password },
                "digest" => SimAuth::Digest { username, password },
                other => cli::usage_error(&format!("--auth `{other}`: basic or digest")),
            }
        }
        _ => cli::usage_error("--auth needs --username and --password-file"),
    };
    let fault = match (args.fail, args.hang, args.garbage, args.slow_ms) {
        (Some(s), ..) => CameraFault::Fail(s),
        (_, true, ..) => CameraFault::Hang,
        (_, _, true, _) => CameraFault::Garbage,
        (_, _, _, Some(ms)) => CameraFault::Slow(ms),
        _ => CameraFault::Normal,
    };
    let sim = CameraSim::new(auth);
    sim.set_fault(fault);
    sim.set_current(args.waybill);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%addr, "camera-sim serving GET /snapshot.jpg");
    match sim.serve(listener, cli::stop_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
