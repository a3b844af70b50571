//! The demo's customs rules end to end: the platform pushes the demo rule set, suspends an
//! enterprise and declares a plan with a parcel for every rule; a weighing scanner sends the
//! parcels with their scale readings. Every parcel must reach exactly the lane the plan
//! predicts (random sample included), every rule kind must fire, nothing may be released
//! against the plan, and every parcel a rule flagged must have its anomaly.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bondline::app::App;
use bondline::config::Config;
use bondline::metrics::Metrics;
use bondline::rules::engine::RuleSet;
use bondline_devices::contract::{EventKind, LaneRole, ParcelRecord};
use bondline_devices::Profiles;
use bondline_simulators::audit::{RuleBook, DEMO_RULES};
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::{Expect, PlatformSim};
use bondline_simulators::scanner::ScannerSim;
use tokio_util::sync::CancellationToken;

use crate::harness::{
    config_text, settle, start_plc, wait_until, LineDevices, Mosquitto, ScannerAt,
};

const PREFIX: &str = "bondline/test-gw";
const PARCELS: u64 = 300;

/// The auditor's recomputation of the sample agrees with the daemon's own, waybill by waybill.
#[test]
fn the_auditor_recomputes_the_daemons_sample() {
    let daemon = RuleSet::parse("demo", DEMO_RULES).unwrap();
    let book = RuleBook::demo();
    let rate = daemon
        .rules
        .iter()
        .find_map(|r| match r.kind {
            bondline::rules::engine::RuleKind::Sampling { rate_ppm } => Some(rate_ppm),
            _ => None,
        })
        .unwrap();
    let plan = Plan::with_mix(11, Mix::every_rule());
    let mut sampled = 0;
    for p in plan.parcels(0..20_000) {
        assert_eq!(
            book.sampled(&p.waybill),
            daemon.sampled(&p.waybill, rate),
            "{}",
            p.waybill
        );
        sampled += usize::from(book.sampled(&p.waybill));
    }
    assert!((300..500).contains(&sampled), "{sampled} of 20000 at 2%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_customs_rule_sends_its_parcels_where_the_plan_says() {
    crate::harness::init_logs();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let (plc, _plc_state) = start_plc(&stop).await;
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
    .replace("profile = \"scanner-stx-etx\"", "profile = \"dws-stx-etx\"");
    assert!(text.contains("dws-stx-etx"));
    let config = Config::parse("test.toml", &text).unwrap();
    let app = App::start(config.clone(), stop.clone()).await.unwrap();
    let metrics = app.metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || metrics
            .uplink_ready
            .load(Ordering::Relaxed))
        .await,
        "daemon did not subscribe at the broker"
    );

    // The platform pushes the demo rule set, then suspends and declares.
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-demo-rules")
        .await
        .unwrap();
    let book = RuleBook::demo();
    platform
        .publish_rules("demo-rules-test", DEMO_RULES)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || platform.events().iter().any(
            |e| e.kind == EventKind::RuleSetApplied && e.detail.contains(&book.version)
        ))
        .await,
        "the demo rule set was not applied: {:?}",
        platform.events()
    );
    let plan = Plan::with_mix(12, Mix::every_rule());
    let planned: Vec<_> = plan.parcels(0..PARCELS).collect();
    // Rule set, suspension, declarations and instructions.
    let messages = 2 + planned
        .iter()
        .map(|p| p.kind.is_declared() as u64 + p.kind.instruction().is_some() as u64)
        .sum::<u64>();
    platform.publish_plan(&plan, 0..PARCELS).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || Metrics::get(
            &metrics.platform_messages
        ) >= messages)
        .await,
        "daemon received {} of the platform's {messages} messages",
        Metrics::get(&metrics.platform_messages)
    );
    assert_eq!(Metrics::get(&metrics.platform_rejected), 0);

    // The weighing scanner sends every parcel with its scale reading, in plan order (the
    // frequent buyers' daily counts depend on it).
    let scanner = ScannerSim {
        framing: Profiles::builtin()
            .get("dws-stx-etx")
            .and_then(|p| p.scanner().cloned())
            .unwrap(),
        plan: plan.clone(),
        rate_per_s: 80.0,
        count: Some(PARCELS),
        start_index: 0,
    };
    assert!(scanner.framing.weight.is_some());
    let written = scanner
        .run_tcp(listener, std::future::pending())
        .await
        .unwrap();
    assert_eq!(written, PARCELS);

    let expected: Vec<_> = planned
        .iter()
        .filter_map(|p| Some((p, plan.expected_role_with(p, true, false, Some(&book))?)))
        .collect();
    assert!(
        platform
            .wait_for_records(expected.len(), Duration::from_secs(30))
            .await,
        "platform got {} of {} records; {}",
        platform.records().len(),
        expected.len(),
        metrics.summary()
    );
    // Anomalies go out on their own topic; let the last ones arrive.
    settle(Duration::from_secs(5), Duration::from_millis(300), || {
        platform.anomalies().len() as u64
    })
    .await;

    // Exactly the planned lane, by the latest decision of each parcel.
    let mut latest: BTreeMap<String, ParcelRecord> = BTreeMap::new();
    for r in platform.records() {
        assert_eq!(r.rule_set.as_deref(), Some(book.version.as_str()), "{r:?}");
        if let Some(w) = r.waybill.clone() {
            if latest.get(&w).is_none_or(|old| old.revision < r.revision) {
                latest.insert(w, r);
            }
        }
    }
    let mut kinds_seen: HashMap<PlanKind, usize> = HashMap::new();
    let mut no_reads = 0;
    for (p, role) in &expected {
        *kinds_seen.entry(p.kind).or_default() += 1;
        if p.kind == PlanKind::NoRead {
            no_reads += 1;
            continue;
        }
        let r = latest
            .get(&p.waybill)
            .unwrap_or_else(|| panic!("no record for {}", p.waybill));
        assert_eq!(
            r.lane_role, *role,
            "{} ({:?}): [{}] {}",
            p.waybill, p.kind, r.rule, r.reason
        );
        let inputs = r
            .inputs
            .as_deref()
            .expect("a read parcel's record has inputs");
        assert_eq!(
            inputs.measured_weight_g,
            Some(plan.facts(p).measured_weight_g),
            "{}: the scale reading reaches the decision",
            p.waybill
        );
    }
    assert!(no_reads > 0);
    for kind in PlanKind::ALL {
        assert!(
            kind == PlanKind::Garbage || kinds_seen.contains_key(&kind),
            "the plan has no {kind:?} parcel in {PARCELS}: choose another seed"
        );
    }

    let report = platform.report_with(
        &plan,
        0..PARCELS,
        &Expect {
            weighed: true,
            xray: false,
            rules: Some(book.clone()),
        },
    );
    // Shown with `--nocapture`: what decided and what fired.
    eprintln!("{report}");
    assert!(report.missing.is_empty(), "{report}");
    assert!(report.released_against_plan.is_empty(), "{report}");
    assert!(report.kinds_never_fired.is_empty(), "{report}");
    assert!(report.flagged_without_anomaly.is_empty(), "{report}");
    assert_eq!(report.bad_payloads, 0, "{report}");
    // Every rule of the set, not only every kind, decided or fired; except the X-ray rule:
    // this line has no X-ray scanner (the demo's line has one, see `demo::`).
    for rule in book
        .kinds
        .keys()
        .filter(|r| book.kind_of(r) != Some("xray_suspect"))
    {
        assert!(
            report.fired.contains_key(rule),
            "{rule} never fired: {report}"
        );
    }
    assert!(report.anomalies > 0, "{report}");
    assert!(
        report.by_role[&LaneRole::Release] > 0 && report.by_role[&LaneRole::Inspection] > 0,
        "{report}"
    );

    stop.cancel();
    app.wait().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
