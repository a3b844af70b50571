//! One release admits one parcel: a waybill released once is not released again for a second
//! physical parcel, on any line of the gateway and across a crash, while a parcel the sorter
//! sent round again is released on its re-scan.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bondline_devices::contract::{
    AlertKind, AlertRecord, EventKind, LaneRole, ParcelRecord, Record,
};
use bondline_devices::plc::DispositionCode;
use bondline_devices::Profiles;
use bondline_simulators::platform::PlatformSim;
use tokio_util::sync::CancellationToken;

use crate::harness::{start_plc, wait_until, Daemon, Mosquitto, ScannerAt, Setup};

const PREFIX: &str = "bondline/test-gw";

/// A weighing scanner station the daemon connects to.
struct Station {
    listener: tokio::net::TcpListener,
    stream: Option<tokio::net::TcpStream>,
}

impl Station {
    async fn bind() -> Station {
        Station {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            stream: None,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    async fn scan(&mut self, waybill: &str, grams: u32) {
        use tokio::io::AsyncWriteExt;
        if self.stream.is_none() {
            let (s, _) = tokio::time::timeout(Duration::from_secs(20), self.listener.accept())
                .await
                .expect("the daemon connects to the scanner")
                .unwrap();
            self.stream = Some(s);
        }
        let framing = crate::harness::dws_framing();
        let frame = framing.encode(&framing.read_payload(waybill, Some(grams)));
        self.stream
            .as_mut()
            .unwrap()
            .write_all(&frame)
            .await
            .unwrap();
    }
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// Publishes a bad instruction until the daemon reports its rejection: the daemon is then
/// subscribed and has handled every platform message published before (it takes them in
/// order).
async fn sync_with_daemon(platform: &PlatformSim) {
    let rejections = || {
        platform
            .events()
            .iter()
            .filter(|e| e.kind == EventKind::RejectedMessage)
            .count()
    };
    let before = rejections();
    for _ in 0..40 {
        platform
            .publish_raw("instructions", b"sentinel".to_vec())
            .await
            .unwrap();
        if wait_until(Duration::from_millis(500), || rejections() > before).await {
            return;
        }
    }
    panic!("the daemon never answered the platform");
}

/// Declares `waybill` (1000 g) and releases it, then waits until the daemon has applied both.
async fn declare_and_release(platform: &PlatformSim, waybill: &str) {
    sync_with_daemon(platform).await;
    platform
        .publish_raw(
            "declarations",
            json(serde_json::json!({
                "schema": 1, "waybill": waybill, "enterprise": "E-GOOD", "consumer": "c-1",
                "identity_verified": true, "value_minor": 10_000, "currency": "CNY",
                "gross_weight_g": 1000, "items": [{"description": "tea", "quantity": 2}]
            })),
        )
        .await
        .unwrap();
    platform
        .publish_raw(
            "instructions",
            json(serde_json::json!({
                "schema": 1, "instruction_id": format!("I-{waybill}"), "waybill": waybill,
                "action": "release", "reason": "cleared"
            })),
        )
        .await
        .unwrap();
    sync_with_daemon(platform).await;
}

/// The last record of each parcel of `waybill`, by line and parcel.
fn parcels_of(platform: &PlatformSim, waybill: &str) -> BTreeMap<(String, u32), ParcelRecord> {
    let mut out = BTreeMap::new();
    for r in platform.records() {
        if r.waybill.as_deref() == Some(waybill) {
            out.insert((r.line.clone(), r.parcel), r);
        }
    }
    out
}

fn duplicate_alerts(platform: &PlatformSim) -> Vec<AlertRecord> {
    platform
        .all_records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Alert(a) if a.alert == AlertKind::DuplicateLabel => Some(a),
            _ => None,
        })
        .collect()
}

/// Waits until `waybill` has `n` parcels recorded and returns them.
async fn wait_parcels(
    platform: &PlatformSim,
    waybill: &str,
    n: usize,
) -> BTreeMap<(String, u32), ParcelRecord> {
    assert!(
        wait_until(Duration::from_secs(30), || parcels_of(platform, waybill)
            .len()
            >= n)
        .await,
        "{waybill}: {:?}",
        parcels_of(platform, waybill)
    );
    parcels_of(platform, waybill)
}

/// A second line (scanner, PLC, lanes) added to a one-line configuration.
fn second_line(scanner: SocketAddr, plc: SocketAddr) -> String {
    format!(
        r#"
[devices.scanner-2]
profile = "dws-stx-etx"
tcp = "{scanner}"
[devices.plc-2]
profile = "sorter-plc"
tcp = "{plc}"
[[lines]]
id = "L2"
scanner = "scanner-2"
plc = "plc-2"
lanes = [
  {{ lane = 1, role = "release" }},
  {{ lane = 2, role = "inspection" }},
  {{ lane = 3, role = "hold" }},
  {{ lane = 4, role = "exception" }},
]
"#
    )
}

/// The test line's set-up with a dimensioning scanner (`dws-stx-etx`) at `scanner`.
fn dws_setup(dir: &std::path::Path, mqtt_port: u16, scanner: SocketAddr, plc: SocketAddr) -> Setup {
    Setup::new(dir, mqtt_port, ScannerAt::Tcp(scanner), plc)
        .replace("profile = \"scanner-stx-etx\"", "profile = \"dws-stx-etx\"")
}

/// Three parcels carry one released waybill on two lines: one is released, the others go to
/// inspection with `duplicate_label` anomalies and alerts naming the released parcel. After
/// the daemon is killed and started again, a fourth parcel is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_waybill_admits_one_parcel_across_lines_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let (plc1, plc1_state) = start_plc(&stop).await;
    let (plc2, plc2_state) = start_plc(&stop).await;
    let mut s1 = Station::bind().await;
    let mut s2 = Station::bind().await;
    let setup = dws_setup(dir.path(), mosquitto.port, s1.addr(), plc1)
        .append(&second_line(s2.addr(), plc2));
    let (config, log) = (setup.write(), setup.log());
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-duplicates")
        .await
        .unwrap();
    let daemon = Daemon::start(&config, &log);
    let w = "CLONED0001";
    declare_and_release(&platform, w).await;

    s1.scan(w, 1_000).await;
    let first = wait_parcels(&platform, w, 1).await;
    let (released_key, released) = first.iter().next().unwrap();
    assert_eq!(released.lane_role, LaneRole::Release, "{}", released.reason);
    let released_parcel = released_key.1;
    s2.scan(w, 1_000).await;
    wait_parcels(&platform, w, 2).await;
    s1.scan(w, 1_000).await;
    let all = wait_parcels(&platform, w, 3).await;

    let roles: Vec<_> = all
        .values()
        .map(|r| (r.lane_role, r.rule.clone()))
        .collect();
    assert_eq!(
        all.values()
            .filter(|r| r.lane_role == LaneRole::Release)
            .count(),
        1,
        "{roles:?}"
    );
    for r in all.values().filter(|r| r.parcel != released_parcel) {
        assert_eq!(
            (r.lane_role, r.rule.as_str()),
            (LaneRole::Inspection, "duplicate_label"),
            "{}",
            r.reason
        );
        assert!(
            r.reason
                .contains(&format!("parcel {released_parcel} on line L1")),
            "{}",
            r.reason
        );
    }
    assert!(all.keys().any(|(line, _)| line == "L2"));
    // Anomalies and alerts carry both parcels' evidence.
    assert!(
        wait_until(Duration::from_secs(15), || {
            platform
                .anomalies()
                .iter()
                .filter(|a| {
                    a.waybill.as_deref() == Some(w)
                        && a.rules_fired.first().map(|f| f.rule.as_str()) == Some("duplicate_label")
                })
                .count()
                == 2
                && duplicate_alerts(&platform).len() == 2
        })
        .await,
        "anomalies {:?} alerts {:?}",
        platform.anomalies(),
        duplicate_alerts(&platform)
    );
    for a in duplicate_alerts(&platform) {
        assert_eq!(a.waybill.as_deref(), Some(w));
        assert!(
            a.detail
                .contains(&format!("parcel {released_parcel} on line L1"))
                && a.detail.contains("1000 g")
                && a.detail
                    .contains(&format!("this parcel {}", a.parcel.unwrap())),
            "{}",
            a.detail
        );
    }
    // Only one release command reached a PLC.
    let to_release =
        |s: &bondline_simulators::plc::PlcState| s.diverts().iter().filter(|d| d.lane == 1).count();
    assert_eq!(to_release(&plc1_state) + to_release(&plc2_state), 1);

    // A crash and a start: the waybill is still released.
    daemon.kill();
    s1.stream = None;
    s2.stream = None;
    let _daemon = Daemon::start(&config, &log);
    s2.scan(w, 1_000).await;
    let all = wait_parcels(&platform, w, 4).await;
    assert_eq!(
        all.values()
            .filter(|r| r.lane_role == LaneRole::Release)
            .count(),
        1,
        "{:?}",
        all.values()
            .map(|r| (r.lane_role, r.rule.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(to_release(&plc1_state) + to_release(&plc2_state), 1);
    stop.cancel();
}

/// A parcel the PLC reports in another lane than release (the sorter sent it round again)
/// and that weighs the same is released on its re-scan (the loop here as short as the
/// configuration allows); a further parcel of the same waybill right after, whose first
/// parcel has no disposition yet, is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recirculated_parcel_is_released_again_and_a_clone_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    // No automatic dispositions: the test says where the parcel went.
    let profiles = Profiles::builtin();
    let plc = bondline_simulators::plc::PlcSim::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        profiles
            .get("sorter-plc")
            .and_then(|p| p.plc())
            .unwrap()
            .clone(),
        bondline_simulators::plc::PlcOptions::default(),
    )
    .await
    .unwrap();
    let (plc_addr, plc_state) = (plc.local_addr(), plc.state());
    let stop = CancellationToken::new();
    tokio::spawn(plc.run(stop.clone().cancelled_owned()));
    let mut station = Station::bind().await;
    let setup = dws_setup(dir.path(), mosquitto.port, station.addr(), plc_addr)
        .append("\n[duplicates]\nmin_loop_ms = 1\n");
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-recirculation")
        .await
        .unwrap();
    let _daemon = setup.start();
    let w = "ROUND0001";
    declare_and_release(&platform, w).await;

    station.scan(w, 1_000).await;
    let first = wait_parcels(&platform, w, 1).await;
    let first = first.values().next().unwrap().clone();
    assert_eq!(first.lane_role, LaneRole::Release);
    // The sorter could not divert it and sent it round (no destination, exception lane).
    plc_state.report(first.parcel, DispositionCode::NoDestination, 4);
    assert!(
        wait_until(Duration::from_secs(15), || {
            platform
                .all_records()
                .iter()
                .any(|r| matches!(r, Record::Disposition(d) if d.parcel == first.parcel))
        })
        .await,
        "the daemon records the disposition"
    );
    station.scan(w, 1_020).await;
    let all = wait_parcels(&platform, w, 2).await;
    let again = all
        .values()
        .find(|r| r.parcel != first.parcel)
        .unwrap()
        .clone();
    assert_eq!(
        (again.lane_role, again.rule.as_str()),
        (LaneRole::Release, "instruction"),
        "{}",
        again.reason
    );
    // A clone right behind it: its twin has no disposition yet and cannot have come round.
    station.scan(w, 1_000).await;
    let all = wait_parcels(&platform, w, 3).await;
    let clone = all
        .values()
        .find(|r| r.parcel != first.parcel && r.parcel != again.parcel)
        .unwrap();
    assert_eq!(
        (clone.lane_role, clone.rule.as_str()),
        (LaneRole::Inspection, "duplicate_label"),
        "{}",
        clone.reason
    );
    assert!(duplicate_alerts(&platform)
        .iter()
        .all(|a| a.alert == AlertKind::DuplicateLabel));
    stop.cancel();
}

/// A waybill declared for two pieces admits two released parcels; a third parcel with the same
/// label goes to inspection as a duplicate label. A declaration for more than 999 pieces is
/// refused as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waybill_of_two_pieces_admits_two_releases_and_no_third() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let (plc, _) = start_plc(&stop).await;
    let mut station = Station::bind().await;
    let setup = dws_setup(dir.path(), mosquitto.port, station.addr(), plc);
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-pieces")
        .await
        .unwrap();
    let _daemon = setup.start();
    let w = "PIECES0001";
    let declaration = |pieces: u32| {
        json(serde_json::json!({
            "schema": 1, "waybill": w, "enterprise": "E-GOOD", "consumer": "c-1",
            "identity_verified": true, "value_minor": 10_000, "currency": "CNY",
            "gross_weight_g": 1000, "items": [{"description": "tea", "quantity": 2}],
            "pieces": pieces
        }))
    };
    sync_with_daemon(&platform).await;
    let rejected = || {
        platform
            .events()
            .iter()
            .filter(|e| e.kind == EventKind::RejectedMessage && e.detail.contains("pieces"))
            .count()
    };
    platform
        .publish_raw("declarations", declaration(1_000))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || rejected() > 0).await,
        "1000 pieces refused: {:?}",
        platform.events()
    );
    platform
        .publish_raw("declarations", declaration(2))
        .await
        .unwrap();
    platform
        .publish_raw(
            "instructions",
            json(serde_json::json!({
                "schema": 1, "instruction_id": format!("I-{w}"), "waybill": w,
                "action": "release", "reason": "cleared"
            })),
        )
        .await
        .unwrap();
    sync_with_daemon(&platform).await;

    for n in 1..=2 {
        station.scan(w, 1_000).await;
        let all = wait_parcels(&platform, w, n).await;
        assert!(
            all.values().all(|r| r.lane_role == LaneRole::Release),
            "piece {n}: {all:?}"
        );
        let last = all.values().max_by_key(|r| r.parcel).unwrap();
        assert_eq!(last.inputs.as_ref().unwrap().pieces, Some(2));
    }
    station.scan(w, 1_000).await;
    let all = wait_parcels(&platform, w, 3).await;
    let third = all.values().max_by_key(|r| r.parcel).unwrap();
    assert_eq!(
        (third.lane_role, third.rule.as_str()),
        (LaneRole::Inspection, "duplicate_label"),
        "{}",
        third.reason
    );
    assert!(
        wait_until(Duration::from_secs(10), || !duplicate_alerts(&platform)
            .is_empty())
        .await,
        "a duplicate-label alert"
    );
    stop.cancel();
}
