//! Running under systemd: the unit file verifies, and the daemon speaks the notify protocol
//! (ready, watchdog pings, reloading, stopping) to a socket standing in for systemd.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use bondline_simulators::plan::Plan;

use crate::harness::{floor, Daemon, Mosquitto, Setup};

/// `systemd-analyze verify` on the shipped unit, with the binary path pointing at this build.
#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/bondline.service"
    ))
    .unwrap()
    .replace("/usr/bin/bondline", env!("CARGO_BIN_EXE_bondline"));
    for want in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "ExecStartPre=/",
        "check-config",
        "Restart=on-failure",
        "RestartPreventExitStatus=64 65",
        "StateDirectory=bondline",
        "SupplementaryGroups=dialout",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "\nCapabilityBoundingSet=\n",
        "\nAmbientCapabilities=\n",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyS rw",
        "ReadWritePaths=-/var/spool/bondline",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.contains(want), "the unit lacks {want}");
    }
    // Stopping must outlast the drain: the uplink's grace period, then the journal flush.
    let stop_s: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        Duration::from_secs(stop_s) >= bondline::app::UPLINK_DRAIN * 5,
        "TimeoutStopSec={stop_s} leaves no room beyond the drain grace period"
    );
    let path = dir.path().join("bondline.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd; tests/run.sh installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Collects notify messages until `want` is among them.
fn wait_for(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_notifies_ready_pings_the_watchdog_and_says_when_it_reloads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let floor = floor(Plan::new(5), 20.0, Some(20)).await;
    let setup = Setup::on_floor(dir.path(), mosquitto.port, &floor);
    let config = setup.write();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let daemon = Daemon::start_as_service(&config, &setup.log(), &sock_path, 400_000);
    let mut seen = Vec::new();
    let sock = std::sync::Arc::new(sock);
    let s = sock.clone();
    let (ready, mut seen) = tokio::task::spawn_blocking(move || {
        let ok = wait_for(&s, &mut seen, "READY=1", Duration::from_secs(20));
        (ok, seen)
    })
    .await
    .unwrap();
    assert!(ready, "no READY=1: {seen:?}");
    // Pings keep coming while the lines run: several within a couple of watchdog periods.
    let s = sock.clone();
    let pings = tokio::task::spawn_blocking(move || {
        let mut local = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            if wait_for(&s, &mut local, "WATCHDOG=1", Duration::from_secs(5)) {
                n += 1;
            }
        }
        n
    })
    .await
    .unwrap();
    assert_eq!(pings, 5, "watchdog pings");
    daemon.hangup();
    let s = sock.clone();
    let (reloading, seen2) = tokio::task::spawn_blocking(move || {
        let mut local = Vec::new();
        let ok = wait_for(&s, &mut local, "RELOADING=1", Duration::from_secs(10))
            && wait_for(&s, &mut local, "READY=1", Duration::from_secs(10));
        (ok, local)
    })
    .await
    .unwrap();
    assert!(reloading, "no RELOADING=1 then READY=1: {seen2:?}");
    seen.extend(seen2);
    let s = sock.clone();
    let stopping = tokio::task::spawn_blocking(move || {
        let mut local = Vec::new();
        wait_for(&s, &mut local, "STOPPING=1", Duration::from_secs(10))
    });
    assert_eq!(daemon.terminate(), Some(0));
    assert!(stopping.await.unwrap(), "no STOPPING=1");

    // Under systemd the log is JSON lines, and a healthy line does not log each parcel.
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    let mut info = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["level"] == "INFO" {
            info += 1;
        }
    }
    assert!(info > 0, "no info lines at all: {log}");
    let plan = Plan::new(5);
    for p in plan.parcels(0..20).filter(|p| p.kind.is_readable()) {
        assert!(
            !log.contains(&p.waybill),
            "a healthy parcel logged: {}",
            p.waybill
        );
    }
}
