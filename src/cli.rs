//! The command line: `run`, `check-config` and `demo`.
//!
//! Exit codes: 0 success; 64 (EX_USAGE) a bad configuration, with the file, the key and the
//! reason on stderr; 1 any other failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::telemetry::{self, LogFormat};

/// Exit code for a bad configuration (BSD EX_USAGE), as systemd and operators expect.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "bondline",
    version,
    about = "Edge controller for customs-supervised X-ray and sorting lines",
    long_about = "bondline reads waybills from barcode scanners, decides each parcel's lane from \
the customs clearance platform's declarations and instructions (failing closed: only a positive, \
timely release decision reaches the release lane), commands the sorter PLC over Modbus, keeps \
every scan record in a local journal and forwards it over MQTT until the platform acknowledges it."
)]
pub struct Cli {
    /// Log format: `auto` is JSON under systemd, text on a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon with a configuration file (stops cleanly on SIGINT/SIGTERM).
    Run {
        /// The configuration file (see deploy/bondline.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0 if it is good, 64 with the file, key and
    /// reason if not. Unknown keys are errors.
    CheckConfig {
        /// The configuration file to check.
        file: PathBuf,
    },
    /// Run a whole demo line on this machine: an embedded MQTT broker, PLC, scanner and
    /// platform simulators and the daemon, on free local ports. Ctrl-C stops everything.
    Demo(crate::demo::DemoArgs),
}

/// Entry point of the `bondline` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} line(s), gateway {})",
                    file.display(),
                    c.lines.len(),
                    c.gateway_id
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init(cli.log_format, "info");
            runtime_then(|| async move {
                let shutdown = crate::shutdown::on_signals();
                let app = crate::app::App::start(config, shutdown).await?;
                app.wait().await?;
                Ok(())
            })
        }
        Command::Demo(args) => {
            // The demo prints its own view; logs show only what goes wrong.
            telemetry::init(cli.log_format, "warn");
            runtime_then(|| crate::demo::run(args))
        }
    }
}

fn runtime_then<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bondline: {e:#}");
            ExitCode::FAILURE
        }
    }
}
