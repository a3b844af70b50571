//! The journal on a nearly full filesystem: a small tmpfs the test mounts. The documented
//! policy (src/journal/capacity.rs) must hold: forwarded records are purged first, a full
//! disk makes the writer hold records in memory while parcels are still decided, and once
//! the platform catches up every record is stored and delivered, none refused.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bondline::app::App;
use bondline::config::Config;
use bondline::journal::capacity::Level;
use bondline::journal::Journal;
use bondline::metrics::Metrics;
use bondline_devices::contract::EventKind;
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use tokio_util::sync::CancellationToken;

use crate::harness::{config_text_with, wait_until, LineDevices, Mosquitto, ScannerAt};

const PREFIX: &str = "bondline/test-gw";

/// A tmpfs of `size_mb` at `dir`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mb: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root (as in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn level(m: &Metrics) -> Level {
    Level::from_u8(m.journal_level.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_purges_forwarded_then_holds_and_loses_nothing() {
    crate::harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("small-disk");
    let _tmpfs = Tmpfs::mount(&fs, 24);
    let store = dir.path().join("mosquitto-db");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut mosquitto = Mosquitto::start_with(
        dir.path(),
        &format!(
            "persistence true\npersistence_location {}/\nautosave_interval 1",
            store.display()
        ),
    )
    .await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect_persistent(broker, PREFIX, "platform-capacity")
        .await
        .unwrap();

    let floor = crate::harness::floor(
        Plan::with_mix(9, Mix::only(PlanKind::Undeclared)),
        2000.0,
        None,
    )
    .await;
    let (plc_state, stop_scanner, scanner_task) = (
        floor.plc_state.clone(),
        floor.stop_scanner.clone(),
        floor.scanner_task,
    );

    // 24 MiB of disk; below 12 MiB free the journal is nearly full, below 6 MiB full.
    let state = fs.join("journal");
    let text = config_text_with(
        &state,
        mosquitto.port,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(floor.scanner),
            plc: floor.plc,
        },
        "",
    )
    .replace(
        "flush_window_ms = 2",
        "flush_window_ms = 2\nmin_free_mb = 6\nquota_mb = 1000",
    );
    let stop = CancellationToken::new();
    let app = App::start(Config::parse("capacity.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    let m = app.metrics.clone();

    // Phase 1, platform reachable: the disk fills with forwarded records until the journal
    // is nearly full; then forwarded records are purged to make room.
    assert!(
        wait_until(Duration::from_secs(60), || Metrics::get(&m.records_purged)
            > 0)
        .await,
        "nothing purged: {}",
        m.summary()
    );
    // Whether it then stays below full depends on the uplink keeping pace with 2,000
    // parcels/s, which a debug build beside other tests on two busy cores does not always
    // (its thread yields to everything else, src/threads.rs): the disk may then fill with
    // records not yet forwarded, which is phase 2's case. So no level is asserted here.

    // Phase 2, platform unreachable: unforwarded records cannot be purged; the disk reaches
    // the floor and the writer holds records in memory, while parcels are still decided.
    mosquitto.stop_gracefully();
    assert!(
        wait_until(Duration::from_secs(60), || level(&m) == Level::Full
            && Metrics::get(&m.records_held) > 0)
        .await,
        "journal never reached full: {}",
        m.summary()
    );
    let diverts = plc_state.divert_count();
    let parcels = Metrics::get(&m.parcels);
    assert!(
        wait_until(Duration::from_secs(2), || plc_state.divert_count()
            > diverts
            && Metrics::get(&m.parcels) > parcels)
        .await,
        "diverts stopped while the journal was full: {} commands, {}",
        plc_state.divert_count(),
        m.summary()
    );

    // Phase 3, platform back: the backlog drains, forwarded records are purged, the held
    // records are written, and every record reaches the platform.
    stop_scanner.cancel();
    scanner_task.await.unwrap().unwrap();
    let accepted_before = Metrics::get(&m.records_accepted);
    mosquitto.restart().await;
    assert!(
        wait_until(Duration::from_secs(90), || Metrics::get(&m.records_held)
            == 0
            && Metrics::get(&m.backlog) == 0
            && Metrics::get(&m.records_accepted) > accepted_before)
        .await,
        "did not recover: {}",
        m.summary()
    );
    assert_eq!(Metrics::get(&m.records_refused), 0);
    // The PLC's dispositions of the last parcels come after the scanner stops; every record,
    // held or not, must end up stored and forwarded.
    let all_stored = || {
        Metrics::get(&m.parcels) + Metrics::get(&m.alerts) + Metrics::get(&m.dispositions)
            == Metrics::get(&m.records_accepted)
            && Metrics::get(&m.records_held) == 0
            && Metrics::get(&m.backlog) == 0
    };
    assert!(
        crate::harness::settle(Duration::from_secs(30), Duration::from_millis(1500), || {
            Metrics::get(&m.records_accepted)
        })
        .await
            && wait_until(Duration::from_secs(30), all_stored).await,
        "a record for every parcel, disposition and alert, stored and forwarded: {} | held {} refused {} purged {} | {} + {} + {}",
        m.summary(),
        Metrics::get(&m.records_held),
        Metrics::get(&m.records_refused),
        Metrics::get(&m.records_purged),
        Metrics::get(&m.parcels),
        Metrics::get(&m.alerts),
        Metrics::get(&m.dispositions),
    );
    let head = Metrics::get(&m.records_accepted);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let seqs: std::collections::HashSet<u64> =
                platform.all_records().iter().map(|r| r.seq()).collect();
            seqs.len() as u64 == head
        })
        .await,
        "platform has {} distinct of {head}",
        platform.records().len()
    );
    let alarms: Vec<String> = platform
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Alarm)
        .map(|e| e.detail.clone())
        .collect();
    assert!(
        alarms.iter().any(|a| a.contains("nearly full")),
        "{alarms:?}"
    );
    stop.cancel();
    app.wait().await.unwrap();
    let journal = Journal::open(&state).unwrap();
    assert!(journal.verify().unwrap().ok());
    assert_eq!(journal.chain_head().unwrap().0, head);
    // Purging on the gateway changes nothing the platform receives: its chain is whole.
    crate::harness::assert_chain_whole(&platform, Some(head));
}

/// Stored platform state counts towards the quota in the running daemon: a gateway with a
/// quota of 1 MiB, no parcels at all and a few thousand stored declarations is over quota, the
/// alarm names the platform state, and `/api/health` shows the split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_platform_state_takes_the_journal_over_its_quota() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let (plc, _) = crate::harness::start_plc(&stop).await;
    let scanner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let view = SocketAddr::from(([127, 0, 0, 1], crate::harness::loopback_port()));
    let text = crate::harness::config_text(
        &dir.path().join("journal"),
        mosquitto.port,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(scanner.local_addr().unwrap()),
            plc,
        },
    )
    .replace("flush_window_ms = 2", "flush_window_ms = 2\nquota_mb = 1")
        + &format!("\n[view]\nlisten = \"{view}\"\n");
    let config = dir.path().join("bondline.toml");
    std::fs::write(&config, text).unwrap();
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-quota")
        .await
        .unwrap();
    let daemon = crate::harness::Daemon::start(&config, &dir.path().join("daemon.log"));
    let health = || -> Option<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(view).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
    };
    assert!(
        wait_until(Duration::from_secs(30), || health().is_some()).await,
        "the staff view answers"
    );
    for i in 0..5_000 {
        let w = format!("QUOTA{i:06}");
        let d = serde_json::json!({
            "schema": 1, "waybill": w, "enterprise": "E-GOOD", "consumer": format!("c-{i}"),
            "identity_verified": true, "value_minor": 10_000, "currency": "CNY",
            "gross_weight_g": 1000,
            "items": [{"description": "hand cream, 50 ml, two tubes in a gift box", "quantity": 2}]
        });
        platform
            .publish_raw("declarations", serde_json::to_vec(&d).unwrap())
            .await
            .unwrap();
    }
    let mut last = None;
    let over = wait_until(Duration::from_secs(60), || {
        last = health();
        last.as_ref()
            .is_some_and(|h| h["journal_level"] == "over_quota")
    })
    .await;
    let h = last.unwrap_or_default();
    assert!(over, "{h}");
    assert!(
        h["journal_platform_bytes"].as_u64().unwrap_or(0) >= 1 << 20,
        "{h}"
    );
    assert!(
        h["journal_record_bytes"].as_u64().unwrap_or(u64::MAX) < 1 << 20,
        "{h}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || platform.events().iter().any(
            |e| e.kind == EventKind::Alarm
                && e.detail.contains("over quota")
                && e.detail.contains("platform state")
        ))
        .await,
        "{:?}",
        platform.events()
    );
    assert_eq!(daemon.terminate(), Some(0));
    stop.cancel();
}
