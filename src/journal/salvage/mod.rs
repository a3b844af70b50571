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
//! 5. It keeps every platform state entry of the store that parses: the platform's rule set,
//!    update ids, and an older build's declarations, instructions, notices and consumer day
//!    totals. The platform log (`<path>-platform`) and the consumers' day totals
//!    (`<path>-consumers.redb`), beside the store and not in sled, stay where they are, and
//!    the fresh store reads them: it adopts the consumers' file it finds, which is how a file
//!    lost for good is accepted (see `platform::consumer_file`).
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

mod chain;
mod damaged;
mod platform_state;

use std::path::{Path, PathBuf};

use chain::{read_chain, read_mark, write_chain};
use damaged::{lock_store, open_copy};
use platform_state::copy_platform_state;

use super::{Journal, JournalError};

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
    /// Set when the consumers' day totals found beside the store were not the damaged
    /// store's (missing or replaced): the fresh store took them as found.
    pub consumer_file: Option<String>,
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
            "journal salvaged: {last}, {head}; {} record(s) kept, {lost} lost; {chain}; damaged store kept at {}{}",
            self.records_kept,
            self.damaged.display(),
            self.consumer_file
                .as_ref()
                .map_or(String::new(), |note| format!("; {note}"))
        )
    }
}

/// Salvages the store at `path` for gateway `gateway` (see the module's doc). `key_file`:
/// the integrity key's file, beside which the adoption of the fresh store's untagged state
/// is marked (see [`super::integrity::IntegrityKey::open_for_start`]).
pub fn salvage(path: &Path, gateway: &str, key_file: &Path) -> Result<SalvageReport, SalvageError> {
    if !path.is_dir() {
        return Err(SalvageError::Missing(path.to_path_buf()));
    }
    // Held until the store is renamed, so a daemon starting meanwhile cannot open it either.
    let lock = lock_store(path)?;
    // The fresh store's chain head, anchor and rule set will carry no integrity tags
    // (salvage holds no key): they are adopted at the next start (see `integrity`), marked
    // beside the key, where whoever can write only the store cannot mark it. Before the
    // store is touched: a key directory this user cannot write stops the salvage here.
    let marker = super::integrity::adoption_marker(key_file);
    let marked_before = marker.exists();
    super::integrity::begin_adoption(key_file).map_err(|e| SalvageError::Io {
        what: "cannot mark the integrity key's adoption",
        path: marker.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let now = crate::metrics::unix_ms(std::time::SystemTime::now());
    let damaged = sibling(path, &format!("damaged-{now}"));
    if let Err(e) = std::fs::rename(path, &damaged) {
        // The store stays as it was: no adoption of its untagged state either.
        if !marked_before {
            let _ = std::fs::remove_file(&marker);
        }
        return Err(io("cannot move aside", path)(e));
    }
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
        consumer_file: None,
    };
    if old.is_none() {
        // Nothing opened: the head mark still says how much was lost.
        if let Some((head, _)) = read_mark(&damaged) {
            report.old_head = Some(head);
            report.records_lost = Some(head);
        }
    }
    let fresh = Journal::open(path)?;
    // The consumers' file beside the store is the fresh store's now, as found: say so when
    // it is not the one the damaged store wrote (its limits count only what it holds).
    use crate::journal::platform::consumer_file::id_in;
    if let Some(was) = old.as_ref().and_then(|o| id_in(&o.meta)) {
        if id_in(&fresh.meta) != Some(was) {
            report.consumer_file = Some(format!(
                "the consumers' day totals beside the store ({}) were not the damaged store's (missing or replaced) and were taken as found: consumer limits count only what they hold",
                crate::journal::platform::consumer_days::path_of(path).display()
            ));
        }
    }
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
    for dir in [
        work.clone(),
        crate::journal::platform::files::dir_of(&work),
        crate::journal::intents::intents_dir(&work),
    ] {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the salvage work copy")
            }
            _ => {}
        }
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
