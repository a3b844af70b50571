//! `bondline-lab`: the daemon's lab, kept out of the daemon's binary and package.
//!
//! - `demo`: a whole line on this machine: an embedded MQTT broker, the PLC, scanner, X-ray
//!   and platform simulators, and the real daemon on a generated configuration ([`demo`]).
//! - `bench`: the measured numbers behind BENCHMARKS.md ([`bench`]).
//!
//! Both run the daemon's own code (`bondline::app::App`) in this process, on a runtime built
//! like the daemon's (see `bondline::cli::run_in_runtime`).

mod bench;
mod demo;

use std::process::ExitCode;

use bondline::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bondline-lab",
    version,
    about = "bondline's demo line and benchmarks: simulators, an embedded broker and the daemon on one machine"
)]
struct Cli {
    /// Log format: `auto` is JSON under systemd, text on a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole demo line on this machine: an embedded MQTT broker, PLC, scanner and
    /// platform simulators and the daemon, on free local ports. Ctrl-C stops everything.
    Demo(demo::DemoArgs),
    /// Measure the journal, the uplink, the lines and the clearance table (see
    /// BENCHMARKS.md). Build with --release for meaningful numbers.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(cmd) => {
            let _log = telemetry::init(cli.log_format, "warn");
            bondline::cli::run_in_runtime(|| bench::run(cmd))
        }
        Command::Demo(args) => {
            // The demo prints its own view; logs show only what goes wrong. The embedded
            // broker's own log is left out: it reports every port probe and client that goes
            // away as an error, which on a demo line is noise.
            let _log = telemetry::init(cli.log_format, "warn,rumqttd=off");
            bondline::cli::run_in_runtime(|| demo::run(args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bondline-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
