//! The X-ray scanner on a real line: verdicts read over Modbus RTU on a pty pair and over TCP
//! from xray-sim, joined to parcels, steering the lanes; images from the spool joined by scan
//! id, before or after their verdict, forwarded whole to the platform; a device answering
//! with exceptions or garbage, a silent device on a shared bus, a corrupt image.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bondline::app::App;
use bondline::config::{Config, Parity, SerialSettings, Transport, XrayDevice};
use bondline::floor::XrayMsg;
use bondline::metrics::{unix_ms, Metrics};
use bondline_devices::contract::{AlertKind, LaneRole, Record, XrayJoin};
use bondline_devices::xray::{Material, XrayResult};
use bondline_devices::Profiles;
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use bondline_simulators::scanner::ScannerSim;
use bondline_simulators::xray::{ImageSpec, XrayFault, XrayImages, XraySim, XrayState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::harness::stx_etx;
use crate::harness::{config_text_with, wait_until, LineDevices, Mosquitto, PtyPair, ScannerAt};

const PREFIX: &str = "bondline/test-gw";

fn xray_map() -> bondline_devices::xray::XrayMap {
    Profiles::builtin()
        .get("xray-modbus")
        .unwrap()
        .xray()
        .unwrap()
        .clone()
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Waits for the next verdict (skipping nothing) on `rx`.
async fn next_msg(rx: &mut mpsc::UnboundedReceiver<XrayMsg>) -> XrayMsg {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message from the X-ray reader within 10 s")
        .expect("the reader is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_cross_a_shared_rs485_port_and_faulty_or_silent_scanners_do_not_stall_it() {
    crate::harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path(), "rs485").await;
    let state = XrayState::new(xray_map(), &[1, 2]).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(bondline_simulators::xray::serve_rtu(
        pty.b.to_str().unwrap(),
        19200,
        state.clone(),
        stop.clone().cancelled_owned(),
    ));
    // Unit 2 shares the port and says nothing at all.
    state.set_fault(2, XrayFault::Silent).unwrap();
    let serial = SerialSettings {
        path: pty.a.display().to_string(),
        baud: 19200,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
        bus_delay: Duration::from_millis(5),
    };
    let device = |name: &str, unit: u8| {
        let mut map = xray_map();
        map.unit_id = unit;
        XrayDevice {
            name: name.to_string(),
            transport: Transport::Serial(serial.clone()),
            map,
            spool: None,
        }
    };
    let metrics = Arc::new(Metrics::default());
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    for task in bondline::fieldbus::xray::tasks(
        vec![(device("xray-1", 1), tx1), (device("xray-2", 2), tx2)],
        metrics.clone(),
        stop.clone(),
    ) {
        tokio::spawn(task);
    }
    let link = |name: &str| metrics.links().get(name).cloned();
    assert!(
        wait_until(Duration::from_secs(10), || link("xray:xray-1")
            .is_some_and(|l| l.up)
            && link("xray:xray-2").is_some_and(|l| !l.up))
        .await,
        "links: {:?}",
        metrics.links()
    );
    assert!(link("xray:xray-2")
        .unwrap()
        .last_error
        .unwrap()
        .contains("no answer"));

    // Twenty verdicts on unit 1 arrive in order while unit 2 stays silent on the same wire.
    let t0 = now_ms();
    for i in 0..20u32 {
        let result = if i % 3 == 0 {
            XrayResult::Suspect
        } else {
            XrayResult::Clear
        };
        state
            .pass(
                1,
                1000 + i,
                t0 + i as u64 * 10,
                result,
                Some(Material::Organic),
            )
            .unwrap();
        // Fixed: the verdicts' pace through the machine, the stream being tested; waiting
        // for each verdict before the next would test one at a time.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for i in 0..20u32 {
        match next_msg(&mut rx1).await {
            XrayMsg::Verdict { device, event } => {
                assert_eq!(device, "xray-1");
                assert_eq!(event.scan_id, 1000 + i);
                assert_eq!(event.entered_at_ms, t0 + i as u64 * 10);
                assert_eq!(event.material, Some(Material::Organic));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Exceptions: the scanner answers, so its link stays up with the refusal as last error.
    state
        .set_fault(
            1,
            XrayFault::Exception(tokio_modbus::ExceptionCode::ServerDeviceFailure),
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || link("xray:xray-1").is_some_and(
            |l| l.up
                && l.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("refused"))
        ))
        .await,
        "{:?}",
        link("xray:xray-1")
    );
    // Garbage entries are reported as lost verdicts, and reading goes on.
    state.set_fault(1, XrayFault::Garbage).unwrap();
    state
        .pass(1, 2000, now_ms(), XrayResult::Clear, None)
        .unwrap();
    match next_msg(&mut rx1).await {
        XrayMsg::Lost { detail, .. } => assert!(detail.contains("undecodable"), "{detail}"),
        other => panic!("expected a lost verdict, got {other:?}"),
    }
    state.set_fault(1, XrayFault::Normal).unwrap();
    state
        .pass(1, 2001, now_ms(), XrayResult::OperatorMark, None)
        .unwrap();
    match next_msg(&mut rx1).await {
        XrayMsg::Verdict { event, .. } => {
            assert_eq!(event.scan_id, 2001);
            assert_eq!(event.result, XrayResult::OperatorMark);
        }
        other => panic!("unexpected {other:?}"),
    }

    // The silent scanner comes back and is read again.
    state.set_fault(2, XrayFault::Normal).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || link("xray:xray-2")
            .is_some_and(|l| l.up))
        .await,
        "unit 2 never came back"
    );
    state
        .pass(2, 77, now_ms(), XrayResult::Suspect, Some(Material::Metal))
        .unwrap();
    match next_msg(&mut rx2).await {
        XrayMsg::Verdict { device, event } => {
            assert_eq!(device, "xray-2");
            assert_eq!(event.scan_id, 77);
        }
        other => panic!("unexpected {other:?}"),
    }
    stop.cancel();
}

/// One parcel of the line test: what the X-ray does for it and where it must go.
struct Case {
    verdict: Option<XrayResult>,
    /// An officer's mark this long after the scan.
    mark_after: Option<Duration>,
    images_first: bool,
    lane: LaneRole,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xray_verdicts_and_images_join_parcels_and_steer_the_lanes() {
    crate::harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-xray")
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let (plc, plc_state) = crate::harness::start_plc(&stop).await;
    let state = XrayState::new(xray_map(), &[1]).unwrap();
    let sim = XraySim::bind("127.0.0.1:0".parse().unwrap(), state.clone())
        .await
        .unwrap();
    let xray_addr = sim.local_addr();
    tokio::spawn(sim.run(stop.clone().cancelled_owned()));
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let images = XrayImages::new(&spool, ImageSpec::default()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scanner = listener.local_addr().unwrap();
    let text = config_text_with(
        &dir.path().join("journal"),
        mosquitto.port,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(scanner),
            plc,
        },
        "",
    )
    .replace(
        "[[lines]]",
        &format!(
            "[devices.xray-1]\nprofile = \"xray-modbus\"\ntcp = \"{xray_addr}\"\nspool = \"{}\"\n[[lines]]\nxray = \"xray-1\"\ngeometry = {{ scan_to_gate_m = 8.0 }}",
            spool.display()
        ),
    );
    let app = App::start(Config::parse("xray.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    let m = app.metrics.clone();
    // The platform publishes only once the gateway has subscribed: a message sent before
    // reaches nobody.
    assert!(
        wait_until(Duration::from_secs(30), || m
            .links()
            .get("xray:xray-1")
            .is_some_and(|l| l.up)
            && m.uplink_ready.load(std::sync::atomic::Ordering::Relaxed))
        .await
    );

    // A long belt (8 m at 2 m/s: the divert deadline 3.7 s after the scan) leaves a loaded
    // test machine ample time for verdicts and marks meant to come before it; the late mark
    // comes well after it. Every parcel is declared and released by customs: only the X-ray
    // decides.
    let plan = Plan::with_mix(61, Mix::only(PlanKind::Release));
    let cases = [
        Case {
            verdict: Some(XrayResult::Clear),
            mark_after: None,
            images_first: true,
            lane: LaneRole::Release,
        },
        Case {
            verdict: Some(XrayResult::Suspect),
            mark_after: None,
            images_first: false,
            lane: LaneRole::Inspection,
        },
        Case {
            verdict: None,
            mark_after: None,
            images_first: false,
            lane: LaneRole::Inspection,
        },
        Case {
            verdict: Some(XrayResult::Clear),
            mark_after: Some(Duration::from_millis(500)),
            images_first: false,
            lane: LaneRole::Inspection,
        },
        Case {
            verdict: Some(XrayResult::Clear),
            mark_after: Some(Duration::from_millis(6000)),
            images_first: false,
            lane: LaneRole::Release,
        },
    ];
    platform
        .publish_plan(&plan, 0..cases.len() as u64)
        .await
        .unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    let framing = stx_etx();
    let offset_ms = 250; // the default 0.5 m from scanner to tunnel at 2 m/s
    for (i, case) in cases.iter().enumerate() {
        let scan_id = 500 + i as u32;
        if case.images_first && case.verdict.is_some() {
            images.write(scan_id, false).unwrap();
        }
        ScannerSim {
            framing: framing.clone(),
            plan: plan.clone(),
            rate_per_s: 1000.0,
            count: Some(1),
            start_index: i as u64,
        }
        .write_to(&mut stream, std::future::pending())
        .await
        .unwrap();
        let scanned = now_ms();
        if let Some(result) = case.verdict {
            state
                .pass(
                    1,
                    scan_id,
                    scanned + offset_ms,
                    result,
                    Some(Material::Mixed),
                )
                .unwrap();
            if !case.images_first {
                images.write(scan_id, result.flags()).unwrap();
            }
        }
        if let Some(after) = case.mark_after {
            let state = state.clone();
            tokio::spawn(async move {
                // Fixed: when the operator marks the scan is the case under test.
                tokio::time::sleep(after).await;
                state.mark(1, scan_id, XrayResult::OperatorMark).unwrap();
            });
        }
        // Fixed: the belt's spacing between two parcels.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A corrupt extra view of the first scan, and a flagged item no parcel carried.
    images.write_corrupt(500, "front").unwrap();
    state
        .pass(
            1,
            900,
            now_ms() + 60_000,
            XrayResult::Suspect,
            Some(Material::Dense),
        )
        .unwrap();

    // Where each parcel went, by its latest decision.
    let waybills: Vec<String> = plan
        .parcels(0..cases.len() as u64)
        .map(|p| p.waybill)
        .collect();
    let final_role = |w: &str| {
        platform
            .records()
            .into_iter()
            .filter(|r| r.waybill.as_deref() == Some(w))
            .max_by_key(|r| r.revision)
            .map(|r| r.lane_role)
    };
    assert!(
        wait_until(Duration::from_secs(20), || cases
            .iter()
            .zip(&waybills)
            .all(|(c, w)| final_role(w) == Some(c.lane)))
        .await,
        "lanes: {:?}",
        waybills.iter().map(|w| final_role(w)).collect::<Vec<_>>()
    );
    // The PLC physically released exactly the parcels with a clear, timely verdict.
    let xrays = || -> Vec<bondline_devices::contract::XrayRecord> {
        platform
            .all_records()
            .into_iter()
            .filter_map(|r| match r {
                Record::Xray(x) => Some(x),
                _ => None,
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            let x = xrays();
            x.iter()
                .any(|x| x.join == XrayJoin::NoResult && x.waybill.as_deref() == Some(&waybills[2]))
                && x.iter()
                    .any(|x| x.join == XrayJoin::NoParcel && x.scan_id == Some(900))
                && x.iter().filter(|x| x.join == XrayJoin::Update).count() == 2
        })
        .await,
        "{:#?}",
        xrays()
    );
    for (i, w) in waybills.iter().enumerate() {
        if cases[i].verdict.is_some() {
            assert!(
                xrays().iter().any(|x| x.join == XrayJoin::Matched
                    && x.scan_id == Some(500 + i as u32)
                    && x.waybill.as_deref() == Some(w.as_str())),
                "scan {} not joined to {w}",
                500 + i
            );
        }
    }
    let alerts = |kind: AlertKind| {
        platform
            .all_records()
            .into_iter()
            .filter(|r| matches!(r, Record::Alert(a) if a.alert == kind))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || alerts(AlertKind::LateXrayMark)
            == 1
            && alerts(AlertKind::XrayWithoutParcel) == 1)
        .await
    );
    assert!(platform
        .anomalies()
        .iter()
        .any(|a| a.waybill.as_deref() == Some(&waybills[1])));
    assert_eq!(Metrics::get(&m.released_without_decision), 0);
    assert!(plc_state.divert_count() >= cases.len());

    // Images: both views of every verdict's scan, before or after it, joined and forwarded
    // whole; the corrupt view stored and forwarded with its error.
    let expected_images = cases.iter().filter(|c| c.verdict.is_some()).count() * 2 + 1;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got = platform.images();
            got.len() == expected_images && got.iter().all(|i| i.hash_ok)
        })
        .await,
        "images: {:?}",
        platform
            .images()
            .iter()
            .map(|i| (
                i.record.scan_id,
                i.record.view.clone(),
                i.hash_ok,
                i.record.error.clone()
            ))
            .collect::<Vec<_>>()
    );
    for image in platform.images() {
        let i = &image.record;
        let case = (i.scan_id - 500) as usize;
        assert_eq!(i.waybill.as_deref(), Some(waybills[case].as_str()), "{i:?}");
        if i.view == "front" {
            assert!(i.error.is_some(), "the corrupt view has an error");
            assert!(i.thumbnail_jpeg_b64.is_none());
        } else {
            assert!(i.error.is_none(), "{:?}", i.error);
            assert_eq!((i.width, i.height), (Some(640), Some(480)));
            assert!(i.thumbnail_jpeg_b64.is_some());
        }
    }
    assert!(
        std::fs::read_dir(&spool)
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| e.path().is_dir()),
        "spool files are taken once stored"
    );
    stop.cancel();
    app.wait().await.unwrap();
}
