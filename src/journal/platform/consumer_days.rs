//! The consumers' day totals of forgotten declarations, kept for the longest consumer-limit
//! window after the declarations themselves are forgotten.
//!
//! # A file of their own
//!
//! A busy gateway forgets up to a million declarations a day, most of them from one-off
//! buyers: a year of totals is hundreds of millions of small entries. They are kept beside
//! the store in `<store>-consumers.redb`, a copy-on-write B-tree file (redb) whose cache is
//! bounded ([`CACHE_BYTES`]) and which takes about 230 bytes of file per consumer with one
//! day. In the sled store they took about 1.6 KB of disk and 30 MiB of resident memory per
//! million at every open (BENCHMARKS.md), so memory and disk grew with the year's buyers.
//! How the file is opened, checked to be this store's and opened again after an error is
//! [`super::consumer_file`].
//!
//! Two tables hold the same totals: `days`, one value per consumer holding all its days,
//! which the clearance table reads with one lookup when a consumer's first held declaration
//! arrives ([`StoredDays`]), and `by_day`, by day then consumer, by which old days go.
//! Consumers are keyed by [`key`]: an identity hash in lowercase hexadecimal packed two
//! digits to a byte.
//!
//! # Durable before forgotten
//!
//! Retention writes the totals of a step's forgotten waybills in one transaction
//! ([`Journal::add_many_to_history`]), committed durably before the step's Forget marks are
//! appended and before the waybills' consumers are released in the table: a reader sees a
//! consumer's totals either in the table's memory or in this file, never in neither. A crash
//! before the commit loses the step's totals with its marks (the waybills are held again at
//! the next start, their parcels counted there); no parcel counts less. Commits record the
//! allocator's state, so that opening the file after a crash does not walk it whole.
//!
//! # From an older build
//!
//! An older build kept the totals in the store's `history` tree (and, briefly, in
//! `history_by_consumer`). Until they are moved here, the file is neither read nor written
//! for consumers (every history not in memory is unknown). The first load moves them
//! ([`Journal::move_history`]; retention does if the file could not be used then): the
//! totals are set, not added, so a move cut short and done again gives the same values; the
//! old trees are emptied, and only then is the file marked as moved. An older build run
//! again (a rollback) reads nothing of this file, so its limits count only what it holds and
//! writes; what it writes to `history` is added to this file's totals at the next load of
//! this build.

use std::path::{Path, PathBuf};
use std::sync::Weak;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::consumer_file::{ConsumerFile, COMMITS};
use super::retention::decode_total;
use crate::journal::{Journal, JournalError};
use crate::rules::history::{StoredDay, StoredHistory};

/// Memory redb may keep of the file's pages.
pub const CACHE_BYTES: usize = 16 << 20;

/// Consumer key → its days, 16 bytes each, oldest first.
const DAYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("days");
/// Day (big-endian) and consumer key → the day's total, 12 bytes.
const BY_DAY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("by_day");
/// `moved`: an older build's totals were moved in; `id`: see [`super::consumer_file`].
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_MOVED: &str = "moved";

/// The store's `meta` key by which an older build marked its own index of the totals.
const META_OLD_INDEX: &[u8] = b"history_by_consumer";

/// An older build's trees of day totals: by day, and by consumer.
const OLDER_BUILD_TREES: [&str; 2] = ["history", "history_by_consumer"];

/// An older build's trees of day totals in the store `db` (by day, by consumer), opened (and
/// so created, empty, in a store that has none). Opened when used, not kept open by the
/// journal.
pub(in crate::journal) fn older_build_totals(
    db: &sled::Db,
) -> Result<[sled::Tree; 2], JournalError> {
    Ok([
        db.open_tree(OLDER_BUILD_TREES[0])?,
        db.open_tree(OLDER_BUILD_TREES[1])?,
    ])
}

/// Day 100,000 since 1970 (in the year 2243): a stored day after it is damage.
const LAST_DAY: u32 = 100_000;

/// How many totals one transaction of a move or a drop holds.
const BATCH: usize = 50_000;

/// The file beside the store at `store`.
pub fn path_of(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push("-consumers.redb");
    PathBuf::from(name)
}

/// A redb error as the journal's: an I/O error stays one (a full disk is recognised).
pub(super) fn store_err(e: impl Into<redb::Error>) -> JournalError {
    match e.into() {
        redb::Error::Io(e) => JournalError::Store(sled::Error::Io(e)),
        other => JournalError::Transaction(format!("consumer history store: {other}")),
    }
}

/// Creates the tables a new file lacks.
pub(super) fn tables_created(db: &Database) -> Result<(), JournalError> {
    // A file that has them is not written at its open (a full disk does not stop it).
    let tx = db.begin_read().map_err(store_err)?;
    if tx.open_table(DAYS).is_ok() && tx.open_table(BY_DAY).is_ok() && tx.open_table(META).is_ok() {
        return Ok(());
    }
    drop(tx);
    let mut tx = db.begin_write().map_err(store_err)?;
    // Every commit records the allocator's state: opening after a crash need not walk the
    // whole file.
    tx.set_quick_repair(true);
    tx.open_table(DAYS).map_err(store_err)?;
    tx.open_table(BY_DAY).map_err(store_err)?;
    tx.open_table(META).map_err(store_err)?;
    tx.commit().map_err(store_err)
}

/// A consumer's key: `1`, the number of digits and the digits two to a byte for a name in
/// lowercase hexadecimal (identity hashes); `0` and the name's bytes for any other.
pub(super) fn key(consumer: &str) -> Vec<u8> {
    let mut k = Vec::new();
    key_into(consumer, &mut k);
    k
}

/// Appends the key of `consumer` to `k` (see [`key`]).
pub(super) fn key_into(consumer: &str, k: &mut Vec<u8>) {
    let b = consumer.as_bytes();
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if !b.is_empty() && b.len() <= 255 && b.iter().all(|&c| hex(c).is_some()) {
        let start = k.len() + 2;
        k.extend_from_slice(&[1, b.len() as u8]);
        k.resize(start + b.len().div_ceil(2), 0);
        for (i, &c) in b.iter().enumerate() {
            k[start + i / 2] |= hex(c).unwrap_or(0) << if i % 2 == 0 { 4 } else { 0 };
        }
    } else {
        k.push(0);
        k.extend_from_slice(b);
    }
}

/// The consumer a key names, into `name` (cleared first); false if `key` is not one.
pub(super) fn name_of_key(key: &[u8], name: &mut String) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    name.clear();
    match key {
        [1, n, packed @ ..] if packed.len() == usize::from(*n).div_ceil(2) && *n > 0 => {
            for i in 0..usize::from(*n) {
                let b = packed[i / 2];
                let nibble = if i % 2 == 0 { b >> 4 } else { b & 0xf };
                name.push(char::from(DIGITS[usize::from(nibble)]));
            }
            true
        }
        [0, raw @ ..] => match std::str::from_utf8(raw) {
            Ok(s) => {
                name.push_str(s);
                true
            }
            Err(_) => false,
        },
        _ => false,
    }
}

fn by_day_key(day: u32, consumer_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + consumer_key.len());
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(consumer_key);
    k
}

/// A consumer's days in `days`, oldest first, 16 bytes each: the day, the parcels and the
/// value (big-endian).
fn decode_days(v: &[u8]) -> Result<Vec<StoredDay>, String> {
    let mut days = Vec::with_capacity(v.len() / 16);
    decode_days_into(v, &mut days)?;
    Ok(days)
}

/// [`decode_days`], appended to `days`; on an error nothing is appended.
fn decode_days_into(v: &[u8], days: &mut Vec<StoredDay>) -> Result<(), String> {
    if v.len() % 16 != 0 {
        return Err(format!(
            "consumer history store: a consumer's days are {} bytes, not a multiple of 16",
            v.len()
        ));
    }
    let first = days.len();
    days.extend(v.chunks_exact(16).map(|c| {
        let day = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        let (parcels, value) = decode_total(&c[4..]);
        (day, parcels, value)
    }));
    // Days out of order, or past any date this gateway will see, are damage: a garbage day
    // far ahead, taken in, would push the consumer's real days out of its year
    // (`Days::add_totals`). (Days somewhat ahead are not: a clock once set ahead counts
    // parcels on them.)
    let read = &days[first..];
    if read.windows(2).any(|w| w[0].0 >= w[1].0) || read.last().is_some_and(|d| d.0 > LAST_DAY) {
        days.truncate(first);
        return Err(
            "consumer history store: a consumer's days are out of order or past any real date"
                .into(),
        );
    }
    Ok(())
}

fn encode_days(days: &[StoredDay]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 * days.len());
    for &(day, parcels, value) in days {
        v.extend_from_slice(&day.to_be_bytes());
        v.extend_from_slice(&encode_total(parcels, value));
    }
    v
}

fn encode_total(parcels: u32, value: u64) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&parcels.to_be_bytes());
    v[4..].copy_from_slice(&value.to_be_bytes());
    v
}

/// The write side of one transaction over both tables.
struct Writing<'t> {
    days: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_day: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl Writing<'_> {
    /// Sets the consumer's total of `day` to what `f` makes of the one stored (`None`:
    /// none), in both tables; a total of no parcels removes the day, and a consumer left
    /// without days goes. A damaged value is left as it is: its reads say unknown (over
    /// every limit), and retention goes on with the others.
    fn set_day(
        &mut self,
        consumer: &[u8],
        day: u32,
        f: impl FnOnce(Option<(u32, u64)>) -> (u32, u64),
    ) -> Result<(), JournalError> {
        let stored = self
            .days
            .get(consumer)
            .map_err(store_err)?
            .map(|v| decode_days(v.value()));
        let mut days = match stored {
            Some(Ok(days)) => days,
            Some(Err(e)) => {
                tracing::error!(error = %e, "a consumer's stored days are damaged: left as they are, and every limit over them is taken as exceeded");
                return Ok(());
            }
            None => Vec::new(),
        };
        let at = days.binary_search_by_key(&day, |d| d.0);
        let (parcels, value) = f(at.ok().map(|i| (days[i].1, days[i].2)));
        match (at, parcels) {
            (Ok(i), 0) => {
                days.remove(i);
            }
            (Ok(i), _) => days[i] = (day, parcels, value),
            (Err(_), 0) => {}
            (Err(i), _) => days.insert(i, (day, parcels, value)),
        }
        if days.is_empty() {
            self.days.remove(consumer).map_err(store_err)?;
        } else {
            self.days
                .insert(consumer, &encode_days(&days)[..])
                .map_err(store_err)?;
        }
        let k = by_day_key(day, consumer);
        if parcels == 0 {
            self.by_day.remove(&k[..]).map_err(store_err)?;
        } else {
            self.by_day
                .insert(&k[..], &encode_total(parcels, value)[..])
                .map_err(store_err)?;
        }
        Ok(())
    }
}

/// Runs `f` in one write transaction over both tables, committed durably.
/// Runs `f` in one write transaction over both tables, committed durably with the file's
/// count of commits one higher, which the store then notes (see [`super::consumer_file`]).
fn write(
    file: &ConsumerFile,
    f: impl FnOnce(&mut Writing<'_>, &redb::WriteTransaction) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    let commits = file.with(|db| {
        let mut tx = db.begin_write().map_err(store_err)?;
        tx.set_quick_repair(true);
        let commits = {
            let mut w = Writing {
                days: tx.open_table(DAYS).map_err(store_err)?,
                by_day: tx.open_table(BY_DAY).map_err(store_err)?,
            };
            f(&mut w, &tx)?;
            let mut meta = tx.open_table(META).map_err(store_err)?;
            let commits = meta
                .get(COMMITS)
                .map_err(store_err)?
                .map_or(0, |v| v.value())
                + 1;
            meta.insert(COMMITS, commits).map_err(store_err)?;
            commits
        };
        tx.commit().map_err(store_err)?;
        Ok(commits)
    })?;
    file.note_commits(commits)
}

/// The stored day totals, read by consumer (see the module's doc). It does not keep the
/// file open: once the journal is closed, every read fails (and the consumer's history is
/// unknown).
#[derive(Debug, Clone)]
pub struct StoredDays {
    file: Weak<ConsumerFile>,
}

/// Reads of many consumers in one read transaction (a start's load).
pub struct DaysReader {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl DaysReader {
    /// A consumer's days; a page that does not read (redb panics on some) is an error.
    pub fn days_of(&self, consumer: &str) -> Result<Vec<StoredDay>, String> {
        let mut days = Vec::new();
        self.days_by_key(&key(consumer), &mut days)?;
        Ok(days)
    }

    /// The days of the consumer keyed `key` ([`key`]), appended to `days`; on an error
    /// nothing is appended.
    pub(super) fn days_by_key(&self, key: &[u8], days: &mut Vec<StoredDay>) -> Result<(), String> {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match self
                .table
                .get(key)
                .map_err(|e| format!("consumer history store: {e}"))?
            {
                Some(v) => decode_days_into(v.value(), days),
                None => Ok(()),
            }
        }));
        read.unwrap_or_else(|_| {
            Err("consumer history store: a page of the file could not be read".into())
        })
    }
}

impl StoredDays {
    /// Whether no day total is stored.
    pub fn is_empty(&self) -> bool {
        self.reader()
            .is_none_or(|r| r.table.is_empty().unwrap_or(true))
    }

    /// A reader of the totals as they are now; `None` once the journal is closed, if the
    /// file cannot be read, or while an older build's totals are not moved in.
    pub fn reader(&self) -> Option<DaysReader> {
        let file = self.file.upgrade()?;
        file.ready().ok()?;
        file.with(|db| {
            let tx = db.begin_read().map_err(store_err)?;
            Ok(DaysReader {
                table: tx.open_table(DAYS).map_err(store_err)?,
            })
        })
        .ok()
    }
}

impl StoredHistory for StoredDays {
    fn days_of(&self, consumer: &str) -> Result<Vec<StoredDay>, String> {
        let file = self
            .file
            .upgrade()
            .ok_or("consumer history store: the journal is closed")?;
        file.ready().map_err(|e| e.to_string())?;
        let value = file
            .with(|db| {
                let tx = db.begin_read().map_err(store_err)?;
                let table = tx.open_table(DAYS).map_err(store_err)?;
                let v = table.get(&key(consumer)[..]).map_err(store_err)?;
                Ok(v.map(|v| v.value().to_vec()))
            })
            .map_err(|e| e.to_string())?;
        // A damaged value is this consumer's problem, not the file's (which stays open).
        value.map_or(Ok(Vec::new()), |v| decode_days(&v))
    }
}

impl Journal {
    /// The stored day totals by consumer.
    pub fn stored_days(&self) -> Result<StoredDays, JournalError> {
        Ok(StoredDays {
            file: std::sync::Arc::downgrade(&self.consumer_days),
        })
    }

    /// Whether the consumers' file can be used now (retention takes nothing out of the table
    /// while it cannot).
    pub(super) fn consumer_days_usable(&self) -> Result<(), JournalError> {
        self.consumer_days.ready()?;
        self.consumer_days.get().map(drop)
    }

    /// What is wrong with the consumers' file now, or was within `within` (for the alarm).
    pub fn consumer_days_problem(&self, within: std::time::Duration) -> Option<String> {
        self.consumer_days.problem(within)
    }

    /// Bytes of the consumers' file (they count towards the quota with the platform state).
    pub fn consumer_days_bytes(&self) -> u64 {
        std::fs::metadata(path_of(&self.path)).map_or(0, |m| m.len())
    }

    /// Moves an older build's totals (the store's `history` tree) into the consumers' file,
    /// calling `tick` after each total (a start's load counts them as progress); false, with
    /// the move to do again, once `tick` says stop. Until it is done the file is neither read
    /// nor written for consumers ([`ConsumerFile::ready`]). See the module's doc.
    pub(super) fn move_history(
        &self,
        tick: &mut dyn FnMut() -> bool,
    ) -> Result<bool, JournalError> {
        if !self.consumer_days.move_pending() {
            // Nothing to move (a store that never had an older build's totals, or a move
            // whose trees were dropped just before a crash): the file is marked, so that what
            // an older build run on this store later writes is added to its totals, never
            // set over them.
            // Not marked now (the file cannot be used): the next call tries again.
            if let Err(e) = self.mark_moved() {
                tracing::debug!(error = %e, "the consumers' file is not marked as this store's yet");
            }
            return Ok(true);
        }
        let moved = self.consumer_days.with(|db| {
            let tx = db.begin_read().map_err(store_err)?;
            let meta = tx.open_table(META).map_err(store_err)?;
            let moved = meta.get(META_MOVED).map_err(store_err)?.is_some();
            Ok(moved)
        })?;
        // Once moved, what `history` holds was written by an older build run since (a
        // rollback): parcels forgotten then, added to the file's totals and taken out of the
        // tree batch by batch (a crash between counts a batch twice, never less). Before,
        // the totals are set (a move cut short and done again sets the same values).
        let adding = moved;
        let [history, by_consumer] = older_build_totals(&self.db)?;
        let mut n = 0u64;
        let mut entries = history.iter();
        loop {
            let mut keys = Vec::new();
            let mut batch = Vec::with_capacity(BATCH);
            for entry in entries.by_ref().take(BATCH) {
                let (k, v) = entry?;
                if let Some(day) = super::be_u32(&k) {
                    batch.push((
                        day,
                        String::from_utf8_lossy(&k[4..]).into_owned(),
                        decode_total(&v),
                    ));
                }
                keys.push(k);
            }
            let last = keys.len() < BATCH;
            if !batch.is_empty() {
                write(&self.consumer_days, |w, _| {
                    for (day, consumer, (parcels, value)) in &batch {
                        w.set_day(&key(consumer), *day, |old| {
                            let (p, v) = if adding {
                                old.unwrap_or((0, 0))
                            } else {
                                (0, 0)
                            };
                            (p.saturating_add(*parcels), v.saturating_add(*value))
                        })?;
                    }
                    Ok(())
                })?;
            }
            if adding {
                for k in keys {
                    history.remove(k)?;
                }
                history.flush()?;
            }
            n += batch.len() as u64;
            for _ in &batch {
                if tick() {
                    return Ok(false);
                }
            }
            if last {
                break;
            }
        }
        // The old trees are emptied, with the older build's own mark of its index (so that a
        // rolled-back build builds it again from what it writes), and only then is the file
        // marked as moved: a crash before the mark sets the same totals again at the next
        // start, never adds them twice. Emptied key by key, not dropped whole
        // (`Db::drop_tree`): a drop is quick, but the next open of the store then spends
        // minutes and gigabytes of memory in sled's recovery (34 s for two million totals;
        // minutes and 2.7 GB of RSS for five million). Emptying costs the move about 50 s a
        // million and leaves the next open as quick as before.
        drop(entries);
        history.clear()?;
        by_consumer.clear()?;
        self.meta.remove(META_OLD_INDEX)?;
        self.db.flush()?;
        if !moved {
            self.mark_moved()?;
        }
        self.consumer_days.moved();
        if n > 0 {
            tracing::info!(
                totals = n,
                added = adding,
                "consumers' stored day totals moved out of the store into their own file"
            );
        }
        Ok(true)
    }

    /// Writes day totals `(day, consumer, parcels, value)` as a build older than the
    /// consumers' file kept them: in the store's `history` (by day) and `history_by_consumer`
    /// (one value of all a consumer's days) trees, with its mark of that index. Flushed; the
    /// next open of the store moves them into the file. For the move's tests and benches.
    #[doc(hidden)]
    pub fn store_history_as_older_build(
        &self,
        totals: &[(u32, &str, u32, u64)],
    ) -> Result<(), JournalError> {
        let [history, by_consumer] = older_build_totals(&self.db)?;
        for &(day, consumer, parcels, value) in totals {
            let mut k = day.to_be_bytes().to_vec();
            k.extend_from_slice(consumer.as_bytes());
            history.insert(k, &encode_total(parcels, value)[..])?;
            let mut days = match by_consumer.get(consumer)? {
                Some(v) => decode_days(&v).map_err(JournalError::Transaction)?,
                None => Vec::new(),
            };
            days.retain(|d| d.0 != day);
            days.push((day, parcels, value));
            days.sort_unstable();
            by_consumer.insert(consumer, encode_days(&days))?;
        }
        self.meta.insert(META_OLD_INDEX, &[1u8][..])?;
        self.db.flush()?;
        Ok(())
    }

    /// Marks the file as holding this store's totals (`moved`), unless it is already.
    fn mark_moved(&self) -> Result<(), JournalError> {
        self.consumer_days.with(|db| {
            {
                let tx = db.begin_read().map_err(store_err)?;
                let meta = tx.open_table(META).map_err(store_err)?;
                if meta.get(META_MOVED).map_err(store_err)?.is_some() {
                    return Ok(());
                }
            }
            let mut tx = db.begin_write().map_err(store_err)?;
            tx.set_quick_repair(true);
            tx.open_table(META)
                .map_err(store_err)?
                .insert(META_MOVED, 1)
                .map_err(store_err)?;
            tx.commit().map_err(store_err)
        })
    }

    /// Adds one counted parcel of `value` to `consumer`'s stored day total of `day`
    /// (public for tools and benches; retention writes a step's at once, see
    /// [`Journal::add_many_to_history`]).
    pub fn add_to_history(&self, day: u32, consumer: &str, value: u64) -> Result<(), JournalError> {
        self.add_many_to_history(&[(day, consumer, value)])
    }

    /// Adds each `(day, consumer, value)` as one counted parcel, in one transaction made
    /// durable before this returns.
    pub fn add_many_to_history(&self, parcels: &[(u32, &str, u64)]) -> Result<(), JournalError> {
        if parcels.is_empty() {
            return Ok(());
        }
        self.consumer_days.ready()?;
        write(&self.consumer_days, |w, _| {
            for &(day, consumer, value) in parcels {
                w.set_day(&key(consumer), day, |old| {
                    let (p, v) = old.unwrap_or((0, 0));
                    (p.saturating_add(1), v.saturating_add(value))
                })?;
            }
            Ok(())
        })
    }

    /// Forgets the day totals of days before `oldest`.
    pub(super) fn drop_history_before(&self, oldest: u32) -> Result<(), JournalError> {
        self.consumer_days.ready()?;
        loop {
            let old: Vec<Vec<u8>> = self.consumer_days.with(|db| {
                let tx = db.begin_read().map_err(store_err)?;
                let by_day = tx.open_table(BY_DAY).map_err(store_err)?;
                let range = by_day
                    .range(..&oldest.to_be_bytes()[..])
                    .map_err(store_err)?;
                range
                    .take(BATCH)
                    .map(|e| e.map(|(k, _)| k.value().to_vec()).map_err(store_err))
                    .collect::<Result<_, _>>()
            })?;
            if old.is_empty() {
                return Ok(());
            }
            write(&self.consumer_days, |w, _| {
                for k in &old {
                    if let Some(day) = super::be_u32(k) {
                        w.set_day(&k[4..], day, |_| (0, 0))?;
                    }
                    // A total whose consumer's days were damaged goes all the same.
                    w.by_day.remove(&k[..]).map_err(store_err)?;
                }
                Ok(())
            })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_consumers_name_never_reads_anothers_days() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.add_to_history(10, "ab", 5).unwrap();
        j.add_to_history(10, "ab", 7).unwrap();
        j.add_to_history(11, "abc", 1).unwrap();
        j.add_to_history(11, "ab0", 3).unwrap();
        j.add_to_history(12, "AB", 4).unwrap();
        let days = j.stored_days().unwrap();
        assert_eq!(days.days_of("ab").unwrap(), vec![(10, 2, 12)]);
        assert_eq!(days.days_of("abc").unwrap(), vec![(11, 1, 1)]);
        assert_eq!(days.days_of("ab0").unwrap(), vec![(11, 1, 3)]);
        assert_eq!(days.days_of("AB").unwrap(), vec![(12, 1, 4)]);
        assert!(days.days_of("a").unwrap().is_empty());
        assert!(days.days_of("ab00").unwrap().is_empty());
        j.drop_history_before(11).unwrap();
        assert!(days.days_of("ab").unwrap().is_empty());
        assert_eq!(days.days_of("abc").unwrap(), vec![(11, 1, 1)]);
    }

    #[test]
    fn keys_of_different_names_differ() {
        let names = [
            "",
            "0",
            "00",
            "a",
            "A",
            "ab",
            "ab0",
            "0ab",
            "\u{1}\u{1}",
            "é",
            "x",
        ];
        for a in names {
            for b in names {
                assert_eq!(key(a) == key(b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn an_older_builds_totals_are_moved_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        older_build_wrote(store, &[(20, "c1", 3, 30), (21, "c1", 1, 5)]);
        let j = Journal::open(store).unwrap();
        let days = j.stored_days().unwrap();
        assert!(days.days_of("c1").is_err(), "unknown until moved");
        assert!(j.add_to_history(22, "c1", 1).is_err());
        assert!(j.move_history(&mut || false).unwrap());
        assert_eq!(days.days_of("c1").unwrap(), vec![(20, 3, 30), (21, 1, 5)]);
        assert!(older_build_totals(&j.db)
            .unwrap()
            .iter()
            .all(|t| t.is_empty()));
        j.add_to_history(21, "c1", 2).unwrap();
        // A rollback: an older build runs on the store and forgets a parcel of its own.
        older_build_totals(&j.db).unwrap()[0]
            .insert(old(21, "c1"), &encode_total(1, 5)[..])
            .unwrap();
        j.meta.insert(META_OLD_INDEX, &[1u8][..]).unwrap();
        j.db.flush().unwrap();
        drop((j, days));
        let j = Journal::open(store).unwrap();
        assert!(j.move_history(&mut || false).unwrap());
        let days = j.stored_days().unwrap();
        assert_eq!(
            days.days_of("c1").unwrap(),
            vec![(20, 3, 30), (21, 3, 12)],
            "added, not set"
        );
        assert!(older_build_totals(&j.db)
            .unwrap()
            .iter()
            .all(|t| t.is_empty()));
        assert!(j.meta.get(META_OLD_INDEX).unwrap().is_none());
        drop((j, days));
        let j = Journal::open(store).unwrap();
        assert!(j.move_history(&mut || false).unwrap(), "nothing to move");
        assert_eq!(
            j.stored_days().unwrap().days_of("c1").unwrap(),
            vec![(20, 3, 30), (21, 3, 12)]
        );
    }

    /// A store that never had an older build's totals: its file is marked at the first load,
    /// so that what an older build run on it afterwards (a rollback) writes is added to the
    /// file's totals, never set over them (counting less).
    #[test]
    fn a_rollback_on_a_store_without_older_totals_adds_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let j = Journal::open(store).unwrap();
        assert!(j.move_history(&mut || false).unwrap(), "nothing to move");
        j.add_to_history(21, "c1", 2).unwrap();
        drop(j);
        older_build_wrote(store, &[(21, "c1", 1, 5)]);
        let j = Journal::open(store).unwrap();
        assert!(j.move_history(&mut || false).unwrap());
        assert_eq!(
            j.stored_days().unwrap().days_of("c1").unwrap(),
            vec![(21, 2, 7)],
            "added, not set"
        );
    }

    /// A move cut short before the file is marked moved (the old trees emptied or not) sets
    /// the same totals again at the next start: never twice.
    #[test]
    fn a_move_cut_short_sets_the_same_totals_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        older_build_wrote(store, &[(20, "c1", 3, 30)]);
        {
            // The totals set, the mark not written: a crash in the middle of the move.
            let j = Journal::open(store).unwrap();
            write(&j.consumer_days, |w, _| {
                w.set_day(&key("c1"), 20, |_| (3, 30))
            })
            .unwrap();
        }
        let j = Journal::open(store).unwrap();
        assert!(j.move_history(&mut || false).unwrap());
        assert_eq!(
            j.stored_days().unwrap().days_of("c1").unwrap(),
            vec![(20, 3, 30)]
        );
    }

    #[test]
    fn an_older_copy_of_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let j = Journal::open(&store).unwrap();
        j.add_to_history(10, "ab", 5).unwrap();
        drop(j);
        let backup = dir.path().join("backup.redb");
        std::fs::copy(path_of(&store), &backup).unwrap();
        let j = Journal::open(&store).unwrap();
        j.add_to_history(11, "ab", 1).unwrap();
        drop(j);
        // Restored from the older backup: its totals of day 11 would be missing.
        std::fs::copy(&backup, path_of(&store)).unwrap();
        let j = Journal::open(&store).unwrap();
        let err = j.stored_days().unwrap().days_of("ab").unwrap_err();
        assert!(err.contains("older copy"), "{err}");
        assert!(j.add_to_history(12, "ab", 1).is_err());
    }

    #[test]
    fn days_out_of_order_or_past_any_real_date_are_damage() {
        let today =
            crate::rules::history::day_of(crate::metrics::unix_ms(std::time::SystemTime::now()));
        assert!(decode_days(&encode_days(&[(10, 1, 1), (12, 1, 1)])).is_ok());
        assert!(decode_days(&encode_days(&[(today + 30, 1, 1)])).is_ok());
        assert!(decode_days(&encode_days(&[(12, 1, 1), (10, 1, 1)])).is_err());
        assert!(decode_days(&encode_days(&[(10, 1, 1), (10, 1, 1)])).is_err());
        assert!(decode_days(&encode_days(&[(LAST_DAY + 1, 1, 1)])).is_err());
        assert!(decode_days(&[0u8; 15]).is_err());
    }

    /// Day totals as an older build leaves them in the store at `store`: by day, in the
    /// store's `history` tree.
    fn older_build_wrote(store: &std::path::Path, totals: &[(u32, &str, u32, u64)]) {
        Journal::open(store)
            .unwrap()
            .store_history_as_older_build(totals)
            .unwrap();
    }

    /// An older build's key in `history`: the day, then the consumer.
    fn old(day: u32, c: &str) -> Vec<u8> {
        let mut k = day.to_be_bytes().to_vec();
        k.extend_from_slice(c.as_bytes());
        k
    }

    #[test]
    fn a_closed_journal_reads_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.add_to_history(10, "ab", 5).unwrap();
        let days = j.stored_days().unwrap();
        drop(j);
        assert!(days.days_of("ab").is_err());
    }
}
