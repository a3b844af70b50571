//! The evidence directory: originals kept by content, `<dir>/<sha[0..2]>/<sha>.<ext>`.
//!
//! An original is durable when [`keep`] returns: it is written to a temporary file in the
//! target's directory, flushed (`fsync`), renamed over the final name and the directory is
//! flushed too, so a crash leaves either no file or the whole file, never a torn one. Only
//! then may its spool file be removed. The same bytes twice land on the same name and are
//! written once; a file already there is checked against its hash and rewritten if it does
//! not match (a torn or tampered copy). Blocking: call it off the async threads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes concurrent temporary files of one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where the original with this hash and extension is kept.
pub fn path_of(dir: &Path, sha256: &str, ext: &str) -> PathBuf {
    let fan = sha256.get(..2).unwrap_or("xx");
    dir.join(fan).join(format!("{sha256}.{ext}"))
}

/// Stores `bytes` (whose SHA-256 hex is `sha256`) durably; returns where it is kept and
/// whether it was written now (`false`: the same original was already there).
pub fn keep(dir: &Path, sha256: &str, ext: &str, bytes: &[u8]) -> io::Result<(PathBuf, bool)> {
    let path = path_of(dir, sha256, ext);
    let parent = path.parent().unwrap_or(dir).to_path_buf();
    if already_kept(&path, sha256, bytes.len() as u64)? {
        return Ok((path, false));
    }
    let fresh_fan = !parent.exists();
    fs::create_dir_all(&parent)?;
    if fresh_fan {
        // The new fan-out directory's own entry must survive a crash too.
        sync_dir(dir)?;
    }
    let temp = parent.join(format!(
        ".{sha256}.{}.{}.tmp",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&temp, &path)?;
        sync_dir(&parent)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map(|()| (path, true))
}

/// Whether `path` holds exactly the original with this hash.
fn already_kept(path: &Path, sha256: &str, len: u64) -> io::Result<bool> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() != len {
        return Ok(false);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.read_to_end(&mut bytes)?;
    Ok(hex::encode(crate::journal::sha256(&bytes)) == sha256)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_original_is_kept_once_by_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"some image bytes".to_vec();
        let sha = hex::encode(crate::journal::sha256(&bytes));
        let (path, fresh) = keep(dir.path(), &sha, "jpg", &bytes).unwrap();
        assert!(fresh);
        assert_eq!(path, dir.path().join(&sha[..2]).join(format!("{sha}.jpg")));
        assert_eq!(fs::read(&path).unwrap(), bytes);
        let (again, fresh) = keep(dir.path(), &sha, "jpg", &bytes).unwrap();
        assert_eq!((again, fresh), (path.clone(), false));
        // A damaged copy is replaced.
        fs::write(&path, b"some image byteZ").unwrap();
        assert!(keep(dir.path(), &sha, "jpg", &bytes).unwrap().1);
        assert_eq!(fs::read(&path).unwrap(), bytes);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        assert!(keep(&blocker, "abcdef", "png", b"x").is_err());
    }
}
