use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bondline_devices::contract::{FiredRule, LaneRole, ParcelRecord, Record};
use proptest::prelude::*;

use super::*;
use crate::journal::{record_sink, test_record, Journal};
use crate::metrics::Metrics;

/// A journal holding `records`, stored in that order, each group of `group` committed
/// before the next is queued.
async fn journal_of(records: Vec<Record>, group: usize) -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let (sink, writer, mut accepted) = record_sink(
        journal.clone(),
        Duration::from_millis(1),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let writer = tokio::spawn(writer.run());
    let n = records.len();
    for (i, r) in records.into_iter().enumerate() {
        sink.push(r);
        if (i + 1) % group.max(1) == 0 || i + 1 == n {
            accepted.wait_for(|s| *s > i as u64).await.unwrap();
        }
    }
    drop(sink);
    writer.await.unwrap();
    (dir, journal)
}

fn parcel(n: u32, waybill: &str, role: LaneRole, at: u64) -> ParcelRecord {
    let mut p = test_record(n, at);
    p.waybill = Some(waybill.to_string());
    p.lane_role = role;
    p.lane = match role {
        LaneRole::Release => 1,
        LaneRole::Inspection => 2,
        LaneRole::Hold => 3,
        LaneRole::Exception => 4,
    };
    p
}

/// Every page from the first, until no cursor is left.
fn all_pages(
    journal: &Journal,
    f: &Filter,
    range: (u64, u64),
    limit: usize,
    budget: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut before = u64::MAX;
    for _ in 0..10_000 {
        let p = page(journal, f, range, before, limit, budget).unwrap();
        assert!(p.items.len() <= limit);
        assert!(p.examined <= budget);
        out.extend(p.items.iter().map(|i| i.record.waybill.clone().unwrap()));
        match p.next {
            Some(n) => before = n.parse().unwrap(),
            None => return out,
        }
    }
    panic!("the pages never ended");
}

#[tokio::test]
async fn pages_list_diversions_newest_first_once_each_with_their_records() {
    let mut rs: Vec<Record> = Vec::new();
    for i in 1..=30u32 {
        let role = match i % 3 {
            0 => LaneRole::Release,
            1 => LaneRole::Inspection,
            _ => LaneRole::Hold,
        };
        let mut p = parcel(i, &format!("BL{i:04}"), role, 10_000 + u64::from(i) * 1000);
        p.line = if i % 2 == 0 { "L2".into() } else { "L1".into() };
        if i == 7 {
            p.rules_fired = vec![FiredRule {
                rule: "xray".into(),
                target: LaneRole::Inspection,
                reason: "suspect".into(),
            }];
        }
        rs.push(p.into());
    }
    // BL0004 (inspection) is decided again to release: it leaves the worklist. BL0005 (hold)
    // is decided again to inspection: it is listed once, at its newer decision.
    let mut again = parcel(4, "BL0004", LaneRole::Release, 45_000);
    again.revision = 1;
    rs.push(again.into());
    let mut again = parcel(5, "BL0005", LaneRole::Inspection, 46_000);
    again.revision = 1;
    rs.push(again.into());
    let (_dir, journal) = journal_of(rs, 4).await;
    let everything = (0, u64::MAX);
    let listed = all_pages(&journal, &Filter::default(), everything, 3, MAX_EXAMINED);
    let mut expected: Vec<String> = (1..=30u32)
        .rev()
        .filter(|i| i % 3 != 0 && *i != 4 && *i != 5)
        .map(|i| format!("BL{i:04}"))
        .collect();
    expected.insert(0, "BL0005".into());
    assert_eq!(listed, expected);
    // A tiny reading budget gives the same list over more pages.
    assert_eq!(
        all_pages(&journal, &Filter::default(), everything, 3, 2),
        expected
    );

    // Each item carries its waybill's records.
    let p = page(
        &journal,
        &Filter::default(),
        everything,
        u64::MAX,
        1,
        MAX_EXAMINED,
    )
    .unwrap();
    assert_eq!(p.items[0].record.revision, 1);
    assert_eq!(p.items[0].related.len(), 2, "both decisions of BL0005");

    // Filters.
    let f = Filter {
        line: Some("L1".into()),
        role: Some(LaneRole::Hold),
        ..Default::default()
    };
    let held_l1 = all_pages(&journal, &f, everything, 50, MAX_EXAMINED);
    assert!(!held_l1.is_empty());
    assert!(
        held_l1.iter().all(|w| {
            let i: u32 = w[2..].parse().unwrap();
            i % 2 == 1 && i % 3 == 2
        }),
        "{held_l1:?}"
    );
    let f = Filter {
        rule: Some("xray".into()),
        ..Default::default()
    };
    assert_eq!(
        all_pages(&journal, &f, everything, 50, MAX_EXAMINED),
        vec!["BL0007"]
    );
    let f = Filter {
        waybill_prefix: Some("BL001".into()),
        ..Default::default()
    };
    let tens = all_pages(&journal, &f, everything, 50, MAX_EXAMINED);
    assert_eq!(tens.len(), 7, "{tens:?}");
    // The time range is the scan time's.
    let range = all_pages(
        &journal,
        &Filter::default(),
        (20_000, 25_000),
        50,
        MAX_EXAMINED,
    );
    assert_eq!(range, vec!["BL0014", "BL0013", "BL0011", "BL0010"]);
}

#[test]
fn queries_parse_with_the_shift_as_default() {
    let q = WorklistQuery::default();
    let (from, to, before, limit) = range_of(&q, 10_000_000, Some(5_000_000)).unwrap();
    assert_eq!(
        (from, to, before, limit),
        (5_000_000, 10_000_001, u64::MAX, DEFAULT_LIMIT)
    );
    // A shift that began a minute ago: the last hour still shows.
    let (from, _, _, _) = range_of(&q, 10_000_000, Some(9_940_000)).unwrap();
    assert_eq!(from, 10_000_001 - AT_LEAST_MS);
    let q = WorklistQuery {
        before: Some("x".into()),
        ..Default::default()
    };
    assert!(range_of(&q, 1, None).is_err());
    let q = WorklistQuery {
        limit: Some("51".into()),
        ..Default::default()
    };
    assert!(range_of(&q, 1, None).is_err());
    let q = WorklistQuery {
        role: Some("release".into()),
        ..Default::default()
    };
    assert!(filter_of(&q).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Whatever the decisions, re-decisions, page size and reading budget, the pages list
    /// exactly the waybills whose newest decision in the range is a diversion, newest first,
    /// each once.
    #[test]
    fn pages_are_complete_and_never_repeat(
        decisions in proptest::collection::vec((0u8..12, 0u8..4), 1..60),
        limit in 1usize..6,
        budget in 1usize..9,
        group in 1usize..5,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let records: Vec<Record> = decisions
            .iter()
            .enumerate()
            .map(|(i, (w, role))| {
                let role = LaneRole::ALL[*role as usize];
                parcel(i as u32, &format!("W{w:02}"), role, 1_000 + i as u64 * 10).into()
            })
            .collect();
        let (_dir, journal) = rt.block_on(journal_of(records, group));
        let listed = all_pages(&journal, &Filter::default(), (0, u64::MAX), limit, budget);
        let mut seen = HashSet::new();
        let mut expected = Vec::new();
        for (w, role) in decisions.iter().rev() {
            let name = format!("W{w:02}");
            if seen.insert(name.clone())
                && matches!(LaneRole::ALL[*role as usize], LaneRole::Inspection | LaneRole::Hold)
            {
                expected.push(name);
            }
        }
        prop_assert_eq!(listed, expected);
    }
}
