//! The spool watcher: one per X-ray device with a `spool` directory.
//!
//! The X-ray workstation writes each view to a temporary name and renames it to
//! `<scan id>_<view>.<jpg|jpeg|png>` when it is complete, so a file under its final name is
//! whole. Every [`POLL`] the watcher lists the directory (polling needs no extra crate and
//! works on network mounts, where inotify does not) and takes the regular files, oldest name
//! first, up to `workers` at a time:
//!
//! - dotfiles and `*.part` / `*.tmp` files are left alone: they are still being written;
//! - a file whose name breaks the convention, or larger than [`super::MAX_IMAGE_BYTES`], is
//!   moved to `<spool>/rejected/` with a warning and counted: it cannot be joined to a scan;
//! - any other file is read and ingested; it is removed only once its original is durably
//!   kept in the evidence directory and its records are handed on. If it cannot be kept, it
//!   stays and is tried again with a growing delay (1 s to 1 min). A file that was ingested
//!   but cannot be removed is remembered (name, size, time) so it is not ingested again.
//!
//! A missing or unreadable spool directory is a health problem (link `spool:<device>` in
//! the staff view), logged once per change; the watcher keeps trying and never stops the
//! daemon. The records of a removed file reach the journal within its flush window: a crash
//! inside those milliseconds leaves the original kept but unrecorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bondline_devices::contract::ImageSource;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::ingest::{Incoming, IngestError, Ingestor};
use super::process::parse_name;
use crate::metrics::Metrics;

/// How often the spool directory is listed.
pub const POLL: Duration = Duration::from_millis(200);
/// Where badly named files are moved, inside the spool directory.
pub const REJECTED_DIR: &str = "rejected";
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A regular file seen in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    len: u64,
    modified: Option<SystemTime>,
    /// The file's inode: a file renamed over this name while it was ingested is another one.
    ino: u64,
}

/// What to do with a file.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Still being written, or not ours to touch.
    Skip,
    Reject(String),
    Take {
        scan_id: u32,
        view: String,
    },
}

/// How one taken file ended.
enum Outcome {
    Done,
    /// Ingested, but the file could not be removed.
    Stuck(String),
    /// Not ingested; try again later.
    Retry(String),
    /// It disappeared (someone else took it).
    Gone,
}

/// Watches one device's spool until shutdown.
pub struct Watcher {
    device: String,
    spool: PathBuf,
    ingestor: Ingestor,
    metrics: Arc<Metrics>,
    workers: usize,
    /// The last problem with the directory itself, logged once.
    problem: Option<String>,
    /// Files that could not be kept, with when to try again and the next delay.
    retry: HashMap<String, (Instant, Duration)>,
    /// Files ingested that could not be removed, as they were then.
    stuck: HashMap<String, Entry>,
}

impl Watcher {
    pub fn new(
        device: String,
        spool: PathBuf,
        ingestor: Ingestor,
        metrics: Arc<Metrics>,
        workers: usize,
    ) -> Watcher {
        Watcher {
            device,
            spool,
            ingestor,
            metrics,
            workers: workers.max(1),
            problem: None,
            retry: HashMap::new(),
            stuck: HashMap::new(),
        }
    }

    /// Polls until `shutdown`; an image in hand is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        info!(device = %self.device, spool = %self.spool.display(), "watching the X-ray image spool");
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.poll(&shutdown).await;
        }
    }

    /// One pass over the directory.
    pub(crate) async fn poll(&mut self, shutdown: &CancellationToken) {
        let spool = self.spool.clone();
        let listed = tokio::task::spawn_blocking(move || list(&spool))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let entries = match listed {
            Ok(e) => {
                self.set_problem(None);
                e
            }
            Err(e) => {
                self.set_problem(Some(format!(
                    "cannot read spool {}: {e}",
                    self.spool.display()
                )));
                return;
            }
        };
        self.stuck
            .retain(|name, seen| entries.iter().any(|e| &e.name == name && e == seen));
        self.retry
            .retain(|name, _| entries.iter().any(|e| &e.name == name));
        let now = Instant::now();
        let mut take = Vec::new();
        for entry in entries {
            if self.stuck.contains_key(&entry.name)
                || self.retry.get(&entry.name).is_some_and(|(at, _)| *at > now)
            {
                continue;
            }
            match classify(&entry) {
                Verdict::Skip => {}
                Verdict::Reject(reason) => self.reject(&entry, &reason).await,
                Verdict::Take { scan_id, view } => take.push((entry, scan_id, view)),
            }
        }
        let this = &*self;
        let outcomes: Vec<(Entry, Outcome)> = futures::stream::iter(take)
            .map(|(entry, scan_id, view)| async move {
                if shutdown.is_cancelled() {
                    return None;
                }
                let outcome = this.take(&entry, scan_id, view).await;
                Some((entry, outcome))
            })
            .buffer_unordered(self.workers)
            .filter_map(|o| async move { o })
            .collect()
            .await;
        for (entry, outcome) in outcomes {
            match outcome {
                Outcome::Done | Outcome::Gone => {
                    self.retry.remove(&entry.name);
                }
                Outcome::Stuck(e) => {
                    error!(device = %self.device, file = %entry.name, error = %e, "X-ray image kept and recorded, but its spool file cannot be removed; it is left alone until it changes");
                    self.retry.remove(&entry.name);
                    self.stuck.insert(entry.name.clone(), entry);
                }
                Outcome::Retry(e) => {
                    let delay = self
                        .retry
                        .get(&entry.name)
                        .map_or(RETRY_FIRST, |(_, d)| (*d * 2).min(RETRY_MAX));
                    warn!(device = %self.device, file = %entry.name, error = %e, retry_in_s = delay.as_secs(), "X-ray image not taken yet");
                    self.retry
                        .insert(entry.name, (Instant::now() + delay, delay));
                }
            }
        }
    }

    async fn take(&self, entry: &Entry, scan_id: u32, view: String) -> Outcome {
        let path = self.spool.join(&entry.name);
        let received = Instant::now();
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Gone,
            Err(e) => return Outcome::Retry(format!("cannot read {}: {e}", path.display())),
        };
        let image = Incoming {
            device: self.device.clone(),
            scan_id,
            view,
            source: ImageSource::Spool,
            file_name: entry.name.clone(),
            bytes,
            received,
        };
        match self.ingestor.ingest(image).await {
            Ok(done) => {
                if let Some(e) = &done.error {
                    warn!(device = %self.device, file = %entry.name, sha256 = %done.sha256, error = %e, "X-ray image kept and forwarded, but it does not decode");
                }
                // The workstation may have renamed a new file over this name meanwhile
                // (a re-scan); that one is taken on the next pass, not removed unseen.
                if !same_file(&path, entry).await {
                    return Outcome::Done;
                }
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Outcome::Done,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Done,
                    Err(e) => Outcome::Stuck(e.to_string()),
                }
            }
            Err(e @ (IngestError::Store { .. } | IngestError::Worker(_))) => {
                Outcome::Retry(e.to_string())
            }
            Err(e @ IngestError::UnknownDevice(_)) => Outcome::Retry(e.to_string()),
        }
    }

    /// Moves a file that cannot be taken out of the way, under a free name in `rejected/`.
    async fn reject(&mut self, entry: &Entry, reason: &str) {
        let from = self.spool.join(&entry.name);
        let dir = self.spool.join(REJECTED_DIR);
        let name = entry.name.clone();
        let moved = tokio::task::spawn_blocking(move || move_aside(&from, &dir, &name))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match moved {
            Ok(to) => {
                Metrics::add(&self.metrics.images_rejected, 1);
                warn!(device = %self.device, file = %entry.name, moved_to = %to.display(), "X-ray spool file rejected: {reason}");
            }
            Err(e) => {
                error!(device = %self.device, file = %entry.name, error = %e, "X-ray spool file rejected ({reason}) but cannot be moved aside; it is left alone until it changes");
                self.stuck.insert(entry.name.clone(), entry.clone());
            }
        }
    }

    fn set_problem(&mut self, problem: Option<String>) {
        if problem == self.problem {
            return;
        }
        let link = format!("spool:{}", self.device);
        match &problem {
            Some(p) => warn!(device = %self.device, "{p}; images wait on the workstation"),
            None => {
                info!(device = %self.device, spool = %self.spool.display(), "X-ray image spool readable")
            }
        }
        self.metrics
            .set_link(&link, problem.is_none(), problem.clone());
        self.problem = problem;
    }
}

/// Whether `path` is still the file listed as `entry`, unchanged.
async fn same_file(path: &Path, entry: &Entry) -> bool {
    match tokio::fs::symlink_metadata(path).await {
        Ok(m) => {
            std::os::unix::fs::MetadataExt::ino(&m) == entry.ino
                && m.len() == entry.len
                && m.modified().ok() == entry.modified
        }
        Err(_) => false,
    }
}

fn classify(e: &Entry) -> Verdict {
    let lower = e.name.to_ascii_lowercase();
    if e.name.starts_with('.') || lower.ends_with(".part") || lower.ends_with(".tmp") {
        return Verdict::Skip;
    }
    let (scan_id, view) = match parse_name(&e.name) {
        Ok((scan_id, view, _ext)) => (scan_id, view),
        Err(reason) => return Verdict::Reject(reason),
    };
    if e.len > super::MAX_IMAGE_BYTES as u64 {
        return Verdict::Reject(format!(
            "{} bytes is more than the {} MiB an image may have",
            e.len,
            super::MAX_IMAGE_BYTES / (1024 * 1024)
        ));
    }
    Verdict::Take { scan_id, view }
}

/// The regular files of the spool, by name. Not-UTF-8 names come out lossy and are then
/// rejected by the name check (they cannot follow the convention).
fn list(spool: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(spool)? {
        let entry = entry?;
        // Symbolic links are not followed: the spool holds what the workstation wrote.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let Ok(name) = entry.file_name().into_string() else {
            warn!(spool = %spool.display(), file = ?entry.file_name(), "X-ray spool file name is not UTF-8; left alone");
            continue;
        };
        out.push(Entry {
            name,
            len: meta.len(),
            modified: meta.modified().ok(),
            ino: std::os::unix::fs::MetadataExt::ino(&meta),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Renames `from` into `dir` under its own name, or `name.1`, `name.2`, ... if taken.
fn move_aside(from: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for n in 0..1000u32 {
        let to = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{name}.{n}"))
        };
        if to.symlink_metadata().is_err() {
            std::fs::rename(from, &to)?;
            return Ok(to);
        }
    }
    Err(std::io::Error::other(format!(
        "{} already holds 1000 files named {name}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, len: u64) -> Entry {
        Entry {
            name: name.into(),
            len,
            modified: None,
            ino: 0,
        }
    }

    #[test]
    fn files_are_classified_by_name_and_size() {
        assert_eq!(
            classify(&entry("17_top.jpg", 10)),
            Verdict::Take {
                scan_id: 17,
                view: "top".into()
            }
        );
        for skip in [
            ".17_top.jpg",
            "17_top.jpg.part",
            "17_top.jpg.TMP",
            ".hidden",
        ] {
            assert_eq!(classify(&entry(skip, 10)), Verdict::Skip, "{skip}");
        }
        assert!(matches!(
            classify(&entry("parcel.jpg", 10)),
            Verdict::Reject(_)
        ));
        assert!(matches!(
            classify(&entry(
                "17_top.jpg",
                super::super::MAX_IMAGE_BYTES as u64 + 1
            )),
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn a_rejected_name_never_overwrites_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let rejected = dir.path().join(REJECTED_DIR);
        for i in 0..3 {
            let from = dir.path().join("bad.jpg");
            std::fs::write(&from, [i]).unwrap();
            move_aside(&from, &rejected, "bad.jpg").unwrap();
        }
        assert_eq!(std::fs::read(rejected.join("bad.jpg")).unwrap(), [0]);
        assert_eq!(std::fs::read(rejected.join("bad.jpg.2")).unwrap(), [2]);
    }
}
