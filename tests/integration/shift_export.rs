//! `bondline report shift`: the CSV of a shift or a day from a generated journal is parsed
//! back and holds exactly the diversions scanned in that local range, with a BOM and the
//! header in the chosen language.

use std::process::Command;

use bondline_devices::contract::{DecisionInputs, FiredRule, LaneRole, ParcelRecord, Record};

use crate::harness::{parcel_record, write_journal};

/// 2026-12-05T00:00:00Z, which is 08:00 on the 5th in China Standard Time.
const DEC5: u64 = 1_796_428_800_000;
const HOUR: u64 = 3_600_000;

fn role(i: u64) -> LaneRole {
    [
        LaneRole::Release,
        LaneRole::Inspection,
        LaneRole::Release,
        LaneRole::Hold,
        LaneRole::Exception,
    ][(i % 5) as usize]
}

fn parcel(i: u64, at: u64) -> ParcelRecord {
    ParcelRecord {
        lane: 1 + (i % 5) as u16,
        reason: "no declaration, \"held\"".into(),
        // Odd parcels were decided under the built-in rule set, which `report shift` knows:
        // their reasons are written from the rule in the report's language. Even ones name
        // a rule set no longer at hand and keep their recorded reason.
        rule_set: Some(if i % 2 == 1 { "builtin-1" } else { "gone-1" }.into()),
        rules_fired: vec![FiredRule {
            rule: "undeclared".into(),
            target: role(i),
            reason: "no declaration, \"held\"".into(),
        }],
        inputs: Some(Box::new(DecisionInputs {
            enterprise: Some("企业甲".into()),
            ..Default::default()
        })),
        ..parcel_record("gw-shift", i, at, role(i))
    }
}

/// Parcels every 10 minutes from 20:00 on the 4th to 22:00 on the 5th (local).
fn times() -> Vec<(u64, u64)> {
    (0..156u64)
        .map(|i| (i, DEC5 - 12 * HOUR + i * 600_000))
        .collect()
}

fn run(store: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["report", "--store"])
        .arg(store)
        .arg("shift")
        .args(args)
        .output()
        .unwrap()
}

fn parse(bytes: &[u8]) -> (Vec<String>, Vec<csv::StringRecord>) {
    assert!(bytes.starts_with("\u{feff}".as_bytes()), "no BOM");
    let mut rd = csv::Reader::from_reader(&bytes[3..]);
    let header = rd.headers().unwrap().iter().map(String::from).collect();
    (header, rd.records().map(Result::unwrap).collect())
}

fn expected(from: u64, to: u64, all: bool) -> Vec<String> {
    times()
        .into_iter()
        .filter(|(i, at)| {
            (from..to).contains(at)
                && (all || matches!(role(*i), LaneRole::Inspection | LaneRole::Hold))
        })
        .map(|(i, _)| format!("BL{i:08}"))
        .collect()
}

#[test]
fn shift_and_day_exports_hold_exactly_their_diversions() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("journal");
    write_journal(
        &store,
        times()
            .into_iter()
            .map(|(i, at)| Record::Parcel(parcel(i, at))),
    );

    // The day shift of the 5th, 08:00 to 20:00 local, Chinese header, to a file.
    let file = dir.path().join("day-shift.csv");
    let out = run(
        &store,
        &[
            "--date",
            "2026-12-05",
            "--shift",
            "1",
            "--lang",
            "zh",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (header, rows) = parse(&std::fs::read(&file).unwrap());
    assert_eq!(header[0], "运单号");
    assert_eq!(header[4], "道口类型");
    let waybills: Vec<String> = rows.iter().map(|r| r[0].to_string()).collect();
    let want = expected(DEC5, DEC5 + 12 * HOUR, false);
    assert!(!want.is_empty());
    assert_eq!(waybills, want);
    assert_eq!(&rows[0][1], "2026-12-05T08:10:00+08:00");
    assert!(rows.iter().all(|r| &r[4] == "查验" || &r[4] == "扣留"));
    for r in &rows {
        let i: u32 = r[0][2..].parse().unwrap();
        if i % 2 == 1 {
            assert_eq!(&r[7], format!("undeclared: 运单 {} 无申报", &r[0]));
        } else {
            assert_eq!(&r[7], "undeclared: no declaration, \"held\"");
        }
    }
    assert_eq!(&rows[0][9], "企业甲");

    // The night shift (containing 02:00 on the 5th), every lane, English, to stdout.
    let out = run(&store, &["--at", "2026-12-05T02:00", "--all-lanes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (header, rows) = parse(&out.stdout);
    assert_eq!(header[0], "Waybill");
    let waybills: Vec<String> = rows.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(waybills, expected(DEC5 - 12 * HOUR, DEC5, true));

    // The whole local day of the 5th: midnight to midnight in Shanghai.
    let out = run(&store, &["--date", "2026-12-05"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rows) = parse(&out.stdout);
    assert_eq!(
        rows.len(),
        expected(DEC5 - 8 * HOUR, DEC5 + 16 * HOUR, false).len()
    );

    // Another zone moves the shift.
    let out = run(
        &store,
        &["--date", "2026-12-05", "--shift", "1", "--time-zone", "UTC"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rows) = parse(&out.stdout);
    let waybills: Vec<String> = rows.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(waybills, expected(DEC5 + 8 * HOUR, DEC5 + 20 * HOUR, false));
    assert!(rows[0][1].ends_with("+00:00"), "{}", &rows[0][1]);

    // Bad input is a usage error naming what is wrong.
    let out = run(&store, &["--time-zone", "Asia/Beijing"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Asia/Beijing"));
    let out = run(&store, &["--date", "2026-12-05", "--shift", "3"]);
    assert_eq!(out.status.code(), Some(64));
    let out = run(&store, &["--date", "12/05/2026"]);
    assert_eq!(out.status.code(), Some(64));
}
