//! The consumers' file as the journal holds it (see [`super::consumer_days`]): opened with
//! the store, checked to be the file this store wrote, and opened again after an error.
//!
//! - **The file this store wrote.** A random id is written in the file and in the store's
//!   `meta` the first time they meet. A store that has an id and finds the file missing
//!   (created empty again) or another one refuses it: every consumer limit is then taken as
//!   exceeded, rather than counting a year of purchases as none. A store without an id (new,
//!   or salvaged) adopts the file it finds: `bondline journal salvage` is how an operator
//!   accepts a file that is lost for good.
//! - **Opened again after an error.** redb refuses every operation after one I/O error
//!   until the file is opened again, and a damaged page makes it panic. Each use runs under
//!   [`ConsumerFile::with`]: a panic is an error, and an error closes the file, which the next
//!   use opens again (at most every [`RETRY`] while that fails). A disk that was full and has
//!   room again, or a file restored in place, is read again without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::consumer_days::{path_of, store_err, tables_created, META};
use crate::journal::JournalError;

/// How often opening the file is tried again while it fails.
pub const RETRY: Duration = Duration::from_secs(10);

/// The store's `meta` key, and the file's, of the id they share.
const META_FILE_ID: &[u8] = b"consumer_days_id";
const FILE_ID: &str = "id";

/// The consumers' file of one store.
pub struct ConsumerFile {
    path: PathBuf,
    /// The store's `meta` tree.
    meta: sled::Tree,
    db: ArcSwapOption<Database>,
    /// Why the file is closed, and since when.
    failed: Mutex<Option<(String, Instant)>>,
    /// False for a store opened without its file (see [`ConsumerFile::none`]).
    openable: bool,
}

impl std::fmt::Debug for ConsumerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerFile")
            .field("path", &self.path)
            .field("open", &self.db.load().is_some())
            .finish()
    }
}

impl ConsumerFile {
    /// Opens the file of the store at `store`, waiting like the store's own open for a handle
    /// of this process that is still closing. A file that cannot be opened is logged and
    /// tried again at its next use.
    pub fn open(store: &Path, meta: sled::Tree) -> ConsumerFile {
        let file = ConsumerFile {
            path: path_of(store),
            meta,
            db: ArcSwapOption::empty(),
            failed: Mutex::new(None),
            openable: true,
        };
        match file.open_checked(true) {
            Ok(db) => file.db.store(Some(db)),
            Err(e) => file.note_failure(&e, Instant::now()),
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
            openable: false,
        }
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
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(file = %self.path.display(), error = %why, "the consumers' stored day totals still cannot be used; tried again in {} s", RETRY.as_secs());
                *failed = Some((why.clone(), Instant::now()));
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
            drop(db);
            self.db.store(None);
            // Opened again at the next use (a reader still holding the old handle makes that
            // attempt fail, and the one after RETRY succeed).
            self.note_failure(e, Instant::now() - RETRY);
        }
        out
    }

    fn note_failure(&self, e: &JournalError, at: Instant) {
        tracing::error!(file = %self.path.display(), error = %e, "the consumers' stored day totals cannot be used: every consumer limit over a history not in memory is taken as exceeded, and retention keeps counted parcels until their totals can be written");
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((e.to_string(), at));
    }

    /// Opens the file and checks it is this store's (see the module's doc).
    fn open_checked(&self, wait: bool) -> Result<Arc<Database>, JournalError> {
        let path = self.path.clone();
        let opened =
            std::panic::catch_unwind(move || open_file(&path, wait)).unwrap_or_else(|_| {
                Err(JournalError::Transaction(
                    "consumer history store: the file could not be read (redb panicked)".into(),
                ))
            });
        let db = opened.map_err(|e| self.named(e))?;
        let in_file = {
            let tx = db.begin_read().map_err(store_err)?;
            let meta = tx.open_table(META).map_err(store_err)?;
            let id = meta.get(FILE_ID).map_err(store_err)?.map(|v| v.value());
            id
        };
        let in_store = self
            .meta
            .get(META_FILE_ID)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes);
        match (in_store, in_file) {
            (Some(s), Some(f)) if s == f => {}
            (Some(_), _) => {
                return Err(JournalError::Transaction(format!(
                    "consumer history store {}: not the file this store wrote (missing, emptied or replaced): restore it; `bondline journal salvage` starts over with the file as it is",
                    self.path.display()
                )))
            }
            (None, Some(f)) => {
                self.meta.insert(META_FILE_ID, &f.to_be_bytes())?;
                self.meta.flush()?;
            }
            (None, None) => {
                // The file first: a crash before the store has it adopts it at the next open.
                let id: u64 = rand::random();
                let mut tx = db.begin_write().map_err(store_err)?;
                tx.set_quick_repair(true);
                tx.open_table(META)
                    .map_err(store_err)?
                    .insert(FILE_ID, id)
                    .map_err(store_err)?;
                tx.commit().map_err(store_err)?;
                self.meta.insert(META_FILE_ID, &id.to_be_bytes())?;
                self.meta.flush()?;
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
fn open_file(path: &Path, wait: bool) -> Result<Arc<Database>, JournalError> {
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
            Err(e) => return Err(store_err(e)),
        }
    };
    tables_created(&db)?;
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
