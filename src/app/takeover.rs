//! What a start takes over from the last run: the store itself (its owner lock first, then
//! the open), release decisions whose outcome was never recorded, the waybills already
//! released (for the duplicate-label rule, before any parcel may be released), and the
//! chain's integrity, walked behind the running lines. Records spilled at the last shutdown
//! (or while the store opened) are the journal writer's to store first (`journal::writer`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alarm::Alarms;
use crate::config::Config;
use crate::journal::Journal;

use super::StartError;

/// How far back the journal is read at start for parcels whose dispositions may still come:
/// far beyond a line's disposition timeout; [`RECENT_DISPOSITIONS`] per line are read even
/// if older (the PLC's ring may hold them), and never more than [`RECENT_MAX_RECORDS`].
const RECENT_WINDOW: Duration = Duration::from_secs(30 * 60);
const RECENT_DISPOSITIONS: usize = 64;
const RECENT_MAX_RECORDS: usize = 100_000;

/// Release decisions stored ahead of a command whose outcome was never recorded (the
/// gateway stopped in between) become `interrupted` records, returned with their alerts
/// for the load to journal ([`Interrupted`]); what the journal holds of recent parcels lets
/// the lines explain the PLC's dispositions of an earlier run's parcels (see
/// journal::intents).
pub(super) fn settle_interrupted(
    journal: &Journal,
    now_ms: u64,
) -> Result<(crate::journal::intents::RecentParcels, Interrupted), StartError> {
    let mut recent = journal.recent_parcels(
        now_ms.saturating_sub(RECENT_WINDOW.as_millis() as u64),
        RECENT_DISPOSITIONS,
        RECENT_MAX_RECORDS,
    )?;
    let mut interrupted = Interrupted::default();
    for r in journal.intents()? {
        let recorded = recent
            .lines
            .get(&r.line)
            .and_then(|parcels| parcels.get(&r.parcel))
            .is_some_and(|k| k.decided && k.revision >= r.revision);
        // Older than the recent window (an intent settled long ago and found again in the
        // intents' log after a crash): looked up by its waybill.
        let recorded = recorded || recorded_earlier(journal, &r);
        if recorded {
            // Stopped between the record and the intent's removal: nothing was lost.
            let key = crate::journal::intents::intent_key(&r.line, r.parcel);
            journal.settle_intents(&[(key, r.revision)])?;
            continue;
        }
        let (record, alert) = crate::journal::intents::interrupted(r, now_ms);
        tracing::warn!(line = %record.line, parcel = record.parcel, "release decision found without its outcome: recorded as interrupted");
        recent.decided(&record);
        interrupted.0.push((record, alert));
    }
    Ok((recent, interrupted))
}

/// The `interrupted` records of [`settle_interrupted`] and their alerts, journaled once the
/// clearance table is loaded ([`Interrupted::journal`]). Not before: a record whose parcel
/// was counted in its consumer's history writes its counted mark into the platform log,
/// which the load reads (and mends at its end) meanwhile. Until they are journaled their
/// intents stay stored, so a stop before then finds them again at the next start.
#[derive(Debug, Default)]
pub(super) struct Interrupted(
    Vec<(
        bondline_devices::contract::ParcelRecord,
        bondline_devices::contract::AlertRecord,
    )>,
);

impl Interrupted {
    /// Counts each record's parcel in the loaded table as the record says it was counted
    /// (once per waybill: a mark the load read already counts it), then journals the
    /// records and their alerts.
    pub(super) fn journal(
        self,
        table: &crate::rules::ClearanceTable,
        sink: &crate::journal::RecordSink,
    ) {
        for (record, alert) in self.0 {
            let counted = record
                .inputs
                .as_ref()
                .filter(|i| i.counted)
                .and_then(|i| i.counted_day);
            if let (Some(w), Some(day)) = (record.waybill.as_deref(), counted) {
                table.count(w, day);
            }
            sink.push(record);
            sink.push(alert);
        }
    }
}

/// Whether the journal holds a parcel record of `intent`'s line and parcel, of its revision
/// or a later one, found through the intent's waybill. A journal that cannot be read there
/// answers no (the intent is then recorded as interrupted: errs safe).
fn recorded_earlier(journal: &Journal, intent: &bondline_devices::contract::ParcelRecord) -> bool {
    let Some(waybill) = intent.waybill.as_deref() else {
        return false;
    };
    match journal.waybill_records(waybill) {
        Ok(records) => records.iter().any(|r| {
            r.as_parcel().is_some_and(|p| {
                p.line == intent.line && p.parcel == intent.parcel && p.revision >= intent.revision
            })
        }),
        Err(e) => {
            warn!(error = %e, waybill, "the records of a release intent's waybill could not be read; the intent is recorded as interrupted");
            false
        }
    }
}

/// The registry of waybills this gateway released, for the duplicate-label rule on every
/// line; empty until [`fill_released`].
pub(super) fn released_registry(config: &Config) -> Arc<crate::line::duplicates::Released> {
    Arc::new(crate::line::duplicates::Released::new(config.duplicates))
}

/// Fills the registry of [`released_registry`] from the marks stored with each release
/// intent (those of waybills the clearance table still holds: retention removes the others
/// once the table is loaded). Read once here; the lines consult the copy in memory. Done
/// before the clearance table's load starts: no parcel is released before it ends.
pub(super) fn fill_released(
    journal: &Journal,
    config: &Config,
    released: &crate::line::duplicates::Released,
    now_ms: u64,
) -> Result<(), StartError> {
    for r in journal
        .released_marks(now_ms.saturating_sub(config.storage.clearance.as_millis() as u64))?
    {
        let Some(waybill) = r.waybill.clone() else {
            continue;
        };
        released.load(
            &waybill,
            crate::line::duplicates::Mark {
                line: r.line.clone(),
                parcel: r.parcel,
                scanned_at_ms: r.scanned_at_ms,
                weight_g: r.inputs.as_ref().and_then(|i| i.measured_weight_g),
                lane: r.lane,
                // The store does not hold the PLC's word on where it went: taken as
                // released, so no later parcel is taken for it come round again.
                floor: crate::line::duplicates::Floor::Released,
                snapshots: Vec::new(),
            },
        );
    }
    Ok(())
}

/// Records waiting for the broker above which the chain walk at start waits.
pub const CHECK_AFTER_BACKLOG: u64 = 10_000;
/// The longest the chain walk at start waits for a backlog to drain.
pub(super) const CHECK_DEFER_MAX: Duration = Duration::from_secs(600);

/// Raises `journal_chain_broken` for the head and anchor tag problems found at start, then
/// walks the whole chain on a blocking thread (off the decision path: lines run meanwhile)
/// and raises it for what the walk finds. While the uplink drains a backlog of more than
/// [`CHECK_AFTER_BACKLOG`] records, the walk waits (at most [`CHECK_DEFER_MAX`]): it reads
/// and hashes the whole store, and took a sixth of the CPU from a drain (BENCHMARKS.md). The
/// walk ends early once `stop` is cancelled; the handle ends with it. `stop` must be the
/// daemon's shutdown, not a later token: the task holds a record sink, and the journal
/// writer finishes (spilling what it holds) only once every sink is gone.
pub(super) fn check_chain(
    journal: &Journal,
    gateway: &str,
    alarms: &Alarms,
    sink: &crate::journal::RecordSink,
    tags: Vec<crate::journal::ChainProblem>,
    backlog: impl Fn() -> u64 + Send + 'static,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let raise = {
        let (journal, gateway, alarms, sink) = (
            journal.clone(),
            gateway.to_string(),
            alarms.clone(),
            sink.clone(),
        );
        move |problems: &[crate::journal::ChainProblem]| {
            use bondline_devices::contract::{AlertKind, AlertRecord};
            let text = problems
                .iter()
                .take(20)
                .map(|p| serde_json::to_string(p).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ");
            let detail = format!(
                "journal chain broken: {} problem(s): {text}; see `bondline journal verify`",
                problems.len()
            );
            journal.note_chain_problem(detail.clone());
            alarms.raise(format!("journal_chain_broken: {detail}"));
            let now = crate::metrics::unix_ms(std::time::SystemTime::now());
            sink.push(AlertRecord::new(
                &gateway,
                "",
                AlertKind::JournalChainBroken,
                detail,
                now,
            ));
        }
    };
    if !tags.is_empty() {
        raise(&tags);
    }
    let journal = journal.clone();
    tokio::spawn(async move {
        let waiting = Instant::now();
        while backlog() > CHECK_AFTER_BACKLOG && waiting.elapsed() < CHECK_DEFER_MAX {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        // On a blocking thread of the main runtime (nice +10). Not at idle priority: sled's
        // reads hold its store-wide lock for reading, and a reader starved of the CPU inside one
        // would hold up the journal writer's commits, and with them releases.
        let started = Instant::now();
        let walked = tokio::task::spawn_blocking(move || journal.verify_running(&stop))
            .await
            .map_err(|e| e.to_string());
        match walked {
            Ok(Ok(report)) if report.ok() => {
                info!(records = report.checked, took = ?started.elapsed(), "journal chain checked: whole");
            }
            Ok(Ok(report)) if tags.is_empty() => raise(&report.problems),
            Ok(Ok(report)) => {
                let mut all = tags;
                all.extend(report.problems);
                raise(&all);
            }
            Ok(Err(crate::journal::JournalError::Stopped)) => {
                info!("journal chain check at start stopped at shutdown")
            }
            Ok(Err(e)) => warn!(error = %e, "journal chain check at start failed"),
            Err(e) => warn!(error = %e, "journal chain check at start stopped"),
        }
    })
}

/// The store as the last run left it, opened: the journal with its integrity key, the
/// clearance table begun (it fills in the background, see `loading`), and the chain's head
/// and anchor tags checked now, before the writer moves the head.
pub(super) struct Opened {
    pub(super) journal: Journal,
    /// Stored entries without integrity tags are adopted (a new key, or a salvaged store).
    pub(super) adopting: bool,
    pub(super) expected_entries: u64,
    pub(super) expected_declarations: u64,
    pub(super) chain_tags: Vec<crate::journal::ChainProblem>,
}

/// How long a start waits for another process to let go of the store's owner lock.
const OWNER_WAIT: Duration = Duration::from_secs(10);

/// The store's owner lock, `<store>.lock` beside the store, held for the daemon's life.
///
/// The lines may start before a large store has finished opening (see `App::start`), and
/// sled's own lock is taken somewhere inside that open. This lock is taken first, in
/// moments, so that a second daemon on the same store never drives the floor's devices
/// beside the first: it waits here, like sled's own wait for its lock, and fails.
pub(super) struct OwnerLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// The owner lock's file of the store at `store`.
pub(super) fn owner_lock_file(store: &std::path::Path) -> std::path::PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    store.with_file_name(name)
}

/// Takes the store's [`OwnerLock`], waiting up to [`OWNER_WAIT`] for another process (or
/// this process's previous run) to let go of it.
pub(super) async fn lock_owner(store: &std::path::Path) -> Result<OwnerLock, StartError> {
    lock_owner_within(store, OWNER_WAIT).await
}

async fn lock_owner_within(
    store: &std::path::Path,
    wait: Duration,
) -> Result<OwnerLock, StartError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = owner_lock_file(store);
    let failed = |why: String| StartError::OwnerLock {
        lock: path.display().to_string(),
        why,
    };
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| failed(e.to_string()))
    };
    let started = Instant::now();
    let mut file = open()?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(OwnerLock { _lock: lock }),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if started.elapsed() < wait => {
                file = f;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(failed(format!(
                    "held by another process for {:?}: another bondline runs on this store",
                    wait
                )))
            }
            Err((_, e)) => return Err(failed(e.to_string())),
        }
    }
}

/// Opens the journal and begins the clearance table's load; see [`Opened`].
pub(super) fn open_store(config: &Config) -> Result<Opened, StartError> {
    let journal = Journal::open(&config.storage.path)?;
    // Release intents wait for one `fdatasync` of their own log from here on. A log that
    // cannot be made (a full disk at the first start) leaves them on the intent store's own
    // flush: slower, as durable.
    if let Err(e) = journal.prepare_intent_log() {
        warn!(error = %e, "the release intents' write-ahead log could not be opened; release intents wait for the intent store's flush instead");
    }
    // The clearance table fills in the background (see `load_clearance`): the lines decide
    // from the first second, holding every waybill until it is loaded.
    let (expected_entries, expected_declarations) = journal.clearance_load_hint();
    journal.check_head_mark()?;
    let key_file = &config.storage.integrity_key_file;
    let had_key = key_file.exists();
    // Adopting: the key is new, or the start that made it did not finish its load.
    let (key, adopting) = crate::journal::integrity::IntegrityKey::open_for_start(key_file)?;
    if !had_key {
        info!(file = %key_file.display(), "integrity key created");
    } else if adopting {
        warn!(file = %key_file.display(), "untagged state is adopted at this start: the store is fresh from journal salvage, or the start that created the integrity key did not finish its load");
    }
    journal.set_integrity_key(key, adopting);
    let adopting = journal.begin_clearance_load()?;
    // The chain's head and anchor tags now, before the writer moves the head; the whole
    // chain is walked in the background below.
    let chain_tags = journal.check_chain_tags(true)?;
    Ok(Opened {
        journal,
        adopting,
        expected_entries,
        expected_declarations,
        chain_tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interrupted release whose parcel was counted is counted in the loaded table (once:
    /// a mark the load read already counted it), and its record and alert are journaled.
    #[tokio::test]
    async fn interrupted_releases_are_counted_in_the_loaded_table_and_journaled() {
        use bondline_devices::contract::{DecisionInputs, Record};
        let table = crate::rules::ClearanceTable::default();
        table.apply_declaration(&crate::rules::clearance::tests::decl("W1", "c1", 700));
        let mut release = crate::journal::test_record(7, 1_000);
        release.waybill = Some("W1".into());
        release.inputs = Some(Box::new(DecisionInputs {
            consumer: Some("c1".into()),
            counted: true,
            counted_day: Some(20_000),
            ..Default::default()
        }));
        let (r, a) = crate::journal::intents::interrupted(release, 2_000);
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (sink, writer, _) = crate::journal::record_sink(
            journal.clone(),
            Duration::from_millis(1),
            Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        let task = tokio::spawn(writer.run());
        Interrupted(vec![(r.clone(), a.clone())]).journal(&table, &sink);
        Interrupted(vec![(r, a)]).journal(&table, &sink);
        assert_eq!(table.known("W1").counted_day, Some(20_000));
        table.apply_declaration(&crate::rules::clearance::tests::decl("W2", "c1", 1));
        let window = table.consumer_window("W2", 0, u32::MAX);
        assert_eq!(
            (window.parcels, window.value_minor),
            (1, 700),
            "counted once"
        );
        drop(sink);
        task.await.unwrap();
        let kinds: Vec<bool> = journal
            .records_between(0, u64::MAX, 100)
            .unwrap()
            .0
            .iter()
            .map(|r| matches!(r, Record::Parcel(p) if p.divert.status == bondline_devices::contract::DivertStatus::Interrupted))
            .collect();
        assert_eq!(
            (kinds.len(), kinds.iter().filter(|&&k| k).count()),
            (4, 2),
            "each journaled with its alert"
        );
    }

    /// An intent found at start whose parcel record is older than the recent window (a
    /// release settled long ago, found again in the intents' log after a crash) is settled
    /// through its waybill's records, not recorded as interrupted.
    #[tokio::test]
    async fn an_old_settled_intent_found_again_is_not_reported_interrupted() {
        use bondline_devices::contract::{DivertStatus, LaneRole};
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (sink, writer, mut accepted) = crate::journal::record_sink(
            journal.clone(),
            Duration::from_millis(1),
            Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        let task = tokio::spawn(writer.run());
        let mut release = crate::journal::test_record(7, 1_000);
        release.lane_role = LaneRole::Release;
        release.divert.status = DivertStatus::Acked;
        sink.push(release.clone());
        // Later dispositions of the line, enough for the recent scan to stop before it.
        let now_ms = 100_000_000;
        for n in 0..RECENT_DISPOSITIONS as u32 {
            sink.push(crate::journal::test_disposition(100 + n, now_ms - 1_000));
        }
        while *accepted.borrow_and_update() < 1 + RECENT_DISPOSITIONS as u64 {
            accepted.changed().await.unwrap();
        }
        let mut intent = release.clone();
        intent.divert.status = DivertStatus::Interrupted;
        journal
            .store_intents(&[crate::journal::intents::encode_intent(&intent)])
            .await
            .unwrap();
        let recent = journal
            .recent_parcels(
                now_ms - RECENT_WINDOW.as_millis() as u64,
                RECENT_DISPOSITIONS,
                RECENT_MAX_RECORDS,
            )
            .unwrap();
        assert!(
            !recent.lines["L1"].contains_key(&7),
            "the release record lies beyond the recent scan"
        );

        let (_, interrupted) = settle_interrupted(&journal, now_ms).unwrap();
        assert!(interrupted.0.is_empty());
        assert!(
            journal.intents().unwrap().is_empty(),
            "settled, not pending"
        );
        drop(sink);
        task.await.unwrap();
        let interrupted = journal
            .records_between(0, u64::MAX, 1_000)
            .unwrap()
            .0
            .into_iter()
            .filter(|r| {
                r.as_parcel()
                    .is_some_and(|p| p.divert.status == DivertStatus::Interrupted)
            })
            .count();
        assert_eq!(interrupted, 0);
    }

    /// Only one daemon owns a store: a second start fails on the owner lock (before any line
    /// starts), and takes it once the first has let go.
    #[tokio::test]
    async fn a_store_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let first = lock_owner(&store).await.unwrap();
        let second = lock_owner_within(&store, Duration::from_millis(100)).await;
        let Err(e) = second else {
            panic!("a second owner")
        };
        let text = e.to_string();
        assert!(
            text.contains("journal.lock") && text.contains("another bondline runs on this store"),
            "{text}"
        );
        drop(first);
        lock_owner_within(&store, Duration::from_millis(100))
            .await
            .expect("free once the first lets go");
    }
}
