//! Salvage of damaged stores made by the real writer.
use bondline_devices::contract::{AlertKind, AlertRecord, Declaration, Record};

use super::*;
use crate::journal::maintenance::tests::filled;
use crate::journal::GENESIS_HASH;

/// A closed store of `n` records with one declaration; records 1..=`acked` acknowledged.
async fn closed_store(n: u32, acked: u64) -> tempfile::TempDir {
    let (dir, journal) = filled(n).await;
    let d: Declaration =
        serde_json::from_str(r#"{"schema":1,"waybill":"BL1","enterprise":"E1","consumer":"C1"}"#)
            .unwrap();
    journal.store_declaration(&d).unwrap();
    for seq in 1..=acked {
        journal.mark_forwarded(seq).unwrap();
    }
    journal.flush().await.unwrap();
    dir
}

fn salvage_record(r: &Record) -> &AlertRecord {
    match r {
        Record::Alert(a) if a.alert == AlertKind::JournalSalvaged => a,
        other => panic!("not a salvage record: {other:?}"),
    }
}

#[tokio::test]
async fn a_garbage_conf_is_salvaged_whole_and_the_chain_continues() {
    let dir = closed_store(30, 10).await;
    Journal::open(dir.path())
        .unwrap()
        .add_to_history(10, "c1", 5)
        .unwrap();
    std::fs::write(dir.path().join("conf"), b"not sled's conf").unwrap();
    let err = Journal::open(dir.path())
        .err()
        .expect("sled refuses the conf");
    assert!(err.is_damaged(), "{err}");

    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("journal.key");
    let report = salvage(dir.path(), "gw", &key_file).unwrap();
    // The fresh store's untagged state is adopted at the next start, marked beside the key.
    assert!(crate::journal::integrity::adoption_marker(&key_file).exists());
    assert_eq!(report.opened, Opened::WithoutConf);
    assert_eq!((report.records_kept, report.records_lost), (30, Some(0)));
    assert_eq!(report.chain, ChainMode::Continued);
    assert!(
        report.damaged.join("conf").exists(),
        "the damaged store is kept"
    );
    assert_eq!(report.platform_dropped, 0);

    let fresh = Journal::open(dir.path()).unwrap();
    assert!(fresh.verify().unwrap().ok());
    fresh.check_head_mark().unwrap();
    assert_eq!(fresh.chain_head().unwrap().0, 31);
    let last = fresh.record(31).unwrap().unwrap();
    let alert = salvage_record(&last);
    assert!(
        alert.detail.contains("last good record seq 30"),
        "{}",
        alert.detail
    );
    // What the broker had acknowledged stays acknowledged; the rest and the alert wait.
    assert_eq!(fresh.forwarded_watermark(), 10);
    assert_eq!(fresh.backlog_len(), 21);
    assert!(fresh.declaration("BL1").unwrap().is_some());
    let notice = fresh.take_salvage_notice().unwrap().unwrap();
    assert_eq!(notice, alert.detail);
    assert_eq!(fresh.take_salvage_notice().unwrap(), None, "raised once");
    // The consumers' day totals beside the store are the fresh store's, and the copy salvage
    // read left no file of its own.
    use crate::rules::history::StoredHistory;
    assert_eq!(
        fresh.stored_days().unwrap().days_of("c1").unwrap(),
        vec![(10, 1, 5)]
    );
    let name = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let strays: Vec<_> = std::fs::read_dir(dir.path().parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("{name}.salvage")))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

#[tokio::test]
async fn a_truncated_log_restarts_the_chain_with_the_records_that_still_read() {
    let dir = closed_store(600, 0).await;
    let db = dir.path().join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // sled opens the prefix that still reads without a word; the head mark tells.
    let opened = Journal::open(dir.path()).unwrap();
    let err = opened.check_head_mark().expect_err("records were lost");
    assert!(err.is_damaged(), "{err}");
    let (readable, _) = opened.chain_head().unwrap();
    drop(opened);

    let keys = tempfile::tempdir().unwrap();
    let report = salvage(dir.path(), "gw", &keys.path().join("journal.key")).unwrap();
    assert_eq!(report.chain, ChainMode::Restarted);
    assert_eq!(report.old_head, Some(600));
    assert_eq!(report.records_kept, readable);
    assert_eq!(report.records_lost, Some(600 - readable));

    let fresh = Journal::open(dir.path()).unwrap();
    assert!(fresh.verify().unwrap().ok());
    let first = fresh.record(1).unwrap().unwrap();
    assert_eq!(first.prev_hash(), hex::encode(GENESIS_HASH));
    let alert = salvage_record(&first);
    assert!(alert
        .detail
        .contains(&format!("last good record seq {readable}")));
    assert!(
        alert.detail.contains("old head seq 600"),
        "{}",
        alert.detail
    );
    // The kept records follow in their old order, all to be sent.
    let Some(Record::Parcel(p)) = fresh.record(2).unwrap() else {
        panic!("record 2 is not the first kept parcel");
    };
    assert_eq!((p.parcel, p.seq), (1, 2));
    assert_eq!(fresh.backlog_len() as u64, readable + 1);
}

#[tokio::test]
async fn a_store_sled_cannot_open_at_all_leaves_only_the_salvage_record() {
    let dir = closed_store(20, 0).await;
    // Every way of opening fails: a garbage snapshot, and a conf that is garbage too,
    // on a log that is no log.
    std::fs::write(dir.path().join("snap.00000000000fffff"), b"garbage").unwrap();
    std::fs::write(dir.path().join("conf"), b"garbage").unwrap();
    std::fs::write(dir.path().join("db"), vec![0x5a; 300_000]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let report = salvage(dir.path(), "gw", &keys.path().join("journal.key")).unwrap();
    // sled may read the garbage log as an empty store: either way nothing is kept.
    assert_eq!(report.records_kept, 0);
    assert_eq!(report.records_lost, Some(20));
    assert_eq!(report.chain, ChainMode::Restarted);
    let fresh = Journal::open(dir.path()).unwrap();
    assert_eq!(fresh.chain_head().unwrap().0, 1);
    salvage_record(&fresh.record(1).unwrap().unwrap());
}

#[tokio::test]
async fn a_salvage_that_finds_another_consumers_file_says_so() {
    use crate::rules::history::StoredHistory;
    let dir = closed_store(5, 0).await;
    Journal::open(dir.path())
        .unwrap()
        .add_to_history(10, "c1", 5)
        .unwrap();
    std::fs::write(dir.path().join("conf"), b"not sled's conf").unwrap();
    std::fs::remove_file(crate::journal::consumer_days_path(dir.path())).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let report = salvage(dir.path(), "gw", &keys.path().join("journal.key")).unwrap();
    let note = report.consumer_file.clone().expect("said");
    assert!(note.contains("were not the damaged store's"), "{note}");
    let fresh = Journal::open(dir.path()).unwrap();
    assert!(
        fresh
            .take_salvage_notice()
            .unwrap()
            .unwrap()
            .contains(&note),
        "the alarm at the next start says it too"
    );
    // Taken as found: a new, empty file.
    assert!(fresh
        .stored_days()
        .unwrap()
        .days_of("c1")
        .unwrap()
        .is_empty());
}
