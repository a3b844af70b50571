//! The rule set in a running daemon: every record names the version that decided it, SIGHUP
//! reloads the rule file, and an invalid rule file is refused whole with an alarm while the
//! old rule set stays.

use std::net::SocketAddr;
use std::time::Duration;

use bondline_devices::contract::{EventKind, LaneRole};
use bondline_devices::Profiles;
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use bondline_simulators::scanner::ScannerSim;
use tokio_util::sync::CancellationToken;

use crate::harness::{
    config_text, start_plc, wait_until, Daemon, LineDevices, Mosquitto, ScannerAt,
};

const PREFIX: &str = "bondline/test-gw";

fn rule_file(version: &str, extra: &str) -> String {
    format!(
        "version = \"{version}\"\n[[rules]]\nname = \"instruction\"\nkind = \"instruction\"\npriority = 100\n[[rules]]\nname = \"undeclared\"\nkind = \"undeclared\"\npriority = 70\ntarget = \"hold\"\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rule_file_and_an_invalid_one_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let (plc, _) = start_plc(&stop).await;
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, rule_file("v1", "")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scanner_addr = listener.local_addr().unwrap();
    let text = config_text(
        &dir.path().join("journal"),
        mosquitto.port,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(scanner_addr),
            plc,
        },
    )
    .replace(
        "gateway_id = \"test-gw\"",
        &format!(
            "gateway_id = \"test-gw\"\nrules_file = \"{}\"",
            rules.display()
        ),
    );
    let config = dir.path().join("bondline.toml");
    std::fs::write(&config, text).unwrap();
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-rules")
        .await
        .unwrap();
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));

    // Parcels arrive in three bursts of five; the scanner waits for the daemon to connect.
    let framing = Profiles::builtin()
        .get("scanner-stx-etx")
        .unwrap()
        .scanner()
        .unwrap()
        .clone();
    let plan = Plan::with_mix(31, Mix::only(PlanKind::Undeclared));
    let (burst_tx, mut burst_rx) = tokio::sync::mpsc::channel::<u64>(4);
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        while let Some(start) = burst_rx.recv().await {
            let sim = ScannerSim {
                framing: framing.clone(),
                plan: plan.clone(),
                rate_per_s: 100.0,
                count: Some(5),
                start_index: start,
            };
            sim.write_to(&mut stream, std::future::pending())
                .await
                .unwrap();
        }
    });
    let versions = |from: usize| -> Vec<String> {
        platform
            .records()
            .iter()
            .skip(from)
            .map(|r| r.rule_set.clone().unwrap_or_default())
            .collect()
    };

    burst_tx.send(0).await.unwrap();
    assert!(
        platform.wait_for_records(5, Duration::from_secs(20)).await,
        "first burst"
    );
    assert!(versions(0).iter().all(|v| v == "v1"), "{:?}", versions(0));

    std::fs::write(&rules, rule_file("v2", "")).unwrap();
    daemon.hangup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    burst_tx.send(5).await.unwrap();
    assert!(
        platform.wait_for_records(10, Duration::from_secs(10)).await,
        "second burst"
    );
    assert!(versions(5).iter().all(|v| v == "v2"), "{:?}", versions(5));

    // Invalid: a rule that would release. Refused whole, v2 stays, and customs hears of it.
    std::fs::write(
        &rules,
        rule_file(
            "v3",
            "[[rules]]\nname = \"bad\"\nkind = \"undeclared\"\npriority = 200\ntarget = \"release\"\n",
        ),
    )
    .unwrap();
    daemon.hangup();
    assert!(
        wait_until(Duration::from_secs(10), || {
            platform
                .events()
                .iter()
                .any(|e| e.kind == EventKind::Alarm && e.detail.contains("refused"))
        })
        .await,
        "no alarm for the refused rule set"
    );
    burst_tx.send(10).await.unwrap();
    assert!(
        platform.wait_for_records(15, Duration::from_secs(10)).await,
        "third burst"
    );
    assert!(versions(10).iter().all(|v| v == "v2"), "{:?}", versions(10));
    assert!(platform
        .records()
        .iter()
        .all(|r| r.lane_role == LaneRole::Hold));
    assert_eq!(daemon.terminate(), Some(0));
    stop.cancel();
}
