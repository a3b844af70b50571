//! The inspection worklist with its evidence, against a running daemon: the X-ray simulator
//! judges a parcel suspect and writes its image views to the spool, camera simulators
//! photograph it at the scanner and over the inspection lane, and headless chromium shows its
//! slip with the X-ray thumbnails, both snapshots, and links to the full originals that
//! `GET /api/evidence/{sha256}` serves, byte for byte, to an authenticated officer only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use bondline::app::App;
use bondline::config::Config;
use bondline::metrics::unix_ms;
use bondline_devices::xray::{Material, XrayResult};
use bondline_devices::Profiles;
use bondline_simulators::camera::{CameraSim, SimAuth};
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use bondline_simulators::scanner::ScannerSim;
use bondline_simulators::xray::{ImageSpec, XrayImages, XraySim, XrayState};
use tokio_util::sync::CancellationToken;

use crate::harness::{config_text_with, stx_etx, wait_until, LineDevices, Mosquitto, ScannerAt};

const PREFIX: &str = "bondline/evidence-gw";
/// `officer:inspect`, as the browser sends it.
const AUTH: &str = "Basic b2ZmaWNlcjppbnNwZWN0";

/// A GET with the officer's credentials (or none): status, lowercase head, body bytes.
fn get(addr: SocketAddr, path: &str, auth: bool) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to the view");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = if auth {
        format!("Authorization: {AUTH}\r\n")
    } else {
        String::new()
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding: chunked"), "{head}");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, raw[split + 4..].to_vec())
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, _, body) = get(addr, path, true);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

async fn start_camera(sim: &CameraSim, stop: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sim.clone().serve(listener, stop.clone().cancelled_owned()));
    addr
}

/// The worklist item of `waybill` once its images and both snapshots are stored.
fn item_with_evidence(addr: SocketAddr, waybill: &str) -> Option<serde_json::Value> {
    let page = json(addr, &format!("/api/worklist?from=0&waybill={waybill}"));
    let item = page["items"].as_array()?.first()?.clone();
    let related = item["related"].as_array()?;
    let images = related
        .iter()
        .filter(|r| r["kind"] == "image" && r["record"]["thumbnail_jpeg_b64"].is_string())
        .count();
    let snapshot = |point: &str| {
        related.iter().any(|r| {
            r["kind"] == "snapshot"
                && r["record"]["point"] == point
                && r["record"]["sha256"].is_string()
        })
    };
    (images >= 2 && snapshot("scan") && snapshot("lane")).then_some(item)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worklist_shows_xray_images_and_snapshots_with_their_full_originals() {
    crate::harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-evidence")
        .await
        .unwrap();
    let (plc, _plc_state) = crate::harness::start_plc(&stop).await;
    let xray_map = Profiles::builtin()
        .get("xray-modbus")
        .unwrap()
        .xray()
        .unwrap()
        .clone();
    let state = XrayState::new(xray_map, &[1]).unwrap();
    let sim = XraySim::bind("127.0.0.1:0".parse().unwrap(), state.clone())
        .await
        .unwrap();
    let xray_addr = sim.local_addr();
    tokio::spawn(sim.run(stop.clone().cancelled_owned()));
    let spool = dir.path().join("spool");
    let images = XrayImages::new(&spool, ImageSpec::default()).unwrap();
    let scan_cam = CameraSim::new(SimAuth::Open);
    let lane_cam = CameraSim::new(SimAuth::Open);
    let scan_addr = start_camera(&scan_cam, &stop).await;
    let lane_addr = start_camera(&lane_cam, &stop).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scanner = listener.local_addr().unwrap();
    // 8 m from the scanner to the gates at 2 m/s: the scan camera sees a parcel 0.2 s after
    // the scan, the inspection lane's camera 4.25 s after.
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
    ) + &format!(
        "\n[cameras.entry]\nurl = \"http://{scan_addr}/snapshot.jpg\"\nline = \"L1\"\npoint = \"scan\"\ndistance_m = 0.4\n\
         \n[cameras.inspection]\nurl = \"http://{lane_addr}/snapshot.jpg\"\nline = \"L1\"\nlanes = [2]\ndistance_m = 8.5\n\
         \n[view]\nlisten = \"127.0.0.1:0\"\nusers = [{{ name = \"officer\", password_sha256 = \"{}\" }}]\n",
        hex_sha256(b"inspect")
    );
    let app = App::start(Config::parse("evidence.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    let addr = app.view_addr.expect("the view listens");
    let m = app.metrics.clone();
    assert!(
        wait_until(Duration::from_secs(30), || m
            .links()
            .get("xray:xray-1")
            .is_some_and(|l| l.up)
            && m.uplink_ready.load(std::sync::atomic::Ordering::Relaxed))
        .await,
        "the X-ray link and the uplink came up"
    );

    // Two declared parcels released by customs: the X-ray finds the first suspect (to the
    // inspection lane), the second clear (released, not on the worklist).
    let plan = Plan::with_mix(91, Mix::only(PlanKind::Release));
    platform.publish_plan(&plan, 0..2).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || bondline::metrics::Metrics::get(
            &m.platform_messages
        ) >= 4)
        .await
    );
    let waybills: Vec<String> = plan.parcels(0..2).map(|p| p.waybill).collect();
    let (mut stream, _) = listener.accept().await.unwrap();
    for (i, w) in waybills.iter().enumerate() {
        let suspect = i == 0;
        let scan_id = 700 + i as u32;
        let now = Instant::now();
        scan_cam.enter(Some(w.clone()), now + Duration::from_millis(200));
        if suspect {
            lane_cam.enter(Some(w.clone()), now + Duration::from_millis(4250));
        }
        ScannerSim {
            framing: stx_etx(),
            plan: plan.clone(),
            rate_per_s: 1000.0,
            count: Some(1),
            start_index: i as u64,
        }
        .write_to(&mut stream, std::future::pending())
        .await
        .unwrap();
        let scanned = unix_ms(SystemTime::now());
        let result = if suspect {
            XrayResult::Suspect
        } else {
            XrayResult::Clear
        };
        state
            .pass(1, scan_id, scanned + 250, result, Some(Material::Mixed))
            .unwrap();
        images.write(scan_id, result.flags()).unwrap();
        // Fixed: the belt's spacing between two parcels, so each has its cameras' and the
        // X-ray's windows to itself.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The API: the suspect parcel with its images and both snapshots; not the clear one.
    let suspect = waybills[0].clone();
    let mut item = None;
    let found = wait_until(Duration::from_secs(40), || {
        item = item_with_evidence(addr, &suspect);
        item.is_some()
    })
    .await;
    assert!(
        found,
        "images and snapshots of {suspect}: {}",
        json(addr, &format!("/api/worklist?from=0&waybill={suspect}"))
    );
    let item = item.unwrap();
    assert_eq!(item["record"]["lane_role"], "inspection", "{item}");
    let listed = json(addr, "/api/worklist?from=0");
    let listed: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["record"]["waybill"].as_str())
        .collect();
    assert!(listed.contains(&suspect.as_str()), "{listed:?}");
    assert!(!listed.contains(&waybills[1].as_str()), "{listed:?}");

    // In the browser: the slip shows the X-ray thumbnails and both snapshots, each linking
    // to its full original.
    let profile = dir.path().join("chromium");
    let url = format!("http://officer:inspect@{addr}/worklist?from=0&lang=en");
    let page = tokio::task::spawn_blocking(move || {
        crate::view::chromium(
            &profile,
            &["--virtual-time-budget=15000", "--dump-dom"],
            &url,
        )
    })
    .await
    .unwrap();
    let slip = page
        .split("<article ")
        .find(|a| a.contains(&format!("data-waybill=\"{suspect}\"")))
        .unwrap_or_else(|| panic!("no slip for {suspect}: {page}"));
    assert!(
        slip.matches("<img class=\"thumb\"").count() >= 4,
        "two X-ray views and two snapshots: {slip}"
    );
    assert!(slip.contains("src=\"data:image/jpeg;base64,"), "{slip}");
    assert!(slip.contains("data-snapshot=\"scan\""), "{slip}");
    assert!(slip.contains("data-snapshot=\"lane\""), "{slip}");
    assert!(slip.contains("data-image=\""), "{slip}");
    let links: Vec<String> = slip
        .split("href=\"/api/evidence/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap_or("").to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        links.len() >= 4,
        "a full-image link per image and snapshot: {links:?}"
    );
    // Each link returns its original: an image whose bytes hash to the link's name.
    for sha in &links {
        let (status, head, body) = get(addr, &format!("/api/evidence/{sha}"), true);
        assert_eq!(status, 200, "{sha}: {head}");
        assert!(
            head.contains("content-type: image/jpeg") || head.contains("content-type: image/png"),
            "{head}"
        );
        assert!(
            body.starts_with(&[0xff, 0xd8]) || body.starts_with(b"\x89PNG"),
            "an image"
        );
        assert_eq!(&hex_sha256(&body), sha);
        // Only for officers.
        assert_eq!(get(addr, &format!("/api/evidence/{sha}"), false).0, 401);
    }
    // Names that are not a kept original's hash.
    assert_eq!(
        get(addr, &format!("/api/evidence/{}", "0".repeat(64)), true).0,
        404
    );
    assert_eq!(
        get(addr, "/api/evidence/..%2F..%2Fetc%2Fpasswd", true).0,
        400
    );

    stop.cancel();
    app.wait().await.unwrap();
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
