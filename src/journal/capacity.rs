//! Disk capacity of the journal, and what happens when it runs short.
//!
//! Capacity is judged on two measures, checked every second by the housekeeping task:
//! the bytes of stored records against `storage.quota_mb`, and the free space against
//! `storage.min_free_mb`. Free space is the filesystem's free space plus the room inside the
//! store's files that purging has freed (the store reuses it but never shrinks its files),
//! estimated as the files' size less twice the stored records.
//!
//! | level | when | what happens |
//! |---|---|---|
//! | ok | below 80% of the quota and more than twice `min_free_mb` free | forwarded records older than `retention_days` are purged |
//! | nearly full | 80% of the quota, or less than twice `min_free_mb` free | alarm; forwarded records are purged whatever their age, oldest first |
//! | over quota | at or above the quota | alarm; records are still written (evidence outranks the quota) while the filesystem has room |
//! | full | less than `min_free_mb` free | alarm; the writer stops writing and holds new records in memory, up to `storage.hold_records`; beyond that each record is refused: logged at error level with its waybill and lane, counted and raised as an alarm |
//!
//! Unforwarded records are never purged to make room. Parcels are decided and diverted at
//! every level, fail closed as always; only their records wait. When space returns (purging
//! after the platform catches up, or an operator frees the disk) the held records are
//! written in order. `min_free_mb` keeps the store from ever meeting a truly full disk, on
//! which the store cannot write or even reopen.

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

/// Classifies a measurement. Pure, so the policy is tested without a disk.
pub fn level(limits: Limits, live_bytes: u64, free_bytes: u64) -> Level {
    if free_bytes < limits.min_free_bytes {
        Level::Full
    } else if live_bytes >= limits.quota_bytes {
        Level::OverQuota
    } else if live_bytes >= limits.quota_bytes / 5 * 4
        || free_bytes < limits.min_free_bytes.saturating_mul(2)
    {
        Level::NearlyFull
    } else {
        Level::Ok
    }
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
        assert_eq!(level(l, 10 * MB, 1000 * MB), Level::Ok);
        assert_eq!(level(l, 80 * MB, 1000 * MB), Level::NearlyFull);
        assert_eq!(level(l, 10 * MB, 19 * MB), Level::NearlyFull);
        assert_eq!(level(l, 100 * MB, 1000 * MB), Level::OverQuota);
        assert_eq!(level(l, 10 * MB, 9 * MB), Level::Full);
        assert_eq!(
            level(l, 200 * MB, 9 * MB),
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
