//! `platform-sim`: the customs clearance platform on MQTT, for running bondline without one.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use anyhow::Context as _;
use bondline_devices::contract::EventKind;
use bondline_simulators::audit::{RuleBook, DEMO_RULES};
use bondline_simulators::cli::{self, MixArg};
use bondline_simulators::plan::Plan;
use bondline_simulators::platform::{Expect, PlatformSim};
use clap::Parser;

/// Simulated customs clearance platform: declares and instructs the parcels of a seeded plan
/// over MQTT, then collects the parcel records and events the gateway sends back and reports,
/// per lane, what arrived and which readable waybills have not, and whether the gateway's
/// record chain verifies (sequence, SHA-256 links, duplicates, gaps).
///
/// Run scanner-sim with the same --seed and --mix so the scanner reads the waybills declared
/// here. With --rules (or --demo-rules) the rule set is pushed to the gateway first, and the
/// report predicts lanes with its random sample and checks that every rule kind fired. A
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

    /// Parcel mix of the plan; must match scanner-sim's.
    #[arg(long, value_enum, default_value = "default")]
    mix: MixArg,

    /// Push this customs rule set (a rule file, TOML) to the gateway before declaring.
    #[arg(long, value_name = "FILE", conflicts_with = "demo_rules")]
    rules: Option<PathBuf>,

    /// Push the demo rule set (deploy/rules-demo.toml, every rule kind) before declaring.
    #[arg(long)]
    demo_rules: bool,

    /// The gateway's scanner weighs (a weighing profile such as dws-stx-etx): the report then
    /// expects overweight parcels in inspection.
    #[arg(long)]
    weighed: bool,

    /// The gateway's line has an X-ray scanner that follows the plan (xray-sim driven by
    /// line-sim or the demo): the report then expects X-ray suspect parcels in inspection.
    #[arg(long)]
    xray: bool,

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
    let plan = Plan::with_mix(args.seed, args.mix.mix());
    let range = args.start..args.start.saturating_add(args.count);
    let rules = match (&args.rules, args.demo_rules) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, true) => Some(DEMO_RULES.to_string()),
        (None, false) => None,
    };
    let book = rules.as_deref().map(RuleBook::parse).transpose()?;
    let expect = Expect {
        weighed: args.weighed,
        xray: args.xray,
        rules: book.clone(),
    };
    let sim = PlatformSim::connect(args.broker, &args.prefix, &args.client_id).await?;
    let stop = cli::stop_signal();
    tokio::pin!(stop);
    let publish = async {
        if let (Some(text), Some(book)) = (&rules, &book) {
            push_rules(&sim, book, text).await?;
        }
        sim.publish_plan(&plan, range.clone()).await
    };
    tokio::select! {
        res = publish => res?,
        () = &mut stop => {
            println!("{}", sim.report_with(&plan, range, &expect));
            return Ok(());
        }
    }
    let mut every = tokio::time::interval(Duration::from_secs(args.report_every));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => println!("{}\n", sim.report_with(&plan, range.clone(), &expect)),
            () = &mut stop => break,
        }
    }
    println!("{}", sim.report_with(&plan, range, &expect));
    Ok(())
}

/// Pushes the rule set and waits (up to 10 s) for the gateway to confirm or refuse it; a
/// gateway that says nothing is reported and the run goes on, since it may be offline.
async fn push_rules(sim: &PlatformSim, book: &RuleBook, text: &str) -> anyhow::Result<()> {
    // New on every run, so a gateway that saw an earlier run's update applies this one too.
    let now_ms = bondline_devices::contract::unix_ms(std::time::SystemTime::now());
    let update_id = format!("platform-sim-{}-{now_ms}", book.version);
    sim.publish_rules(&update_id, text).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        for e in sim.events() {
            if e.detail.contains(&update_id) {
                match e.kind {
                    EventKind::RuleSetApplied => {
                        println!("{}", e.detail);
                        return Ok(());
                    }
                    _ => anyhow::bail!("the gateway refused the rule set: {}", e.detail),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("warning: no answer from the gateway about rule set {update_id} within 10 s");
    Ok(())
}
