//! `bondline-lab bench`: measured numbers for the journal and the uplink, printed, not asserted.
//! (`images`, the X-ray image ingest, lives in `evidence::bench`.)
//!
//! - `journal`: append throughput through the real writer (group commit with the default
//!   flush window, chaining, flush), from a burst of records.
//! - `drain`: fills a journal with a backlog, then measures (1) the raw rate of rumqttc QoS 1
//!   publishing to the broker with the same payloads and in-flight window, and (2) the time
//!   the daemon's uplink needs to drain the backlog to the same broker, PUBACK-matched and
//!   removed from the outbox (see [`drain`]). Without `--broker`, a Mosquitto from the PATH
//!   is started on a free port.

mod backlog;
mod drain;
mod idle_floor;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bondline_devices::contract::{
    DivertOutcome, DivertStatus, LaneRole, ParcelRecord, ReadOutcome, SCHEMA,
};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use bondline::config::parse_host_port;
use bondline::journal::{record_sink, Journal};
use bondline::metrics::Metrics;
use bondline::rules::ClearanceTable;

mod burst;
mod table;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Memory after bursts: one line against the scanner and PLC simulators, fed bursts of
    /// frames as fast as the socket takes them with quiet periods between; prints VmRSS after
    /// each quiet period (see BENCHMARKS.md).
    Burst {
        /// Bursts to send.
        #[arg(long, default_value_t = 8)]
        bursts: u32,
        /// Frames per burst.
        #[arg(long, default_value_t = 10_000)]
        frames: u64,
        /// Seconds of quiet after each burst has settled, before VmRSS is read (parcels
        /// without a disposition are alerted 10 s after their deadline, inside this period).
        #[arg(long, default_value_t = 15)]
        quiet_s: u64,
        /// Broker host:port; default: start Mosquitto on a free port.
        #[arg(long)]
        broker: Option<String>,
        /// Directory for the journal (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Append throughput of the journal with the default flush window.
    Journal {
        /// Records to append.
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// Flush window in ms (the daemon's default is 2).
        #[arg(long, default_value_t = 2)]
        flush_window_ms: u64,
        /// Directory for the journal (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Several lines at peak rate on simulated conveyors (line-sim, peak scenario), faults
    /// off, while the uplink drains a backlog: decision latency, late diverts, leaks.
    Lines {
        /// Lines, each with its own scanner, PLC and simulated belt.
        #[arg(long, default_value_t = 4)]
        lines: u16,
        /// Seconds of parcels per line.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Records already waiting in the journal when the run starts.
        #[arg(long, default_value_t = 200_000)]
        backlog: u64,
        /// Declarations the platform pushes at full speed while the lines run (of waybills
        /// the lines never scan): the clearance table grows under the lines' lookups.
        #[arg(long, default_value_t = 0)]
        flood: u64,
        /// Line L0 gets an X-ray tunnel (xray-sim on Modbus TCP, 5 % suspect, 3 % marked by
        /// an officer) writing two 640x480 JPEG views per parcel to a spool the daemon
        /// ingests: verdicts, image decoding and thumbnails run beside the lines.
        #[arg(long)]
        xray: bool,
        /// Broker host:port; default: start Mosquitto on a free port.
        #[arg(long)]
        broker: Option<String>,
        /// Directory for the journal (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Rule evaluation latency on a large clearance table: declaration and instruction lookup
    /// plus evaluation of a rule set, per parcel; and memory per million declarations.
    Rules {
        /// Declarations in the table.
        #[arg(long, default_value_t = 1_000_000)]
        declarations: u64,
        /// Consumers with history.
        #[arg(long, default_value_t = 100_000)]
        consumers: u64,
        /// Rules in the rule set.
        #[arg(long, default_value_t = 50)]
        rules: u32,
        /// Evaluations to time.
        #[arg(long, default_value_t = 200_000)]
        evaluations: u64,
    },
    /// The clearance table at scale: start to first decision and load time from a stored
    /// table, process RSS per million declarations, lookup latency while a writer applies at
    /// full speed into a growing table.
    Table {
        /// Declarations stored (half of them instructed).
        #[arg(long, default_value_t = 1_000_000)]
        declarations: u64,
        /// Lookups to time, at least (they run as long as the writer does).
        #[arg(long, default_value_t = 1_000_000)]
        lookups: u64,
        /// Directory of the store, kept between runs (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Drain time of a backlog to a broker, beside raw rumqttc QoS 1 publishing.
    Drain {
        /// Records in the backlog.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Broker host:port; default: start Mosquitto on a free port.
        #[arg(long)]
        broker: Option<String>,
        /// In-flight window for both measurements.
        #[arg(long, default_value_t = 64)]
        inflight: u16,
        /// The uplink's pace (`uplink.drain_rate`, records/s; 0 = unpaced, only the in-flight
        /// window limits). The daemon's default is 5000.
        #[arg(long, default_value_t = 0)]
        drain_rate: u32,
        /// Directory for the journal (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A platform backlog of signed declarations queued at a broker while the gateway was
    /// away, taken in when it returns: time, messages/s, CPU, disconnects, journal bytes per
    /// message.
    Backlog {
        /// Declarations queued.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Broker host:port; default: start Mosquitto on a free port.
        #[arg(long)]
        broker: Option<String>,
        /// Directory for the journal (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Ingest throughput of X-ray views (synthetic, JPEG and PNG): decode, thumbnail, hash
    /// and chunk records; then the whole ingest with the durable store and the journal.
    Images {
        /// Views to generate and ingest.
        #[arg(long, default_value_t = 32)]
        views: usize,
        /// Size of each view, WIDTHxHEIGHT.
        #[arg(long, default_value = "1600x1200")]
        size: String,
        /// Images processed at once (the daemon's default `[evidence] workers` is 2).
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Directory for the evidence and journal (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "DEBUG build (use --release for real numbers)"
        } else {
            "release build"
        }
    );
    match cmd {
        BenchCommand::Burst {
            bursts,
            frames,
            quiet_s,
            broker,
            dir,
        } => {
            burst::run(burst::BurstArgs {
                bursts,
                frames,
                quiet: Duration::from_secs(quiet_s),
                broker,
                dir,
            })
            .await
        }
        BenchCommand::Journal {
            records,
            flush_window_ms,
            dir,
        } => {
            let (_tmp, dir) = work_dir(dir)?;
            let (journal, elapsed, metrics) =
                fill_measured(&dir, records, Duration::from_millis(flush_window_ms)).await?;
            let size = journal.stats()?.size_on_disk;
            println!(
                "journal append: {records} records in {:.2} s = {:.0} records/s (flush window {flush_window_ms} ms, {:.0} MiB on disk)",
                elapsed.as_secs_f64(),
                records as f64 / elapsed.as_secs_f64(),
                size as f64 / (1024.0 * 1024.0)
            );
            println!(
                "group commit (transaction and flush): {}",
                metrics.journal_flush_latency.percentiles()
            );
            // The waybill index is written behind the writer; how fast it catches up.
            let start = Instant::now();
            journal.index_all()?;
            journal.flush().await?;
            let took = start.elapsed();
            println!(
                "waybill index behind the writer: {records} records indexed in {:.2} s = {:.0} records/s",
                took.as_secs_f64(),
                records as f64 / took.as_secs_f64()
            );
            Ok(())
        }
        BenchCommand::Rules {
            declarations,
            consumers,
            rules,
            evaluations,
        } => rules_bench(declarations, consumers, rules, evaluations),
        BenchCommand::Table {
            declarations,
            lookups,
            dir,
        } => tokio::task::spawn_blocking(move || table::run(declarations, lookups, dir.as_deref()))
            .await
            .context("the table bench failed")?,
        BenchCommand::Images {
            views,
            size,
            workers,
            dir,
        } => {
            let size = bondline::evidence::bench::parse_size(&size)?;
            bondline::evidence::bench::run(views, size, workers, dir).await
        }
        BenchCommand::Lines {
            lines,
            seconds,
            backlog,
            flood,
            xray,
            broker,
            dir,
        } => lines_bench(lines, seconds, backlog, flood, xray, broker, dir).await,
        BenchCommand::Backlog {
            messages,
            broker,
            dir,
        } => {
            let (_tmp, dir) = work_dir(dir)?;
            let (_mosquitto, host, port) = broker_or_mosquitto(broker, &dir)?;
            backlog::run(messages, &host, port, &dir).await
        }
        BenchCommand::Drain {
            records,
            broker,
            inflight,
            drain_rate,
            dir,
        } => {
            let (_tmp, dir) = work_dir(dir)?;
            let (_mosquitto, host, port) = broker_or_mosquitto(broker, &dir)?;
            let store = dir.join("journal");
            println!("filling a backlog of {records} records...");
            let (journal, fill_time) = fill(&store, records, Duration::from_millis(2)).await?;
            println!(
                "journal append: {records} records in {:.2} s = {:.0} records/s",
                fill_time.as_secs_f64(),
                records as f64 / fill_time.as_secs_f64()
            );
            let sample = journal
                .outbox_from(0, u64::MAX, 1)?
                .pop()
                .map(|(_, b)| b.to_vec())
                .context("empty journal")?;
            // The daemon opens the store itself.
            drop(journal);
            let raw = raw_publish(&host, port, records, inflight, &sample).await?;
            let raw_rate = records as f64 / raw.as_secs_f64();
            println!(
                "raw rumqttc QoS1: {records} publishes of {} bytes in {:.2} s = {raw_rate:.0} msg/s (in-flight {inflight})",
                sample.len(),
                raw.as_secs_f64(),
            );
            let run = drain::daemon_drain(&store, &host, port, inflight, drain_rate).await?;
            let drain_rate_measured = run.forwarded as f64 / run.connected_for.as_secs_f64();
            println!(
                "uplink drain (the daemon, drain_rate {}): {} records in {:.2} s from connection = {drain_rate_measured:.0} records/s = {:.0}% of raw ({:.2} s from daemon start)",
                if drain_rate == 0 { "unpaced".to_string() } else { format!("{drain_rate}/s") },
                run.forwarded,
                run.connected_for.as_secs_f64(),
                100.0 * drain_rate_measured / raw_rate,
                run.elapsed.as_secs_f64(),
            );
            Ok(())
        }
    }
}

fn work_dir(dir: Option<PathBuf>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    Ok(match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            (None, d)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("bondline-bench-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    })
}

/// A parcel record of typical size.
fn sample_record(n: u64) -> ParcelRecord {
    ParcelRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: "bench-gw".into(),
        line: "L1".into(),
        parcel: n as u32,
        read: ReadOutcome::Ok,
        waybill: Some(format!("BL{n:012}")),
        lane: 2,
        lane_role: LaneRole::Inspection,
        rule: "instruction".into(),
        reason: "customs ordered inspection: selected for inspection".into(),
        instruction_id: Some(format!("I-BL{n:012}")),
        scanned_at_ms: 1_790_000_000_000 + n,
        decided_at_ms: 1_790_000_000_000 + n,
        divert: DivertOutcome {
            status: DivertStatus::Acked,
            plc_seq: Some((n % 65535 + 1) as u16),
            detail: None,
            at_ms: 1_790_000_000_001 + n,
            late: false,
        },
        revision: 0,
        deadline_ms: None,
        rule_set: None,
        rules_fired: Vec::new(),
        inputs: None,
    }
}

/// Appends `n` records through the real writer; returns when the last one is flushed.
async fn fill(dir: &Path, n: u64, window: Duration) -> anyhow::Result<(Journal, Duration)> {
    let (journal, elapsed, _) = fill_measured(dir, n, window).await?;
    Ok((journal, elapsed))
}

/// [`fill`], with the writer's metrics (group commit latency).
async fn fill_measured(
    dir: &Path,
    n: u64,
    window: Duration,
) -> anyhow::Result<(Journal, Duration, Arc<Metrics>)> {
    let journal = Journal::open(dir)?;
    let metrics = Arc::new(Metrics::default());
    let (sink, writer, mut accepted) = record_sink(journal.clone(), window, metrics.clone())?;
    let start_seq = *accepted.borrow();
    let writer = tokio::spawn(writer.run());
    let start = Instant::now();
    for i in 0..n {
        sink.push(sample_record(i));
    }
    while *accepted.borrow_and_update() < start_seq + n {
        accepted.changed().await?;
    }
    let elapsed = start.elapsed();
    drop(sink);
    writer.await?;
    Ok((journal, elapsed, metrics))
}

/// Publishes `n` copies of `payload` at QoS 1 with rumqttc and waits for every PUBACK.
async fn raw_publish(
    host: &str,
    port: u16,
    n: u64,
    inflight: u16,
    payload: &[u8],
) -> anyhow::Result<Duration> {
    let mut opts = MqttOptions::new("bondline-bench-raw", host, port);
    opts.set_inflight(inflight)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, inflight as usize * 2);
    let payload = payload.to_vec();
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            client
                .publish("bench/raw", QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0u64;
    let mut start = None;
    while acked < n {
        match events.poll().await? {
            Event::Incoming(Incoming::ConnAck(_)) => start = Some(Instant::now()),
            Event::Incoming(Incoming::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
    let _client = publisher.await??;
    Ok(elapsed)
}

/// The broker given as host:port, or a Mosquitto started for the run (kept alive by the
/// returned guard).
fn broker_or_mosquitto(
    broker: Option<String>,
    dir: &Path,
) -> anyhow::Result<(Option<Mosquitto>, String, u16)> {
    Ok(match broker {
        Some(b) => {
            let (h, p) = parse_host_port(&b).map_err(|e| anyhow::anyhow!(e))?;
            (None, h, p)
        }
        None => {
            let m = Mosquitto::start(dir)?;
            let port = m.port;
            (Some(m), "127.0.0.1".to_string(), port)
        }
    })
}

/// A Mosquitto process for the benchmarks, killed on drop.
struct Mosquitto {
    port: u16,
    child: Child,
}

impl Mosquitto {
    fn start(dir: &Path) -> anyhow::Result<Mosquitto> {
        let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n"),
        )?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin} (install mosquitto or pass --broker)"))?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(5) {
                bail!("mosquitto did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mosquitto { port, child })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peak scenario, compiled in so the benchmark runs from the binary alone.
const PEAK: &str = include_str!("../../simulators/scenarios/peak.toml");
/// The X-ray stage of `bench lines --xray` on line L0: xray-line.toml's tunnel.
const XRAY_STAGE: &str = "
[xray]
scan_to_xray_m = 0.5
unit = 1
suspect_rate = 0.05
mark_rate = 0.03
processing_ms = 400
mark_latency_ms = 400
";

async fn lines_bench(
    lines: u16,
    seconds: u64,
    backlog: u64,
    flood: u64,
    xray: bool,
    broker: Option<String>,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    use bondline_simulators::line::{LineSim, RunLength, Scenario, XrayPort};
    use bondline_simulators::platform::PlatformSim;
    use bondline_simulators::xray::{ImageSpec, XrayImages};

    anyhow::ensure!((1..=16).contains(&lines), "--lines must be 1 to 16");
    let (_tmp, dir) = work_dir(dir)?;
    let (_mosquitto, host, port) = broker_or_mosquitto(broker, &dir)?;
    let store = dir.join("journal");
    if backlog > 0 {
        println!("filling a backlog of {backlog} records...");
        let (journal, _) = fill(&store, backlog, Duration::from_millis(2)).await?;
        drop(journal);
    }
    let (framing, map) = builtin_devices()?;
    let mut scenarios = Vec::new();
    let mut line_seeds = Vec::new();
    for i in 0..lines {
        let text = if xray && i == 0 {
            format!("{PEAK}{XRAY_STAGE}")
        } else {
            PEAK.to_string()
        };
        let mut scenario = Scenario::from_toml(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        scenario.seed += i as u64 * 7919;
        line_seeds.push(scenario.seed % 10_000);
        scenario.length = RunLength::Seconds(seconds as f64);
        scenarios.push(scenario);
    }
    // The simulated floor runs on a thread of its own, so that the daemon's work never delays
    // it and its own lag stays out of the figures (its sockets belong to that thread's runtime).
    // The simulated floor keeps time at the floor thread's priority; its blocking threads,
    // which render and encode the X-ray workstation's images (another machine's work on a
    // real floor), run below it, as the daemon's own image ingest does.
    let sims_thread = bondline::threads::Dedicated::start_with(
        "bondline-bench-sims",
        bondline::threads::yield_to_floor,
    )?;
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let platform_addr = std::net::SocketAddr::new(host.parse()?, port);
    let spool = dir.join("xray-spool");
    let xray_map = bondline_devices::Profiles::builtin()
        .get("xray-modbus")
        .and_then(|p| p.xray())
        .context("built-in X-ray profile")?
        .clone();
    let sims_job = sims_thread.spawn({
        let scenarios = scenarios.clone();
        let spool = spool.clone();
        async move {
            let mut sims = Vec::new();
            for scenario in scenarios {
                let mut sim = LineSim::bind(scenario, framing.clone(), map.clone()).await?;
                if sim.scenario().xray.is_some() {
                    let images = XrayImages::new(&spool, ImageSpec::default())?;
                    let port = XrayPort::Tcp("127.0.0.1:0".parse()?);
                    sim = sim.with_xray(xray_map.clone(), port, Some(images)).await?;
                }
                sims.push(sim);
            }
            let addrs = sims
                .iter()
                .map(|s| {
                    Ok((
                        s.scanner_addr().context("line-sim scanner is TCP")?,
                        s.plc_addr(),
                        s.xray_addr(),
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let _ = bound_tx.send(addrs);
            go_rx.await?;
            let platform =
                PlatformSim::connect(platform_addr, "bench/lines", "bench-lines-platform").await?;
            let runs = sims
                .into_iter()
                .map(|sim| sim.run(Some(&platform), std::future::pending::<()>()));
            anyhow::Ok(futures::future::join_all(runs).await)
        }
    });
    let addrs = match bound_rx.await {
        Ok(a) => a,
        Err(_) => {
            return Err(sims_job
                .await?
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the simulators stopped")))
        }
    };
    let mut config = format!(
        "gateway_id = \"bench-gw\"\n[trust]\nallow_unsigned = true\n[storage]\npath = \"{}\"\n[uplink]\nbroker = \"{host}:{port}\"\nclient_id = \"bondline-bench-lines\"\ntopic_prefix = \"bench/lines\"\n",
        store.display()
    );
    let mut lines_toml = String::new();
    for (i, (scenario, (scanner, plc, xray_addr))) in scenarios.iter().zip(addrs).enumerate() {
        config.push_str(&format!(
            "[devices.scanner-{i}]\nprofile = \"scanner-stx-etx\"\ntcp = \"{scanner}\"\n[devices.plc-{i}]\nprofile = \"sorter-plc\"\ntcp = \"{plc}\"\n"
        ));
        let (xray_line, xray_geometry) = match (xray_addr, &scenario.xray) {
            (Some(addr), Some(stage)) => {
                config.push_str(&format!(
                    "[devices.xray-{i}]\nprofile = \"xray-modbus\"\ntcp = \"{addr}\"\nunit_id = {}\nspool = \"{}\"\n",
                    stage.unit,
                    spool.display()
                ));
                (
                    format!("xray = \"xray-{i}\"\n"),
                    format!(", scan_to_xray_m = {:?}", stage.scan_to_xray_m),
                )
            }
            _ => (String::new(), String::new()),
        };
        let r = scenario.lane_roles;
        lines_toml.push_str(&format!(
            "[[lines]]\nid = \"L{i}\"\nscanner = \"scanner-{i}\"\nplc = \"plc-{i}\"\n{xray_line}geometry = {{ belt_speed_m_s = {}, scan_to_gate_m = {}, margin_ms = 300{xray_geometry} }}\nlanes = [{{ lane = {}, role = \"release\" }}, {{ lane = {}, role = \"inspection\" }}, {{ lane = {}, role = \"hold\" }}, {{ lane = {}, role = \"exception\" }}]\n",
            scenario.belt_speed_m_s,
            scenario.gate_at_m - scenario.scanner_at_m,
            r.release,
            r.inspection,
            r.hold,
            r.exception
        ));
    }
    config.push_str(&lines_toml);
    let config = bondline::config::Config::parse("bench-lines.toml", &config)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let app = bondline::app::App::start(config, stop.clone()).await?;
    let metrics = app.metrics.clone();
    let start = Instant::now();
    while !metrics.uplink_ready.load(Ordering::Relaxed) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not connect to the broker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backlog_at_start = Metrics::get(&metrics.backlog);
    println!(
        "{lines} line(s) at peak rate for {seconds} s each; backlog {backlog_at_start} records draining meanwhile; flood of {flood} declarations{}",
        if xray { "; X-ray tunnel with images on L0" } else { "" }
    );
    // Waybills of another plan than any line's: the flood changes no line's decisions.
    let flood_task = (flood > 0).then(|| {
        let mut seed = 4242u64;
        while line_seeds.contains(&(seed % 10_000)) {
            seed += 1;
        }
        let plan = bondline_simulators::plan::Plan::with_mix(
            seed,
            bondline_simulators::plan::Mix::only(bondline_simulators::plan::PlanKind::DeclaredOnly),
        );
        let host = host.clone();
        tokio::spawn(async move {
            let platform = PlatformSim::connect(
                std::net::SocketAddr::new(host.parse()?, port),
                "bench/lines",
                "bench-lines-flood",
            )
            .await?;
            platform.publish_plan(&plan, 0..flood).await
        })
    });
    let messages_at_start = Metrics::get(&metrics.platform_messages);
    let started = Instant::now();
    let _ = go_tx.send(());
    let ledgers = sims_job.await??;
    let elapsed = started.elapsed();
    let forwarded = Metrics::get(&metrics.records_forwarded);
    let ingested = Metrics::get(&metrics.platform_messages) - messages_at_start;
    let held = app.table.declarations();
    if let Some(t) = flood_task {
        t.abort();
    }
    stop.cancel();
    app.wait().await?;

    let mut leaks = 0;
    let mut late = 0;
    let mut parcels = 0;
    for (i, l) in ledgers.into_iter().enumerate() {
        let l = l?;
        leaks += l.leaks;
        late += l.late_diverts;
        parcels += l.parcels;
        println!(
            "line L{i}: {} parcels in {:.0} s ({:.0}/h), correct {}, leaks {}, late diverts {}, wrong {}, sim lag max {:.1} ms, frame→command (line-sim, exact) all {}; release (written ahead) {}; other lanes {}",
            l.parcels,
            l.scan_span_s,
            l.parcels as f64 * 3600.0 / l.scan_span_s.max(1e-9),
            l.correct,
            l.leaks,
            l.late_diverts,
            l.wrong_lanes,
            l.max_lag_ms,
            micros(&l.latency),
            micros(&l.release_latency),
            micros(&l.other_latency),
        );
    }
    println!(
        "all lines: {parcels} parcels, leaks {leaks}, late diverts {late} (ledger) / {} (daemon), deadlines missed {}",
        Metrics::get(&metrics.late_diverts),
        Metrics::get(&metrics.deadlines_missed)
    );
    println!(
        "daemon latency, scanner frame received → PLC-acknowledged divert (HDR histogram, within 1%): {}",
        metrics.decision_latency.percentiles()
    );
    if xray {
        println!(
            "X-ray on L0: {} verdicts, {} joined to parcels, {} parcels without a verdict by their deadline; {} images ingested, {} with errors",
            Metrics::get(&metrics.xray_verdicts),
            Metrics::get(&metrics.xray_matched),
            Metrics::get(&metrics.xray_missing),
            Metrics::get(&metrics.images_ingested),
            Metrics::get(&metrics.images_with_errors),
        );
    }
    if flood > 0 {
        println!(
            "platform meanwhile: {ingested} messages taken in ({:.0}/s), {held} declarations held at the end",
            ingested as f64 / elapsed.as_secs_f64()
        );
    }
    println!(
        "uplink meanwhile: {forwarded} records forwarded in {:.1} s ({:.0}/s), backlog {} → {}",
        elapsed.as_secs_f64(),
        forwarded as f64 / elapsed.as_secs_f64(),
        backlog_at_start,
        Metrics::get(&metrics.backlog)
    );
    Ok(())
}

/// The built-in profiles the benches' simulated devices speak: the `scanner-stx-etx`
/// framing and the `sorter-plc` register map.
fn builtin_devices() -> anyhow::Result<(
    bondline_devices::framing::ScannerFraming,
    bondline_devices::plc::PlcMap,
)> {
    let profiles = bondline_devices::Profiles::builtin();
    let framing = profiles
        .get("scanner-stx-etx")
        .and_then(|p| p.scanner())
        .context("built-in scanner profile")?
        .clone();
    let map = profiles
        .get("sorter-plc")
        .and_then(|p| p.plc())
        .context("built-in PLC profile")?
        .clone();
    Ok((framing, map))
}

/// A line-sim latency summary in µs.
fn micros(l: &bondline_simulators::line::Latency) -> String {
    let us = |ms: Option<f64>| ms.unwrap_or(0.0) * 1000.0;
    format!(
        "p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs max {:.0} µs (n {})",
        us(l.p50_ms),
        us(l.p99_ms),
        us(l.p99_9_ms),
        us(l.max_ms),
        l.samples
    )
}

/// Resident memory of this process, from /proc (Linux); 0 elsewhere.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn rules_bench(
    declarations: u64,
    consumers: u64,
    rules: u32,
    evaluations: u64,
) -> anyhow::Result<()> {
    use bondline::floor::ScanRead;
    use bondline::rules::engine::RuleSet;
    use bondline::rules::{decide, Scan};
    use bondline_devices::contract::{
        Action, Declaration, DeclaredItem, EnterpriseAction, EnterpriseNotice, Instruction,
    };

    anyhow::ensure!(rules >= 4, "--rules must be at least 4");
    // A rule set of the requested size: the fail-closed core plus weight, limit and sampling
    // rules at assorted tolerances and rates.
    let mut text = String::from(
        "version = \"bench\"\nsampling_key_hex = \"000102030405060708090a0b0c0d0e0f\"\n\
         [[rules]]\nname = \"platform\"\nkind = \"instruction\"\npriority = 1000\n\
         [[rules]]\nname = \"suspended\"\nkind = \"suspended_enterprise\"\npriority = 900\ntarget = \"hold\"\n\
         [[rules]]\nname = \"identity\"\nkind = \"unverified_identity\"\npriority = 800\ntarget = \"hold\"\n\
         [[rules]]\nname = \"undeclared\"\nkind = \"undeclared\"\npriority = 700\ntarget = \"hold\"\n",
    );
    for i in 0..rules - 4 {
        let rule = match i % 3 {
            0 => format!(
                "kind = \"weight_mismatch\"\ntolerance_pct = {}.0\ntolerance_g = 50",
                5 + i
            ),
            1 => format!(
                "kind = \"consumer_limit\"\nwindow_days = {}\nmax_parcels = {}",
                1 + i % 365,
                10 + i
            ),
            _ => format!("kind = \"sampling\"\nrate_ppm = {}", 100 + i),
        };
        text.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\npriority = {}\ntarget = \"inspection\"\n{rule}\n",
            600 - i
        ));
    }
    let set = RuleSet::parse("bench", &text).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Half of the declarations' parcels were scanned earlier (spread over the last 200 days):
    // that is the consumers' history. The other half arrive now.
    let calendar = bondline::rules::calendar::Calendar::default();
    let today = calendar.day_of(bondline::metrics::unix_ms(std::time::SystemTime::now()));
    let before = resident_bytes();
    let table = ClearanceTable::default();
    for i in 0..declarations {
        let waybill = format!("BL{i:012}");
        let d = Declaration {
            schema: SCHEMA,
            waybill: waybill.clone(),
            enterprise: format!("E{:08}", i % 500),
            consumer: Some(format!("{:016x}", i % consumers.max(1))),
            identity_verified: i % 97 != 0,
            value_minor: Some(1_000 + i % 50_000),
            currency: Some("CNY".into()),
            gross_weight_g: Some(200 + (i % 3000) as u32),
            items: vec![DeclaredItem {
                description: "cosmetics".into(),
                quantity: 1 + (i % 3) as u32,
            }],
            order_id: None,
            pieces: None,
            signature: None,
        };
        table.apply_declaration(&d);
        if i % 2 == 0 {
            table.apply_instruction(&Instruction {
                schema: SCHEMA,
                instruction_id: format!("I{i}"),
                waybill: waybill.clone(),
                action: if i % 10 == 0 {
                    Action::Inspect
                } else {
                    Action::Release
                },
                reason: String::new(),
                issued_at_ms: None,
                signature: None,
            });
        }
        if (i / consumers.max(1)) % 2 == 0 {
            table.count(&waybill, today - (i % 200) as u32);
        }
    }
    table.apply_notice(&EnterpriseNotice {
        schema: SCHEMA,
        notice_id: "N1".into(),
        enterprise: "E00000007".into(),
        action: EnterpriseAction::Suspend,
        reason: "licence review".into(),
        issued_at_ms: None,
        signature: None,
    });
    let after = resident_bytes();

    // Nanoseconds, three significant digits.
    let mut samples = bondline::metrics::new_hdr(3);
    let mut released = 0u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..evaluations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % (declarations + declarations / 10).max(1);
        let read = ScanRead::Waybill(format!("BL{i:012}"));
        let scan = Scan {
            xray: Default::default(),
            read: &read,
            weight_g: Some(200 + (i % 3000) as u32 + (x % 40) as u32),
            weighing: true,
            day: today,
            calendar: &calendar,
            prior: None,
        };
        let start = Instant::now();
        let d = decide(&table, &set, scan);
        samples.saturating_record((start.elapsed().as_nanos() as u64).max(1));
        if d.role == bondline_devices::contract::LaneRole::Release {
            released += 1;
        }
    }
    println!(
        "rules: {} rules, {declarations} declarations, {} consumers with history",
        set.rules.len(),
        table.consumers()
    );
    println!(
        "decision (lookup, consumer windows, all rules, inputs for the record): {} ({released} released)",
        bondline::metrics::Percentiles::of(&samples, 1000.0)
    );
    println!(
        "memory: {:.0} MiB resident for the table and history = {:.0} MiB per million declarations",
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1048576.0 * 1_000_000.0 / declarations.max(1) as f64
    );
    Ok(())
}
