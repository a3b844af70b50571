//! The monthly customs report: totals over a generated month of records match, exactly, totals
//! counted independently here; records outside the month and superseded revisions do not
//! count.

use std::collections::BTreeMap;
use std::process::Command;

use bondline_devices::contract::{
    DecisionInputs, LaneRole, MonthlyReport, ParcelRecord, ReadOutcome, Record,
};

use crate::harness::{parcel_record, write_journal};

/// 2026-10-01T00:00:00Z and 2026-11-01T00:00:00Z.
const OCT: u64 = 1_790_812_800_000;
const NOV: u64 = 1_793_491_200_000;

fn parcel(i: u64, at: u64, revision: u32, role: LaneRole) -> ParcelRecord {
    let enterprise = ["E-ALPHA", "E-BETA", "E-GAMMA"][(i % 3) as usize];
    let (read, waybill, inputs) = match i % 11 {
        0 => (ReadOutcome::NoRead, None, None),
        1 => (
            ReadOutcome::Ok,
            Some(format!("BL{i:08}")),
            Some(Box::new(DecisionInputs::default())),
        ),
        _ => (
            ReadOutcome::Ok,
            Some(format!("BL{i:08}")),
            Some(Box::new(DecisionInputs {
                declared: true,
                enterprise: Some(enterprise.into()),
                value_minor: Some(1_000 + i * 7),
                currency: Some(if i % 13 == 0 { "USD" } else { "CNY" }.into()),
                ..Default::default()
            })),
        ),
    };
    ParcelRecord {
        line: if i % 2 == 0 { "L1" } else { "L2" }.into(),
        read,
        waybill,
        rule: "r".into(),
        reason: String::new(),
        revision,
        inputs,
        ..parcel_record("gw-report", i, at, role)
    }
}

fn role_of(i: u64) -> LaneRole {
    match i % 11 {
        0 => LaneRole::Exception,
        1 => LaneRole::Hold,
        _ => [
            LaneRole::Release,
            LaneRole::Release,
            LaneRole::Inspection,
            LaneRole::Hold,
        ][(i % 4) as usize],
    }
}

#[test]
fn monthly_report_totals_match_a_generated_month_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("journal");
    // 6,000 parcels over October (every 446.4 s), a few in late September and early November,
    // and a re-decision of every 17th parcel shortly after its scan.
    let mut records: Vec<Record> = Vec::new();
    let mut finals: BTreeMap<u64, ParcelRecord> = BTreeMap::new();
    let span = NOV - OCT;
    for i in 0..6_000u64 {
        let at = OCT + i * span / 6_000;
        let first = parcel(i, at, 0, role_of(i));
        records.push(first.clone().into());
        finals.insert(i, first);
        if i % 17 == 5 {
            let second = parcel(i, at, 1, LaneRole::Inspection);
            records.push(second.clone().into());
            finals.insert(i, second);
        }
    }
    for (k, at) in [(9_000u64, OCT - 1), (9_001, NOV), (9_002, NOV + 86_400_000)] {
        records.push(parcel(k, at, 0, LaneRole::Release).into());
    }
    // A copy of an already counted record (a resend) changes nothing.
    records.push(finals[&100].clone().into());

    write_journal(&store, records);

    // Expected, counted directly from the final decisions.
    let mut by_enterprise: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    let mut value: BTreeMap<String, u64> = BTreeMap::new();
    let mut lanes: BTreeMap<(String, u16), u64> = BTreeMap::new();
    // Declared value by enterprise and by lane, per currency.
    let mut enterprise_value: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut lane_value: BTreeMap<(String, u16), BTreeMap<String, u64>> = BTreeMap::new();
    for p in finals.values() {
        let e = match (
            &p.waybill,
            p.inputs.as_ref().and_then(|i| i.enterprise.clone()),
        ) {
            (None, _) => "(no read)".to_string(),
            (Some(_), None) => "(undeclared)".to_string(),
            (Some(_), Some(e)) => e,
        };
        let row = by_enterprise.entry(e.clone()).or_default();
        row[0] += 1;
        row[match p.lane_role {
            LaneRole::Release => 1,
            LaneRole::Inspection => 2,
            LaneRole::Hold => 3,
            LaneRole::Exception => 4,
        }] += 1;
        if let Some(i) = &p.inputs {
            if let Some(v) = i.value_minor {
                let cur = i.currency.clone().unwrap();
                *value.entry(cur.clone()).or_default() += v;
                *enterprise_value
                    .entry(e.clone())
                    .or_default()
                    .entry(cur.clone())
                    .or_default() += v;
                *lane_value
                    .entry((p.line.clone(), p.lane))
                    .or_default()
                    .entry(cur)
                    .or_default() += v;
            }
        }
        *lanes.entry((p.line.clone(), p.lane)).or_default() += 1;
    }

    let out = Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["report", "--store"])
        .arg(&store)
        .args(["monthly", "--month", "2026-10", "--format", "json"])
        .args(["--time-zone", "UTC"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: MonthlyReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.complete);
    assert_eq!((report.from_ms, report.to_ms), (OCT, NOV));

    // Without --time-zone, a journal copy is reported in China Standard Time: October runs
    // from 1 October 00:00 local (16:00 UTC on 30 September), so the parcel a millisecond
    // before October UTC is October's and the last eight hours of October UTC are November's.
    let local = Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["report", "--store"])
        .arg(&store)
        .args(["monthly", "--month", "2026-10", "--format", "json"])
        .output()
        .unwrap();
    assert!(local.status.success());
    let local: MonthlyReport = serde_json::from_slice(&local.stdout).unwrap();
    let eight_h = 8 * 3_600_000;
    assert_eq!((local.from_ms, local.to_ms), (OCT - eight_h, NOV - eight_h));
    let in_local_october = (0..6_000u64)
        .filter(|i| OCT + i * span / 6_000 < NOV - eight_h)
        .count() as u64
        + 1;
    assert_eq!(local.total.scanned, in_local_october);
    assert_eq!(report.total.scanned, 6_000);
    assert_eq!(report.total.declared_value_minor, value);
    let got: BTreeMap<String, [u64; 5]> = report
        .by_enterprise
        .iter()
        .map(|(e, t)| {
            (
                e.clone(),
                [t.scanned, t.released, t.inspected, t.held, t.exception],
            )
        })
        .collect();
    assert_eq!(got, by_enterprise);
    let got_lanes: BTreeMap<(String, u16), u64> = report
        .by_lane
        .iter()
        .map(|l| ((l.line.clone(), l.lane), l.parcels))
        .collect();
    assert_eq!(got_lanes, lanes);
    let got_enterprise_value: BTreeMap<String, BTreeMap<String, u64>> = report
        .by_enterprise
        .iter()
        .filter(|(_, t)| !t.declared_value_minor.is_empty())
        .map(|(e, t)| (e.clone(), t.declared_value_minor.clone()))
        .collect();
    assert_eq!(got_enterprise_value, enterprise_value);
    let got_lane_value: BTreeMap<(String, u16), BTreeMap<String, u64>> = report
        .by_lane
        .iter()
        .filter(|l| !l.declared_value_minor.is_empty())
        .map(|l| ((l.line.clone(), l.lane), l.declared_value_minor.clone()))
        .collect();
    assert_eq!(got_lane_value, lane_value);

    // CSV: one row per enterprise, per lane, and the total.
    let out = Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["report", "--store"])
        .arg(&store)
        .args(["monthly", "--month", "2026-10", "--time-zone", "UTC"])
        .output()
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    let total = csv.lines().last().unwrap();
    let t = &report.total;
    assert!(
        total.starts_with(&format!(
            "2026-10,total,,,6000,{},{},{},{},",
            t.released, t.inspected, t.held, t.exception
        )),
        "{total}"
    );
    assert_eq!(
        csv.lines().count(),
        1 + by_enterprise.len() + report.by_lane.len() + 1
    );

    // A bad month is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["report", "--store"])
        .arg(&store)
        .args(["monthly", "--month", "2026-13"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
