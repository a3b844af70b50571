//! The rule set in a running daemon: every record names the version that decided it, SIGHUP
//! reloads the rule file, and an invalid rule file is refused whole with an alarm while the
//! old rule set stays.

use std::net::SocketAddr;
use std::time::Duration;

use bondline_devices::contract::{EventKind, LaneRole};
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use bondline_simulators::scanner::ScannerSim;
use tokio_util::sync::CancellationToken;

use crate::harness::stx_etx;
use crate::harness::{
    config_text, dws_framing, start_plc, wait_until, Daemon, LineDevices, Mosquitto, ScannerAt,
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
    // The policy's own log says when a reload took effect.
    let daemon = Daemon::start_with_env(
        &config,
        &dir.path().join("daemon.log"),
        &[("RUST_LOG", "warn,bondline::policy=info")],
    );

    // Parcels arrive in three bursts of five; the scanner waits for the daemon to connect.
    let framing = stx_etx();
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
    // The next burst goes once the daemon says the reload took effect, not after a guess.
    let log = dir.path().join("daemon.log");
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("rule set reloaded from the file"))
        .await,
        "the reload was not reported"
    );
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

/// A rule set with every kind the daemon can feed.
const EVERY_RULE: &str = r#"
version = "file-1"
sampling_key_hex = "00112233445566778899aabbccddeeff"
[[rules]]
name = "instruction"
kind = "instruction"
priority = 100
[[rules]]
name = "suspended"
kind = "suspended_enterprise"
priority = 95
target = "hold"
[[rules]]
name = "identity"
kind = "unverified_identity"
priority = 90
target = "hold"
[[rules]]
name = "undeclared"
kind = "undeclared"
priority = 85
target = "hold"
[[rules]]
name = "weight"
kind = "weight_mismatch"
priority = 60
target = "inspection"
tolerance_pct = 10.0
tolerance_g = 50
[[rules]]
name = "daily_parcels"
kind = "consumer_limit"
priority = 50
target = "inspection"
window_days = 1
max_parcels = 2
[[rules]]
name = "yearly_value"
kind = "consumer_limit"
priority = 49
target = "inspection"
window_days = 366
max_value_minor = 500000
currency = "CNY"
[[rules]]
name = "sample"
kind = "sampling"
priority = 10
target = "inspection"
rate_ppm = 50000
"#;

/// The scanning-and-weighing station of the test line: the test writes its frames.
struct Station {
    listener: tokio::net::TcpListener,
    stream: Option<tokio::net::TcpStream>,
    framing: bondline_devices::framing::ScannerFraming,
}

impl Station {
    async fn scan(&mut self, waybill: &str, grams: u32) {
        use tokio::io::AsyncWriteExt;
        if self.stream.is_none() {
            let (s, _) = tokio::time::timeout(Duration::from_secs(20), self.listener.accept())
                .await
                .expect("the daemon connects to the scanner")
                .unwrap();
            self.stream = Some(s);
        }
        let frame = self
            .framing
            .encode(&self.framing.read_payload(waybill, Some(grams)));
        self.stream
            .as_mut()
            .unwrap()
            .write_all(&frame)
            .await
            .unwrap();
    }
}

/// A line whose scanning station weighs (`dws-stx-etx`, its frames written by the test), with
/// a broker, a PLC, the rule file `rules` and `extra` at the end of the configuration: what
/// the tests of rules across restarts start from. The daemon is the test's to start.
struct WeighingLine {
    _mosquitto: Mosquitto,
    stop: CancellationToken,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    platform: PlatformSim,
    station: Station,
    framing: bondline_devices::framing::ScannerFraming,
}

async fn weighing_line(
    dir: &std::path::Path,
    platform_name: &str,
    rules: &str,
    extra: &str,
) -> WeighingLine {
    let mosquitto = Mosquitto::start(dir).await;
    let stop = CancellationToken::new();
    let (plc, _) = start_plc(&stop).await;
    let rules_path = dir.join("rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let text = config_text(
        &dir.join("journal"),
        mosquitto.port,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(listener.local_addr().unwrap()),
            plc,
        },
    )
    .replace("profile = \"scanner-stx-etx\"", "profile = \"dws-stx-etx\"")
    .replace(
        "gateway_id = \"test-gw\"",
        &format!(
            "gateway_id = \"test-gw\"\nrules_file = \"{}\"",
            rules_path.display()
        ),
    ) + extra;
    let config = dir.join("bondline.toml");
    std::fs::write(&config, text).unwrap();
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, platform_name)
        .await
        .unwrap();
    let framing = dws_framing();
    WeighingLine {
        _mosquitto: mosquitto,
        stop,
        config,
        log: dir.join("daemon.log"),
        platform,
        station: Station {
            listener,
            stream: None,
            framing: framing.clone(),
        },
        framing,
    }
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// Publishes a bad instruction until the daemon reports its rejection: after that, the daemon
/// is subscribed, and it has worked through every platform message published before it (it
/// handles them in order).
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

/// Publishes `messages` (topic suffix, payload) to a subscribed daemon and waits until it
/// has applied them.
async fn publish_all(platform: &PlatformSim, messages: Vec<(&str, Vec<u8>)>) {
    sync_with_daemon(platform).await;
    for (topic, payload) in messages {
        platform.publish_raw(topic, payload).await.unwrap();
    }
    sync_with_daemon(platform).await;
}

fn declaration(
    waybill: &str,
    enterprise: &str,
    consumer: &str,
    value: u64,
    currency: &str,
    verified: bool,
) -> Vec<u8> {
    json(serde_json::json!({
        "schema": 1, "waybill": waybill, "enterprise": enterprise, "consumer": consumer,
        "identity_verified": verified, "value_minor": value, "currency": currency,
        "gross_weight_g": 1000, "items": [{"description": "tea", "quantity": 2}]
    }))
}

fn release(waybill: &str) -> Vec<u8> {
    json(serde_json::json!({
        "schema": 1, "instruction_id": format!("I-{waybill}"), "waybill": waybill,
        "action": "release", "reason": "cleared"
    }))
}

fn notice(id: &str, action: &str, at: u64) -> Vec<u8> {
    json(serde_json::json!({
        "schema": 1, "notice_id": id, "enterprise": "E-BAD", "action": action,
        "reason": "licence under review", "issued_at_ms": at
    }))
}

fn rule_update(id: &str, text: &str, at: u64) -> Vec<u8> {
    json(serde_json::json!({
        "schema": 1, "update_id": id, "rules_toml": text, "issued_at_ms": at
    }))
}

/// Every rule kind the daemon can feed, through the platform's messages and a weighing
/// scanner: suspensions and their lifts, unverified identities, missing declarations, weight
/// mismatches, consumer limits per day and per year (kept across a restart), keyed sampling
/// an auditor can recompute, anomalies for every flagged parcel, platform-pushed rule sets
/// (applied, refused, kept across a restart) and a rule file changed on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_kind_decides_from_platform_messages_and_survives_restarts() {
    use bondline::rules::engine::RuleSet;

    let dir = tempfile::tempdir().unwrap();
    let WeighingLine {
        _mosquitto,
        stop,
        config,
        log,
        platform,
        mut station,
        ..
    } = weighing_line(
        dir.path(),
        "platform-every-rule",
        EVERY_RULE,
        // Last month's report is due at once (day 1): published once, however many restarts.
        "\n[report]\npublish_day = 1\n",
    )
    .await;
    let mut daemon = Daemon::start(&config, &log);
    let rules_path = dir.path().join("rules.toml");

    // Waybills named for their case; sampled ones and unsampled ones found with the key, as an
    // auditor would.
    let set = RuleSet::parse("test", EVERY_RULE).unwrap();
    let pick = |stem: &str, sampled: bool| {
        (0..)
            .map(|i| format!("{stem}{i:04}"))
            .find(|w| set.sampled(w, 50_000) == sampled)
            .unwrap()
    };
    let ok = pick("OK", false);
    let susp = [
        pick("SUSPA", false),
        pick("SUSPB", false),
        pick("SUSPC", false),
    ];
    let unver = pick("UNVER", false);
    let undecl = pick("UNDECL", false);
    let heavy: Vec<String> = (0..5).map(|i| pick(&format!("HEAVY{i}X"), false)).collect();
    let freq: Vec<String> = (0..4).map(|i| pick(&format!("FREQ{i}X"), false)).collect();
    let rich = pick("RICH", false);
    let usd = pick("USD", false);
    let sampled = pick("SAMP", true);

    let mut msgs = vec![("enterprises", notice("N1", "suspend", 1_000))];
    let mut declare = |w: &str, e: &str, c: &str, v: u64, cur: &str, verified: bool| {
        msgs.push(("declarations", declaration(w, e, c, v, cur, verified)));
        msgs.push(("instructions", release(w)));
    };
    declare(&ok, "E-GOOD", "c-ok", 10_000, "CNY", true);
    for w in &susp {
        declare(w, "E-BAD", &format!("c-{w}"), 10_000, "CNY", true);
    }
    declare(&unver, "E-GOOD", "c-unver", 10_000, "CNY", false);
    for w in &heavy {
        declare(w, "E-GOOD", &format!("c-{w}"), 10_000, "CNY", true);
    }
    for w in &freq {
        declare(w, "E-GOOD", "c-frequent", 100, "CNY", true);
    }
    declare(&rich, "E-GOOD", "c-rich", 600_000, "CNY", true);
    declare(&usd, "E-GOOD", "c-usd", 1_000, "USD", true);
    declare(&sampled, "E-GOOD", "c-sampled", 10_000, "CNY", true);
    msgs.push(("instructions", release(&undecl)));
    publish_all(&platform, msgs).await;

    let record_of = |w: &str| {
        platform
            .records()
            .into_iter()
            .rfind(|r| r.waybill.as_deref() == Some(w))
    };
    // Scans `w` weighing `grams` and returns its record once it arrived.
    macro_rules! scan {
        ($w:expr, $grams:expr) => {{
            let w: &str = $w;
            station.scan(w, $grams).await;
            assert!(
                wait_until(Duration::from_secs(20), || record_of(w).is_some()).await,
                "no record for {w}"
            );
            record_of(w).unwrap()
        }};
    }
    let expect = |r: &bondline_devices::contract::ParcelRecord, role: LaneRole, rule: &str| {
        assert_eq!(
            (r.lane_role, r.rule.as_str()),
            (role, rule),
            "{}: {} ({:?})",
            r.waybill.as_deref().unwrap_or("?"),
            r.reason,
            r.rules_fired
        );
    };

    let r = scan!(&ok, 1_020);
    expect(&r, LaneRole::Release, "instruction");
    let inputs = r.inputs.clone().unwrap();
    assert_eq!(inputs.measured_weight_g, Some(1_020));
    assert_eq!(inputs.declared_weight_g, Some(1_000));
    assert!(inputs.counted);
    assert_eq!(r.rule_set.as_deref(), Some("file-1"));
    expect(&scan!(&susp[0], 1_000), LaneRole::Hold, "suspended");
    expect(&scan!(&unver, 1_000), LaneRole::Hold, "identity");
    expect(&scan!(&undecl, 1_000), LaneRole::Hold, "undeclared");
    let r = scan!(&heavy[0], 1_600);
    expect(&r, LaneRole::Inspection, "weight");
    assert!(
        r.reason.contains("weighed 1600 g, declared 1000 g"),
        "{}",
        r.reason
    );
    expect(&scan!(&freq[0], 1_000), LaneRole::Release, "instruction");
    expect(&scan!(&freq[1], 1_000), LaneRole::Release, "instruction");
    let r = scan!(&freq[2], 1_000);
    expect(&r, LaneRole::Inspection, "daily_parcels");
    let windows = r.inputs.clone().unwrap().consumer_windows;
    assert_eq!(windows[0].parcels, 2, "{windows:?}");
    expect(&scan!(&rich, 1_000), LaneRole::Inspection, "yearly_value");
    let r = scan!(&usd, 1_000);
    expect(&r, LaneRole::Inspection, "yearly_value");
    assert!(r.reason.contains("USD"), "{}", r.reason);
    expect(&scan!(&sampled, 1_000), LaneRole::Inspection, "sample");

    // Every flagged parcel was announced on the anomalies topic; released ones were not.
    let flagged = [
        &susp[0], &unver, &undecl, &heavy[0], &freq[2], &rich, &usd, &sampled,
    ];
    assert!(
        wait_until(Duration::from_secs(10), || {
            let a = platform.anomalies();
            flagged
                .iter()
                .all(|w| a.iter().any(|a| a.waybill.as_deref() == Some(w.as_str())))
        })
        .await,
        "anomalies: {:?}",
        platform.anomalies()
    );
    let anomalies = platform.anomalies();
    for w in [&ok, &freq[0], &freq[1]] {
        assert!(anomalies
            .iter()
            .all(|a| a.waybill.as_deref() != Some(w.as_str())));
    }
    let a = anomalies
        .iter()
        .find(|a| a.waybill.as_deref() == Some(heavy[0].as_str()))
        .unwrap();
    assert_eq!(a.inputs.measured_weight_g, Some(1_600));

    // A restart keeps the suspension and the consumer's history.
    assert_eq!(daemon.terminate(), Some(0));
    daemon = Daemon::start(&config, &log);
    station.stream = None;
    expect(
        &scan!(&freq[3], 1_000),
        LaneRole::Inspection,
        "daily_parcels",
    );
    expect(&scan!(&susp[1], 1_000), LaneRole::Hold, "suspended");

    // The platform pushes a rule set without the weight check: it applies at once.
    let platform_set = EVERY_RULE
        .replace("version = \"file-1\"", "version = \"platform-1\"")
        .replace(
            "kind = \"weight_mismatch\"",
            "kind = \"weight_mismatch\"\n# off",
        )
        .replace("tolerance_pct = 10.0", "tolerance_pct = 100.0")
        .replace("tolerance_g = 50", "tolerance_g = 100000");
    publish_all(
        &platform,
        vec![("rules", rule_update("R1", &platform_set, 2_000))],
    )
    .await;
    assert!(platform
        .events()
        .iter()
        .any(|e| e.kind == EventKind::RuleSetApplied && e.detail.contains("platform-1")));
    let r = scan!(&heavy[1], 1_600);
    expect(&r, LaneRole::Release, "instruction");
    assert_eq!(r.rule_set.as_deref(), Some("platform-1"));

    // An invalid one is refused whole and reported; an older one is ignored.
    let releasing = platform_set.replace("target = \"hold\"", "target = \"release\"");
    publish_all(
        &platform,
        vec![
            ("rules", rule_update("R2", &releasing, 3_000)),
            ("rules", rule_update("R0", EVERY_RULE, 1_000)),
        ],
    )
    .await;
    assert!(platform
        .events()
        .iter()
        .any(|e| e.kind == EventKind::RejectedMessage
            && e.detail.contains("R2")
            && e.detail.contains("refused")));
    let r = scan!(&heavy[2], 1_600);
    assert_eq!(r.rule_set.as_deref(), Some("platform-1"));

    // The platform's rule set stays in force across a restart; a lift ends the suspension.
    assert_eq!(daemon.terminate(), Some(0));
    daemon = Daemon::start(&config, &log);
    station.stream = None;
    let r = scan!(&heavy[3], 1_600);
    assert_eq!(r.rule_set.as_deref(), Some("platform-1"));
    expect(&r, LaneRole::Release, "instruction");
    publish_all(
        &platform,
        vec![("enterprises", notice("N2", "lift", 5_000))],
    )
    .await;
    expect(&scan!(&susp[2], 1_000), LaneRole::Release, "instruction");

    // A change of the rule file on disk is picked up without a signal.
    std::fs::write(
        &rules_path,
        EVERY_RULE.replace("version = \"file-1\"", "version = \"file-2\""),
    )
    .unwrap();
    // Fresh waybills (undeclared: held) until one is decided by the new version.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let r = scan!(&format!("WATCH{n:03}"), 1_000);
        if r.rule_set.as_deref() == Some("file-2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed rule file was not applied"
        );
        // Fixed: polling tick between fresh scans; only a scan shows which rules decide.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = scan!(&heavy[4], 1_600);
    expect(&r, LaneRole::Inspection, "weight");
    assert_eq!(daemon.terminate(), Some(0));
    let reports: Vec<_> = platform
        .all_records()
        .into_iter()
        .filter_map(|r| match r {
            bondline_devices::contract::Record::Report(m) => Some(m),
            _ => None,
        })
        .collect();
    let last_month = bondline::report::Month::of(std::time::SystemTime::now()).previous();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].report.month, last_month.to_string());
    // Every kind of record, over three gateway starts, in one unbroken chain.
    crate::harness::assert_chain_whole(&platform, None);

    // `bondline explain` tells the whole story of a waybill from the stopped gateway's store.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["explain", "--store"])
        .arg(dir.path().join("journal"))
        .arg(&heavy[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        format!("Waybill {}", heavy[0]),
        "enterprise E-GOOD".to_string(),
        "tea x2".to_string(),
        "inspection (lane 2) by rule `weight` of rule set file-1".to_string(),
        "fired: instruction -> release".to_string(),
        "weighed 1.600 kg against 1.000 kg declared".to_string(),
        "forwarded".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["explain", "--json", "--store"])
        .arg(dir.path().join("journal"))
        .arg(&susp[0])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["records"][0]["record"]["rule"], "suspended");
    assert_eq!(json["declaration"]["enterprise"], "E-BAD");
    stop.cancel();
}

/// The per-transaction limit in a running daemon: an order declared as two waybills is counted
/// as one transaction (the second waybill takes it over the limit and goes to inspection with
/// the order's figures on its record and anomaly), while the same value without an order id
/// is a transaction of its own and is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_limit_sums_the_waybills_of_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let WeighingLine {
        _mosquitto,
        stop,
        config,
        log,
        platform,
        mut station,
        ..
    } = weighing_line(
        dir.path(),
        "platform-transaction",
        &rule_file("limits", "[[rules]]\nname = \"per_order\"\nkind = \"transaction_limit\"\npriority = 50\ntarget = \"inspection\"\nmax_value_minor = 500000\ncurrency = \"CNY\"\n"),
        "",
    )
    .await;
    let daemon = Daemon::start(&config, &log);
    let in_order = |w: &str, order: Option<&str>, value: u64| {
        let mut d: serde_json::Value =
            serde_json::from_slice(&declaration(w, "E-GOOD", "c-1", value, "CNY", true)).unwrap();
        if let Some(o) = order {
            d["order_id"] = o.into();
        }
        json(d)
    };
    publish_all(
        &platform,
        vec![
            ("declarations", in_order("TXA001", Some("ORDER-1"), 300_000)),
            ("instructions", release("TXA001")),
            ("declarations", in_order("TXC001", None, 450_000)),
            ("instructions", release("TXC001")),
        ],
    )
    .await;
    let record_of = |w: &str| {
        platform
            .records()
            .into_iter()
            .rfind(|r| r.waybill.as_deref() == Some(w))
    };
    for w in ["TXA001", "TXC001"] {
        station.scan(w, 1_000).await;
        assert!(
            wait_until(Duration::from_secs(20), || record_of(w).is_some()).await,
            "no record for {w}: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        let r = record_of(w).unwrap();
        assert_eq!(r.lane_role, LaneRole::Release, "{w}: {}", r.reason);
    }
    // The order's second waybill, declared later, takes the order to 5,500.00 CNY.
    publish_all(
        &platform,
        vec![
            ("declarations", in_order("TXB001", Some("ORDER-1"), 250_000)),
            ("instructions", release("TXB001")),
        ],
    )
    .await;
    station.scan("TXB001", 1_000).await;
    assert!(
        wait_until(Duration::from_secs(20), || record_of("TXB001").is_some()).await,
        "no record for TXB001"
    );
    let r = record_of("TXB001").unwrap();
    assert_eq!(
        (r.lane_role, r.rule.as_str()),
        (LaneRole::Inspection, "per_order"),
        "{}",
        r.reason
    );
    let figures = r.inputs.clone().unwrap().transactions;
    assert_eq!(figures.len(), 1, "{figures:?}");
    let f = &figures[0];
    assert_eq!(
        (
            f.order_id.as_deref(),
            f.parcels,
            f.value_minor,
            f.value_minor_after,
            f.max_value_minor
        ),
        (Some("ORDER-1"), 2, 300_000, 550_000, 500_000)
    );
    assert!(
        wait_until(Duration::from_secs(10), || platform
            .anomalies()
            .iter()
            .any(|a| a.waybill.as_deref() == Some("TXB001")))
        .await,
        "no anomaly for TXB001"
    );
    let a = platform
        .anomalies()
        .into_iter()
        .find(|a| a.waybill.as_deref() == Some("TXB001"))
        .unwrap();
    assert_eq!(a.inputs.transactions, figures);
    assert_eq!(daemon.terminate(), Some(0));
    stop.cancel();
}

/// A calendar-day limit across a restart at local midnight. The gateway's zone is a fixed
/// offset chosen so that local midnight falls shortly after the test starts: a consumer's
/// first parcel of the day is released, the second goes to inspection (one a day); the daemon
/// is killed, local midnight passes while it is down, and after the restart the consumer's
/// next parcel is counted in a fresh day, which the pre-midnight parcels are not part of. The
/// records carry each window's bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_day_turns_over_at_local_midnight_across_a_restart() {
    // Room for a slow start of the daemon on a busy machine before local midnight.
    const LEAD_S: u64 = 45;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let midnight_utc_s = now_s + LEAD_S;
    // Local time = UTC + offset; local midnight at `midnight_utc_s` needs
    // (midnight_utc_s + offset) % 86400 == 0, an offset within ±12 hours.
    let mut offset = -((midnight_utc_s % 86_400) as i64);
    if offset < -43_200 {
        offset += 86_400;
    }
    let zone = format!(
        "UTC{}{:02}:{:02}:{:02}",
        if offset < 0 { '-' } else { '+' },
        offset.abs() / 3600,
        offset.abs() % 3600 / 60,
        offset.abs() % 60
    );
    let midnight_ms = midnight_utc_s * 1000;

    let dir = tempfile::tempdir().unwrap();
    let WeighingLine {
        _mosquitto,
        stop,
        config,
        log,
        platform,
        mut station,
        framing,
    } = weighing_line(
        dir.path(),
        "platform-midnight",
        &rule_file("limits", "[[rules]]\nname = \"daily\"\nkind = \"consumer_limit\"\npriority = 50\ntarget = \"inspection\"\nwindow = \"calendar_day\"\nmax_parcels = 1\n"),
        &format!("\n[calendar]\ntime_zone = \"{zone}\"\n"),
    )
    .await;
    let daemon = Daemon::start(&config, &log);
    let mut msgs = Vec::new();
    for w in ["EVE001", "EVE002", "MORN01"] {
        msgs.push((
            "declarations",
            declaration(w, "E-GOOD", "c-night", 1_000, "CNY", true),
        ));
        msgs.push(("instructions", release(w)));
    }
    publish_all(&platform, msgs).await;
    let record_of = |w: &str| {
        platform
            .records()
            .into_iter()
            .rfind(|r| r.waybill.as_deref() == Some(w))
    };
    let daily = |r: &bondline_devices::contract::ParcelRecord| {
        r.inputs
            .as_ref()
            .unwrap()
            .consumer_windows
            .iter()
            .find(|w| w.rule == "daily")
            .cloned()
            .unwrap()
    };
    let day_ms = 86_400_000;
    for (w, role) in [
        ("EVE001", LaneRole::Release),
        ("EVE002", LaneRole::Inspection),
    ] {
        station.scan(w, 1_000).await;
        assert!(
            wait_until(Duration::from_secs(20), || record_of(w).is_some()).await,
            "no record for {w}"
        );
        let r = record_of(w).unwrap();
        assert!(
            r.scanned_at_ms < midnight_ms,
            "{w} was scanned after local midnight: the machine is too slow for the lead of {LEAD_S} s"
        );
        assert_eq!(r.lane_role, role, "{w}: {}", r.reason);
        let win = daily(&r);
        assert_eq!(win.window.as_deref(), Some("calendar_day"));
        assert_eq!(win.time_zone.as_deref(), Some(zone.as_str()));
        assert_eq!(
            (win.from_ms, win.until_ms),
            (
                Some((midnight_ms - day_ms) as i64),
                Some(midnight_ms as i64)
            ),
            "{w}: the window is the local day before midnight"
        );
    }
    let eve = daily(&record_of("EVE002").unwrap());
    assert_eq!((eve.parcels, eve.parcels_after), (1, Some(2)));
    assert_eq!(
        eve.until_local.as_deref().map(|t| t.contains("T00:00:00")),
        Some(true),
        "{:?}",
        eve.until_local
    );

    // Down across midnight.
    daemon.kill();
    let now_ms = || bondline::metrics::unix_ms(std::time::SystemTime::now());
    while now_ms() < midnight_ms + 500 {
        // Fixed: polling tick on the wall clock; only time brings local midnight.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let daemon = Daemon::start(&config, &log);
    let mut station = Station {
        listener: station.listener,
        stream: None,
        framing,
    };
    station.scan("MORN01", 1_000).await;
    assert!(
        wait_until(Duration::from_secs(30), || record_of("MORN01").is_some()).await,
        "no record for MORN01"
    );
    let r = record_of("MORN01").unwrap();
    assert_eq!(r.lane_role, LaneRole::Release, "{}", r.reason);
    let morning = daily(&r);
    assert_eq!(
        (morning.from_ms, morning.until_ms),
        (
            Some(midnight_ms as i64),
            Some((midnight_ms + day_ms) as i64)
        ),
        "a fresh local day"
    );
    assert_eq!(
        (morning.parcels, morning.parcels_after),
        (0, Some(1)),
        "yesterday's parcels are not counted"
    );
    assert_eq!(daemon.terminate(), Some(0));
    stop.cancel();
}

/// The consumers' day totals of forgotten declarations live in a file beside the journal. A
/// daemon that finds it missing (or another file) fails closed: every consumer's history is
/// unknown, so a parcel under its limit goes to inspection, with the reason in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_consumers_file_makes_every_consumer_limit_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let WeighingLine {
        _mosquitto,
        stop,
        config,
        log,
        platform,
        station,
        ..
    } = weighing_line(
        dir.path(),
        "platform-consumers",
        &rule_file("limits", "[[rules]]\nname = \"daily\"\nkind = \"consumer_limit\"\npriority = 50\ntarget = \"inspection\"\nwindow_days = 1\nmax_parcels = 5\n"),
        "",
    )
    .await;
    let record_of = |w: &str| {
        platform
            .records()
            .into_iter()
            .rfind(|r| r.waybill.as_deref() == Some(w))
    };
    let mut station = Some(station);
    let mut scan_and_wait = async |w: &str| {
        // A daemon started since connects anew.
        let mut at = station.take().unwrap();
        at.stream = None;
        at.scan(w, 1_000).await;
        assert!(
            wait_until(Duration::from_secs(30), || record_of(w).is_some()).await,
            "no record for {w}"
        );
        station = Some(at);
        record_of(w).unwrap()
    };

    let declared_and_released = async |w: &str, consumer: &str| {
        publish_all(
            &platform,
            vec![
                (
                    "declarations",
                    declaration(w, "E-GOOD", consumer, 1_000, "CNY", true),
                ),
                ("instructions", release(w)),
            ],
        )
        .await
    };

    // With its file, a consumer under its limit is released.
    let daemon = Daemon::start(&config, &log);
    declared_and_released("KNOWN1", "c-known").await;
    let r = scan_and_wait("KNOWN1").await;
    assert_eq!(r.lane_role, LaneRole::Release, "{}", r.reason);
    assert_eq!(daemon.terminate(), Some(0));

    // The file lost: the next run refuses the empty one it finds.
    std::fs::remove_file(bondline::journal::consumer_days_path(&journal)).unwrap();
    let daemon = Daemon::start(&config, &log);
    declared_and_released("NEWBUYER", "c-new").await;
    let r = scan_and_wait("NEWBUYER").await;
    assert_eq!(r.lane_role, LaneRole::Inspection, "{}", r.reason);
    let daily = r
        .inputs
        .as_ref()
        .unwrap()
        .consumer_windows
        .iter()
        .find(|w| w.rule == "daily")
        .cloned()
        .unwrap();
    assert_eq!(
        daily.parcels,
        u32::MAX,
        "an unknown history, over every limit"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("not the file this store wrote"),
        "the log says why"
    );
    assert_eq!(daemon.terminate(), Some(0));
    stop.cancel();
}
