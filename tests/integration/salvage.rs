//! A damaged journal, end to end with the real binary: the daemon refuses to start on it
//! (exit 65, naming the command), `bondline journal salvage` moves it aside and keeps what
//! still reads, and the next start delivers the kept records and the salvage record to the
//! platform through a real Mosquitto.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bondline::journal::Journal;
use bondline_devices::contract::{AlertKind, EventKind, Record};
use bondline_simulators::plan::Plan;
use bondline_simulators::platform::PlatformSim;

use crate::harness::{floor, wait_until, Daemon, Mosquitto, Setup};

const PREFIX: &str = "bondline/test-gw";
const PARCELS: u64 = 150;

#[derive(Debug, Clone, Copy)]
enum Damage {
    TruncatedLog,
    GarbageLog,
    GarbageConf,
    GarbageSnapshot,
}

fn damage(store: &Path, how: Damage) {
    let db = store.join("db");
    match how {
        Damage::TruncatedLog => {
            let len = std::fs::metadata(&db).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
            f.set_len(len / 2).unwrap();
        }
        Damage::GarbageLog => {
            let len = std::fs::metadata(&db).unwrap().len() as usize;
            let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
            std::fs::write(&db, garbage).unwrap();
        }
        Damage::GarbageConf => std::fs::write(store.join("conf"), b"segment_size: lots\n").unwrap(),
        Damage::GarbageSnapshot => {
            std::fs::write(store.join("snap.00000000000fffff"), [0xa5u8; 2048]).unwrap()
        }
    }
}

/// The parcel ids of the parcel records in a closed store, and its head.
fn parcels_in(store: &Path) -> (HashSet<u32>, u64) {
    let journal = Journal::open(store).unwrap();
    let mut parcels = HashSet::new();
    journal
        .each_record(|r| {
            if let Record::Parcel(p) = r {
                parcels.insert(p.parcel);
            }
            true
        })
        .unwrap();
    (parcels, journal.chain_head().unwrap().0)
}

fn bondline(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bondline"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn salvage_then_deliver(how: Damage) {
    let dir = tempfile::tempdir().unwrap();
    // The broker is down while the records are made, so they all wait in the journal.
    let mut mosquitto = Mosquitto::start(dir.path()).await;
    mosquitto.stop();
    let floor = floor(Plan::new(19), 200.0, Some(PARCELS)).await;
    let setup = Setup::on_floor(dir.path(), mosquitto.port, &floor);
    let (store, config, log) = (setup.store(), setup.config(), setup.log());
    let daemon = setup.start();
    let sent = floor.scanner_task.await.unwrap().unwrap();
    assert_eq!(sent, PARCELS);
    // A clean stop stores every record it was given.
    assert_eq!(daemon.terminate(), Some(0), "{}", read(&log));
    let (before, head) = parcels_in(&store);
    // Most scans make a parcel record (the plan has a few unreadable frames).
    assert!(
        before.len() as u64 > PARCELS / 2,
        "{} parcels",
        before.len()
    );

    damage(&store, how);
    let (code, _, err) = bondline(&["run"], &config);
    assert_eq!(code, Some(65), "{how:?}: {err}");
    let hint = format!("bondline journal salvage --config {}", config.display());
    assert!(err.contains(&hint), "{how:?}: {err}");

    let (code, out, err) = bondline(&["journal", "salvage"], &config);
    assert_eq!(code, Some(0), "{how:?}: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    println!("{how:?}: {report}");
    assert_eq!(report["old_head"], head, "{report}");
    let damaged = report["damaged"].as_str().unwrap();
    assert!(Path::new(damaged).join("db").exists(), "{report}");
    let kept = report["records_kept"].as_u64().unwrap();
    let lost = report["records_lost"].as_u64().unwrap();
    assert_eq!(kept + lost, head, "{report}");
    // What still read is in the fresh store, whatever its new numbers.
    let (after, _) = parcels_in(&store);
    assert!(after.is_subset(&before));
    match how {
        Damage::GarbageConf | Damage::GarbageSnapshot => {
            assert_eq!(after, before, "{how:?}: nothing is lost: {report}");
            assert_eq!(report["chain"], "continued");
        }
        Damage::TruncatedLog => {
            assert!(lost > 0, "{report}");
            assert_eq!(report["chain"], "restarted");
        }
        Damage::GarbageLog => {
            assert_eq!(kept, 0, "{report}");
            assert_eq!(report["chain"], "restarted");
        }
    }

    // The broker and the platform come back; the next start delivers what was kept.
    mosquitto.restart().await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-salvage")
        .await
        .unwrap();
    let daemon = Daemon::start(&config, &log);
    let delivered = |platform: &PlatformSim| -> (HashSet<u32>, bool) {
        let mut parcels = HashSet::new();
        let mut alert = false;
        for r in platform.all_records() {
            match r {
                Record::Parcel(p) => {
                    parcels.insert(p.parcel);
                }
                Record::Alert(a) if a.alert == AlertKind::JournalSalvaged => alert = true,
                _ => {}
            }
        }
        (parcels, alert)
    };
    let arrived = wait_until(Duration::from_secs(60), || {
        let (parcels, alert) = delivered(&platform);
        alert && after.is_subset(&parcels)
    })
    .await;
    let (parcels, alert) = delivered(&platform);
    assert!(
        arrived,
        "{how:?}: salvage record {alert}, {} of {} kept parcels delivered\n{}",
        parcels.intersection(&after).count(),
        after.len(),
        read(&log)
    );
    // The alarm the start raised for the salvage reaches the platform too.
    let alarmed = wait_until(Duration::from_secs(20), || {
        platform
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Alarm && e.detail.starts_with("journal salvaged"))
    })
    .await;
    assert!(
        alarmed,
        "{how:?}: no salvage alarm: {:?}",
        platform.events()
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", read(&log));
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_a_truncated_log() {
    salvage_then_deliver(Damage::TruncatedLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_a_garbage_log() {
    salvage_then_deliver(Damage::GarbageLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_a_garbage_conf() {
    salvage_then_deliver(Damage::GarbageConf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_a_garbage_snapshot() {
    salvage_then_deliver(Damage::GarbageSnapshot).await;
}
