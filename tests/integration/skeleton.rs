//! The walking skeleton end to end: scanner-sim on a pty → daemon → plc-sim over Modbus TCP
//! → sled → Mosquitto → platform-sim.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bondline::app::App;
use bondline::config::Config;
use bondline::journal::Journal;
use bondline::metrics::Metrics;
use bondline_devices::contract::{
    AlertKind, DispositionKind, DivertStatus, EventKind, LaneRole, ReadOutcome, Record,
};
use bondline_simulators::plan::{Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use bondline_simulators::scanner::ScannerSim;
use tokio_util::sync::CancellationToken;

use crate::harness::stx_etx;
use crate::harness::{config_text, wait_until, LineDevices, Mosquitto, PtyPair, ScannerAt};

const PREFIX: &str = "bondline/test-gw";
const PARCELS: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parcels_flow_from_scanner_to_lane_to_platform() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let pty = PtyPair::new(dir.path(), "scanner").await;
    let stop = CancellationToken::new();

    let (plc_addr, plc_state) = crate::harness::start_plc(&stop).await;

    let state = dir.path().join("journal");
    let text = config_text(
        &state,
        mosquitto.port,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Serial(&pty.b),
            plc: plc_addr,
        },
    );
    let config = Config::parse("test.toml", &text).unwrap();
    let app = App::start(config.clone(), stop.clone()).await.unwrap();
    let metrics = app.metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || metrics
            .uplink_ready
            .load(std::sync::atomic::Ordering::Relaxed))
        .await,
        "daemon did not subscribe at the broker"
    );

    // The platform declares and instructs, and sends one message of garbage.
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "test-platform")
        .await
        .unwrap();
    let plan = Plan::new(7);
    let planned: Vec<_> = (0..PARCELS).map(|i| plan.parcel(i)).collect();
    let messages = planned
        .iter()
        .map(|p| p.kind.is_declared() as u64 + p.kind.instruction().is_some() as u64)
        .sum::<u64>();
    platform.publish_plan(&plan, 0..PARCELS).await.unwrap();
    platform
        .publish_raw("instructions", b"{\"schema\":1,\"waybill\":".to_vec())
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || Metrics::get(
            &metrics.platform_messages
        ) > messages)
        .await,
        "daemon did not receive the platform's {messages} messages"
    );
    assert_eq!(Metrics::get(&metrics.platform_rejected), 1);

    // Every planned parcel crosses the scanner, on a real pseudo-terminal.
    let scanner = ScannerSim {
        framing: stx_etx(),
        plan: plan.clone(),
        rate_per_s: 300.0,
        count: Some(PARCELS),
        start_index: 0,
    };
    let written = scanner
        .run_serial(pty.a.to_str().unwrap(), 115_200, std::future::pending())
        .await
        .unwrap();
    assert_eq!(written, PARCELS);

    let parcels: Vec<_> = planned
        .iter()
        .filter(|p| p.kind.expected_role().is_some())
        .collect();
    let expected = parcels.len();
    assert!(
        platform
            .wait_for_records(expected, Duration::from_secs(30))
            .await,
        "platform got {} of {expected} records; {}",
        platform.records().len(),
        metrics.summary()
    );
    let records = platform.records();
    let distinct: HashSet<_> = records.iter().map(|r| r.msg_id.clone()).collect();
    assert_eq!(distinct.len(), expected, "one record per parcel");

    // Each readable parcel went to its lane; no-reads went to the exception lane.
    let by_waybill: BTreeMap<_, _> = records
        .iter()
        .filter_map(|r| r.waybill.clone().map(|w| (w, r)))
        .collect();
    let lanes = &config.lines[0].lanes;
    for p in &parcels {
        if p.kind == PlanKind::NoRead {
            continue;
        }
        let r = by_waybill
            .get(&p.waybill)
            .unwrap_or_else(|| panic!("no record for {}", p.waybill));
        assert_eq!(
            Some(r.lane_role),
            p.kind.expected_role(),
            "{} ({:?}): {}",
            p.waybill,
            p.kind,
            r.reason
        );
        assert_eq!(r.lane, lanes.lane(r.lane_role));
        assert!(!r.reason.is_empty());
        // Every decision names its rule set and the rules that fired, deciding one first.
        assert_eq!(r.rule_set.as_deref(), Some("builtin-1"));
        assert_eq!(
            r.rules_fired.first().map(|f| f.rule.as_str()),
            Some(r.rule.as_str())
        );
    }
    let no_reads = parcels
        .iter()
        .filter(|p| p.kind == PlanKind::NoRead)
        .count();
    let exception_no_reads = records
        .iter()
        .filter(|r| r.read == ReadOutcome::NoRead && r.lane_role == LaneRole::Exception)
        .count();
    assert_eq!(exception_no_reads, no_reads);
    for kind in [
        PlanKind::Release,
        PlanKind::Inspect,
        PlanKind::Undeclared,
        PlanKind::NoRead,
    ] {
        assert!(
            parcels.iter().any(|p| p.kind == kind),
            "plan lacks {kind:?}"
        );
    }

    // Fail closed: only release-instructed, declared parcels reached the release lane.
    for r in records.iter().filter(|r| r.lane_role == LaneRole::Release) {
        let w = r.waybill.as_ref().expect("a released parcel has a waybill");
        let p = parcels.iter().find(|p| &p.waybill == w).unwrap();
        assert_eq!(
            p.kind,
            PlanKind::Release,
            "{w} released without a release instruction"
        );
    }

    // The PLC got every divert, with the lane of the record, and acknowledged it.
    let diverts: BTreeMap<u32, u16> = plc_state
        .diverts()
        .iter()
        .map(|d| (d.parcel, d.lane))
        .collect();
    for r in &records {
        assert_eq!(r.divert.status, DivertStatus::Acked, "{r:?}");
        assert_eq!(
            diverts.get(&r.parcel),
            Some(&r.lane),
            "PLC lane of parcel {}",
            r.parcel
        );
    }
    assert_eq!(plc_state.divert_count(), expected);

    // The PLC reports where each parcel went; the gateway records it against the parcel.
    assert!(
        wait_until(Duration::from_secs(10), || platform
            .all_records()
            .iter()
            .filter(|r| matches!(r, Record::Disposition(_)))
            .count()
            >= expected)
        .await,
        "dispositions missing: {}",
        metrics.timing_summary()
    );
    for r in platform.all_records() {
        match r {
            Record::Disposition(d) => {
                let parcel = records.iter().find(|p| p.parcel == d.parcel).unwrap();
                assert_eq!(d.disposition, DispositionKind::Sorted, "{d:?}");
                assert_eq!(d.lane, parcel.lane);
                assert_eq!(d.commanded_lane, Some(parcel.lane));
                assert_eq!(d.waybill, parcel.waybill);
            }
            // The garbage platform message, journaled as a refusal.
            Record::Alert(a) if a.alert == AlertKind::RejectedMessage => {
                assert!(a.detail.contains("/instructions: not valid JSON"), "{a:?}");
            }
            Record::Alert(a) => panic!("unexpected alert: {a:?}"),
            Record::Report(m) => panic!("unexpected report: {m:?}"),
            r @ (Record::Xray(_) | Record::Image(_) | Record::ImageChunk(_)) => {
                panic!("X-ray record from a line without X-ray: {r:?}")
            }
            Record::Snapshot(s) => panic!("camera record from a line without cameras: {s:?}"),
            Record::Parcel(_) => {}
        }
    }
    assert_eq!(Metrics::get(&metrics.released_without_decision), 0);
    assert!(metrics.decision_latency.count() >= expected as u64);

    // Garbage frames were counted and skipped; sequence numbers are gap-free.
    let garbage = planned
        .iter()
        .filter(|p| p.kind == PlanKind::Garbage)
        .count() as u64;
    assert!(Metrics::get(&metrics.frames_rejected) >= garbage);
    let mut seqs: Vec<u64> = platform.all_records().iter().map(|r| r.seq()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free sequence"
    );

    // The garbage platform message was reported back as an event.
    assert!(
        wait_until(Duration::from_secs(5), || platform
            .events()
            .iter()
            .any(|e| e.kind == EventKind::RejectedMessage))
        .await
    );

    // Everything acknowledged leaves the outbox; the clearance table survives a restart.
    assert!(
        wait_until(Duration::from_secs(5), || Metrics::get(&metrics.backlog)
            == 0)
        .await
    );
    stop.cancel();
    app.wait().await.unwrap();
    let journal = Journal::open(&state).unwrap();
    assert_eq!(journal.backlog_len(), 0);
    let table = journal.load_clearance().unwrap();
    let declared = planned.iter().filter(|p| p.kind.is_declared()).count();
    assert_eq!(table.declarations(), declared);
    let r = journal.record(1).unwrap().expect("record 1 is stored");
    assert_eq!(r.seq(), 1);
}
