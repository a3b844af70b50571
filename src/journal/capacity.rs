//! Disk capacity of the journal, and what happens when it runs short.
//!
//! Capacity is judged on two measures, checked every second by the housekeeping task: the
//! bytes of stored records **and stored platform state** (the platform log's files beside
//! the store, the consumers' day totals in theirs, and the rule set, see
//! `Journal::platform_bytes` and `Journal::consumer_days_bytes`) against
//! `storage.quota_mb`, and the filesystem's free space against `storage.min_free_mb`. A
//! busy warehouse holds far more platform state than records, so a quota that left it out
//! would report ok while the journal outgrew its disk. The "usage" below is the sum; the
//! full level, which is about whether the writer can write its records, looks at the records.
//!
//! | level | when | what happens |
//! |---|---|---|
//! | ok | usage below 80% of the quota and more than twice `min_free_mb` free | forwarded records older than `retention_days` are purged |
//! | nearly full | usage at 80% of the quota, or less than twice `min_free_mb` free | alarm; forwarded records are purged whatever their age, oldest first |
//! | over quota | usage at or above the quota | alarm (naming the records' and the platform state's bytes); records and platform messages are still written (evidence and customs' orders outrank the quota) while the filesystem has room; platform state leaves only by `storage.clearance_days` |
//! | full | less than `min_free_mb` free, and the store's records fill the room its file had when the disk got there (half the file, less its other trees); or less than a quarter of `min_free_mb` free, plus twice the next write | alarm; the writer stops writing and holds new records in memory, up to `storage.hold_records`; beyond that each record is refused: logged at error level with its waybill and its whole content, counted and raised as an alarm |
//!
//! Why the room in the file. The store (sled 0.34) writes a log of pages into one file, in
//! segments of 512 KiB. Purging a record does not give its bytes back to the filesystem: it
//! leaves garbage in the segments that held it; sled moves the pages that are still live out
//! of any segment less than half full, in the background, and then writes new pages into the
//! freed segment. The file only shrinks when its last segments happen to be free. So once the
//! disk is short, the filesystem's free space stays short even after the platform has caught
//! up and forwarded records were purged, while the file has room for new records. Measured
//! on a 24 MiB disk: with every record forwarded and purged, the file stayed at 18-22 MiB and
//! the free space short until new records were written into it. Since every segment in use is
//! at least half full, a store whose pages fill less than half its file has a free segment
//! for the next write ([`store_room`]); that is the room counted, and it is taken when the
//! disk gets short, not grown afterwards: a file that grew while the disk was short took the
//! room from the filesystem. Counting what the store held when the disk got short instead
//! fails when purging had emptied it by then: the store could hold nothing, and records were
//! held for ever with the platform caught up.
//!
//! Only the file's room counts: sled writes any page larger than a quarter of a segment to a
//! blob file of its own, which takes new space and is deleted only after later writes. So
//! records are stored in entries small enough that the tree's pages stay in the file (see
//! [`super::ENTRY_BYTES`]); with whole group commits as entries, blob files of up to a
//! megabyte each took the last free space of the measured disk.
//!
//! The last quarter of `min_free_mb` is never written into by the writer, because the store
//! cannot write, or even reopen, on a truly full disk: before each write the writer checks
//! that twice its bytes are free above that floor ([`write_floor`]), and while the disk is
//! short, that the records fit in the room ([`write_budget`]). The level applies the same two
//! tests to the next write the writer has to make (its oldest held record), so that the level
//! is full exactly when the writer cannot write: a level that says there is room while the
//! writer holds records would hold them for ever, because sled only releases the room that
//! purging freed while it writes.
//!
//! Unforwarded records are never purged to make room. Parcels are decided and diverted at
//! every level, fail closed as always; only their records wait. When room returns the held
//! records are written in order.

/// How full the journal is: the type of the metrics' capacity gauge, which the journal
/// sets and the view, the summary and the writer read.
pub use crate::metrics::JournalLevel as Level;

/// The limits, from `[storage]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub quota_bytes: u64,
    pub min_free_bytes: u64,
}

/// Classifies a measurement. Pure, so the policy is tested without a disk. `short_mark` is
/// the room the store's file had for records when free space fell below `min_free`
/// ([`next_mark`], [`store_room`]); `next_write` the bytes of the writer's next write, 0 if
/// it holds nothing (see the module docs). `live_bytes` are the records' bytes,
/// `platform_bytes` the stored platform state's: both count towards the quota.
pub fn level(
    limits: Limits,
    live_bytes: u64,
    platform_bytes: u64,
    free_bytes: u64,
    short_mark: Option<u64>,
    next_write: u64,
) -> Level {
    let short = free_bytes < limits.min_free_bytes;
    let usage = live_bytes.saturating_add(platform_bytes);
    // Full exactly when the writer could not make its next write.
    let step = if next_write > 0 {
        next_write
    } else {
        TYPICAL_WRITE
    };
    if !writable(
        limits,
        live_bytes,
        free_bytes,
        write_budget(short_mark),
        step,
    ) {
        Level::Full
    } else if usage >= limits.quota_bytes {
        Level::OverQuota
    } else if short
        || usage >= limits.quota_bytes / 5 * 4
        || free_bytes < limits.min_free_bytes.saturating_mul(2)
    {
        Level::NearlyFull
    } else {
        Level::Ok
    }
}

/// The next write the level allows for when the writer holds nothing: a small group commit.
pub const TYPICAL_WRITE: u64 = 16 * 1024;

/// The store's unit of allocation: sled's segment.
pub const SEGMENT_BYTES: u64 = 512 * 1024;

/// Segments of the file kept out of the room: the ones being written and cleaned.
const RESERVED_SEGMENTS: u64 = 4;

/// How many bytes of records (as counted in `live_bytes`) a store file of `file_bytes` holds
/// without growing, while the journal's other trees hold `other_bytes`: half the file, since
/// every segment in use is at least half full, less the other trees and a few segments.
pub fn store_room(file_bytes: u64, other_bytes: u64) -> u64 {
    (file_bytes / 2)
        .saturating_sub(other_bytes)
        .saturating_sub(RESERVED_SEGMENTS * SEGMENT_BYTES / 2)
}

/// Tracks the short-disk mark across measurements: `None` while the disk has room; while it
/// is short, the least room the store's file had ([`store_room`]) since it got short. The
/// mark only goes down: a file that grew while short took that room from the disk.
pub fn next_mark(limits: Limits, free_bytes: u64, room: u64, mark: Option<u64>) -> Option<u64> {
    if free_bytes >= limits.min_free_bytes {
        None
    } else {
        Some(mark.map_or(room, |m| m.min(room)))
    }
}

/// How many bytes of records the store may hold before the writer must stop: unlimited while
/// the disk has room; while it is short, the room in the store's file, so that new records
/// only fill room that purging freed inside the store. Never 0, which the writer reads as
/// "not measured yet".
pub fn write_budget(mark: Option<u64>) -> u64 {
    mark.map_or(u64::MAX, |m| m.max(1))
}

/// The free space a write of `bytes` needs: the hard floor and twice the bytes (the records,
/// their index entries and the pages they rewrite).
pub fn write_floor(limits: Limits, bytes: u64) -> u64 {
    hard_floor(limits).saturating_add(bytes.saturating_mul(2))
}

/// Whether a write of `bytes` may be made: what the writer checks before each write, and the
/// level for the writer's next write. Above the floor ([`write_floor`]); and while the disk
/// is short, only into the room in the store's file (`budget`, from [`write_budget`];
/// `u64::MAX` while no room was measured, which on a short disk means no write).
pub fn writable(limits: Limits, live_bytes: u64, free_bytes: u64, budget: u64, bytes: u64) -> bool {
    free_bytes >= write_floor(limits, bytes)
        && (free_bytes >= limits.min_free_bytes
            || (budget != u64::MAX && live_bytes.saturating_add(bytes) <= budget))
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
        assert_eq!(level(l, 10 * MB, 0, 1000 * MB, None, 0), Level::Ok);
        assert_eq!(level(l, 80 * MB, 0, 1000 * MB, None, 0), Level::NearlyFull);
        assert_eq!(level(l, 10 * MB, 0, 19 * MB, None, 0), Level::NearlyFull);
        assert_eq!(level(l, 100 * MB, 0, 1000 * MB, None, 0), Level::OverQuota);
        // Short of disk: the room is half the store's file, less the other trees and the
        // segments being written; full once the records fill it.
        let room = store_room(40 * MB, MB);
        assert_eq!(room, 18 * MB);
        let mark = next_mark(l, 9 * MB, room, None);
        assert_eq!(mark, Some(18 * MB));
        assert_eq!(level(l, 18 * MB, 0, 9 * MB, mark, 0), Level::Full);
        assert_eq!(level(l, 12 * MB, 0, 9 * MB, mark, 0), Level::NearlyFull);
        // The mark only goes down while short, and goes when the disk has room again.
        assert_eq!(next_mark(l, 9 * MB, 30 * MB, mark), mark);
        assert_eq!(next_mark(l, 9 * MB, 5 * MB, mark), Some(5 * MB));
        assert_eq!(next_mark(l, 11 * MB, 5 * MB, mark), None);
        assert_eq!(write_budget(None), u64::MAX);
        assert_eq!(write_budget(Some(0)), 1, "0 would read as not measured");
        // The last quarter of the floor is never written into.
        assert_eq!(level(l, MB, 0, 2 * MB, Some(100 * MB), 0), Level::Full);
        assert_eq!(
            level(l, 200 * MB, 0, 9 * MB, Some(200 * MB), 0),
            Level::Full,
            "the disk outranks the quota"
        );
        for v in 0..4 {
            assert_eq!(Level::from_u8(v).as_u8(), v);
        }
        // Stored platform state counts towards the quota: few records, a table that fills it.
        assert_eq!(level(l, MB, 79 * MB, 1000 * MB, None, 0), Level::NearlyFull);
        assert_eq!(level(l, MB, 150 * MB, 1000 * MB, None, 0), Level::OverQuota);
        assert_eq!(level(l, 0, 99 * MB, 1000 * MB, None, 0), Level::NearlyFull);
        assert_eq!(level(l, 0, 100 * MB, 1000 * MB, None, 0), Level::OverQuota);
    }

    /// The failure this policy replaced: purging had emptied the store before the disk got
    /// short (sled had not given the file's room back), so what the store held then was
    /// nothing, and records were held for ever with the platform caught up.
    #[test]
    fn a_store_purged_empty_before_the_disk_got_short_has_room() {
        // The test disk: 24 MiB, min_free 6 MiB, the file at 18 MiB, everything purged.
        let l = Limits {
            quota_bytes: 1000 * MB,
            min_free_bytes: 6 * MB,
        };
        let free = 1820 * 1024;
        let mark = next_mark(l, free, store_room(18 * MB, 4096), None);
        assert!(mark.unwrap() > 6 * MB);
        let held = 700 + 4 + 349 + 160;
        assert_eq!(level(l, 0, 0, free, mark, held), Level::NearlyFull);
        assert!(writable(l, 0, free, write_budget(mark), 64 * held));
        // A few records short of the room: still writable, the level agrees.
        let budget = write_budget(mark);
        assert_eq!(
            level(l, budget - held, 0, free, mark, held),
            Level::NearlyFull
        );
        assert_eq!(
            level(l, budget - held + 1, 0, free, mark, held),
            Level::Full
        );
    }

    /// The level is full exactly when the writer cannot make the write it has to make next,
    /// so records are never held at a level that says there is room.
    #[test]
    fn the_level_is_full_exactly_when_the_next_write_does_not_fit() {
        let l = Limits {
            quota_bytes: 1000 * MB,
            min_free_bytes: 6 * MB,
        };
        let floor = hard_floor(l);
        // Near the floor, the size of the next write decides: one parcel record fits where
        // an image chunk record (128 KiB) does not.
        let free = floor + 100 * 1024;
        assert_eq!(level(l, 0, 0, free, Some(10 * MB), 1300), Level::NearlyFull);
        assert_eq!(level(l, 0, 0, free, Some(10 * MB), 130 * 1024), Level::Full);
        // With nothing held, a small group commit is allowed for.
        assert_eq!(
            level(l, 0, 0, floor + 2 * TYPICAL_WRITE, Some(10 * MB), 0),
            Level::NearlyFull
        );
        assert_eq!(
            level(l, 0, 0, floor + 2 * TYPICAL_WRITE - 1, Some(10 * MB), 0),
            Level::Full
        );
        // Short, and no room measured yet: nothing is written.
        assert!(!writable(l, 0, 5 * MB, u64::MAX, 1300));
        for live in [0, 3 * MB, 5 * MB, 9 * MB, 20 * MB] {
            for free in [0, floor, floor + 3000, 3 * MB, 6 * MB - 1, 6 * MB, 20 * MB] {
                for mark in [Some(0), Some(5 * MB), Some(10 * MB)] {
                    for next in [1300, 64 * 1024, 200 * 1024] {
                        let mark = next_mark(l, free, mark.unwrap(), None).or(None);
                        let full = level(l, live, 0, free, mark, next) == Level::Full;
                        assert_eq!(
                            full,
                            !writable(l, live, free, write_budget(mark), next),
                            "live {live} free {free} mark {mark:?} next {next}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn free_space_is_measured() {
        assert!(free_bytes(std::path::Path::new("/")).unwrap() > 0);
    }
}
