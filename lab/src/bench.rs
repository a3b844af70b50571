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
//!
//! Layout: one module per bench (`burst`, `journal`, `rules`, `table`, `lines`, `backlog`,
//! `drain`); `broker` (the broker or a Mosquitto for the run, raw rumqttc publishing) and
//! `idle_floor` (a line with no parcels) serve several, `idle_http` (stalled clients against
//! the staff view) serves `lines`; this file holds the command, its
//! dispatch and the small measurement helpers every bench shares.

mod backlog;
mod broker;
mod burst;
mod drain;
mod fsync;
mod idle_floor;
mod idle_http;
mod journal;
mod lines;
mod rules;
mod sled_entries;
mod stalls;
mod start;
mod table;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use broker::{broker_or_mosquitto, raw_publish};
use journal::fill;

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
        /// The daemon's `[uplink] platform_rate_while_sorting`: platform messages taken in
        /// per second at most while the lines sort (0: full speed); default: the daemon's.
        #[arg(long)]
        platform_rate_while_sorting: Option<u32>,
        /// Line L0 gets an X-ray tunnel (xray-sim on Modbus TCP, 5 % suspect, 3 % marked by
        /// an officer) writing two 640x480 JPEG views per parcel to a spool the daemon
        /// ingests: verdicts, image decoding and thumbnails run beside the lines.
        #[arg(long)]
        xray: bool,
        /// The daemon's `[floor] cpu_wake_latency_us`: keep the CPUs out of idle states
        /// slower to leave than this (needs write access to /dev/cpu_dma_latency).
        #[arg(long)]
        cpu_wake_latency_us: Option<u32>,
        /// Clients that connect to the staff view (on its default budgets) and never send a
        /// byte, re-connecting whenever the view closes them, for the whole run.
        #[arg(long, default_value_t = 0)]
        idle_http: usize,
        /// The last line's PLC goes off the network for 2 s half-way through the run; the
        /// daemon must connect to it again (with --idle-http: while the view is flooded).
        #[arg(long)]
        plc_restart: bool,
        /// Every line gets a scan camera (camera-sim) whose snapshot of every parcel the
        /// daemon fetches, decodes and keeps as evidence.
        #[arg(long)]
        cameras: bool,
        /// Where the simulated floor runs: a process of its own (default), so that nothing
        /// in the daemon's process can delay it and its lag stays out of the figures, or a
        /// real-time thread beside the daemon.
        #[arg(long, value_enum, default_value_t = lines::Sims::Process)]
        sims: lines::Sims,
        /// Broker host:port; default: start Mosquitto on a free port.
        #[arg(long)]
        broker: Option<String>,
        /// Directory for the journal (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The simulators' process of `bench lines` (started by it).
    #[command(hide = true)]
    LinesSims {
        /// The floor to simulate, as `bench lines` describes it.
        #[arg(long)]
        spec: String,
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
        /// One-off consumers whose day totals the store keeps from forgotten declarations
        /// (a year of buyers); then `--declarations` arrive, every other one from a buyer of
        /// that year and the rest from new ones, each consumer's stored days read as it
        /// arrives (0: not run).
        #[arg(long, default_value_t = 0)]
        stored_consumers: u64,
        /// One-off consumers' day totals stored as a build older than the consumers' file
        /// kept them (in the store's trees), then moved into the file by a start's load: how
        /// long the first start after an upgrade holds parcels for it (0: not run).
        #[arg(long, default_value_t = 0)]
        older_build_consumers: u64,
    },
    /// The daemon's own start on a stored table, with a scanner sending from the first
    /// moment: start to the first PLC command (fail closed while the store opens and the
    /// table loads), to the store open, to the table loaded.
    Start {
        /// Declarations stored (half of them instructed), as `bench table` stores them.
        #[arg(long, default_value_t = 1_000_000)]
        declarations: u64,
        /// Directory of the store, kept between runs (default: a temporary one); the same
        /// directory as `bench table --dir` reuses its store.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The cheapest durable write of one release intent on this disk: 1 KiB `pwrite` +
    /// `fdatasync` into a pre-zeroed file, every 20 ms (run it beside a load to compare with
    /// the intents store's own flush).
    Fsync {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Directory for the file (default: a temporary one; give one on the journal's disk).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// What sled costs per stored entry: bytes on disk, and resident memory after a fresh
    /// open (which grows with the number of entries, not their size).
    SledEntries {
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        #[arg(long, default_value_t = 600)]
        value_bytes: usize,
        /// Directory for the store (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The open of `bench sled-entries`, in a process of its own (started by it). With
    /// `--read-all`, also reads every tree of the store (a journal's, say) from end to end, as
    /// a start's load does, and prints the process's RSS after each tree: what sled keeps
    /// resident of what was read.
    #[command(hide = true)]
    SledOpen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        read_all: bool,
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
        } => journal::run(records, flush_window_ms, dir).await,
        BenchCommand::Rules {
            declarations,
            consumers,
            rules,
            evaluations,
        } => rules::run(declarations, consumers, rules, evaluations),
        BenchCommand::Table {
            declarations,
            lookups,
            dir,
            stored_consumers,
            older_build_consumers,
        } => tokio::task::spawn_blocking(move || {
            table::run(
                declarations,
                lookups,
                dir.as_deref(),
                stored_consumers,
                older_build_consumers,
            )
        })
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
            platform_rate_while_sorting,
            xray,
            cpu_wake_latency_us,
            idle_http,
            plc_restart,
            cameras,
            sims,
            broker,
            dir,
        } => {
            let load = lines::Load {
                lines,
                seconds,
                backlog,
                flood,
                platform_rate_while_sorting,
                xray,
                cpu_wake_latency_us,
                idle_http,
                plc_restart,
                cameras,
            };
            lines::run(load, sims, broker, dir).await
        }
        BenchCommand::LinesSims { spec } => lines::serve_sims(&spec).await,
        BenchCommand::Backlog {
            messages,
            broker,
            dir,
        } => {
            let (_tmp, dir) = work_dir(dir)?;
            let (_mosquitto, host, port) = broker_or_mosquitto(broker, &dir)?;
            backlog::run(messages, &host, port, &dir).await
        }
        BenchCommand::Start { declarations, dir } => start::run(declarations, dir).await,
        BenchCommand::SledEntries {
            entries,
            value_bytes,
            dir,
        } => {
            tokio::task::spawn_blocking(move || sled_entries::run(entries, value_bytes, dir))
                .await?
        }
        BenchCommand::SledOpen { dir, read_all } => sled_entries::open(&dir, read_all),
        BenchCommand::Fsync { seconds, dir } => {
            tokio::task::spawn_blocking(move || fsync::run(seconds, dir)).await?
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
            // A daemon that was running while the backlog built up indexed each record by
            // waybill behind the writer; do that here, so the drain is not charged with it.
            let indexing = Instant::now();
            while journal.index_pending(1024)? > 0 {}
            println!(
                "waybill index caught up in {:.2} s (the daemon's background task, before the drain)",
                indexing.elapsed().as_secs_f64()
            );
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

/// Bytes the allocator has handed out and not had back (glibc's `mallinfo2`: arena blocks in
/// use plus mmapped blocks), to tell live data from the allocator's free but resident pages.
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}
