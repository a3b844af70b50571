//! `platform-sim`: the customs clearance platform on MQTT, for running bondline without one.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bondline_simulators::cli;
use bondline_simulators::plan::Plan;
use bondline_simulators::platform::PlatformSim;
use clap::Parser;

/// Simulated customs clearance platform: declares and instructs the parcels of a seeded plan
/// over MQTT, then collects the parcel records and events the gateway sends back and reports,
/// per lane, what arrived and which readable waybills have not.
///
/// Run scanner-sim with the same --seed so the scanner reads the waybills declared here. A
/// report is printed every --report-every seconds and once more on Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "platform-sim", version)]
struct Args {
    /// MQTT broker address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1883")]
    broker: SocketAddr,

    /// Topic prefix of the gateway (its uplink.topic_prefix).
    #[arg(long, value_name = "PREFIX", default_value = "bondline/gw-01")]
    prefix: String,

    /// Seed of the parcel plan; must match scanner-sim's.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Index of the first plan parcel to declare.
    #[arg(long, value_name = "N", default_value_t = 0)]
    start: u64,

    /// Number of plan parcels to declare and instruct.
    #[arg(long, value_name = "N", default_value_t = 100)]
    count: u64,

    /// MQTT client id.
    #[arg(long, value_name = "ID", default_value = "platform-sim")]
    client_id: String,

    /// Seconds between reports.
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    report_every: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse_args();
    cli::init_tracing();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(args.seed);
    let range = args.start..args.start.saturating_add(args.count);
    let sim = PlatformSim::connect(args.broker, &args.prefix, &args.client_id).await?;
    let stop = cli::stop_signal();
    tokio::pin!(stop);
    tokio::select! {
        res = sim.publish_plan(&plan, range.clone()) => res?,
        () = &mut stop => {
            println!("{}", sim.report(&plan, range));
            return Ok(());
        }
    }
    let mut every = tokio::time::interval(Duration::from_secs(args.report_every));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => println!("{}\n", sim.report(&plan, range.clone())),
            () = &mut stop => break,
        }
    }
    println!("{}", sim.report(&plan, range));
    Ok(())
}
