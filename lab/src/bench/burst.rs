//! `bondline-lab bench burst`: memory after bursts. The daemon's whole line (scanner over TCP,
//! decision, PLC link to plc-sim, journal, uplink to a broker) in this process, fed bursts of
//! frames written as fast as the socket takes them, each followed by a quiet period; the
//! resident memory (VmRSS) is printed after each quiet period, once the burst's records are
//! stored and forwarded. What a burst leaves behind must be given back, or a gateway grows
//! with every rush hour.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bondline_simulators::plan::Plan;
use bondline_simulators::scanner::ScannerSim;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use bondline::metrics::Metrics;

/// Options of the run (see `BenchCommand::Burst`).
pub struct BurstArgs {
    pub bursts: u32,
    pub frames: u64,
    pub quiet: Duration,
    pub broker: Option<String>,
    pub dir: Option<PathBuf>,
}

pub async fn run(args: BurstArgs) -> anyhow::Result<()> {
    let (_tmp, dir) = super::work_dir(args.dir)?;
    let (_mosquitto, host, port) = super::broker_or_mosquitto(args.broker, &dir)?;
    let (framing, map) = super::builtin_devices()?;
    let plc_stop = CancellationToken::new();
    let plc = bondline_simulators::plc::PlcSim::bind_with(
        "127.0.0.1:0".parse()?,
        map,
        bondline_simulators::plc::PlcOptions::default(),
    )
    .await?;
    let plc_addr = plc.local_addr();
    tokio::spawn(plc.run(plc_stop.clone().cancelled_owned()));
    let scanner = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let scanner_addr = scanner.local_addr()?;
    // The default configuration but for the devices and the broker.
    let text = format!(
        "gateway_id = \"bench-gw\"\n[trust]\nallow_unsigned = true\n[storage]\npath = \"{}\"\n[uplink]\nbroker = \"{host}:{port}\"\nclient_id = \"bondline-bench-burst\"\ntopic_prefix = \"bench/burst\"\n[devices.scanner-1]\nprofile = \"scanner-stx-etx\"\ntcp = \"{scanner_addr}\"\n[devices.plc-1]\nprofile = \"sorter-plc\"\ntcp = \"{plc_addr}\"\n[[lines]]\nid = \"L1\"\nscanner = \"scanner-1\"\nplc = \"plc-1\"\nlanes = [{{ lane = 1, role = \"release\" }}, {{ lane = 2, role = \"inspection\" }}, {{ lane = 3, role = \"hold\" }}, {{ lane = 4, role = \"exception\" }}]\n",
        dir.join("journal").display()
    );
    let config = bondline::config::Config::parse("bench-burst.toml", &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let app = bondline::app::App::start(config, stop.clone()).await?;
    let metrics = app.metrics.clone();
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), scanner.accept())
        .await
        .context("the daemon did not connect to the scanner")??;
    println!(
        "VmRSS at start: {:.1} MiB; {} burst(s) of {} frames, {} s quiet after each",
        mib(super::resident_bytes()),
        args.bursts,
        args.frames,
        args.quiet.as_secs()
    );
    let sim = ScannerSim::new(framing, Plan::new(29));
    let mut first_quiet = None;
    let mut peak = 0u64;
    for burst in 0..u64::from(args.bursts) {
        let mut bytes = Vec::new();
        for i in burst * args.frames..(burst + 1) * args.frames {
            bytes.extend(sim.frame_for(&sim.plan.parcel(i)));
        }
        let started = Instant::now();
        let parcels_before = Metrics::get(&metrics.parcels) + Metrics::get(&metrics.no_reads);
        socket.write_all(&bytes).await?;
        drop(bytes);
        // The burst is over when its records are stored and forwarded and nothing moves.
        let mut last = (u64::MAX, u64::MAX);
        let mut still_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            peak = peak.max(super::resident_bytes());
            let now = (
                Metrics::get(&metrics.records_accepted),
                Metrics::get(&metrics.records_forwarded),
            );
            if now != last {
                last = now;
                still_since = Instant::now();
            }
            let drained = Metrics::get(&metrics.backlog) == 0;
            if drained && still_since.elapsed() >= Duration::from_secs(1) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "burst {burst} did not settle: {}",
                metrics.summary()
            );
        }
        let busy = started.elapsed();
        tokio::time::sleep(args.quiet).await;
        let rss = super::resident_bytes();
        let first = *first_quiet.get_or_insert(rss);
        let parcels =
            Metrics::get(&metrics.parcels) + Metrics::get(&metrics.no_reads) - parcels_before;
        println!(
            "burst {}: {parcels} parcels, settled in {:.1} s; VmRSS after the quiet period {:.1} MiB ({:.2}x the first), peak so far {:.1} MiB",
            burst + 1,
            busy.as_secs_f64(),
            mib(rss),
            rss as f64 / first as f64,
            mib(peak)
        );
    }
    println!(
        "records accepted {}, forwarded {}, overload diverts {}",
        Metrics::get(&metrics.records_accepted),
        Metrics::get(&metrics.records_forwarded),
        Metrics::get(&metrics.diverts_failed)
    );
    drop(socket);
    stop.cancel();
    app.wait().await?;
    plc_stop.cancel();
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
