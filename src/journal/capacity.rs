//! Disk capacity of the journal, and what happens when it runs short.
//!
//! Capacity is judged on two measures, checked every second by the housekeeping task: the
//! bytes of stored records against `storage.quota_mb`, and the filesystem's free space
//! against `storage.min_free_mb`.
//!
//! | level | when | what happens |
//! |---|---|---|
//! | ok | below 80% of the quota and more than twice `min_free_mb` free | forwarded records older than `retention_days` are purged |
//! | nearly full | 80% of the quota, or less than twice `min_free_mb` free | alarm; forwarded records are purged whatever their age, oldest first |
//! | over quota | at or above the quota | alarm; records are still written (evidence outranks the quota) while the filesystem has room |
//! | full | less than `min_free_mb` free, and the store holds at least 90% of what it held when the disk got there; or less than a quarter of `min_free_mb` free | alarm; the writer stops writing and holds new records in memory, up to `storage.hold_records`; beyond that each record is refused: logged at error level with its waybill and its whole content, counted and raised as an alarm |
//!
//! Why the mark: the store never gives space back to the filesystem; it reuses, for new
//! records, the room that purging frees inside its files. So once the disk is short, the
//! filesystem's free space stays short even after the platform has caught up and forwarded
//! records were purged. What tells that there is room again is that the store holds less
//! than it did when the disk got short: new records then fill freed room instead of growing
//! the files. The last quarter of `min_free_mb` is never written into at all, because the
//! store cannot write, or even reopen, on a truly full disk.
//!
//! Unforwarded records are never purged to make room. Parcels are decided and diverted at
//! every level, fail closed as always; only their records wait. When room returns the held
//! records are written in order.

use serde::Serialize;

/// How full the journal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    NearlyFull,
    OverQuota,
    Full,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::NearlyFull => "nearly_full",
            Level::OverQuota => "over_quota",
            Level::Full => "full",
        }
    }

    pub fn from_u8(v: u8) -> Level {
        match v {
            1 => Level::NearlyFull,
            2 => Level::OverQuota,
            3 => Level::Full,
            _ => Level::Ok,
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::NearlyFull => 1,
            Level::OverQuota => 2,
            Level::Full => 3,
        }
    }
}

/// The limits, from `[storage]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub quota_bytes: u64,
    pub min_free_bytes: u64,
}

/// Classifies a measurement. Pure, so the policy is tested without a disk. `short_mark` is
/// the stored bytes when free space first fell below `min_free` (see the module docs).
pub fn level(limits: Limits, live_bytes: u64, free_bytes: u64, short_mark: Option<u64>) -> Level {
    let short = free_bytes < limits.min_free_bytes;
    // Room inside the store counts only if a batch still fits under the writer's budget
    // ([`write_budget`]): a store a few records short of it makes the writer hold records,
    // and that is full, not nearly full.
    let room_inside = short_mark
        .is_some_and(|mark| live_bytes.saturating_add(BUDGET_SLACK) < write_budget(Some(mark)));
    if free_bytes < hard_floor(limits) || (short && !room_inside) {
        Level::Full
    } else if live_bytes >= limits.quota_bytes {
        Level::OverQuota
    } else if short
        || live_bytes >= limits.quota_bytes / 5 * 4
        || free_bytes < limits.min_free_bytes.saturating_mul(2)
    {
        Level::NearlyFull
    } else {
        Level::Ok
    }
}

/// Room under the write budget below which the store counts as full: more than a group
/// commit of typical records with their index entries.
pub const BUDGET_SLACK: u64 = 256 * 1024;

/// Tracks the short-disk mark across measurements.
pub fn next_mark(
    limits: Limits,
    live_bytes: u64,
    free_bytes: u64,
    mark: Option<u64>,
) -> Option<u64> {
    if free_bytes >= limits.min_free_bytes {
        None
    } else {
        Some(mark.unwrap_or(live_bytes))
    }
}

/// How many bytes of records the store may hold before the writer must stop: unlimited while
/// the disk has room; 90% of the short-disk mark while it is short, so that new records only
/// fill room that purging freed inside the store.
pub fn write_budget(mark: Option<u64>) -> u64 {
    mark.map_or(u64::MAX, |m| m / 10 * 9)
}

/// The free space below which nothing is written at all.
pub fn hard_floor(limits: Limits) -> u64 {
    limits.min_free_bytes / 4
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn levels_follow_the_documented_table() {
        let l = Limits {
            quota_bytes: 100 * MB,
            min_free_bytes: 10 * MB,
        };
        assert_eq!(level(l, 10 * MB, 1000 * MB, None), Level::Ok);
        assert_eq!(level(l, 80 * MB, 1000 * MB, None), Level::NearlyFull);
        assert_eq!(level(l, 10 * MB, 19 * MB, None), Level::NearlyFull);
        assert_eq!(level(l, 100 * MB, 1000 * MB, None), Level::OverQuota);
        // Short of disk: full, until purging has freed a tenth of the store.
        let mark = next_mark(l, 10 * MB, 9 * MB, None);
        assert_eq!(mark, Some(10 * MB));
        assert_eq!(level(l, 10 * MB, 9 * MB, mark), Level::Full);
        assert_eq!(level(l, 8 * MB, 9 * MB, mark), Level::NearlyFull);
        assert_eq!(
            next_mark(l, 8 * MB, 9 * MB, mark),
            mark,
            "the mark stays while short"
        );
        assert_eq!(next_mark(l, 8 * MB, 11 * MB, mark), None);
        // The last quarter of the floor is never written into.
        assert_eq!(level(l, MB, 2 * MB, Some(100 * MB)), Level::Full);
        assert_eq!(
            level(l, 200 * MB, 9 * MB, Some(200 * MB)),
            Level::Full,
            "the disk outranks the quota"
        );
        for v in 0..4 {
            assert_eq!(Level::from_u8(v).as_u8(), v);
        }
    }

    #[test]
    fn free_space_is_measured() {
        assert!(free_bytes(std::path::Path::new("/")).unwrap() > 0);
    }
}
