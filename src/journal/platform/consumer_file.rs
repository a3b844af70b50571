//! The consumers' file as the journal holds it (see [`super::consumer_days`]): opened with
//! the store, checked to be the file this store wrote, and opened again after an error.
//!
//! - **The file this store wrote, as it last wrote it.** A random id is written in the file
//!   and in the store's `meta` the first time they meet, and every commit counts one more in
//!   the file and then in the store. A store that finds the file missing (created empty
//!   again), another one, or a copy with fewer commits than it knows of (an older backup put
//!   back) refuses it: every consumer limit is then taken as exceeded, rather than counting
//!   purchases as none. A store without an id (new, or salvaged) adopts the file it finds:
//!   `bondline journal salvage` is how an operator accepts a file lost for good, and its
//!   report and the next start's alarm say so when the file was not the damaged store's.
//! - **Opened again after an error.** redb refuses every operation after one I/O error
//!   until the file is opened again, and a damaged page makes it panic. Each use runs under
//!   [`ConsumerFile::with`]: a panic is an error, and an error closes the file, which the next
//!   use opens again (at most every [`RETRY`] while that fails). A disk that was full and has
//!   room again, or a file restored in place, is read again without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::consumer_days::{path_of, store_err, tables_created, META};
use crate::journal::JournalError;

/// How often opening the file is tried again while it fails.
pub const RETRY: Duration = Duration::from_secs(10);

/// How soon opening is tried again while another handle of this process holds the file.
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// The store's `meta` key, and the file's, of the id they share.
const META_FILE_ID: &[u8] = b"consumer_days_id";
const FILE_ID: &str = "id";
/// The store's `meta` key, and the file's, of the file's count of commits.
const META_COMMITS: &[u8] = b"consumer_days_commits";
pub(super) const COMMITS: &str = "commits";

/// The id of its consumers' file a store's `meta` holds, if any.
pub fn id_in(meta: &sled::Tree) -> Option<u64> {
    meta.get(META_FILE_ID)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map(u64::from_be_bytes)
}

/// The consumers' file of one store.
pub struct ConsumerFile {
    path: PathBuf,
    /// The store's `meta` tree.
    meta: sled::Tree,
    db: ArcSwapOption<Database>,
    /// Why the file is closed, and since when.
    failed: Mutex<Option<(String, Instant)>>,
    /// The last error of the file, closed since or not, for the alarm.
    last_failure: Mutex<Option<(String, Instant)>>,
    /// False for a store opened without its file (see [`ConsumerFile::none`]).
    openable: bool,
    /// An older build's totals are in the store and not yet in the file: the file is not
    /// read or written for consumers until they are (see `Journal::move_history`).
    move_pending: AtomicBool,
}

impl std::fmt::Debug for ConsumerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerFile")
            .field("path", &self.path)
            .field("open", &self.db.load().is_some())
            .finish()
    }
}

/// Why opening failed: another handle of this process still holds the file (tried again
/// soon), or anything else.
enum OpenError {
    Busy(JournalError),
    Failed(JournalError),
}

impl OpenError {
    fn into_inner(self) -> JournalError {
        match self {
            OpenError::Busy(e) | OpenError::Failed(e) => e,
        }
    }
}

impl ConsumerFile {
    /// Opens the file of the store at `store`, waiting like the store's own open for a handle
    /// of this process that is still closing. A file that cannot be opened is logged and
    /// tried again at its next use. `move_pending`: the store holds an older build's totals.
    pub fn open(store: &Path, meta: sled::Tree, move_pending: bool) -> ConsumerFile {
        let file = ConsumerFile {
            path: path_of(store),
            meta,
            db: ArcSwapOption::empty(),
            failed: Mutex::new(None),
            last_failure: Mutex::new(None),
            openable: true,
            move_pending: AtomicBool::new(move_pending),
        };
        match file.open_checked(true) {
            Ok(db) => file.db.store(Some(db)),
            Err(e) => file.note_failure(&e.into_inner(), Instant::now()),
        }
        file
    }

    /// No file, never opened: a store copy that salvage reads (its file, if any, stays
    /// beside the original store). Every use fails.
    pub fn none(store: &Path, meta: sled::Tree) -> ConsumerFile {
        ConsumerFile {
            path: path_of(store),
            meta,
            db: ArcSwapOption::empty(),
            failed: Mutex::new(None),
            last_failure: Mutex::new(None),
            openable: false,
            move_pending: AtomicBool::new(false),
        }
    }

    /// Whether an older build's totals still wait to be moved in.
    pub fn move_pending(&self) -> bool {
        self.move_pending.load(Ordering::Acquire)
    }

    /// The move is done: the file is read and written for consumers from now on.
    pub fn moved(&self) {
        self.move_pending.store(false, Ordering::Release);
    }

    /// Fails while an older build's totals are not moved in: a reader would miss them.
    pub fn ready(&self) -> Result<(), JournalError> {
        if self.move_pending() {
            return Err(JournalError::Transaction(format!(
                "consumer history store {}: an older build's day totals are not moved into it yet",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// What is wrong with the file now, or was in the last `within` (for the alarm).
    pub fn problem(&self, within: Duration) -> Option<String> {
        if let Err(e) = self.ready().and_then(|()| self.get().map(drop)) {
            return Some(e.to_string());
        }
        let last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(_, at)| at.elapsed() < within)
            .map(|(why, _)| format!("{why} (since opened again)"))
    }

    /// The open file; opened again if an error closed it.
    pub fn get(&self) -> Result<Arc<Database>, JournalError> {
        if let Some(db) = self.db.load_full() {
            return Ok(db);
        }
        if !self.openable {
            return Err(JournalError::Transaction(format!(
                "consumer history store {}: not opened with this copy of the store",
                self.path.display()
            )));
        }
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = self.db.load_full() {
            return Ok(db);
        }
        if let Some((why, at)) = &*failed {
            if at.elapsed() < RETRY {
                return Err(JournalError::Transaction(why.clone()));
            }
        }
        match self.open_checked(false) {
            Ok(db) => {
                if failed.take().is_some() {
                    tracing::info!(file = %self.path.display(), "the consumers' stored day totals can be read and written again");
                }
                self.db.store(Some(db.clone()));
                Ok(db)
            }
            Err(OpenError::Busy(e)) => {
                // A reader still holds the handle an error closed: tried again shortly.
                *failed = Some((e.to_string(), Instant::now() - RETRY + BUSY_RETRY));
                Err(e)
            }
            Err(OpenError::Failed(e)) => {
                let why = e.to_string();
                tracing::warn!(file = %self.path.display(), error = %why, "the consumers' stored day totals still cannot be used; tried again in {} s", RETRY.as_secs());
                *failed = Some((why.clone(), Instant::now()));
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((why.clone(), Instant::now()));
                Err(JournalError::Transaction(why))
            }
        }
    }

    /// Runs `f` on the file. A panic of redb (a damaged page) is an error, and an error
    /// closes the file: its next use opens it again.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, JournalError>,
    ) -> Result<R, JournalError> {
        let db = self.get()?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&db))).unwrap_or_else(
            |_| {
                Err(JournalError::Transaction(
                    "consumer history store: a page of the file could not be read (redb panicked)"
                        .into(),
                ))
            },
        );
        if let Err(e) = &out {
            // Closed only if it is still the handle that failed (another thread may have
            // opened it again meanwhile); opened again at the next use.
            let failed = Some(db);
            self.db.compare_and_swap(&failed, None::<Arc<Database>>);
            drop(failed);
            self.note_failure(e, Instant::now() - RETRY);
        }
        out
    }

    fn note_failure(&self, e: &JournalError, at: Instant) {
        tracing::error!(file = %self.path.display(), error = %e, "the consumers' stored day totals cannot be used: every consumer limit over a history not in memory is taken as exceeded, and retention keeps counted parcels until their totals can be written");
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((e.to_string(), at));
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((e.to_string(), Instant::now()));
    }

    /// Notes in the store how many commits the file has had (after each, see the module's
    /// doc): a copy of the file older than that is refused.
    pub fn note_commits(&self, commits: u64) -> Result<(), JournalError> {
        self.meta.insert(META_COMMITS, &commits.to_be_bytes())?;
        Ok(())
    }

    /// Opens the file and checks it is this store's, and not older than the store knows it
    /// (see the module's doc). A panic of redb on a damaged file is a failure.
    fn open_checked(&self, wait: bool) -> Result<Arc<Database>, OpenError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.open_checked_inner(wait)
        }))
        .unwrap_or_else(|_| {
            Err(OpenError::Failed(JournalError::Transaction(
                "consumer history store: the file could not be read (redb panicked)".into(),
            )))
        })
        .map_err(|e| match e {
            OpenError::Busy(e) => OpenError::Busy(self.named(e)),
            OpenError::Failed(e) => OpenError::Failed(self.named(e)),
        })
    }

    fn open_checked_inner(&self, wait: bool) -> Result<Arc<Database>, OpenError> {
        let failed = OpenError::Failed;
        let db = open_file(&self.path, wait)?;
        let (in_file, commits) = {
            let tx = db.begin_read().map_err(store_err).map_err(failed)?;
            let meta = tx.open_table(META).map_err(store_err).map_err(failed)?;
            let id = meta
                .get(FILE_ID)
                .map_err(store_err)
                .map_err(failed)?
                .map(|v| v.value());
            let commits = meta
                .get(COMMITS)
                .map_err(store_err)
                .map_err(failed)?
                .map_or(0, |v| v.value());
            (id, commits)
        };
        let stored = |key: &[u8]| -> Result<Option<u64>, OpenError> {
            Ok(self
                .meta
                .get(key)
                .map_err(|e| failed(e.into()))?
                .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                .map(u64::from_be_bytes))
        };
        let in_store = stored(META_FILE_ID)?;
        let store_commits = stored(META_COMMITS)?.unwrap_or(0);
        match (in_store, in_file) {
            (Some(s), Some(f)) if s == f && commits >= store_commits => {}
            (Some(s), Some(f)) if s == f => {
                return Err(failed(JournalError::Transaction(format!(
                    "an older copy of this store's file ({commits} commits, the store knows of {store_commits}): restore the latest one; `bondline journal salvage` starts over with the file as it is"
                ))))
            }
            (Some(_), _) => {
                return Err(failed(JournalError::Transaction(
                    "not the file this store wrote (missing, emptied or replaced): restore it; `bondline journal salvage` starts over with the file as it is".into(),
                )))
            }
            (None, Some(f)) => {
                self.meta
                    .insert(META_FILE_ID, &f.to_be_bytes())
                    .map_err(|e| failed(e.into()))?;
                self.note_commits(commits).map_err(failed)?;
                self.meta.flush().map_err(|e| failed(e.into()))?;
            }
            (None, None) => {
                // The file first: a crash before the store has it adopts it at the next open.
                let id: u64 = rand::random();
                let mut tx = db.begin_write().map_err(store_err).map_err(failed)?;
                tx.set_quick_repair(true);
                tx.open_table(META)
                    .map_err(store_err)
                    .map_err(failed)?
                    .insert(FILE_ID, id)
                    .map_err(store_err)
                    .map_err(failed)?;
                tx.commit().map_err(store_err).map_err(failed)?;
                self.meta
                    .insert(META_FILE_ID, &id.to_be_bytes())
                    .map_err(|e| failed(e.into()))?;
                self.note_commits(commits).map_err(failed)?;
                self.meta.flush().map_err(|e| failed(e.into()))?;
            }
        }
        Ok(db)
    }

    fn named(&self, e: JournalError) -> JournalError {
        match e {
            JournalError::Transaction(why) => JournalError::Transaction(format!(
                "consumer history store {}: {why}",
                self.path.display()
            )),
            other => other,
        }
    }
}

/// Opens (or creates) the file, with its tables. `wait`: a handle of this process that is
/// still closing is waited for, up to the store's own lock wait.
fn open_file(path: &Path, wait: bool) -> Result<Arc<Database>, OpenError> {
    let started = Instant::now();
    let db = loop {
        // Not checked whole at every open (that reads the whole file, a year of buyers):
        // redb checks and repairs after a crash (quickly: every commit records the
        // allocator's state), and a file damaged otherwise may make it panic, which is taken
        // as a file that cannot be opened.
        match Database::builder()
            .set_cache_size(super::consumer_days::CACHE_BYTES)
            .create(path)
        {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if wait && started.elapsed() < super::super::LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(OpenError::Busy(store_err(e)))
            }
            Err(e) => return Err(OpenError::Failed(store_err(e))),
        }
    };
    tables_created(&db).map_err(OpenError::Failed)?;
    Ok(Arc::new(db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use crate::rules::history::StoredHistory;

    #[test]
    fn a_lost_file_is_refused_and_salvage_style_adoption_takes_the_one_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let j = Journal::open(&store).unwrap();
        j.add_to_history(10, "ab", 5).unwrap();
        drop(j);
        std::fs::remove_file(path_of(&store)).unwrap();
        let j = Journal::open(&store).unwrap();
        assert!(
            j.stored_days().unwrap().days_of("ab").is_err(),
            "unknown, not none"
        );
        assert!(j.add_to_history(11, "ab", 1).is_err());
        // A store without the id (as salvage writes it) adopts the file it finds.
        j.meta.remove(META_FILE_ID).unwrap();
        drop(j);
        let j = Journal::open(&store).unwrap();
        assert!(j.stored_days().unwrap().days_of("ab").unwrap().is_empty());
        j.add_to_history(11, "ab", 1).unwrap();
        drop(j);
        let j = Journal::open(&store).unwrap();
        assert_eq!(
            j.stored_days().unwrap().days_of("ab").unwrap(),
            vec![(11, 1, 1)]
        );
    }

    #[test]
    fn a_file_that_fails_is_opened_again_at_its_next_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let j = Journal::open(&store).unwrap();
        j.add_to_history(10, "ab", 5).unwrap();
        let file = j.consumer_days.clone();
        let failed: Result<(), _> =
            file.with(|_| Err(JournalError::Transaction("an I/O error, say".into())));
        assert!(failed.is_err());
        assert!(file.db.load().is_none(), "closed after the error");
        assert_eq!(
            j.stored_days().unwrap().days_of("ab").unwrap(),
            vec![(10, 1, 5)],
            "opened again"
        );
        let panicked: Result<(), _> = file.with(|_| panic!("a damaged page, say"));
        assert!(panicked.is_err());
        j.add_to_history(10, "ab", 1).unwrap();
        assert_eq!(
            j.stored_days().unwrap().days_of("ab").unwrap(),
            vec![(10, 2, 6)]
        );
    }
}
