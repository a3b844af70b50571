//! `bondline-lab bench start`: the daemon's own start on a store holding `declarations`
//! declarations (filled as `bench table` fills it, and kept in `--dir` between runs), with a
//! simulated scanner and PLC and a broker. The scanner sends a waybill declared and released
//! in the store every 10 ms from the moment the start begins; printed: start to the first
//! PLC command and its lane (fail closed while the store opens and the table loads), to the
//! store being open (`App::start` returned), to the table loaded, and the lane of the first
//! parcel scanned after that.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

/// The `n`-th waybill the scanner sends: declared and released in the stored table (see
/// `table`'s fill: even numbers are instructed, those divisible by ten to inspection), each
/// a parcel of its own (the same waybill again would be a duplicate label).
fn waybill(n: u64) -> String {
    let i = 2 * (n + n / 4 + 1);
    format!("BL{i:012}")
}

/// How often the scanner sends one.
const SCAN_EVERY: Duration = Duration::from_millis(10);
/// The lanes of the line: 1 release, 2 inspection, 3 hold, 4 exception.
const LANES: &str = "lanes = [{ lane = 1, role = \"release\" }, { lane = 2, role = \"inspection\" }, { lane = 3, role = \"hold\" }, { lane = 4, role = \"exception\" }]";

fn role(lane: u16) -> &'static str {
    match lane {
        1 => "release",
        2 => "inspection",
        3 => "hold",
        4 => "exception",
        _ => "unknown",
    }
}

pub(super) async fn run(declarations: u64, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (_tmp, dir) = super::work_dir(dir)?;
    let store = dir.join("journal");
    {
        let store = store.clone();
        tokio::task::spawn_blocking(move || super::table::prepare(&store, declarations))
            .await
            .context("filling the store")??;
    }
    let (_mosquitto, host, port) = super::broker::broker_or_mosquitto(None, &dir)?;
    let (framing, map) = super::builtin_devices()?;
    let stop_sims = CancellationToken::new();
    let plc = bondline_simulators::plc::PlcSim::bind_with(
        "127.0.0.1:0".parse()?,
        map,
        bondline_simulators::plc::PlcOptions::default(),
    )
    .await?;
    let (plc_addr, plc_state) = (plc.local_addr(), plc.state());
    tokio::spawn(plc.run(stop_sims.clone().cancelled_owned()));
    let scanner = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = format!(
        "gateway_id = \"bench-gw\"\n[trust]\nallow_unsigned = true\n[storage]\npath = \"{}\"\n[uplink]\nbroker = \"{host}:{port}\"\nclient_id = \"bondline-bench-start\"\ntopic_prefix = \"bench/start\"\n[devices.scanner-1]\nprofile = \"scanner-stx-etx\"\ntcp = \"{}\"\n[devices.plc-1]\nprofile = \"sorter-plc\"\ntcp = \"{plc_addr}\"\n[[lines]]\nid = \"L1\"\nscanner = \"scanner-1\"\nplc = \"plc-1\"\ngeometry = {{ belt_speed_m_s = 2.0, scan_to_gate_m = 4.0, margin_ms = 300 }}\n{LANES}\n",
        store.display(),
        scanner.local_addr()?,
    );
    let config = bondline::config::Config::parse("bench-start.toml", &config)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("starting the daemon on the store {}", store.display());

    let stop = CancellationToken::new();
    let started = Instant::now();
    let app = tokio::spawn(bondline::app::App::start(config, stop.clone()));
    // The scanner side: the same waybill every 10 ms from the first connection on.
    let scans = tokio::spawn({
        let stop_sims = stop_sims.clone();
        async move {
            let (mut stream, _) = scanner.accept().await?;
            let connected = started.elapsed();
            let mut tick = tokio::time::interval(SCAN_EVERY);
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = stop_sims.cancelled() => return anyhow::Ok(connected),
                    _ = tick.tick() => {
                        stream.write_all(&framing.encode(&waybill(n))).await?;
                        n += 1;
                    }
                }
            }
        }
    });
    // The start, awaited beside the PLC's first command (whichever comes first).
    let mut app = app;
    let mut started_app = None;
    let mut to_open = None;
    let first = loop {
        if let Some(d) = plc_state.diverts().first().copied() {
            break d;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "no PLC command within 600 s"
        );
        if started_app.is_none() && app.is_finished() {
            started_app = Some((&mut app).await?.map_err(anyhow::Error::from)?);
            to_open = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let to_first = first.at.saturating_duration_since(started);
    let app = match started_app {
        Some(a) => a,
        None => app.await?.map_err(anyhow::Error::from)?,
    };
    let to_open = to_open.unwrap_or_else(|| started.elapsed());
    while app.table.loading().is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_loaded = started.elapsed();
    // The first parcel scanned after the load (parcels held before it are decided again
    // meanwhile: their commands are not this one).
    let before: std::collections::HashSet<u32> =
        plc_state.diverts().iter().map(|d| d.parcel).collect();
    let after = loop {
        if let Some(d) = plc_state
            .diverts()
            .into_iter()
            .find(|d| !before.contains(&d.parcel))
        {
            break d;
        }
        anyhow::ensure!(
            started.elapsed() < to_loaded + Duration::from_secs(30),
            "no PLC command after the load"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let commands = plc_state.divert_count();
    stop_sims.cancel();
    let connected = scans.await??;
    stop.cancel();
    app.wait().await?;
    println!(
        "daemon start on {} stored declarations: scanner connected after {:.0} ms; first PLC command after {:.0} ms (lane {}: {}); store open after {:.2} s; table loaded after {:.2} s ({} declarations); then a parcel scanned after the load: lane {} ({}); {commands} commands in all",
        declarations,
        connected.as_secs_f64() * 1000.0,
        to_first.as_secs_f64() * 1000.0,
        first.lane,
        role(first.lane),
        to_open.as_secs_f64(),
        to_loaded.as_secs_f64(),
        declarations,
        after.lane,
        role(after.lane),
    );
    Ok(())
}
