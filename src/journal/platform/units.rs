//! The platform log as the journal uses it (files in [`super::files`], format in
//! [`super::log`]): messages are staged as they are stored and written as one block of the
//! day's segment at the next flush, which also makes them durable. Reading the segments in
//! day order, each from its start, reads the messages in the order they were stored.
//!
//! State of an older build (a tree per kind) is moved at the first load into the segment of
//! day 0, read before every other.

use super::files::{self, STAGE_BYTES};
use super::log::Frame;
use super::today;
use crate::journal::{Journal, JournalError};

/// The segment an older build's state is moved into: read first, and forgotten at the first
/// purge but for what is kept, which is carried into the day's segment.
pub(super) const MOVED_DAY: u32 = 0;

impl Journal {
    /// Stores messages in order: staged, written and made durable by the next
    /// [`Journal::flush`] (a large stage is written sooner, durable at the flush all the same).
    pub(super) fn append(&self, frames: &[Frame<'_>]) -> Result<(), JournalError> {
        if self.platform_log.stage(frames) >= STAGE_BYTES {
            self.write_platform(false)?;
        }
        Ok(())
    }

    /// Stores messages as stored on `day` (tests that play days gone by): written at once to
    /// that day's segment.
    #[cfg(test)]
    pub(super) fn append_on(&self, frames: &[Frame<'_>], day: u32) -> Result<(), JournalError> {
        self.platform_log.stage(frames);
        let written = self.platform_log.write(day, false)?;
        self.platform_grow(written, 0);
        Ok(())
    }

    /// Writes what is staged as a block of today's segment, and with `sync` makes the
    /// platform log durable and records where each segment was synced to (see
    /// [`files::PlatformLog::set_recorder`]).
    pub(in crate::journal) fn write_platform(&self, sync: bool) -> Result<(), JournalError> {
        let written = self.platform_log.write(today(), sync)?;
        self.platform_grow(written, 0);
        Ok(())
    }

    /// Adds `added` and takes `removed` bytes from the platform state's figure.
    pub(super) fn platform_grow(&self, added: u64, removed: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.platform_bytes.fetch_update(Relaxed, Relaxed, |b| {
            Some(b.saturating_add(added).saturating_sub(removed))
        });
    }

    /// How many segment files the platform log has, and their bytes.
    pub fn platform_log_files(&self) -> Result<(u64, u64), JournalError> {
        let segments = self.platform_log.segments()?;
        Ok((
            segments.len() as u64,
            segments.iter().map(|(_, len)| len).sum(),
        ))
    }

    /// The day (UTC days since 1970) of the platform log's newest file; 0 with none. New
    /// messages never go into an older file than this one (see `files`).
    pub fn platform_log_newest_day(&self) -> u32 {
        self.platform_log.newest()
    }

    /// Looks for platform log files gone from the disk while the daemon runs (see
    /// [`files::PlatformLog::check_files`]). A file lost with acknowledged messages in it is
    /// refused from now on as a start refuses it (`/readyz`, the staff view), although the
    /// table in memory still holds what it said. Returns one alarm text per finding.
    pub fn check_platform_files(&self) -> Result<Vec<String>, JournalError> {
        let found = self.platform_log.check_files()?;
        let dir = self.platform_log_dir();
        let mut alarms = Vec::new();
        for day in found.restored {
            alarms.push(format!(
                "platform log file {} was removed while it was written to; it was written back from the open file, nothing is lost: find what removes files in {}",
                files::segment_name(day),
                dir.display()
            ));
        }
        if found.stopped {
            alarms.push(format!(
                "a platform log file removed while it was written to could not be written back: the platform log stopped (nothing more is stored or acknowledged) until the daemon restarts; find what removes files in {}",
                dir.display()
            ));
        }
        for lost in found.lost {
            let refused = super::RefusedEntry {
                tree: super::TREE_LOG,
                key: format!(
                    "{} (synced to {})",
                    files::segment_name(lost.day),
                    lost.synced
                ),
                why: "file gone from the disk",
            };
            alarms.push(format!(
                "{refused}: the platform messages it held are in the clearance table until the next start, which refuses them (their waybills held or sent to inspection); find what removes files in {}",
                dir.display()
            ));
            self.platform_grow(0, lost.synced);
            self.note_refused(refused);
        }
        for lost in found.forgotten {
            // Past the period: no later start refuses anything for it, so this is the one
            // report (the waybills it held kept by later messages lack what it said: an
            // undeclared waybill is held).
            alarms.push(format!(
                "platform log file {} (synced to {}) was gone from the disk when retention came to carry what it held for waybills still kept: that is lost, and those waybills lack their declarations or instructions of that day (held as undeclared) until the platform sends them again; find what removes files in {}",
                files::segment_name(lost.day),
                lost.synced,
                dir.display()
            ));
            self.platform_grow(0, lost.synced);
        }
        Ok(alarms)
    }

    /// The platform log's directory.
    pub fn platform_log_dir(&self) -> std::path::PathBuf {
        files::dir_of(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use bondline_devices::contract::{Action, Instruction, SCHEMA};
    use proptest::prelude::*;

    use crate::journal::Journal;
    use crate::rules::clearance::tests::decl as declaration;
    use crate::rules::ClearanceTable;

    #[derive(Debug, Clone)]
    enum Op {
        Declare {
            w: u8,
            consumer: u8,
            value: u64,
        },
        Instruct {
            w: u8,
            id: u8,
            issued: u8,
            hold: bool,
        },
        Count {
            w: u8,
        },
        NextDay(u8),
        Purge {
            keep: u8,
            step: u8,
        },
        Restart,
        /// A segment file removed under the running journal, then the housekeeping check
        /// (only in the cases that remove files).
        RemoveFile {
            pick: u8,
            check: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..40, 0u8..4, 0u64..1000).prop_map(|(w, consumer, value)| Op::Declare { w, consumer, value }),
            4 => (0u8..40, 0u8..60, any::<u8>(), any::<bool>()).prop_map(|(w, id, issued, hold)| Op::Instruct { w, id, issued, hold }),
            2 => (0u8..40).prop_map(|w| Op::Count { w }),
            2 => (1u8..4).prop_map(Op::NextDay),
            1 => (1u8..6, 1u8..30).prop_map(|(keep, step)| Op::Purge { keep, step }),
            1 => Just(Op::Restart),
            1 => (any::<u8>(), any::<bool>()).prop_map(|(pick, check)| Op::RemoveFile { pick, check }),
        ]
    }

    /// What the lines would see of `w`, for comparing two tables.
    fn seen(t: &ClearanceTable, w: &str) -> String {
        let k = t.known(w);
        let today = super::super::today();
        let window = t.consumer_window(w, today - 400, today + 400);
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            (window.parcels, window.value_minor),
            k.declaration.map(|d| (d.consumer, d.value_minor)),
            k.instruction.map(|i| (i.id, i.action)),
            k.counted_day,
            t.retention_facts(w).map(|f| f.touched_day),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Whatever was stored, on whatever days, purged with any cutoff and in any steps, a
        /// restart loads exactly the table the uplink and the retention task left in memory:
        /// the same declarations, instructions, counts, consumer histories, days last stored
        /// and ids seen. Carrying never puts an older message after a newer one, and the purge
        /// never drops what a kept waybill still needs.
        ///
        /// In a quarter of the cases files are removed under the running journal too: the
        /// one being written to is written back (and the restart still loads what the live
        /// table held); another is reported lost, by the check or by the next start, never
        /// missing silently.
        #[test]
        fn a_restart_loads_what_the_live_table_held(
            removals in proptest::bool::weighted(0.25),
            ops in proptest::collection::vec(op(), 1..160),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut j = Journal::open(dir.path()).unwrap();
            // As a start does: the check of removed files runs after the start's repair.
            j.load_clearance().unwrap();
            // Days whose files were removed and not written back, and those a check or a start
            // reported lost: every removal is reported, and only a removal.
            let mut removed = std::collections::BTreeSet::new();
            // Days reported lost: refused at every start after (until past the period),
            // even once written again.
            let mut reported = std::collections::BTreeSet::new();
            let says = |alarms: &[String], d: u32, what: &str| {
                alarms
                    .iter()
                    .any(|a| a.contains(&super::super::files::segment_name(d)) && a.contains(what))
            };
            let written_back = |alarms: &[String], d: u32| says(alarms, d, "it was written back from the open file");
            // What a check said: files written back are no longer removed; losses are reported.
            let heard = |alarms: &[String], removed: &mut std::collections::BTreeSet<u32>, reported: &mut std::collections::BTreeSet<u32>| {
                for &d in removed.iter() {
                    if says(alarms, d, "file gone from the disk") || says(alarms, d, "was gone from the disk when retention came") {
                        reported.insert(d);
                    }
                }
                // Written back (by this check, or at a switch of days since), and not lost
                // again since.
                removed.retain(|&d| !written_back(alarms, d) || says(alarms, d, "gone from the disk"));
            };
            let live = ClearanceTable::default();
            live.set_stored_history(Box::new(j.stored_days().unwrap()));
            // Days from today on: the purge writes what it carries into the newest segment, today's
            // at the earliest.
            let mut day = super::super::today();
            for op in ops {
                match op {
                    Op::Declare { w, consumer, value } => {
                        let d = declaration(&format!("W{w}"), &format!("c{consumer}"), value);
                        if live.declaration_is_new(&d) {
                            j.store_declaration_on(&d, day).unwrap();
                            live.apply_declaration(&d);
                            live.touch(&d.waybill, day);
                        }
                    }
                    Op::Instruct { w, id, issued, hold } => {
                        let i = Instruction {
                            schema: SCHEMA,
                            instruction_id: format!("I{id}"),
                            waybill: format!("W{w}"),
                            action: if hold { Action::Hold } else { Action::Release },
                            reason: String::new(),
                            issued_at_ms: Some(u64::from(issued)),
                            signature: None,
                        };
                        if live.instruction_is_new(&i) {
                            j.store_instruction_on(&i, day).unwrap();
                            live.apply_instruction(&i);
                            live.touch(&i.waybill, day);
                        } else if !live.instruction_id_seen(&i.instruction_id) {
                            j.remember_instruction_id_on(&i, day).unwrap();
                            live.mark_instruction_seen(&i.instruction_id);
                        }
                    }
                    Op::Count { w } => {
                        let w = format!("W{w}");
                        if live.count(&w, day) {
                            j.mark_counted_on(&w, day).unwrap();
                        }
                    }
                    Op::NextDay(n) => day += u32::from(n),
                    Op::Purge { keep, step } => {
                        super::super::tests::purge_all(&j, &live, day - u32::from(keep), usize::from(step));
                        // The check of the files, as housekeeping runs it beside the purge: a
                        // file removed since and still open is written back now.
                        let alarms = j.check_platform_files().unwrap();
                        prop_assert!(alarms.iter().all(|a| !a.contains("could not be written back")), "{:?}", alarms);
                        heard(&alarms, &mut removed, &mut reported);
                    }
                    Op::RemoveFile { pick, check } => {
                        let segments = j.platform_log.segments().unwrap();
                        if !removals || segments.is_empty() {
                            continue;
                        }
                        let (d, _) = segments[usize::from(pick) % segments.len()];
                        let path = j.platform_log_dir().join(super::super::files::segment_name(d));
                        let before = std::fs::read(&path).unwrap();
                        std::fs::remove_file(&path).unwrap();
                        removed.insert(d);
                        // Without the check, found by a later write to that day, a purge
                        // or the next start.
                        if check {
                            let alarms = j.check_platform_files().unwrap();
                            prop_assert!(!alarms.is_empty(), "a removal goes unnoticed");
                            prop_assert!(alarms.iter().all(|a| !a.contains("could not be written back")), "{:?}", alarms);
                            if written_back(&alarms, d) && !says(&alarms, d, "gone from the disk") {
                                // Its blocks, whole: the file before, less the zeros it grew by.
                                let after = std::fs::read(&path).unwrap();
                                prop_assert!(after.len() <= before.len());
                                prop_assert!(before[..after.len()] == after[..], "written back otherwise");
                                prop_assert!(before[after.len()..].iter().all(|&b| b == 0), "written back short");
                            }
                            // Others written back by the same check (removed earlier).
                            heard(&alarms, &mut removed, &mut reported);
                        }
                    }
                    Op::Restart => {
                        // Housekeeping's last check before the stop.
                        let alarms = j.check_platform_files().unwrap();
                        heard(&alarms, &mut removed, &mut reported);
                        j.write_platform(true).unwrap();
                        j.db.flush().unwrap();
                        let before = j.refused_entries();
                        drop(j);
                        j = Journal::open(dir.path()).unwrap();
                        live.set_stored_history(Box::new(j.stored_days().unwrap()));
                        let loaded = j.load_clearance().unwrap();
                        for r in before.iter().chain(j.refused_entries().iter()) {
                            let day = removed
                                .iter()
                                .chain(reported.iter())
                                .copied()
                                .find(|&d| r.key.starts_with(&super::super::files::segment_name(d)));
                            prop_assert!(r.why == "file gone from the disk" && day.is_some(), "refused: {}", r);
                            reported.extend(day);
                        }
                        prop_assert!(removed.is_subset(&reported), "removed {:?}, reported {:?}", removed, reported);
                        if !reported.is_empty() {
                            // What the lost files held is missing from what is loaded.
                            continue;
                        }
                        for w in 0..40 {
                            let w = format!("W{w}");
                            prop_assert_eq!(seen(&loaded, &w), seen(&live, &w), "waybill {}", w);
                        }
                        for id in 0..60 {
                            let id = format!("I{id}");
                            prop_assert_eq!(loaded.instruction_id_seen(&id), live.instruction_id_seen(&id), "id {}", id);
                        }
                    }
                }
            }
        }
    }
}
