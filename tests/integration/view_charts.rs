//! The staff view's charts and shift export against a running daemon: the chart's totals
//! per lane role and per rule equal the records the line produced, the CSV download holds
//! exactly the shift's diversions (BOM, Chinese header), and headless chromium draws the
//! charts page.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use bondline::app::App;
use bondline::config::Config;
use bondline::metrics::Metrics;
use bondline_simulators::plan::Plan;
use tokio_util::sync::CancellationToken;

use crate::harness::{config_text, settle, LineDevices, Mosquitto, ScannerAt};

const PARCELS: u64 = 12;

fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    get_with(addr, path, "")
}

/// A GET with extra header lines (each ending in CRLF).
fn get_with(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to the view");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
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

/// The page's DOM after its scripts ran, from headless chromium (the view tests' runner).
fn dump_dom(profile: &Path, url: &str) -> String {
    crate::view::chromium(profile, &["--dump-dom"], url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_and_export_match_the_records_the_line_produced() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let plan = Plan::new(2121);
    let floor = crate::harness::floor(plan, 2.0, Some(PARCELS)).await;
    let text = config_text(
        &dir.path().join("journal"),
        mosquitto.port,
        "bondline/charts-gw",
        &LineDevices {
            scanner: ScannerAt::Tcp(floor.scanner),
            plc: floor.plc,
        },
    ) + "\n[view]\nlisten = \"127.0.0.1:0\"\n";
    let stop = CancellationToken::new();
    let app = App::start(Config::parse("view.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    let addr = app.view_addr.expect("the view listens");
    let metrics = app.metrics.clone();
    let done = settle(Duration::from_secs(40), Duration::from_millis(1500), || {
        Metrics::get(&metrics.records_accepted)
    })
    .await;
    assert!(done, "records kept coming: {}", metrics.summary());

    // The records the line produced, from the journal's own range API.
    let (status, _, body) = get(addr, "/api/records?from=0&limit=1000");
    assert_eq!(status, 200);
    let range: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let parcels: Vec<serde_json::Value> = range["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "parcel")
        .map(|r| r["record"].clone())
        .collect();
    assert!(!parcels.is_empty());
    let first_scan = parcels
        .iter()
        .map(|p| p["scanned_at_ms"].as_u64().unwrap())
        .min()
        .unwrap();

    // The chart of the shift holding the first parcel.
    let (status, _, body) = get(addr, &format!("/api/charts?range=shift&shift={first_scan}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let chart: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let (from, to) = (
        chart["from_ms"].as_u64().unwrap(),
        chart["to_ms"].as_u64().unwrap(),
    );
    assert_eq!(to - from, 12 * 3_600_000, "default shifts are 12 hours");
    let in_shift: Vec<&serde_json::Value> = parcels
        .iter()
        .filter(|p| (from..to).contains(&p["scanned_at_ms"].as_u64().unwrap()))
        .collect();
    let first_decisions: Vec<&&serde_json::Value> =
        in_shift.iter().filter(|p| p["revision"] == 0).collect();
    assert_eq!(chart["total"], first_decisions.len() as u64);
    let sum = |series: &serde_json::Value| -> u64 {
        series
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    for role in ["release", "inspection", "hold", "exception"] {
        let want = first_decisions
            .iter()
            .filter(|p| p["lane_role"] == role)
            .count() as u64;
        assert_eq!(sum(&chart["by_role"][role]), want, "{role}: {chart}");
    }
    let mut rules: Vec<String> = first_decisions
        .iter()
        .map(|p| p["rule"].as_str().unwrap().to_string())
        .collect();
    rules.sort();
    rules.dedup();
    for rule in &rules {
        let want = first_decisions
            .iter()
            .filter(|p| p["rule"] == rule.as_str())
            .count() as u64;
        assert_eq!(sum(&chart["by_rule"][rule]), want, "{rule}: {chart}");
    }
    // A filter narrows the counts; the 7-day view holds the shift's parcels too.
    let (_, _, body) = get(
        addr,
        &format!("/api/charts?range=shift&shift={first_scan}&role=release"),
    );
    let release: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(release["total"], sum(&chart["by_role"]["release"]));
    let (_, _, body) = get(addr, "/api/charts?range=7d");
    let week: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(week["hours"].as_array().unwrap().len(), 7 * 24);
    assert!(week["total"].as_u64().unwrap() >= chart["total"].as_u64().unwrap());
    assert_eq!(get(addr, "/api/charts?range=month").0, 400);
    assert_eq!(get(addr, "/api/charts?role=nowhere").0, 400);

    // The CSV of the same shift: every lane, Chinese header.
    let (status, head, body) = get(
        addr,
        &format!("/api/export.csv?shift={first_scan}&lang=zh&all=1"),
    );
    assert_eq!(status, 200);
    assert!(head.contains("text/csv"), "{head}");
    assert!(head.contains("attachment"), "{head}");
    assert!(body.starts_with("\u{feff}".as_bytes()), "BOM");
    let mut rd = csv::Reader::from_reader(&body[3..]);
    assert_eq!(&rd.headers().unwrap()[0], "运单号");
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), in_shift.len());
    // Only the diversions.
    let (_, _, body) = get(addr, &format!("/api/export.csv?shift={first_scan}"));
    let mut rd = csv::Reader::from_reader(&body[3..]);
    assert_eq!(&rd.headers().unwrap()[0], "Waybill");
    let rows = rd.records().count();
    let diversions = in_shift
        .iter()
        .filter(|p| p["lane_role"] == "inspection" || p["lane_role"] == "hold")
        .count();
    assert_eq!(rows, diversions);
    assert_eq!(get(addr, "/api/export.csv?date=yesterday").0, 400);

    // The page, drawn by a real browser from the gateway alone.
    let profile = dir.path().join("chromium");
    let dom = dump_dom(
        &profile,
        &format!("http://{addr}/charts?range=shift&shift={first_scan}&lang=zh"),
    );
    assert!(dom.contains("每小时包裹数"), "{dom}");
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), 2, "{dom}");
    assert!(
        dom.contains(&format!("data-total=\"{}\"", chart["total"])),
        "{dom}"
    );
    // The language switch keeps the chart's filters, and the choice is remembered: the same
    // browser opening the page without `?lang` gets Chinese again.
    assert!(
        dom.contains(&format!(
            "href=\"?range=shift&amp;shift={first_scan}&amp;lang=en\""
        )),
        "{dom}"
    );
    let again = dump_dom(
        &profile,
        &format!("http://{addr}/charts?range=shift&shift={first_scan}"),
    );
    assert!(again.contains("<html lang=\"zh-CN\""), "{again}");
    assert!(again.contains("每小时包裹数"), "{again}");
    // Over plain HTTP: `?lang` sets the cookie, the cookie and `Accept-Language` choose.
    let (_, head, body) = get(addr, "/charts?lang=en");
    assert!(head.contains("set-cookie: bondline_lang=en"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("<html lang=\"en\""));
    let (_, head, body) = get_with(addr, "/charts", "Cookie: bondline_lang=zh\r\n");
    assert!(String::from_utf8_lossy(&body).contains("<html lang=\"zh-CN\""));
    assert!(head.contains("vary: accept-language, cookie"), "{head}");
    let (_, _, body) = get_with(addr, "/charts", "Accept-Language: zh-CN,zh;q=0.9\r\n");
    assert!(String::from_utf8_lossy(&body).contains("<html lang=\"zh-CN\""));

    floor.stop_scanner.cancel();
    stop.cancel();
    app.wait().await.unwrap();
}
