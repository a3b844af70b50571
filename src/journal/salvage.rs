//! A way back from a damaged store: `bondline journal salvage`.
//!
//! A store sled cannot open (a truncated or overwritten log file, a garbage `conf` or
//! snapshot) stops the daemon at start with [`crate::cli::EXIT_JOURNAL_DAMAGED`]: the line
//! must not run without a journal (nothing lost), and nothing should be thrown away without
//! an operator deciding so. Salvage is that decision, for a stopped daemon:
//!
//! 1. It refuses while another process holds the store's lock (the daemon runs).
//! 2. It renames the store to `<path>.damaged-<unix_ms>`, kept as found, as evidence: it is
//!    never written again.
//! 3. It copies that directory to a work directory and opens the copy, trying, in order: as
//!    found; without its `conf` (sled writes a new one from the same settings); without its
//!    snapshot files (sled rebuilds the page table from its log); without both. When none
//!    opens, nothing is readable, and the report says so.
//! 4. From what opened it keeps the records from the first stored one for as long as each
//!    parses and links to its predecessor (`seq` one higher, `prev_hash` the hash of the
//!    predecessor's bytes; the first one against the stored anchor, or 64 zeros for `seq` 1).
//!    The last of them is the *last good* record. Every later record counts as lost (it stays
//!    in the damaged copy).
//! 5. It keeps every platform state entry that parses: declarations, instructions, enterprise
//!    notices, the platform's rule set, and the id and history entries that go with them.
//! 6. It writes a fresh store at the original path, in one of two ways:
//!    - **continued** when nothing was lost (the kept records end at the old store's head,
//!      with the head's hash): the records byte for byte with their numbers, which of them the
//!      broker had acknowledged and which are parked, then the salvage record chained on. The
//!      platform sees one unbroken chain.
//!    - **restarted** otherwise: the salvage record is `seq` 1 with 64 zeros (the platform sees
//!      a journal replaced by an empty one, docs/mqtt.md), then every kept record chained
//!      again after it (new `seq`, `prev_hash` and `msg_id`, the same content), all to be
//!      sent. Numbering on from a store that lost its tail would give a number the platform
//!      may already hold to another record.
//!
//!    The salvage record is an `alert` record of kind `journal_salvaged` naming the old
//!    chain's last good `seq` and hash, the old head when it was readable, and how many
//!    records were kept and lost.
//! 7. It leaves a notice in `meta`; the next start raises it as an alarm (an `alarm` event on
//!    `P/events`) and removes it.

use std::path::{Path, PathBuf};

use bondline_devices::contract::{
    AlertKind, AlertRecord, Declaration, EnterpriseNotice, Instruction, Record, SCHEMA,
};

use super::platform::StoredRules;
use super::{chain_hash, decode_link, encode_link, Journal, JournalError, GENESIS_HASH};
use super::{META_ANCHOR, META_FORWARDED};

/// `meta` key of the notice the next start raises as an alarm.
const META_SALVAGE_NOTICE: &[u8] = b"salvage_notice";
/// Records written per commit while the fresh store is filled.
const COMMIT_RECORDS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    #[error("{0}: no journal here")]
    Missing(PathBuf),
    #[error("{0} is in use by another process (is the daemon running? stop it first)")]
    InUse(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the fresh store: {0}")]
    Fresh(#[from] JournalError),
}

impl From<sled::Error> for SalvageError {
    fn from(e: sled::Error) -> Self {
        SalvageError::Fresh(JournalError::Store(e))
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SalvageError + 'a {
    move |source| SalvageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How the damaged store could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Opened {
    AsFound,
    WithoutConf,
    WithoutSnapshot,
    WithoutConfAndSnapshot,
    /// sled could not open it in any way: nothing was readable.
    NotAtAll,
}

/// How the fresh store's chain relates to the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainMode {
    Continued,
    Restarted,
}

/// What salvage did, printed as JSON by the command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// Where the damaged store now is.
    pub damaged: PathBuf,
    pub opened: Opened,
    /// Why each way of opening failed, in the order tried.
    pub open_errors: Vec<String>,
    /// The old store's head (`seq`), if readable.
    pub old_head: Option<u64>,
    /// The old chain's last good record: `seq` and lowercase hex hash.
    pub last_good: Option<(u64, String)>,
    pub records_kept: u64,
    /// Records of the old chain not kept: unreadable, unlinked, or missing up to the old head.
    /// `None` when the old head was not readable either.
    pub records_lost: Option<u64>,
    pub chain: ChainMode,
    /// The salvage record's `seq` in the fresh store.
    pub salvage_seq: u64,
    /// Platform state entries kept, and entries that did not parse.
    pub platform_kept: u64,
    pub platform_dropped: u64,
}

impl SalvageReport {
    /// The salvage record's detail and the alarm's text.
    fn summary(&self) -> String {
        let last = match &self.last_good {
            Some((seq, hash)) => format!("last good record seq {seq} hash {hash}"),
            None => "no record readable".into(),
        };
        let head = self.old_head.map_or("old head unreadable".into(), |h| {
            format!("old head seq {h}")
        });
        let lost = self
            .records_lost
            .map_or("an unknown number".into(), |n| n.to_string());
        let chain = match self.chain {
            ChainMode::Continued => "the chain continues".to_string(),
            ChainMode::Restarted if self.records_kept > 0 => format!(
                "the chain restarts at seq 1; the kept records follow as seq 2..={}",
                self.records_kept + 1
            ),
            ChainMode::Restarted => "the chain restarts at seq 1".to_string(),
        };
        format!(
            "journal salvaged: {last}, {head}; {} record(s) kept, {lost} lost; {chain}; damaged store kept at {}",
            self.records_kept,
            self.damaged.display()
        )
    }
}

/// What [`read_chain`] found: the kept records, the old anchor, the old forwarded watermark.
type GoodRun = (Vec<Kept>, Option<(u64, [u8; 32])>, u64);

/// One kept record of the old chain, with its delivery state.
struct Kept {
    bytes: Vec<u8>,
    record: Record,
    /// The broker had acknowledged it.
    forwarded: bool,
    parked: Option<String>,
}

/// Salvages the store at `path` for gateway `gateway` (see the module's doc).
pub fn salvage(path: &Path, gateway: &str) -> Result<SalvageReport, SalvageError> {
    if !path.is_dir() {
        return Err(SalvageError::Missing(path.to_path_buf()));
    }
    // Held until the store is renamed, so a daemon starting meanwhile cannot open it either.
    let lock = lock_store(path)?;
    let now = crate::metrics::unix_ms(std::time::SystemTime::now());
    let damaged = sibling(path, &format!("damaged-{now}"));
    std::fs::rename(path, &damaged).map_err(io("cannot move aside", path))?;
    drop(lock);
    tracing::warn!(from = %path.display(), to = %damaged.display(), "damaged journal moved aside");

    let work = sibling(path, &format!("salvage-{now}"));
    let (old, opened, open_errors) = open_copy(&damaged, &work)?;
    let mut report = SalvageReport {
        damaged: damaged.clone(),
        opened,
        open_errors,
        old_head: None,
        last_good: None,
        records_kept: 0,
        records_lost: None,
        chain: ChainMode::Restarted,
        salvage_seq: 1,
        platform_kept: 0,
        platform_dropped: 0,
    };
    if old.is_none() {
        // Nothing opened: the head mark still says how much was lost.
        if let Some((head, _)) = read_mark(&damaged) {
            report.old_head = Some(head);
            report.records_lost = Some(head);
        }
    }
    let fresh = Journal::open(path)?;
    // The fresh store's chain head, anchor and rule set carry no integrity tags (salvage
    // holds no key): they are adopted at the next start (see `integrity`).
    fresh
        .meta
        .insert(super::platform::META_INTEGRITY_ADOPT, &[])?;
    let mut kept = Vec::new();
    let mut anchor = None;
    let mut forwarded = 0;
    if let Some(old) = &old {
        // sled may panic on pages it cannot decode; what was read before that is kept.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_chain(old, &mut report)
        }));
        match read {
            Ok(read) => (kept, anchor, forwarded) = read,
            Err(_) => report
                .open_errors
                .push("reading the records panicked".into()),
        }
        let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            copy_platform_state(old, &fresh, &mut report)
        }));
        match copied {
            Ok(r) => r?,
            Err(_) => report
                .open_errors
                .push("reading the platform state panicked".into()),
        }
    }
    report.records_kept = kept.len() as u64;
    write_chain(&fresh, gateway, &mut report, kept, anchor, forwarded, now)?;
    fresh
        .meta
        .insert(META_SALVAGE_NOTICE, report.summary().as_bytes())?;
    fresh.db.flush()?;
    fresh.write_head_mark(fresh.chain_head()?);
    drop(old);
    drop(fresh);
    if let Err(e) = std::fs::remove_dir_all(&work) {
        tracing::warn!(dir = %work.display(), error = %e, "cannot remove the salvage work copy");
    }
    Ok(report)
}

/// `<path>.<suffix>` beside the store.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Takes sled's lock on the store's `db` file (an exclusive `flock`), or says who holds it.
fn lock_store(path: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, SalvageError> {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.join("db"))
    else {
        // No log file at all (or unreadable): nothing holds it.
        return Ok(None);
    };
    // A store closed a moment ago by this process is unlocked by sled's flusher thread a
    // little later (see `open_db`): wait as long as opening it would.
    let started = std::time::Instant::now();
    let mut file = file;
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(lock)),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if started.elapsed() < super::LOCK_WAIT => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(SalvageError::InUse(path.to_path_buf()))
            }
            Err((_, e)) => {
                return Err(SalvageError::Io {
                    what: "cannot lock",
                    path: path.join("db"),
                    source: e.into(),
                })
            }
        }
    }
}

/// Copies the damaged store to `work` and opens the copy, trying each repair in turn.
fn open_copy(
    damaged: &Path,
    work: &Path,
) -> Result<(Option<Journal>, Opened, Vec<String>), SalvageError> {
    let tries = [
        (Opened::AsFound, false, false),
        (Opened::WithoutConf, true, false),
        (Opened::WithoutSnapshot, false, true),
        (Opened::WithoutConfAndSnapshot, true, true),
    ];
    let mut errors = Vec::new();
    for (how, no_conf, no_snapshot) in tries {
        if work.exists() {
            std::fs::remove_dir_all(work).map_err(io("cannot clear", work))?;
        }
        copy_dir(damaged, work)?;
        if no_conf {
            let _ = std::fs::remove_file(work.join("conf"));
        }
        if no_snapshot {
            for e in std::fs::read_dir(work)
                .map_err(io("cannot read", work))?
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with("snap.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        match Journal::open(work).and_then(|j| {
            // A store that opens but cannot say where its chain ends is no better.
            j.chain_head().map(|_| j)
        }) {
            Ok(j) => return Ok((Some(j), how, errors)),
            Err(e) => errors.push(format!("{how:?}: {e}")),
        }
    }
    Ok((None, Opened::NotAtAll, errors))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), SalvageError> {
    std::fs::create_dir_all(to).map_err(io("cannot create", to))?;
    for e in std::fs::read_dir(from).map_err(io("cannot read", from))? {
        let e = e.map_err(io("cannot read", from))?;
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target).map_err(io("cannot copy", &e.path()))?;
        }
    }
    Ok(())
}

/// Reads the old chain's good run (see the module's doc, step 4). Returns the kept records,
/// the old anchor when the run starts at it, and the old forwarded watermark.
fn read_chain(old: &Journal, report: &mut SalvageReport) -> GoodRun {
    let head = old.meta.get(super::META_HEAD).ok().flatten();
    let mut head = head.and_then(|v| decode_link(&v));
    // The head mark outlives a log that lost its tail: it is the old head then.
    if let Some(marked) = read_mark(&old.path) {
        if head.is_none_or(|(h, hash)| marked.0 > h || (marked.0 == h && marked.1 != hash)) {
            head = Some(marked);
        }
    }
    report.old_head = head.map(|h| h.0);
    let anchor = old
        .meta
        .get(META_ANCHOR)
        .ok()
        .flatten()
        .and_then(|v| decode_link(&v));
    let watermark = super::decode_u64(old.meta.get(META_FORWARDED).ok().flatten());
    let (mut expected, mut prev) = anchor.map_or((1, GENESIS_HASH), |(s, h)| (s + 1, h));
    let mut kept = Vec::new();
    'batches: for entry in old.batches.iter() {
        let Ok(batch) = super::Batch::from_entry(entry) else {
            break;
        };
        let Ok(records) = batch.records() else {
            break;
        };
        for bytes in records {
            let Ok(record) = serde_json::from_slice::<Record>(bytes) else {
                break 'batches;
            };
            if record.seq() != expected || record.prev_hash() != hex::encode(prev) {
                break 'batches;
            }
            let seq = record.seq();
            let key = super::seq_key(seq);
            let parked = old
                .parked
                .get(key)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            let acked = old.acked.contains_key(key).unwrap_or(false);
            kept.push(Kept {
                bytes: bytes.to_vec(),
                record,
                forwarded: parked.is_none() && (seq <= watermark || acked),
                parked,
            });
            prev = chain_hash(bytes);
            expected += 1;
        }
    }
    let last = expected - 1;
    if !kept.is_empty() || anchor.is_some() {
        report.last_good = Some((last, hex::encode(prev)));
    }
    report.records_lost = head.map(|(h, _)| h.saturating_sub(last));
    let whole = head.is_some_and(|(h, hash)| h == last && hash == prev);
    if whole && report.last_good.is_some() {
        report.chain = ChainMode::Continued;
    }
    (kept, anchor, watermark.min(last))
}

/// The head mark of a store, if it reads.
fn read_mark(dir: &Path) -> Option<(u64, [u8; 32])> {
    let text = std::fs::read_to_string(dir.join(super::HEAD_MARK)).ok()?;
    let mut parts = text.split_whitespace();
    let seq = parts.next()?.parse().ok()?;
    let hash: [u8; 32] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    Some((seq, hash))
}

/// Copies every platform state entry that parses (see the module's doc, step 5).
fn copy_platform_state(
    old: &Journal,
    fresh: &Journal,
    report: &mut SalvageReport,
) -> Result<(), SalvageError> {
    type Check = fn(&[u8]) -> bool;
    let parses_as = |t: &str| -> Check {
        match t {
            "declarations" => {
                |v| serde_json::from_slice::<Declaration>(super::integrity::payload(v)).is_ok()
            }
            "instructions" => {
                |v| serde_json::from_slice::<Instruction>(super::integrity::payload(v)).is_ok()
            }
            "enterprises" => {
                |v| serde_json::from_slice::<EnterpriseNotice>(super::integrity::payload(v)).is_ok()
            }
            _ => |_| true,
        }
    };
    let trees = [
        ("declarations", &old.declarations, &fresh.declarations),
        ("instructions", &old.instructions, &fresh.instructions),
        (
            "instruction_ids",
            &old.instruction_ids,
            &fresh.instruction_ids,
        ),
        ("enterprises", &old.enterprises, &fresh.enterprises),
        ("notice_ids", &old.notice_ids, &fresh.notice_ids),
        ("counted", &old.counted, &fresh.counted),
        (
            "rule_update_ids",
            &old.rule_update_ids,
            &fresh.rule_update_ids,
        ),
        ("aging", &old.aging, &fresh.aging),
        ("received", &old.received, &fresh.received),
        ("history", &old.history, &fresh.history),
    ];
    for (name, from, to) in trees {
        let check = parses_as(name);
        for entry in from.iter() {
            let Ok((k, v)) = entry else {
                // A tree whose pages do not read ends here; what came before is kept.
                report.platform_dropped += 1;
                break;
            };
            if check(&v) {
                to.insert(k, v)?;
                report.platform_kept += 1;
            } else {
                report.platform_dropped += 1;
            }
        }
    }
    match old.stored_rules() {
        Ok(rules @ StoredRules::Platform { .. }) => {
            fresh.store_rules(&rules)?;
            report.platform_kept += 1;
        }
        Ok(StoredRules::Local) => {}
        Err(_) => report.platform_dropped += 1,
    }
    if let Ok(Some(month)) = old.report_sent() {
        fresh.set_report_sent(&month)?;
    }
    Ok(())
}

/// Writes the kept records and the salvage record into the fresh store (step 6).
fn write_chain(
    fresh: &Journal,
    gateway: &str,
    report: &mut SalvageReport,
    kept: Vec<Kept>,
    anchor: Option<(u64, [u8; 32])>,
    watermark: u64,
    now: u64,
) -> Result<(), SalvageError> {
    let mut salvage = Record::Alert(AlertRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: gateway.to_string(),
        line: String::new(),
        parcel: None,
        waybill: None,
        alert: AlertKind::JournalSalvaged,
        detail: String::new(),
        at_ms: now,
    });
    let mut parked = Vec::new();
    match report.chain {
        ChainMode::Continued => {
            // The good run starts right after the anchor (or at 1).
            let first = anchor.map_or(1, |a| a.0 + 1);
            if let Some((seq, hash)) = anchor {
                fresh
                    .meta
                    .insert(META_ANCHOR, &encode_link(seq, &hash)[..])?;
            }
            let mut seq = first;
            let mut prev = anchor.map_or(GENESIS_HASH, |a| a.1);
            let mut acked = Vec::new();
            for chunk in kept.chunks(COMMIT_RECORDS) {
                let bytes: Vec<Vec<u8>> = chunk.iter().map(|k| k.bytes.clone()).collect();
                prev = chain_hash(bytes.last().expect("chunks are not empty"));
                let last = seq + chunk.len() as u64 - 1;
                fresh.commit(seq, &bytes, (last, prev))?;
                for (i, k) in chunk.iter().enumerate() {
                    let s = seq + i as u64;
                    if let Some(reason) = &k.parked {
                        parked.push((s, reason.clone()));
                    } else if k.forwarded && s > watermark {
                        acked.push(s);
                    }
                }
                seq = last + 1;
            }
            fresh
                .meta
                .insert(META_FORWARDED, &watermark.to_be_bytes()[..])?;
            fresh.state().forwarded = watermark;
            for s in acked {
                fresh.acked.insert(super::seq_key(s), &[][..])?;
            }
            salvage_record(fresh, report, &mut salvage, seq, prev)?;
        }
        ChainMode::Restarted => {
            let mut prev = salvage_record(fresh, report, &mut salvage, 1, GENESIS_HASH)?;
            let mut seq = 2;
            for chunk in kept.chunks(COMMIT_RECORDS) {
                let mut bytes = Vec::with_capacity(chunk.len());
                for (i, k) in chunk.iter().enumerate() {
                    let mut r = k.record.clone();
                    let (payload, hash) = r.chain_after(seq + i as u64, &prev);
                    bytes.push(payload);
                    prev = hash;
                    if let Some(reason) = &k.parked {
                        parked.push((seq + i as u64, reason.clone()));
                    }
                }
                let last = seq + chunk.len() as u64 - 1;
                fresh.commit(seq, &bytes, (last, prev))?;
                seq = last + 1;
            }
        }
    }
    fresh.db.flush()?;
    for (seq, reason) in parked {
        fresh.park(seq, &reason)?;
    }
    Ok(())
}

/// Writes the salvage record as `seq`, after a record hashing to `prev`; returns its hash.
fn salvage_record(
    fresh: &Journal,
    report: &mut SalvageReport,
    record: &mut Record,
    seq: u64,
    prev: [u8; 32],
) -> Result<[u8; 32], SalvageError> {
    report.salvage_seq = seq;
    if let Record::Alert(a) = record {
        a.detail = report.summary();
    }
    let (payload, hash) = record.chain_after(seq, &prev);
    fresh.commit(seq, &[payload], (seq, hash))?;
    Ok(hash)
}

impl Journal {
    /// The notice a salvage left for the next start, removed as it is taken: the caller
    /// raises it as an alarm.
    pub fn take_salvage_notice(&self) -> Result<Option<String>, JournalError> {
        Ok(self
            .meta
            .remove(META_SALVAGE_NOTICE)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

#[cfg(test)]
mod tests;
