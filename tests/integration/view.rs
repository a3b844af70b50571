//! The customs staff view against a running daemon: its pages in a real headless browser
//! (Debian's chromium, which runs the pages' JavaScript), its JSON API, the live event
//! stream, `/metrics`, and access control.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bondline::app::App;
use bondline::config::Config;
use bondline::metrics::Metrics;
use bondline_simulators::plan::Plan;
use tokio_util::sync::CancellationToken;

use crate::harness::{config_text, loopback_port, settle, LineDevices, Mosquitto, ScannerAt};

const PREFIX: &str = "bondline/view-gw";
const PARCELS: u64 = 8;

/// One HTTP/1.1 exchange on a fresh connection: status, raw headers, body.
fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let auth: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    request(addr, method, path, &auth)
}

/// A GET with extra request headers.
fn http_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    request(addr, "GET", path, headers)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the view");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn chromium_path() -> String {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("chromium is needed by the staff view tests: apt-get install -y chromium (tests/run.sh does this)");
}

/// Runs headless chromium with `args` on `url`, killed after a minute; returns its stdout.
pub(crate) fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    chromium_with(profile, &[], args, url)
}

/// [`chromium`] with environment variables set for the browser (`TZ`, its own time zone).
fn chromium_with(profile: &Path, envs: &[(&str, &str)], args: &[&str], url: &str) -> String {
    let mut child = Command::new(chromium_path())
        .envs(envs.iter().copied())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1920,1080",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish on {url} within a minute");
        }
        // Fixed: polling tick; std's `Child` cannot wait for an exit with a timeout.
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap_or_default()
}

/// Reads the live stream until an `update` event names one of `waybills`; returns it.
fn first_live_update(addr: SocketAddr, waybills: Vec<String>) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .ok()?;
    let start = Instant::now();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(30) {
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        for event in seen.split("\n\n") {
            if event.contains("event: update") && waybills.iter().any(|w| event.contains(w)) {
                return Some(event.to_string());
            }
        }
    }
    None
}

/// The Prometheus text parses: every sample is `series value` with a numeric value and a
/// family declared by `# TYPE`. Returns the samples.
fn prometheus_samples(text: &str) -> Vec<(String, f64)> {
    let mut families = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let name = series.split('{').next().unwrap();
        assert!(
            families.iter().any(|f| name.starts_with(f.as_str())),
            "sample of an undeclared family: {line}"
        );
        samples.push((series.to_string(), value.parse().expect("numeric sample")));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_lookup_api_and_metrics_work_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let plan = Plan::new(4242);
    let floor = crate::harness::floor(plan.clone(), 2.0, Some(PARCELS)).await;
    let text = config_text(
        &dir.path().join("journal"),
        mosquitto.port,
        PREFIX,
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
    let readable: Vec<String> = plan
        .parcels(0..PARCELS)
        .filter(|p| p.kind.is_readable())
        .map(|p| p.waybill)
        .collect();
    assert!(readable.len() >= 2, "the plan has readable parcels");

    // The live stream carries parcels as they are accepted.
    let live = tokio::task::spawn_blocking({
        let w = readable.clone();
        move || first_live_update(addr, w)
    });
    let all_done = settle(Duration::from_secs(40), Duration::from_millis(1500), || {
        Metrics::get(&metrics.records_accepted)
    })
    .await;
    assert!(all_done, "records kept coming: {}", metrics.summary());
    assert!(
        Metrics::get(&metrics.parcels) >= readable.len() as u64,
        "{}",
        metrics.summary()
    );
    let event = live
        .await
        .unwrap()
        .expect("a live update for a sent parcel");
    assert!(event.contains("\"lane_role\""), "{event}");

    // The first parcels may be scanned before the PLC link is up (`link_down`, so no
    // disposition follows): the lookup is checked on a parcel the PLC took.
    let waybill = readable
        .iter()
        .find(|w| {
            let (status, _, body) = http(addr, "GET", &format!("/api/parcels/{w}"), None);
            status == 200 && body.contains("\"status\":\"acked\"")
        })
        .expect("a parcel the PLC acknowledged")
        .clone();
    // The API explains the decision and where the record stands.
    let (status, head, body) = http(addr, "GET", &format!("/api/parcels/{waybill}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("content-security-policy:"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    let records = found["records"].as_array().unwrap();
    let decision = records
        .iter()
        .find(|r| r["kind"] == "parcel")
        .expect("the parcel's decision");
    let reason = decision["record"]["reason"].as_str().unwrap().to_string();
    assert!(!reason.is_empty());
    assert_eq!(decision["record"]["waybill"], waybill.as_str());
    assert_eq!(
        decision["record"]["rules_fired"][0]["rule"],
        decision["record"]["rule"]
    );
    assert!(
        ["forwarded", "outbox"].contains(&decision["forwarding"]["state"].as_str().unwrap()),
        "{decision}"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "disposition"),
        "the PLC's disposition follows the decision: {body}"
    );
    let (status, _, body) = http(addr, "GET", "/api/records?from=0&limit=500", None);
    assert_eq!(status, 200);
    let range: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(range["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["record"]["waybill"] == waybill.as_str()));
    assert_eq!(http(addr, "GET", "/api/records?from=later", None).0, 400);
    let (status, _, body) = http(addr, "GET", "/api/health", None);
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["rule_set"], "builtin-1");
    // The test line accepts unsigned platform messages, and the view says so.
    assert_eq!(health["platform_signatures"], "NOT REQUIRED");
    let link = |name: &str| {
        health["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| l["state"].clone())
    };
    assert_eq!(link("plc:plc-1"), Some("up".into()), "{health}");
    // The scanner simulator closed after its parcels: the link is down with its error.
    let scanner = health["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "scanner:scanner-1")
        .expect("the scanner's link");
    assert_eq!(scanner["state"], "down", "{health}");
    assert!(scanner["last_error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert!(scanner["since_ms"].as_u64().is_some());

    // In the browser: the board shows the parcel, with the X-ray column saying there is none.
    let profile = dir.path().join("chromium");
    let board = tokio::task::spawn_blocking({
        let p = profile.clone();
        move || {
            chromium(
                &p,
                &["--timeout=5000", "--dump-dom"],
                &format!("http://{addr}/"),
            )
        }
    })
    .await
    .unwrap();
    assert!(board.contains(&waybill), "board lacks {waybill}: {board}");
    assert!(board.contains("no X-ray on this line"), "{board}");
    assert!(board.contains("Lane 3"), "{board}");
    assert!(board.contains("data-line=\"L1\""), "{board}");
    // The lookup page, reached by its address, shows the reason and the forwarding state.
    let lookup = tokio::task::spawn_blocking({
        let (p, w) = (profile.clone(), waybill.clone());
        move || {
            chromium(
                &p,
                &["--virtual-time-budget=10000", "--dump-dom"],
                &format!("http://{addr}/parcel?waybill={w}"),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        lookup.contains(&reason),
        "lookup lacks `{reason}`: {lookup}"
    );
    assert!(
        lookup.contains("forwarded to the platform") || lookup.contains("in the outbox"),
        "{lookup}"
    );
    assert!(lookup.contains("PLC disposition"), "{lookup}");
    let shot = dir.path().join("board.png");
    tokio::task::spawn_blocking({
        let (p, s) = (profile.clone(), shot.clone());
        move || {
            chromium(
                &p,
                &["--timeout=5000", &format!("--screenshot={}", s.display())],
                &format!("http://{addr}/"),
            )
        }
    })
    .await
    .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot of {size} bytes");
    if let Some(to) = std::env::var_os("BONDLINE_VIEW_SCREENSHOT") {
        std::fs::copy(&shot, to).expect("copy the screenshot");
    }

    // Both languages: `?lang=zh` renders the board in Chinese and is remembered by its
    // cookie (the next page without `?lang` stays Chinese); `?lang=en` switches back.
    let zh_profile = dir.path().join("chromium-zh");
    let board_zh = tokio::task::spawn_blocking({
        let p = zh_profile.clone();
        move || {
            chromium(
                &p,
                &["--timeout=5000", "--dump-dom"],
                &format!("http://{addr}/?lang=zh"),
            )
        }
    })
    .await
    .unwrap();
    assert!(board_zh.contains("<html lang=\"zh-CN\""), "{board_zh}");
    assert!(board_zh.contains("分拣道看板"), "{board_zh}");
    assert!(board_zh.contains("道口 3"), "{board_zh}");
    assert!(board_zh.contains("本线无X光机"), "{board_zh}");
    assert!(board_zh.contains(&waybill), "{board_zh}");
    let lookup_zh = tokio::task::spawn_blocking({
        let (p, w) = (zh_profile.clone(), waybill.clone());
        move || {
            chromium(
                &p,
                &["--virtual-time-budget=10000", "--dump-dom"],
                &format!("http://{addr}/parcel?waybill={w}"),
            )
        }
    })
    .await
    .unwrap();
    assert!(lookup_zh.contains("包裹查询"), "{lookup_zh}");
    assert!(lookup_zh.contains("PLC 分拣结果"), "{lookup_zh}");
    let board_en = tokio::task::spawn_blocking({
        let p = zh_profile.clone();
        move || {
            chromium(
                &p,
                &["--timeout=5000", "--dump-dom"],
                &format!("http://{addr}/?lang=en"),
            )
        }
    })
    .await
    .unwrap();
    assert!(board_en.contains("<html lang=\"en\""), "{board_en}");
    assert!(
        board_en.contains("Lane 3") && !board_en.contains("道口 3"),
        "{board_en}"
    );
    // Without `?lang` or a cookie, a Chinese browser gets Chinese.
    let (status, head, body) = http_with(addr, "/", &[("Accept-Language", "zh-CN,zh;q=0.9")]);
    assert_eq!(status, 200);
    assert!(body.contains("<html lang=\"zh-CN\""), "{head}");
    let (_, head, _) = http_with(addr, "/?lang=en", &[]);
    assert!(head.contains("set-cookie: bondline_lang=en"), "{head}");

    // The worklist lists the parcels sent to inspection or hold, and its filters round-trip
    // through the address: a waybill prefix link shows that parcel and no other.
    let (_, _, body) = http(addr, "GET", "/api/records?from=0&limit=1000", None);
    let range: serde_json::Value = serde_json::from_str(&body).unwrap();
    let flagged: Vec<String> = range["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "parcel")
        .filter(|r| {
            ["inspection", "hold"].contains(&r["record"]["lane_role"].as_str().unwrap_or(""))
        })
        .filter_map(|r| r["record"]["waybill"].as_str().map(str::to_string))
        .collect();
    assert!(
        !flagged.is_empty(),
        "the plan sends parcels to inspection: {body}"
    );
    let worklist = tokio::task::spawn_blocking({
        let p = profile.clone();
        move || {
            chromium(
                &p,
                &["--virtual-time-budget=10000", "--dump-dom"],
                &format!("http://{addr}/worklist?from=0&lang=en"),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        worklist.contains(&format!("data-waybill=\"{}\"", flagged[0])),
        "{worklist}"
    );
    assert!(worklist.contains("/api/barcode.svg?text="), "{worklist}");
    let target = flagged[0].clone();
    let filtered = tokio::task::spawn_blocking({
        let (p, w) = (profile.clone(), target.clone());
        move || {
            chromium(
                &p,
                &["--virtual-time-budget=10000", "--dump-dom"],
                &format!("http://{addr}/worklist?from=0&waybill={w}"),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        filtered.contains(&format!("data-waybill=\"{target}\"")),
        "{filtered}"
    );
    assert_eq!(filtered.matches("data-waybill=").count(), 1, "{filtered}");
    // A browser in another zone reads and shows a range of the address in the warehouse's
    // zone (Asia/Shanghai by default): 08:00 means 08:00 at the gateway, not in New York.
    let elsewhere = tokio::task::spawn_blocking({
        let p = dir.path().join("chromium-new-york");
        move || {
            chromium_with(
                &p,
                &[("TZ", "America/New_York")],
                &["--virtual-time-budget=10000", "--dump-dom"],
                &format!(
                    "http://{addr}/worklist?from=2026-12-05T08:00:00&to=2026-12-05T20:00&lang=en"
                ),
            )
        }
    })
    .await
    .unwrap();
    let heading = elsewhere
        .split("parcels sent to inspection or hold")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        heading.contains("12/05/2026, 08:00:00") && heading.contains("12/05/2026, 20:00:00"),
        "the heading shows the range as written: {heading:?}"
    );
    // The form shows the filter it came from, so the view can be refined and passed on.
    assert!(filtered.contains(&format!("value=\"{target}\"")) || filtered.contains(&target));
    // The lookup's time list takes the same filters from its address.
    let listed = tokio::task::spawn_blocking({
        let (p, w) = (profile.clone(), target.clone());
        move || {
            chromium(
                &p,
                &["--virtual-time-budget=10000", "--dump-dom"],
                &format!("http://{addr}/parcel?from=0&limit=1000&prefix={w}&role=&line=L1"),
            )
        }
    })
    .await
    .unwrap();
    let links: Vec<&str> = listed
        .split("/parcel?waybill=")
        .skip(1)
        .map(|s| s.split('"').next().unwrap_or(""))
        .collect();
    assert!(!links.is_empty(), "{listed}");
    assert!(
        links.iter().all(|l| l.starts_with(target.as_str())),
        "{links:?}"
    );
    let (status, head, svg) = http(
        addr,
        "GET",
        &format!("/api/barcode.svg?text={target}"),
        None,
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("image/svg+xml") && svg.contains("<rect"),
        "{head}"
    );
    assert_eq!(
        http(addr, "GET", "/api/barcode.svg?text=%E8%BF%90", None).0,
        400
    );

    // Metrics parse and carry the decision latency and parcels by lane and rule.
    let (status, head, body) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let samples = prometheus_samples(&body);
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert!(value("bondline_decision_latency_seconds_count").unwrap() >= 1.0);
    assert!(value("bondline_journal_flush_latency_seconds_count").unwrap() >= 1.0);
    assert_eq!(
        value("bondline_link_up{link=\"plc:plc-1\",kind=\"plc\"}"),
        Some(1.0)
    );
    assert!(
        samples
            .iter()
            .any(|(s, v)| s.starts_with("bondline_parcels_total{line=\"L1\"") && *v >= 1.0),
        "{body}"
    );

    // Plain endpoints, and nothing that writes.
    assert_eq!(http(addr, "GET", "/healthz", None).0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None).0, 200);
    assert_eq!(http(addr, "POST", "/api/health", None).0, 405);
    assert_eq!(http(addr, "DELETE", "/api/parcels/x", None).0, 405);
    assert_eq!(http(addr, "GET", "/api/nothing", None).0, 404);

    floor.stop_scanner.cancel();
    stop.cancel();
    app.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_when_configured() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let sha = |s: &str| hex::encode(bondline::journal::sha256(s.as_bytes()));
    // No broker and no devices listen: the view does not need them.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], loopback_port()));
    let text = config_text(
        &dir.path().join("journal"),
        loopback_port(),
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(nowhere),
            plc: nowhere,
        },
    ) + &format!(
        "\n[view]\nlisten = \"127.0.0.1:0\"\ntime_zone = \"Europe/Berlin\"\ntoken_sha256 = \"{}\"\nusers = [{{ name = \"officer\", password_sha256 = \"{}\" }}]\n",
        sha("scrape-token"),
        sha("correct horse")
    );
    let stop = CancellationToken::new();
    let app = App::start(Config::parse("view.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    let addr = app.view_addr.expect("the view listens");
    let basic = |up: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(up)
        )
    };

    for path in ["/", "/api/health", "/api/board", "/metrics", "/parcel"] {
        let (status, head, _) = http(addr, "GET", path, None);
        assert_eq!(status, 401, "{path} without credentials");
        assert!(head.contains("www-authenticate: basic"), "{head}");
    }
    let wrong = basic("officer:wrong");
    assert_eq!(http(addr, "GET", "/api/health", Some(&wrong)).0, 401);
    assert_eq!(http(addr, "GET", "/api/health", Some("Bearer nope")).0, 401);
    let right = basic("officer:correct horse");
    let (status, _, body) = http(addr, "GET", "/api/health", Some(&right));
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        health["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["state"] != "up"),
        "nothing to connect to: {health}"
    );
    assert_eq!(http(addr, "GET", "/", Some(&right)).0, 200);
    // Every page hands its script the configured zone, in which it shows and reads times.
    for path in ["/", "/parcel", "/worklist"] {
        let (status, _, page) = http(addr, "GET", path, Some(&right));
        assert_eq!(status, 200, "{path}");
        assert!(
            page.contains("\"time_zone\":\"Europe/Berlin\""),
            "{path}: {page}"
        );
    }
    assert_eq!(
        http(addr, "GET", "/metrics", Some("Bearer scrape-token")).0,
        200
    );
    // Probes stay open: they say nothing about parcels.
    assert_eq!(http(addr, "GET", "/healthz", None).0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None).0, 200);

    stop.cancel();
    app.wait().await.unwrap();
}

/// One HTTPS GET with a client that trusts only `ca_pem`: the status and the body.
async fn https_get(
    addr: SocketAddr,
    ca_pem: &std::path::Path,
    path: &str,
) -> std::io::Result<(u16, String)> {
    https_exchange(addr, ca_pem, path)
        .await
        .map(|(status, _, body)| (status, body))
}

/// One HTTPS GET with a client that trusts only `ca_pem`: the status, the raw headers and
/// the body.
async fn https_exchange(
    addr: SocketAddr,
    ca_pem: &std::path::Path,
    path: &str,
) -> std::io::Result<(u16, String, String)> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, head, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_serves_https_and_takes_a_renewed_certificate_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let first = crate::tls::ca("view CA 1");
    crate::tls::issue(&first, &certs, "view", true);
    std::fs::write(certs.join("ca1.pem"), first.cert.pem()).unwrap();
    let nowhere = SocketAddr::from(([127, 0, 0, 1], loopback_port()));
    let text = config_text(
        &dir.path().join("journal"),
        loopback_port(),
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(nowhere),
            plc: nowhere,
        },
    ) + &format!(
        "\n[view]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert_file = \"{0}/view.pem\", key_file = \"{0}/view.key\" }}\n",
        certs.display()
    );
    let stop = CancellationToken::new();
    let app = App::start(Config::parse("view.toml", &text).unwrap(), stop.clone())
        .await
        .unwrap();
    let addr = app.view_addr.expect("the view listens");
    let (status, head, body) = https_exchange(addr, &certs.join("ca1.pem"), "/api/health")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"gateway\":\"test-gw\""), "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age="),
        "{head}"
    );
    // Plain HTTP gets no page.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(plain, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));

    // A renewed certificate from another CA: served to new connections after a reload.
    let second = crate::tls::ca("view CA 2");
    crate::tls::issue(&second, &certs, "view", true);
    std::fs::write(certs.join("ca2.pem"), second.cert.pem()).unwrap();
    assert!(
        https_get(addr, &certs.join("ca1.pem"), "/healthz")
            .await
            .unwrap()
            .0
            == 200
    );
    app.reloader().reload();
    assert_eq!(
        https_get(addr, &certs.join("ca2.pem"), "/healthz")
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        https_get(addr, &certs.join("ca1.pem"), "/healthz")
            .await
            .is_err(),
        "the old CA no longer verifies the view"
    );
    // A broken file on reload keeps the certificate in use.
    std::fs::write(certs.join("view.key"), "not a key").unwrap();
    app.reloader().reload();
    assert_eq!(
        https_get(addr, &certs.join("ca2.pem"), "/healthz")
            .await
            .unwrap()
            .0,
        200
    );
    stop.cancel();
    app.wait().await.unwrap();
}

#[test]
fn a_view_beyond_loopback_without_credentials_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let text = config_text(
        &dir.path().join("journal"),
        1883,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(nowhere),
            plc: nowhere,
        },
    ) + "\n[view]\nlisten = \"0.0.0.0:8080\"\n";
    let file = dir.path().join("bondline.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bondline"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bondline.toml"), "{err}");
    assert!(err.contains("view.listen"), "{err}");
    assert!(err.contains("credentials are required"), "{err}");
}

/// The board stays bounded under a flood: after 10,000 parcels pushed through the real line
/// as fast as the simulator sends them, the page holds at most 30 rows per line; the
/// worklist, read page by page, still lists every diverted parcel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_dom_stays_bounded_under_ten_thousand_parcels() {
    const FLOOD: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let floor = crate::harness::floor(Plan::new(77), 1000.0, Some(FLOOD)).await;
    let text = config_text(
        &dir.path().join("journal"),
        mosquitto.port,
        PREFIX,
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
    let done = settle(Duration::from_secs(50), Duration::from_millis(1500), || {
        Metrics::get(&metrics.parcels)
    })
    .await;
    assert!(done, "parcels kept coming: {}", metrics.summary());
    let parcels = Metrics::get(&metrics.parcels);
    // The plan mixes in malformed frames (about 5 %), which are rejected, not parcels.
    assert!(
        parcels >= FLOOD * 9 / 10,
        "the flood reached the line: {}",
        metrics.summary()
    );
    let profile = dir.path().join("chromium");
    let page = tokio::task::spawn_blocking(move || {
        chromium(
            &profile,
            &["--timeout=5000", "--dump-dom"],
            &format!("http://{addr}/?lang=zh"),
        )
    })
    .await
    .unwrap();
    let rows = page.matches("<tr data-key=").count();
    assert!(rows > 0, "the board shows parcels: {page}");
    assert!(
        rows <= 30,
        "{rows} rows in the board's DOM after {parcels} parcels"
    );
    assert!(
        page.len() < 400_000,
        "the board's DOM is {} bytes after {parcels} parcels",
        page.len()
    );

    // The worklist is complete however many parcels were diverted: page after page of
    // /api/worklist lists every diverted waybill of the shift once, newest first, far beyond
    // what one range query returns; the export of the same shift agrees.
    let (_, _, body) = http(addr, "GET", "/api/shift", None);
    let shift: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (from, to) = (
        shift["from_ms"].as_u64().unwrap(),
        shift["to_ms"].as_u64().unwrap(),
    );
    let mut listed = Vec::new();
    let mut last_seq = u64::MAX;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/api/worklist?from={from}&to={to}&limit=50");
        if let Some(c) = &cursor {
            path.push_str(&format!("&before={c}"));
        }
        let (status, _, body) = http(addr, "GET", &path, None);
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for item in page["items"].as_array().unwrap() {
            let seq = item["seq"].as_u64().unwrap();
            assert!(seq < last_seq, "newest first");
            last_seq = seq;
            let role = item["record"]["lane_role"].as_str().unwrap();
            assert!(["inspection", "hold"].contains(&role), "{item}");
            listed.push(item["record"]["waybill"].as_str().unwrap().to_string());
        }
        pages += 1;
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
        assert!(pages < 10_000, "the worklist's pages never end");
    }
    assert!(
        listed.len() > 1000,
        "{} diverted parcels on the worklist after {parcels} parcels",
        listed.len()
    );
    let unique: std::collections::BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a waybill listed twice");
    let (status, _, csv) = http(addr, "GET", &format!("/api/export.csv?shift={from}"), None);
    assert_eq!(status, 200);
    let exported: std::collections::BTreeSet<String> = csv
        .trim_start_matches('\u{feff}')
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(
        unique
            .into_iter()
            .cloned()
            .collect::<std::collections::BTreeSet<String>>(),
        exported,
        "the worklist and the shift export list the same diverted waybills"
    );
    // The page shows its first slips and offers the older ones.
    let profile = dir.path().join("chromium-worklist");
    let page = tokio::task::spawn_blocking(move || {
        chromium(
            &profile,
            &["--virtual-time-budget=20000", "--dump-dom"],
            &format!("http://{addr}/worklist?from={from}&to={to}&lang=en"),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        page.matches("data-waybill=").count(),
        20,
        "one page of slips"
    );
    assert!(page.contains("id=\"more\""), "{page}");
    assert!(
        !page.contains("id=\"more\" hidden"),
        "older parcels can be loaded"
    );
    floor.stop_scanner.cancel();
    stop.cancel();
    app.wait().await.unwrap();
}
