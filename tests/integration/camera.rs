//! Video evidence on a running line: camera-sim cameras at the scan point (digest login) and
//! over the inspection lane (basic login) photograph parcels scanned at 10 a second, and
//! each snapshot reaches the platform whole with the parcel it shows; cameras that refuse
//! connections, answer with an error, hang or send garbage give `no evidence` records and a
//! down health link while every parcel is still decided and diverted in time.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bondline::app::App;
use bondline::config::Config;
use bondline::metrics::Metrics;
use bondline_devices::contract::{AlertKind, CameraPoint, DivertStatus, LaneRole, Record};
use bondline_simulators::camera::{waybill_of, CameraFault, CameraSim, SimAuth};
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use bondline_simulators::scanner::ScannerSim;
use tokio_util::sync::CancellationToken;

use crate::harness::stx_etx;
use crate::harness::{config_text_with, wait_until, LineDevices, Mosquitto, ScannerAt};

const PREFIX: &str = "bondline/test-gw";
/// Belt speed is the default 2 m/s: 0.4 m is 200 ms after the scan, 4 m is 2 s.
const SCAN_DISTANCE_M: f64 = 0.4;
const LANE_DISTANCE_M: f64 = 4.0;
/// Parcels a second written by the test scanner.
const RATE: u64 = 10;

async fn start_camera(sim: &CameraSim, stop: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sim.clone().serve(listener, stop.clone().cancelled_owned()));
    addr
}

fn camera_toml(name: &str, addr: SocketAddr, at: &str, distance_m: f64, extra: &str) -> String {
    format!(
        "[cameras.{name}]\nurl = \"http://{addr}/snapshot.jpg\"\nline = \"L1\"\n{at}\ndistance_m = {distance_m}\n{extra}\n"
    )
}

fn password_file(dir: &Path, name: &str, password: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p.display().to_string()
}

/// Writes one scan frame per parcel at [`RATE`] a second; `passing(waybill, scanned)` is
/// called just before each one is written (so no later than the gateway's scan time), for
/// the test's cameras to see it go by.
async fn scan(
    stream: &mut tokio::net::TcpStream,
    plan: &Plan,
    count: u64,
    mut passing: impl FnMut(&str, Instant),
) {
    let framing = stx_etx();
    let start = Instant::now();
    for (i, p) in plan.parcels(0..count).enumerate() {
        let at = start + Duration::from_millis(i as u64 * 1000 / RATE);
        tokio::time::sleep_until(at.into()).await;
        passing(&p.waybill, Instant::now());
        ScannerSim {
            framing: framing.clone(),
            plan: plan.clone(),
            rate_per_s: 1000.0,
            count: Some(1),
            start_index: i as u64,
        }
        .write_to(stream, std::future::pending())
        .await
        .unwrap();
    }
}

struct Line {
    _mosquitto: Mosquitto,
    platform: PlatformSim,
    app: App,
    stream: tokio::net::TcpStream,
    plc_state: bondline_simulators::plc::PlcState,
}

async fn line(dir: &Path, cameras: &str, stop: &CancellationToken) -> Line {
    let mosquitto = Mosquitto::start(dir).await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-camera")
        .await
        .unwrap();
    let (plc, plc_state) = crate::harness::start_plc(stop).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scanner = listener.local_addr().unwrap();
    let text = format!(
        "{}{cameras}",
        config_text_with(
            &dir.join("journal"),
            mosquitto.port,
            PREFIX,
            &LineDevices {
                scanner: ScannerAt::Tcp(scanner),
                plc,
            },
            "",
        )
    );
    let app = App::start(Config::parse("camera.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    // The platform publishes only once the gateway has subscribed: a message sent before
    // reaches nobody.
    assert!(
        wait_until(Duration::from_secs(30), || app
            .metrics
            .uplink_ready
            .load(std::sync::atomic::Ordering::Relaxed))
        .await,
        "the gateway never subscribed at the broker"
    );
    let (stream, _) = listener.accept().await.unwrap();
    Line {
        _mosquitto: mosquitto,
        platform,
        app,
        stream,
        plc_state,
    }
}

/// Every parcel of the plan was decided once, and acknowledged by the PLC before its
/// deadline; no late divert was alerted.
async fn assert_every_parcel_decided_in_time(platform: &PlatformSim, plan: &Plan, count: u64) {
    let all_there = || {
        let records = platform.records();
        plan.parcels(0..count).all(|p| {
            records
                .iter()
                .any(|r| r.waybill.as_deref() == Some(p.waybill.as_str()))
        })
    };
    assert!(wait_until(Duration::from_secs(10), all_there).await);
    let records = platform.records();
    for p in plan.parcels(0..count) {
        let r = records
            .iter()
            .filter(|r| r.waybill.as_deref() == Some(p.waybill.as_str()))
            .max_by_key(|r| r.revision)
            .unwrap_or_else(|| panic!("no record for {}", p.waybill));
        assert_eq!(r.divert.status, DivertStatus::Acked, "{r:?}");
        assert!(!r.divert.late, "{r:?}");
    }
    let late = platform
        .all_records()
        .into_iter()
        .filter(|r| matches!(r, Record::Alert(a) if a.alert == AlertKind::LateDivert))
        .count();
    assert_eq!(late, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_at_the_scanner_and_the_inspection_lane_show_their_own_parcel() {
    crate::harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let scan_cam = CameraSim::new(SimAuth::Digest {
        username: "viewer".into(),
        password: "digest-pw".into(),
    });
    let lane_cam = CameraSim::new(SimAuth::Basic {
        username: "viewer".into(),
        password: "basic-pw".into(),
    });
    let scan_addr = start_camera(&scan_cam, &stop).await;
    let lane_addr = start_camera(&lane_cam, &stop).await;
    let digest = password_file(dir.path(), "digest.pw", "digest-pw");
    let basic = password_file(dir.path(), "basic.pw", "basic-pw");
    let cameras = camera_toml(
        "entry",
        scan_addr,
        "point = \"scan\"",
        SCAN_DISTANCE_M,
        &format!(
            "auth = {{ scheme = \"digest\", username = \"viewer\", password_file = \"{digest}\" }}"
        ),
    ) + &camera_toml(
        "inspection",
        lane_addr,
        "lanes = [2]",
        LANE_DISTANCE_M,
        &format!(
            "auth = {{ scheme = \"basic\", username = \"viewer\", password_file = \"{basic}\" }}"
        ),
    );
    let mut l = line(dir.path(), &cameras, &stop).await;
    let plan = Plan::with_mix(
        77,
        Mix {
            release: 2,
            inspect: 1,
            ..Mix::only(PlanKind::Release)
        },
    );
    let count = 40;
    l.platform.publish_plan(&plan, 0..count).await.unwrap();
    // The declarations and instructions reach the gateway before the parcels do: a parcel
    // scanned first would be held and re-decided, however loaded the machine.
    let m = l.app.metrics.clone();
    assert!(
        wait_until(Duration::from_secs(30), || Metrics::get(
            &m.platform_messages
        ) >= 2 * count)
        .await
    );
    let inspected: Vec<String> = plan
        .parcels(0..count)
        .filter(|p| p.kind == PlanKind::Inspect)
        .map(|p| p.waybill)
        .collect();
    assert!(!inspected.is_empty());
    let scan_offset = Duration::from_secs_f64(SCAN_DISTANCE_M / 2.0);
    let lane_offset = Duration::from_secs_f64(LANE_DISTANCE_M / 2.0);
    scan(&mut l.stream, &plan, count, |w, at| {
        scan_cam.enter(Some(w.to_string()), at + scan_offset);
        if inspected.iter().any(|i| i == w) {
            lane_cam.enter(Some(w.to_string()), at + lane_offset);
        }
    })
    .await;

    let expected = count as usize + inspected.len();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = l.platform.snapshots();
            s.len() >= expected && s.iter().all(|s| s.hash_ok)
        })
        .await,
        "{} snapshots of {expected}; not whole or with an error: {:?}; {}",
        l.platform.snapshots().len(),
        l.platform
            .snapshots()
            .iter()
            .filter(|s| !s.hash_ok || s.record.error.is_some())
            .map(|s| (
                s.record.waybill.clone(),
                s.record.camera.clone(),
                s.record.error.clone(),
                s.hash_ok
            ))
            .collect::<Vec<_>>(),
        m.summary()
    );
    let snapshots = l.platform.snapshots();
    assert_eq!(snapshots.len(), expected);
    // How long after the parcel was due in the field its picture arrived (logged, not
    // asserted: it depends on the machine).
    let mut lag: Vec<u64> = snapshots
        .iter()
        .filter_map(|s| Some(s.record.taken_at_ms?.saturating_sub(s.record.due_at_ms)))
        .collect();
    lag.sort_unstable();
    eprintln!(
        "snapshot arrival after due: median {} ms, max {} ms over {}; decision p99 {} us, max {} us",
        lag[lag.len() / 2],
        lag[lag.len() - 1],
        lag.len(),
        m.decision_latency.quantile_us(0.99),
        m.decision_latency.max_us()
    );
    for p in plan.parcels(0..count) {
        let at_scan: Vec<_> = snapshots
            .iter()
            .filter(|s| {
                s.record.point == CameraPoint::Scan
                    && s.record.waybill.as_deref() == Some(p.waybill.as_str())
            })
            .collect();
        assert_eq!(at_scan.len(), 1, "{}", p.waybill);
        let s = at_scan[0];
        assert_eq!(s.record.camera, "entry");
        assert_eq!(s.record.error, None);
        // The picture is of this parcel: the camera stamped it with the waybill under it.
        let jpeg = s.original.as_ref().unwrap();
        assert_eq!(waybill_of(jpeg).as_deref(), Some(p.waybill.as_str()));
        assert!(s.record.thumbnail_jpeg_b64.is_some());
        assert_eq!((s.record.width, s.record.height), (Some(320), Some(120)));
        let at_lane: Vec<_> = snapshots
            .iter()
            .filter(|s| {
                s.record.point == CameraPoint::Lane
                    && s.record.waybill.as_deref() == Some(p.waybill.as_str())
            })
            .collect();
        if p.kind == PlanKind::Inspect {
            assert_eq!(at_lane.len(), 1, "{}", p.waybill);
            let s = at_lane[0];
            assert_eq!(
                (s.record.camera.as_str(), s.record.lane),
                ("inspection", Some(2))
            );
            let jpeg = s.original.as_ref().unwrap();
            assert_eq!(waybill_of(jpeg).as_deref(), Some(p.waybill.as_str()));
        } else {
            assert!(at_lane.is_empty(), "{}: {:?}", p.waybill, at_lane[0].record);
        }
    }
    let records = l.platform.records();
    for w in &inspected {
        assert!(records
            .iter()
            .any(|r| r.waybill.as_deref() == Some(w) && r.lane_role == LaneRole::Inspection));
    }
    assert_every_parcel_decided_in_time(&l.platform, &plan, count).await;
    assert_eq!(Metrics::get(&m.snapshots_taken), expected as u64);
    assert_eq!(Metrics::get(&m.snapshots_failed), 0);
    let links = m.links();
    assert!(
        links["camera:entry"].up && links["camera:inspection"].up,
        "{links:?}"
    );
    assert!(l.plc_state.divert_count() >= count as usize);
    stop.cancel();
    l.app.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_down_failing_hanging_or_sending_garbage_leave_no_evidence_and_the_line_running() {
    crate::harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // Nothing listens here: the connection is refused.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let failing = CameraSim::new(SimAuth::Open);
    failing.set_fault(CameraFault::Fail(503));
    let hanging = CameraSim::new(SimAuth::Open);
    hanging.set_fault(CameraFault::Hang);
    let garbage = CameraSim::new(SimAuth::Open);
    garbage.set_fault(CameraFault::Garbage);
    let cameras = camera_toml("refused", refused, "point = \"scan\"", 0.4, "")
        + &camera_toml(
            "failing",
            start_camera(&failing, &stop).await,
            "point = \"scan\"",
            0.4,
            "",
        )
        + &camera_toml(
            "hanging",
            start_camera(&hanging, &stop).await,
            "point = \"scan\"",
            0.4,
            "timeout_ms = 300",
        )
        + &camera_toml(
            "garbage",
            start_camera(&garbage, &stop).await,
            "point = \"scan\"",
            0.4,
            "",
        );
    let mut l = line(dir.path(), &cameras, &stop).await;
    let plan = Plan::with_mix(78, Mix::only(PlanKind::Release));
    let count = 30;
    let m = l.app.metrics.clone();
    l.platform.publish_plan(&plan, 0..count).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || Metrics::get(
            &m.platform_messages
        ) >= 2 * count)
        .await
    );
    scan(&mut l.stream, &plan, count, |_, _| {}).await;

    let expected = 4 * count as usize;
    assert!(
        wait_until(Duration::from_secs(30), || l.platform.snapshots().len()
            >= expected)
        .await,
        "{} snapshot records",
        l.platform.snapshots().len()
    );
    let snapshots = l.platform.snapshots();
    assert_eq!(snapshots.len(), expected);
    for p in plan.parcels(0..count) {
        for camera in ["refused", "failing", "hanging", "garbage"] {
            let s: Vec<_> = snapshots
                .iter()
                .filter(|s| {
                    s.record.camera == camera
                        && s.record.waybill.as_deref() == Some(p.waybill.as_str())
                })
                .collect();
            assert_eq!(s.len(), 1, "{camera} {}", p.waybill);
            let r = &s[0].record;
            assert_eq!((r.sha256.as_ref(), r.chunks), (None, 0), "{r:?}");
            let e = r.error.as_deref().unwrap_or("");
            assert!(e.starts_with("no evidence: "), "{r:?}");
            let why = match camera {
                "refused" => "camera unreachable",
                "failing" => "camera answered HTTP 503",
                "hanging" => "",
                _ => "camera sent no usable JPEG",
            };
            assert!(e.contains(why), "{camera}: {e}");
        }
    }
    // A hanging camera costs its timeout per snapshot, four at once; what it cannot reach
    // in time is said so, never fetched late for the wrong parcel.
    assert!(snapshots.iter().any(|s| s.record.camera == "hanging"
        && s.record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer within 300ms"))));
    let links = m.links();
    for camera in ["refused", "failing", "hanging", "garbage"] {
        let link = &links[&format!("camera:{camera}")];
        assert!(!link.up, "{camera}: {link:?}");
        assert!(link.last_error.is_some());
    }
    assert_eq!(Metrics::get(&m.snapshots_failed), expected as u64);
    assert_eq!(Metrics::get(&m.snapshots_taken), 0);
    eprintln!(
        "with four failing cameras: decision p99 {} us, max {} us over {} parcels",
        m.decision_latency.quantile_us(0.99),
        m.decision_latency.max_us(),
        m.decision_latency.count()
    );
    assert_every_parcel_decided_in_time(&l.platform, &plan, count).await;
    assert_eq!(Metrics::get(&m.released_without_decision), 0);

    // The camera comes back: the next parcel's snapshot is taken and the link is up again.
    garbage.set_fault(CameraFault::Normal);
    let next = Plan::with_mix(79, Mix::only(PlanKind::Release));
    let before = Metrics::get(&m.platform_messages);
    l.platform.publish_plan(&next, 0..1).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || Metrics::get(
            &m.platform_messages
        ) >= before + 2)
        .await
    );
    scan(&mut l.stream, &next, 1, |w, at| {
        garbage.enter(Some(w.to_string()), at + Duration::from_millis(200))
    })
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || m
            .links()
            .get("camera:garbage")
            .is_some_and(|l| l.up))
        .await
    );
    assert_eq!(Metrics::get(&m.snapshots_taken), 1);
    stop.cancel();
    l.app.wait().await.unwrap();
}

/// HTTPS snapshots: the camera's certificate must chain to the configured CA; with it the
/// frame arrives behind basic credentials, with another CA the TLS failure is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_over_https_trust_only_the_configured_ca() {
    use bondline::camera::fetch::{fetch, FetchError, Target};
    use bondline::camera::Auth;
    let dir = tempfile::tempdir().unwrap();
    let trusted = crate::tls::ca("camera CA");
    let rogue = crate::tls::ca("someone else");
    crate::tls::issue(&trusted, dir.path(), "camera", true);
    std::fs::write(dir.path().join("ca.pem"), trusted.cert.pem()).unwrap();
    std::fs::write(dir.path().join("rogue.pem"), rogue.cert.pem()).unwrap();
    let sim = CameraSim::new(SimAuth::Basic {
        username: "viewer".into(),
        password: "pw".into(),
    });
    sim.set_current(Some("BL-TLS-1".into()));
    let tls = bondline::view::tls::ViewTls::load(
        dir.path().join("camera.pem"),
        dir.path().join("camera.key"),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(bondline::view::tls::serve(
        listener,
        sim.router(),
        tls,
        stop.clone(),
    ));
    let target = |ca: &str| Target {
        url: format!("https://{addr}/snapshot.jpg").parse().unwrap(),
        auth: Auth::Basic {
            username: "viewer".into(),
            password: "pw".into(),
        },
        tls: Some(
            bondline::tls::TlsFiles {
                ca_file: dir.path().join(ca),
                client: None,
            }
            .client_config()
            .unwrap(),
        ),
        timeout: Duration::from_secs(5),
    };
    let jpeg = fetch(&target("ca.pem")).await.unwrap();
    assert_eq!(waybill_of(&jpeg).as_deref(), Some("BL-TLS-1"));
    match fetch(&target("rogue.pem")).await {
        Err(FetchError::Tls(e)) => assert!(e.to_string().contains("certificate"), "{e}"),
        other => panic!("expected a TLS failure, got {:?}", other.map(|b| b.len())),
    }
    // Wrong credentials are the camera refusing: its status, not a link failure.
    let mut wrong = target("ca.pem");
    wrong.auth = Auth::Basic {
        username: "viewer".into(),
        password: "nope".into(),
    };
    assert!(matches!(fetch(&wrong).await, Err(FetchError::Status(401))));
    stop.cancel();
}

/// line-sim's camera hook: over a belt of random parcel lengths and gaps, the camera
/// `distance_m` past the scanner shows each parcel as it passes, and every snapshot the
/// daemon takes there is of the parcel its record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_sim_parcels_are_photographed_as_they_pass_its_camera() {
    use crate::scenarios::{bind, lines_config_text, scenario, ONE_AT_A_TIME};
    crate::harness::init_logs();
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let camera = CameraSim::new(SimAuth::Open);
    let camera_addr = start_camera(&camera, &stop).await;
    // 600 s of normal shift shortened to about 8 s of belt.
    let sim = bind(scenario("normal-shift", 75.0))
        .await
        .with_camera(camera.clone(), 0.5);
    let text = lines_config_text(&dir.path().join("journal"), mosquitto.port, &[&sim])
        + &camera_toml("entry", camera_addr, "point = \"scan\"", 0.5, "");
    let app = App::start(Config::parse("line-sim.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    let m = app.metrics.clone();
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "line-sim-camera")
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || m
            .uplink_ready
            .load(std::sync::atomic::Ordering::Relaxed))
        .await
    );
    let ledger = sim
        .run(Some(&platform), std::future::pending())
        .await
        .unwrap();
    assert_eq!(ledger.leaks, 0, "{ledger}");
    let parcels = Metrics::get(&m.parcels);
    assert!(
        wait_until(Duration::from_secs(20), || {
            platform.snapshots().len() as u64 >= parcels
                && platform.snapshots().iter().all(|s| s.hash_ok)
        })
        .await,
        "{} snapshots of {parcels} parcels",
        platform.snapshots().len()
    );
    let snapshots = platform.snapshots();
    let mut named = 0;
    for s in &snapshots {
        let Some(w) = &s.record.waybill else {
            continue; // a no-read: the camera knows the parcel, the record does not
        };
        let shown = waybill_of(s.original.as_ref().unwrap());
        assert_eq!(shown.as_deref(), Some(w.as_str()), "{:?}", s.record);
        named += 1;
    }
    assert!(named >= 20, "{named} snapshots with a waybill");
    eprintln!(
        "line-sim: {parcels} parcels, {} snapshots, {named} checked against the picture",
        snapshots.len()
    );
    stop.cancel();
    app.wait().await.unwrap();
}
