//! Retention and quota of the evidence directory (X-ray images and camera snapshots).
//!
//! The originals here are the gateway's copies: each one's chunk records were pushed to the
//! journal when it was kept, and the journal holds them until the platform acknowledges them
//! (larger originals are never forwarded and say so in their record). So removing an
//! original never loses what the platform has not yet been sent through the journal; it only
//! ends local lookups of the full picture. A pass removes, by file modification time:
//!
//! 1. originals older than the retention (`storage.retention_days`, as for journal records);
//! 2. then, while the directory still holds more than `quota_mb`, the oldest first.
//!
//! Removing originals younger than the retention to stay under the quota is reported
//! (`for_quota`): the caller raises an alarm, because evidence is leaving sooner than
//! customs was told. Temporary files of [`super::store::keep`] (`.*.tmp`) older than a day are
//! leftovers of a crash and are removed too; younger ones may be in use and are left alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the evidence directory is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Age after which a temporary file is a crash leftover.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Originals removed for being older than the retention.
    pub expired: u64,
    /// Originals younger than the retention removed to get under the quota.
    pub for_quota: u64,
    /// Bytes of originals left.
    pub kept_bytes: u64,
    /// Files that could not be removed (the first error is logged by the caller).
    pub failed: u64,
}

/// Sweeps `dir` (laid out as `<dir>/<sha[0..2]>/<sha>.<ext>`) at `now`; `quota_bytes` 0 is
/// no quota. A missing directory is an empty one.
pub fn sweep(
    dir: &Path,
    now: SystemTime,
    retention: Duration,
    quota_bytes: u64,
) -> io::Result<Sweep> {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let fans = match fs::read_dir(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sweep::default()),
        Err(e) => return Err(e),
    };
    let mut out = Sweep::default();
    for fan in fans {
        let fan = fan?;
        if !fan.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(fan.path())? {
            let f = f?;
            let meta = f.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(now);
            let age = now.duration_since(modified).unwrap_or_default();
            if f.file_name().to_string_lossy().starts_with('.') {
                if age > STALE_TEMP && fs::remove_file(f.path()).is_err() {
                    out.failed += 1;
                }
                continue;
            }
            if age > retention {
                match fs::remove_file(f.path()) {
                    Ok(()) => out.expired += 1,
                    Err(_) => out.failed += 1,
                }
                continue;
            }
            files.push((modified, meta.len(), f.path()));
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    if quota_bytes > 0 && total > quota_bytes {
        files.sort();
        for (_, len, path) in &files {
            if total <= quota_bytes {
                break;
            }
            match fs::remove_file(path) {
                Ok(()) => {
                    out.for_quota += 1;
                    total -= len;
                }
                Err(_) => out.failed += 1,
            }
        }
    }
    out.kept_bytes = total;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, name: &str, len: usize, age: Duration) -> PathBuf {
        let fan = dir.join(&name[..2]);
        fs::create_dir_all(&fan).unwrap();
        let p = fan.join(name);
        fs::write(&p, vec![0u8; len]).unwrap();
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        p
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn old_originals_go_then_the_oldest_while_over_quota() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let expired = put(d, "aa01.jpg", 100, 40 * DAY);
        let oldest = put(d, "bb01.jpg", 100, 3 * DAY);
        let middle = put(d, "cc01.jpg", 100, 2 * DAY);
        let newest = put(d, "aa02.jpg", 100, DAY);
        let temp_old = put(d, ".aa03.1.2.tmp", 10, 2 * DAY);
        let temp_new = put(d, ".aa04.1.2.tmp", 10, Duration::ZERO);
        let s = sweep(d, SystemTime::now(), 30 * DAY, 0).unwrap();
        assert_eq!((s.expired, s.for_quota, s.kept_bytes), (1, 0, 300));
        assert!(!expired.exists() && !temp_old.exists() && temp_new.exists());
        let s = sweep(d, SystemTime::now(), 30 * DAY, 150).unwrap();
        assert_eq!((s.expired, s.for_quota, s.kept_bytes), (0, 2, 100));
        assert!(!oldest.exists() && !middle.exists() && newest.exists());
        assert_eq!(
            sweep(&d.join("missing"), SystemTime::now(), DAY, 1).unwrap(),
            Sweep::default()
        );
    }
}
