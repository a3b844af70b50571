//! The damaged store itself: the lock that tells a running daemon from a stopped one, and
//! opening a copy of the store with each repair in turn (see the module's doc, steps 1 and
//! 3). Kept apart because it is the only part that deals with sled's files as files; the
//! damaged directory is only ever read.

use std::path::Path;

use super::{io, Opened, SalvageError};
use crate::journal::Journal;

/// Takes sled's lock on the store's `db` file (an exclusive `flock`), or says who holds it.
pub(super) fn lock_store(
    path: &Path,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, SalvageError> {
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
            Err((f, nix::errno::Errno::EWOULDBLOCK))
                if started.elapsed() < crate::journal::LOCK_WAIT =>
            {
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
pub(super) fn open_copy(
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
        match Journal::open_without_consumer_file(work).and_then(|j| {
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
