//! The journal: the durable store of scan records, the outbox of records the platform has not
//! acknowledged, and the platform's declarations and instructions.
//!
//! # Invariants
//! - **Accepted means durable.** A record is *accepted* once the group commit that holds it
//!   has been flushed to disk. Only then is it counted, and only then may the uplink send it.
//!   A crash before the flush loses at most the records of that one open batch, none of which
//!   was reported as accepted.
//! - **Sequence.** Records get gap-free, strictly increasing sequence numbers (`seq`),
//!   continued across restarts from the stored chain head. Sending follows the sequence, so
//!   the platform sees each line's records in order.
//! - **Chain.** Each record carries `prev_hash`, the SHA-256 of the previous record's exact
//!   stored bytes (which are the exact MQTT payload). The first record points at 64 zeros.
//! - **Outbox.** A record is in the outbox from its commit until the broker's PUBACK for that
//!   very record arrives (never when the publish was merely queued), or until it is parked.
//!   The outbox is the range above the *forwarded watermark* `W` (every record at or below `W`
//!   is acknowledged or parked) less the few records acknowledged out of order. After a crash
//!   the watermark may lag: records acknowledged just before are sent again (at least once;
//!   the platform deduplicates on `msg_id`). The watermark never passes an unacknowledged,
//!   unparked record. The outbox is kept in [`outbox`].
//! - **Retention.** Only records at or below the watermark that are not parked are ever
//!   removed, oldest first, so the remaining records stay one contiguous chain; the last
//!   removed record's sequence and hash are kept as the chain's anchor.
//! - **Platform state.** A declaration or instruction is stored and flushed before the MQTT
//!   message that carried it is acknowledged, so the broker redelivers what a crash lost.
//! - **Failures.** A failed commit is retried with the same bytes; the decision path never
//!   waits for it (records reach the writer through an unbounded queue). Disk capacity and
//!   what happens when it runs short are described in [`capacity`].
//!
//! # Layout on disk (sled trees)
//! - `batches`: one entry per group commit, or per [`ENTRY_BYTES`] of it for a larger one.
//!   Key: the first record's `seq` (big-endian `u64`). Value: the entry's records, each as a
//!   big-endian `u32` length and the record's exact JSON bytes. One transaction per commit
//!   instead of one write per record is what makes appends fast.
//! - `meta`: `head` and `anchor` (`seq` + SHA-256, 40 bytes), `forwarded` (`W`, 8 bytes),
//!   `live_bytes` (8 bytes, size of all stored batches and their `by_waybill` entries).
//! - `acked`: records above `W` acknowledged out of order. `parked`: `seq` → reason.
//! - Beside the store, `<store>-platform/`: what the platform said (declarations,
//!   instructions, notices, ids seen, parcels counted in their consumer's history), in the
//!   order it was stored, a file per day (see [`platform`]). Beside the store too,
//!   `<store>-consumers.redb`: consumer day totals of forgotten declarations, by consumer
//!   and by day (see [`platform`]'s `consumer_days`). In the store: `rule_update_ids`; in
//!   `meta`, the rule set in force. `declarations`, `instructions`, `instruction_ids`,
//!   `enterprises`, `notice_ids`, `counted`, `aging` and `received` are an older build's
//!   layout, moved into the log at the first load; `history` and `history_by_consumer` an
//!   older build's day totals, moved into the consumers' file.
//! - `by_waybill`: the lookup index, waybill bytes + 0x00 + `seq` → empty; written behind
//!   the writer up to the `meta` key `by_waybill_upto` (the last indexed `seq`), removed with
//!   its batch at purge (see [`lookup`]).

mod batch;
pub mod capacity;
mod chain_key;
mod export;
mod housekeeping;
pub mod integrity;
mod intent_log;
mod intent_wal;
pub mod intents;
mod lookup;
mod maintenance;
mod outbox;
pub mod platform;
mod salvage;
mod spill;
mod verify;
pub mod walk;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use sled::Tree;

pub use batch::ENTRY_BYTES;
pub(crate) use batch::{decode_batch, Batch};
use batch::{encode_batch, entry_groups};
pub use export::{ExportError, ExportFormat};
pub use housekeeping::Housekeeping;
pub use lookup::{Forwarding, TIME_SLACK_MS};
#[cfg(test)]
pub(crate) use maintenance::tests::{disposition as test_disposition, record as test_record};
pub use maintenance::JournalStats;
pub use platform::consumer_days::path_of as consumer_days_path;
pub use salvage::{salvage, ChainMode, Opened, SalvageError, SalvageReport};
pub use spill::{read_spill, read_spill_file, spill_dir};
pub use verify::{ChainProblem, VerifyReport};
pub use writer::{record_queue, record_sink, JournalWriter, RecordQueue, RecordSink};

/// The chain's starting point: the `prev_hash` of the very first record. Records are chained
/// with [`chain_hash`], shared with the platform side in `bondline-devices`.
pub use bondline_devices::contract::{chain_hash, GENESIS_HASH};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("journal store: {0}")]
    Store(#[from] sled::Error),
    #[error("journal store: transaction failed: {0}")]
    Transaction(String),
    /// Long read-only work (the chain check at start) ended early because the daemon stops.
    #[error("journal: stopped before the end (the daemon is shutting down)")]
    Stopped,
    #[error("journal record {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("journal store at {path}: its chain ends at seq {head}, but records up to seq {marked} were stored (head mark): the store's files were truncated or overwritten")]
    Lost {
        path: String,
        head: u64,
        marked: u64,
    },
}

impl JournalError {
    /// Whether the store failed because its filesystem is full.
    pub fn is_storage_full(&self) -> bool {
        match self {
            JournalError::Store(sled::Error::Io(e))
            | JournalError::Open {
                source: sled::Error::Io(e),
                ..
            } => e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28),
            _ => false,
        }
    }

    /// Whether the store could not be opened because its files are damaged (as opposed to
    /// held by another process, not permitted, or on a full disk): a case for
    /// `bondline journal salvage`, not for a restart.
    pub fn is_damaged(&self) -> bool {
        let source = match self {
            JournalError::Open { source, .. } => source,
            JournalError::Lost { .. } => return true,
            _ => return false,
        };
        match source {
            sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => true,
            sled::Error::Io(e) => {
                let lock = e.to_string().contains("could not acquire lock");
                let environment = matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::AlreadyExists
                        | std::io::ErrorKind::ReadOnlyFilesystem
                        | std::io::ErrorKind::NotADirectory
                ) || e.raw_os_error() == Some(28);
                !lock && !environment
            }
            _ => false,
        }
    }
}

/// Handle to the store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Journal {
    db: sled::Db,
    batches: Tree,
    acked: Tree,
    parked: Tree,
    meta: Tree,
    declarations: Tree,
    instructions: Tree,
    /// Ids of every instruction ever stored, so redeliveries stay idempotent across restarts.
    instruction_ids: Tree,
    enterprises: Tree,
    notice_ids: Tree,
    counted: Tree,
    rule_update_ids: Tree,
    /// What the platform said, in the order it was stored (see [`platform`]); the trees
    /// above hold an older build's layout until it is moved into it.
    platform_log: Arc<platform::files::PlatformLog>,
    /// Where the purge goes on: the cutoff day it works on, the segment and the offset.
    purge_cursor: Arc<Mutex<Option<(u32, u32, u64)>>>,
    /// An older build's ages of its platform state: moved into the log with it.
    aging: Tree,
    received: Tree,
    /// Consumer day totals of forgotten declarations, kept for consumer-limit windows: a
    /// file of their own beside the store (see [`platform`]'s `consumer_days` and
    /// `consumer_file`).
    consumer_days: Arc<platform::consumer_file::ConsumerFile>,
    /// Waybill lookup index, see [`lookup`].
    by_waybill: Tree,
    /// Release decisions written ahead of their command: a store of its own beside this one
    /// (`<store>-intents`), so that its flush waits for nothing else (see [`intents`]).
    intents: sled::Db,
    /// The release intents' write-ahead log, once the daemon prepared it
    /// ([`Journal::prepare_intent_log`]).
    intent_wal: Arc<Mutex<Option<intent_wal::IntentWal>>>,
    /// Where settled intents go while the log is in use: the intent store's own thread.
    intent_settler: Arc<Mutex<Option<intent_wal::Settler>>>,
    /// The forwarded watermark and stored size, mirrored from `meta`; updates hold the lock.
    state: Arc<Mutex<State>>,
    /// Held while platform state is stored and applied, and while old state is forgotten,
    /// so the two never interleave (see [`Journal::platform_lock`]).
    platform_lock: Arc<tokio::sync::Mutex<()>>,
    /// The store's directory.
    path: Arc<std::path::PathBuf>,
    /// The key that tags stored platform state (see [`integrity`]); unset, entries are
    /// stored untagged and read unchecked (tools and tests that hold no key).
    integrity_key: Arc<std::sync::OnceLock<integrity::IntegrityKey>>,
    /// Stored platform entries refused since the store was opened (see [`Journal::refused_entries`]).
    refused: Arc<Mutex<Vec<platform::RefusedEntry>>>,
    /// A problem of the record chain found at start (see [`chain_key`]).
    chain_problem: Arc<Mutex<Option<String>>>,
    /// Untagged state is adopted at this start (see [`Journal::set_integrity_key`]).
    adopt_untagged: Arc<std::sync::atomic::AtomicBool>,
    /// How many untagged entries were adopted at this start.
    adopted: Arc<Mutex<usize>>,
    /// Untagged blocks adopted at this start and not sealed: in a segment that holds damage,
    /// which is kept as it lies (see [`Journal::unsealed_adopted`]).
    unsealed: Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes (keys and values) of the stored platform state: declarations, instructions,
    /// notices and their id trees. Summed when the clearance table is built from the store,
    /// then kept up to date by every store and purge; it counts towards the quota
    /// (see [`capacity`]).
    platform_bytes: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    forwarded: u64,
    live_bytes: u64,
}

const META_HEAD: &[u8] = b"head";
const META_ANCHOR: &[u8] = b"anchor";
const META_FORWARDED: &[u8] = b"forwarded";
const META_LIVE: &[u8] = b"live_bytes";
/// How far the writer got storing the spill files it read at start (see
/// [`Journal::spill_progress`]), written in the same transaction as the records.
const META_SPILL_RESTORED: &[u8] = b"spill_restored";

fn encode_link(seq: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(hash);
    v
}

fn decode_link(v: &[u8]) -> Option<(u64, [u8; 32])> {
    if v.len() != 40 {
        return None;
    }
    let seq = u64::from_be_bytes(v[..8].try_into().ok()?);
    let hash: [u8; 32] = v[8..].try_into().ok()?;
    Some((seq, hash))
}

fn decode_u64(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// File in the store's directory where every flush records the chain head it made durable
/// (`<seq> <hash hex>`), outside sled's files: the witness that lets a start tell a store that
/// lost records from one that never had them ([`Journal::check_head_mark`]).
pub const HEAD_MARK: &str = "chain.head";

/// sled's page cache. The journal's reads are the outbox just behind the writer and the
/// occasional lookup, so a small cache serves them; sled fills its cache up to this bound as
/// the store grows and keeps it, so it is most of the daemon's resident memory after a few
/// bursts (`bondline-lab bench burst`, BENCHMARKS.md: 64 MiB let VmRSS grow past 128 MiB).
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// How long [`Journal::open`] waits for the store's lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the sled database. The store's file lock is released by sled's background flusher
/// thread some time after the last handle of a previous open is dropped (the same process
/// reopening its store: a restart in place, `journal` commands after a test's daemon); on a
/// busy machine that takes a moment, so a held lock is waited for, up to [`LOCK_WAIT`]. A
/// store another process really holds still fails then, with sled's error.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(Some(500));
    let started = std::time::Instant::now();
    loop {
        // sled 0.34 panics on some damaged files (a garbage snapshot) instead of failing.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("panic");
                Err(sled::Error::ReportableBug(format!(
                    "the store's files could not be read: {why}"
                )))
            });
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(path, true)
    }

    /// [`Journal::open`] without the consumers' file: a copy read by salvage, whose file (if
    /// any) stays beside the original store.
    pub(crate) fn open_without_consumer_file(path: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(path, false)
    }

    fn open_with(path: &Path, consumer_file: bool) -> Result<Journal, JournalError> {
        remove_partial_snapshots(path);
        let db = open_db(path).map_err(|source| JournalError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let meta = db.open_tree("meta")?;
        let older_totals = platform::consumer_days::older_build_totals(&db)?;
        let state = State {
            forwarded: decode_u64(meta.get(META_FORWARDED)?),
            live_bytes: decode_u64(meta.get(META_LIVE)?),
        };
        let integrity_key = Arc::new(std::sync::OnceLock::new());
        let journal = Journal {
            batches: db.open_tree("batches")?,
            acked: db.open_tree("acked")?,
            parked: db.open_tree("parked")?,
            declarations: db.open_tree("declarations")?,
            instructions: db.open_tree("instructions")?,
            instruction_ids: db.open_tree("instruction_ids")?,
            enterprises: db.open_tree("enterprises")?,
            notice_ids: db.open_tree("notice_ids")?,
            counted: db.open_tree("counted")?,
            rule_update_ids: db.open_tree("rule_update_ids")?,
            aging: db.open_tree("aging")?,
            platform_log: Arc::new({
                let log = platform::files::PlatformLog::open(path, integrity_key.clone())?;
                let stored = |key: &[u8]| -> Result<_, JournalError> {
                    Ok(meta
                        .get(key)?
                        .map(|v| platform::files::SyncedEnds::decode(&v))
                        .unwrap_or_default())
                };
                log.vouch(
                    stored(platform::META_PLATFORM_SYNCED)?,
                    stored(platform::META_PLATFORM_LOST)?,
                );
                let meta = meta.clone();
                log.set_recorder(move |ends, lost, durable| {
                    meta.insert(platform::META_PLATFORM_SYNCED, ends)?;
                    meta.insert(platform::META_PLATFORM_LOST, lost)?;
                    if durable {
                        meta.flush()?;
                    }
                    Ok(())
                });
                log
            }),
            purge_cursor: Arc::default(),
            received: db.open_tree("received")?,
            consumer_days: Arc::new(if consumer_file {
                // An older build's totals wait in the store for the load to move them.
                let pending = older_totals.iter().any(|t| !t.is_empty());
                platform::consumer_file::ConsumerFile::open(path, meta.clone(), pending)
            } else {
                platform::consumer_file::ConsumerFile::none(path, meta.clone())
            }),
            by_waybill: db.open_tree("by_waybill")?,
            intents: intents::open(path)?,
            intent_wal: Arc::default(),
            intent_settler: Arc::default(),
            meta,
            db,
            state: Arc::new(Mutex::new(state)),
            platform_lock: Arc::new(tokio::sync::Mutex::new(())),
            platform_bytes: Arc::default(),
            path: Arc::new(path.to_path_buf()),
            integrity_key,
            refused: Arc::new(Mutex::new(Vec::new())),
            chain_problem: Arc::new(Mutex::new(None)),
            adopt_untagged: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            adopted: Arc::new(Mutex::new(0)),
            unsealed: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        };
        // Out-of-order acks at or below the watermark are leftovers of an interrupted advance.
        let w = state.forwarded;
        for k in journal.acked.range(..=seq_key(w)).keys() {
            journal.acked.remove(k?)?;
        }
        Ok(journal)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last stored sequence number and the hash that the next record must point at.
    pub fn chain_head(&self) -> Result<(u64, [u8; 32]), JournalError> {
        match self.meta.get(META_HEAD)? {
            Some(v) => decode_link(&v).ok_or(JournalError::Corrupt {
                seq: 0,
                reason: "chain head entry is not 40 bytes".into(),
            }),
            None => Ok((0, GENESIS_HASH)),
        }
    }

    /// Length of the store's log file, where sled writes its pages and reuses the room that
    /// purging frees (sled 0.34 keeps it as `db` in the store's directory; pages too large for
    /// it go to blob files beside it, which are not reused, see [`ENTRY_BYTES`]).
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(self.path.join("db")).map_or(0, |m| m.len())
    }

    /// Bytes of the keys and values in the trees other than the records and their index (the
    /// platform's declarations and instructions, the outbox's side trees, `meta`). The capacity
    /// policy keeps room for their pages (see [`capacity::store_room`]). Reads every entry.
    pub fn other_bytes(&self) -> u64 {
        let trees = [
            &self.acked,
            &self.parked,
            &self.meta,
            &self.declarations,
            &self.instructions,
            &self.instruction_ids,
            &self.enterprises,
            &self.notice_ids,
            &self.counted,
            &self.rule_update_ids,
        ];
        trees
            .iter()
            .flat_map(|t| t.iter().flatten())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// Bytes of the stored platform state (see the field's docs): 0 until the clearance
    /// table was built from the store.
    pub fn platform_bytes(&self) -> u64 {
        self.platform_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds to the platform state's bytes the change of one entry from `old` to `new`
    /// (each the entry's value, with `key`; `None` when absent).
    fn platform_change(&self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        use std::sync::atomic::Ordering::Relaxed;
        let size = |v: Option<&[u8]>| v.map_or(0, |v| (key.len() + v.len()) as u64);
        let (add, sub) = (size(new), size(old));
        let _ = self.platform_bytes.fetch_update(Relaxed, Relaxed, |b| {
            Some(b.saturating_add(add).saturating_sub(sub))
        });
    }

    /// Bytes of all stored batches and their index entries.
    pub fn live_bytes(&self) -> u64 {
        self.state().live_bytes
    }

    /// Makes everything committed so far durable, then records the chain head in the head
    /// mark (see [`HEAD_MARK`]).
    pub async fn flush(&self) -> Result<(), JournalError> {
        // Read before the flush: what was committed before it started is durable after it.
        let head = self.chain_head()?;
        // The platform log first: a record the store holds durable never outruns the
        // messages (counted marks) stored before it.
        self.write_platform(true)?;
        self.db.flush_async().await?;
        self.write_head_mark(head);
        Ok(())
    }

    /// Writes the head mark (best effort: it is a witness, not data).
    pub(crate) fn write_head_mark(&self, (seq, hash): (u64, [u8; 32])) {
        let mark = self.path.join(HEAD_MARK);
        let tmp = self.path.join(format!("{HEAD_MARK}.tmp"));
        let text = format!("{seq} {}\n", hex::encode(hash));
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &mark)) {
            tracing::debug!(file = %mark.display(), error = %e, "head mark not written");
        }
    }

    /// Checks the stored chain head against the head mark: a store that recovered to an
    /// older state than the mark records has lost records it had made durable (sled opens a
    /// truncated or overwritten log as whatever prefix of it still reads, without an error).
    /// The daemon checks this at start; inspection commands do not, so a damaged store can
    /// still be looked at.
    pub fn check_head_mark(&self) -> Result<(), JournalError> {
        let Ok(text) = std::fs::read_to_string(self.path.join(HEAD_MARK)) else {
            return Ok(());
        };
        let mut parts = text.split_whitespace();
        let marked = parts.next().and_then(|s| s.parse::<u64>().ok());
        let Some(marked) = marked else {
            return Ok(());
        };
        let (head, hash) = self.chain_head()?;
        let same = head == marked && parts.next() == Some(hex::encode(hash).as_str());
        if head < marked || (head == marked && !same) {
            return Err(JournalError::Lost {
                path: self.path.display().to_string(),
                head,
                marked,
            });
        }
        Ok(())
    }

    /// Writes one group commit of already chained records (contiguous from `first`) and the new
    /// chain head in one transaction, as one `batches` entry per [`ENTRY_BYTES`] of records.
    /// Writing the same records again is harmless (same keys, same bytes, same sizes), so a
    /// caller may retry after an error.
    fn commit(
        &self,
        first: u64,
        records: &[Vec<u8>],
        head: (u64, [u8; 32]),
    ) -> Result<(), JournalError> {
        self.commit_noting(first, records, head, None)
    }

    /// [`Journal::commit`] that also notes, in the same transaction, how far a restore of
    /// spill files got (see [`Journal::spill_progress`]).
    fn commit_noting(
        &self,
        first: u64,
        records: &[Vec<u8>],
        head: (u64, [u8; 32]),
        spill: Option<&SpillProgress>,
    ) -> Result<(), JournalError> {
        use sled::Transactional;
        let spill = spill.map(SpillProgress::encode);
        let mut entries = Vec::new();
        let mut seq = first;
        for group in entry_groups(records) {
            let value = encode_batch(group.iter().map(Vec::as_slice));
            let index =
                lookup::index_keys(seq, &group.iter().map(Vec::as_slice).collect::<Vec<_>>());
            entries.push((seq_key(seq), value, lookup::index_bytes(&index)));
            seq += group.len() as u64;
        }
        let (head, head_tag) = chain_key::tagged_link(self, b"head", head.0, &head.1);
        let mut state = self.state();
        let mut live = state.live_bytes;
        for (key, value, index) in &entries {
            // Rewriting an entry that is already stored (a retry) must not count it twice.
            if let Some(old) = self.batches.get(key)? {
                live = live.saturating_sub(old.len() as u64 + index);
            }
            // The index entries take disk too; counting them keeps the capacity policy's
            // picture of the store true (see `lookup::INDEX_ENTRY_BYTES`).
            live += value.len() as u64 + index;
        }
        // The index entries themselves are written behind the writer ([`lookup`]): the
        // append path stays one small transaction per group commit.
        (&self.batches, &self.meta)
            .transaction(|(batches, meta)| {
                for (key, value, _) in &entries {
                    batches.insert(&key[..], &value[..])?;
                }
                meta.insert(META_HEAD, &head[..])?;
                if let Some(tag) = &head_tag {
                    meta.insert(chain_key::META_HEAD_TAG, &tag[..])?;
                }
                meta.insert(META_LIVE, &live.to_be_bytes()[..])?;
                if let Some(spill) = &spill {
                    meta.insert(META_SPILL_RESTORED, &spill[..])?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => JournalError::Store(e),
                other => JournalError::Transaction(format!("{other:?}")),
            })?;
        state.live_bytes = live;
        Ok(())
    }
}

/// How far a restore of spill files got: of the records of `files` (in that order), the
/// first `stored` are in the journal. Noted with the records in one transaction, so that a
/// crash before the files are removed does not store those records twice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpillProgress {
    /// The spill files' names.
    pub files: Vec<String>,
    pub stored: u64,
}

impl SpillProgress {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("spill progress always serializes")
    }
}

impl Journal {
    /// How far the last restore of spill files got; `None` if none is under way.
    pub fn spill_progress(&self) -> Option<SpillProgress> {
        let v = self.meta.get(META_SPILL_RESTORED).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Forgets the restore's progress, once its files are removed.
    pub fn clear_spill_progress(&self) -> Result<(), JournalError> {
        self.meta.remove(META_SPILL_RESTORED)?;
        Ok(())
    }
}

/// Deletes `snap.*.generating` files: sled writes a snapshot under that name and renames it
/// when complete, but an open interrupted by a full disk or a crash leaves it behind, and
/// sled 0.34 then refuses every later open as corrupt. The file is never complete data.
fn remove_partial_snapshots(path: &Path) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::warn!(file = %e.path().display(), "removed a partial journal snapshot")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a partial journal snapshot")
                }
            }
        }
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
