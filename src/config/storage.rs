//! `[storage]`: where the journal lives and how much of the disk it may use; resolved into
//! [`Storage`] (sizes in bytes, durations), every bound checked up front.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{bad, Bad};

#[derive(Debug, Clone)]
pub struct Storage {
    pub path: PathBuf,
    /// How long the journal gathers records into one group commit before it flushes.
    pub flush_window: Duration,
    /// Bytes of stored records above which the journal is over quota (80%: nearly full).
    pub quota_bytes: u64,
    /// Free disk space below which the journal stops writing and holds records in memory.
    pub min_free_bytes: u64,
    /// How long forwarded records are kept for local lookups.
    pub retention: Duration,
    /// Records held in memory at most while the disk is full.
    pub hold_records: usize,
    /// How long declarations, instructions and instruction ids are kept after they were
    /// received (see `Journal::purge_clearance`).
    pub clearance: Duration,
    /// The key that tags stored platform state (see `journal::integrity`): created with mode
    /// 0600 at first start; default `<path>.key`.
    pub integrity_key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) path: PathBuf,
    #[serde(default = "default_flush_window_ms")]
    flush_window_ms: u64,
    #[serde(default = "default_quota_mb")]
    quota_mb: u64,
    #[serde(default = "default_min_free_mb")]
    min_free_mb: u64,
    #[serde(default = "default_retention_days")]
    retention_days: u64,
    #[serde(default = "default_hold_records")]
    hold_records: usize,
    #[serde(default = "default_clearance_days")]
    clearance_days: u64,
    #[serde(default)]
    integrity_key_file: Option<PathBuf>,
}

/// Declarations are for parcels on their way through the warehouse: two weeks is ample, and
/// the table holds about 360 MiB per million declarations (BENCHMARKS.md).
fn default_clearance_days() -> u64 {
    14
}

fn default_quota_mb() -> u64 {
    4096
}
fn default_min_free_mb() -> u64 {
    256
}
/// Long enough that last month's records are all still there on the 10th of this month,
/// when customs expects the monthly report.
fn default_retention_days() -> u64 {
    45
}
fn default_hold_records() -> usize {
    200_000
}

fn default_flush_window_ms() -> u64 {
    2
}

/// Checks `[storage]` and resolves it.
pub(super) fn resolve(raw: RawStorage) -> Result<Storage, Bad> {
    if raw.path.as_os_str().is_empty() {
        return Err(bad("storage.path", "must not be empty".into()));
    }
    if raw.flush_window_ms > 10 {
        return Err(bad(
            "storage.flush_window_ms",
            "must be at most 10: records wait this long before they are durable".into(),
        ));
    }
    let st = &raw;
    if st.quota_mb == 0 {
        return Err(bad("storage.quota_mb", "must be at least 1".into()));
    }
    if st.min_free_mb == 0 {
        return Err(bad(
            "storage.min_free_mb",
            "must be at least 1: a store that meets a truly full disk cannot be written or reopened".into(),
        ));
    }
    if !(1..=3650).contains(&st.retention_days) {
        return Err(bad("storage.retention_days", "must be 1 to 3650".into()));
    }
    if !(1..=3650).contains(&st.clearance_days) {
        return Err(bad("storage.clearance_days", "must be 1 to 3650".into()));
    }
    if !(1_000..=10_000_000).contains(&st.hold_records) {
        return Err(bad(
            "storage.hold_records",
            "must be 1000 to 10000000".into(),
        ));
    }
    Ok(Storage {
        quota_bytes: st.quota_mb * 1024 * 1024,
        min_free_bytes: st.min_free_mb * 1024 * 1024,
        retention: Duration::from_secs(st.retention_days * 86_400),
        hold_records: st.hold_records,
        clearance: Duration::from_secs(st.clearance_days * 86_400),
        integrity_key_file: match &raw.integrity_key_file {
            Some(f) if f.as_os_str().is_empty() => {
                return Err(bad(
                    "storage.integrity_key_file",
                    "must not be empty".into(),
                ))
            }
            Some(f) => f.clone(),
            None => crate::journal::integrity::default_key_file(&raw.path),
        },
        path: raw.path,
        flush_window: Duration::from_millis(raw.flush_window_ms),
    })
}
