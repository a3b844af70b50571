//! What the platform told the gateway, kept across restarts: declarations, instructions,
//! enterprise notices, the rule set it pushed, and which parcels joined their consumer's
//! history.
//!
//! Everything here is written before the MQTT message that carried it is acknowledged and is
//! durable after the next [`Journal::flush`], so a crash makes the broker deliver it again.
//! Ids of applied and ignored messages are kept too: a redelivery after a restart is still
//! recognised.
//!
//! A busy line declares most of a million waybills a day, so what the platform said is not
//! kept for ever: [`Journal::purge_clearance`] forgets waybills (declaration, instruction,
//! history mark) and instruction ids stored before a cutoff day. A parcel whose declaration
//! was forgotten is undeclared again (held: fail closed); an instruction id forgotten after
//! longer than a signature stays valid cannot be replayed (its signature has expired). The
//! consumer history of forgotten declarations is folded into day totals per consumer, kept
//! as long as the longest consumer-limit window and read by consumer when one of its
//! declarations is held again ([`consumer_days`]).
//!
//! Layout: what the platform said is one ordered log of messages in files of their own
//! beside the store ([`log`] its format, [`files`] the files, a block per flush, [`units`]
//! how the journal stages and writes them; not in sled, which keeps resident what a start
//! reads); [`messages`] stores what arrives, [`load`]
//! rebuilds the clearance table from the log at start (and moves an older build's trees into
//! it), [`retention`] forgets what is old, [`trust`] seals and checks stored entries with the
//! integrity key, and [`rules`] keeps the rule set in force.

pub mod consumer_days;
pub(crate) mod consumer_file;
pub(super) mod files;
mod held_days;
mod load;
pub(super) mod log;
mod messages;
mod retention;
mod rules;
mod trust;
pub(super) mod units;

use super::Journal;

pub use consumer_days::StoredDays;
pub use retention::Forgotten;
pub use rules::StoredRules;

const META_PLATFORM_RULES: &[u8] = b"platform_rules";
/// Set by `journal salvage` of an older build in the fresh store. Not read: adoption is
/// marked beside the key (see `integrity::adoption_marker`), where whoever can write only
/// the store cannot set it; removed at the next start's check of the chain's tags.
pub(super) const META_INTEGRITY_ADOPT: &[u8] = b"integrity_adopt";
/// Where the platform log's segments were synced to ([`files::SyncedEnds`]), recorded after each sync so
/// that the next start tells a torn last block from damage to one that was acknowledged.
pub(super) const META_PLATFORM_SYNCED: &[u8] = b"platform_synced";
/// Segments of the platform log found gone from the disk with synced blocks in them (the same
/// encoding), refused at every start until their day is past the clearance period.
pub(super) const META_PLATFORM_LOST: &[u8] = b"platform_lost";

/// Names of the tagged trees, part of every tag (an entry moved between trees fails).
const TREE_DECLARATIONS: &str = "declarations";
const TREE_INSTRUCTIONS: &str = "instructions";
const TREE_ENTERPRISES: &str = "enterprises";
const TREE_META: &str = "meta";
/// The platform log (see [`log`]): what the platform said, in the order it was stored.
pub(super) const TREE_LOG: &str = "platform_log";

/// A stored platform entry that failed its integrity check and was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedEntry {
    /// What was refused: `declarations`, `instructions` or `enterprises` (a message of that
    /// kind), `platform_log` (a unit of the log that does not read), or `meta` (the rule
    /// set).
    pub tree: &'static str,
    /// The waybill, the enterprise, the log unit's key, or `platform_rules`.
    pub key: String,
    /// `tag does not verify` or `untagged`.
    pub why: &'static str,
}

impl std::fmt::Display for RefusedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.tree {
            TREE_DECLARATIONS => "declaration of waybill",
            TREE_INSTRUCTIONS => "instruction for waybill",
            TREE_ENTERPRISES => "enterprise notice of",
            _ => "platform rule set",
        };
        if self.tree == TREE_LOG {
            write!(
                f,
                "stored platform messages at {} refused ({})",
                self.key, self.why
            )
        } else if self.tree == TREE_META {
            write!(f, "stored {what} refused ({})", self.why)
        } else {
            write!(f, "stored {what} {} refused ({})", self.key, self.why)
        }
    }
}

fn today() -> u32 {
    crate::rules::history::day_of(crate::metrics::unix_ms(std::time::SystemTime::now()))
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

impl Journal {
    /// Held by whoever stores platform state and applies it to the clearance table, and by
    /// whoever forgets old state from both, so the two never interleave: a declaration stored
    /// while old state is forgotten is neither deleted on disk nor forgotten in memory.
    /// An async lock: the uplink waits for it without holding up a runtime thread while a
    /// purge step runs (which takes it with `blocking_lock` on a blocking thread).
    pub fn platform_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.platform_lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{Action, Instruction, SCHEMA};

    use crate::rules::clearance::tests::decl as declaration;
    use crate::rules::ClearanceTable;

    fn instruction(w: &str, id: &str) -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: id.into(),
            waybill: w.into(),
            action: Action::Release,
            reason: String::new(),
            issued_at_ms: None,
            signature: None,
        }
    }

    /// Purges everything before `before` as the retention task does, `step` messages at a
    /// time, the table forgetting what the store forgot; returns all that was forgotten.
    pub(crate) fn purge_all(
        j: &Journal,
        t: &ClearanceTable,
        before: u32,
        step: usize,
    ) -> Forgotten {
        let mut all = Forgotten::default();
        loop {
            let f = j.purge_clearance(before, step, t).unwrap();
            for id in &f.instruction_ids {
                t.forget_instruction_id(id);
            }
            all.waybills.extend(f.waybills);
            all.instruction_ids.extend(f.instruction_ids);
            if !f.more {
                return all;
            }
        }
    }

    #[test]
    fn old_clearance_is_forgotten_and_its_consumer_history_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let now = today();
        let (old, recent) = (now - 40, now - 5);
        // OLD: declared, instructed and counted 40 days ago. KEPT: declared then, and
        // instructed again recently. NEW: recent. Between them, old declarations of one-off
        // buyers.
        j.store_declaration_on(&declaration("OLD", "c1", 500), old)
            .unwrap();
        j.store_instruction_on(&instruction("OLD", "I-OLD"), old)
            .unwrap();
        j.mark_counted_on("OLD", old).unwrap();
        j.store_declaration_on(&declaration("KEPT", "c2", 10), old)
            .unwrap();
        for i in 0..300 {
            j.store_declaration_on(&declaration(&format!("FILL{i}"), "c3", 1), old)
                .unwrap();
        }
        j.store_instruction_on(&instruction("KEPT", "I-KEPT"), recent)
            .unwrap();
        j.store_declaration_on(&declaration("NEW", "c1", 20), recent)
            .unwrap();
        j.write_platform(true).unwrap();

        let table = j.load_clearance().unwrap();
        let all = purge_all(&j, &table, now - 30, 7);
        let mut waybills = all.waybills.clone();
        waybills.sort();
        assert_eq!(waybills.len(), 301);
        assert_eq!(waybills[0], "FILL0");
        assert!(waybills.contains(&"OLD".to_string()));
        assert!(!waybills.contains(&"KEPT".to_string()));
        assert_eq!(all.instruction_ids, vec!["I-OLD".to_string()]);
        assert!(j.declaration("OLD").unwrap().is_none());
        assert!(j.declaration("KEPT").unwrap().is_some());
        assert!(j.declaration("NEW").unwrap().is_some());
        assert!(table.known("OLD").declaration.is_none());
        let w = table.consumer_window("NEW", now - 364, now);
        assert_eq!(
            (w.parcels, w.value_minor),
            (1, 500),
            "the live table keeps its count"
        );

        // After a restart: OLD is undeclared, its instruction id new again, and consumer c1
        // still has OLD's parcel in its history.
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLD").declaration.is_none());
        assert!(table.known("FILL7").declaration.is_none());
        assert!(table.known("KEPT").instruction.is_some());
        assert!(table.known("KEPT").declaration.is_some());
        assert!(!table.instruction_id_seen("I-OLD"));
        assert!(table.instruction_id_seen("I-KEPT"));
        let w = table.consumer_window("NEW", now - 364, now);
        assert_eq!((w.parcels, w.value_minor), (1, 500));
        // Nothing left to forget, and what is kept is passed over.
        assert_eq!(purge_all(&j, &table, now - 30, 100), Forgotten::default());
        // Once their last messages are old too, KEPT and NEW go.
        let all = purge_all(&j, &table, now, 100);
        assert_eq!(all.waybills, vec!["KEPT".to_string(), "NEW".to_string()]);
        assert_eq!(all.instruction_ids, vec!["I-KEPT".to_string()]);
        // Left: today's segment, with the marks of what was forgotten.
        let (files, _) = j.platform_log_files().unwrap();
        assert_eq!(files, 1);
    }

    /// A step whose day totals cannot be written forgets nothing: its waybills are held again
    /// (the consumers' file cannot be opened here), and a restart still holds them.
    #[test]
    fn totals_that_cannot_be_written_forget_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(super::consumer_days::path_of(dir.path())).unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let now = today();
        j.store_declaration_on(&declaration("OLD", "c1", 500), now - 40)
            .unwrap();
        j.mark_counted_on("OLD", now - 40).unwrap();
        j.store_declaration_on(&declaration("PLAIN", "c2", 5), now - 40)
            .unwrap();
        j.write_platform(true).unwrap();
        let table = j.load_clearance().unwrap();
        // Loaded all the same, every consumer's history unknown: over every limit.
        assert!(table.known("OLD").declaration.is_some());
        assert_eq!(
            table.consumer_window("PLAIN", now - 364, now).parcels,
            u32::MAX
        );
        assert!(j.purge_clearance(now - 30, 100, &table).is_err());
        assert!(table.known("OLD").declaration.is_some(), "held again");
        assert_eq!(table.known("OLD").counted_day, Some(now - 40));
        assert!(
            table.known("PLAIN").declaration.is_some(),
            "its step failed with it"
        );
        drop((j, table));
        let j = Journal::open(dir.path()).unwrap();
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLD").declaration.is_some());
        assert!(table.known("PLAIN").declaration.is_some());
    }

    /// The platform state's bytes follow every store, packing and purge, and a restart
    /// sums the same figure from the trees; the capacity policy counts them towards the quota.
    #[test]
    fn platform_state_bytes_are_counted_towards_the_quota() {
        use crate::journal::capacity::{level, Level, Limits};
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let now = today();
        let trees = |j: &Journal| -> u64 {
            j.write_platform(true).unwrap();
            j.platform_log_files().unwrap().1
                + j.rule_update_ids
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>()
        };
        assert_eq!(j.platform_bytes(), 0);
        // Old ones first: a segment is never written before a newer one.
        for i in (0..150).map(|i| (i % 2) * 150 + i / 2) {
            let w = format!("W{i:04}");
            let day = now - 40 * u32::from(i < 150);
            j.store_declaration_on(&declaration(&w, "c1", 500), day)
                .unwrap();
            j.store_instruction_on(&instruction(&w, &format!("I-{w}")), day)
                .unwrap();
        }
        j.store_declaration_on(&declaration("W0001", "a-longer-consumer-hash", 50_000), now)
            .unwrap();
        j.remember_rule_update("R-1").unwrap();
        let on_disk = trees(&j);
        assert_eq!(j.platform_bytes(), on_disk);
        let full = j.platform_bytes();
        let table = j.load_clearance().unwrap();
        assert_eq!(j.platform_bytes(), full, "the load sums the same figure");
        purge_all(&j, &table, now - 30, 7);
        assert!(j.platform_bytes() < full);
        let on_disk = trees(&j);
        assert_eq!(j.platform_bytes(), on_disk);
        let kept = j.platform_bytes();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        j.load_clearance().unwrap();
        assert_eq!(j.platform_bytes(), kept, "a restart sums the same figure");
        // A journal with almost no records whose platform state exceeds the quota is over it.
        let l = Limits {
            quota_bytes: kept / 2,
            min_free_bytes: 1,
        };
        assert_eq!(
            level(l, 0, j.platform_bytes(), u64::MAX / 4, None, 0),
            Level::OverQuota
        );
    }

    /// A store of an older build (a tree per kind, ages apart) is moved into the log at the
    /// first load, and forgotten in its turn by the day it was received.
    #[test]
    fn state_of_an_older_build_is_moved_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        {
            let j = Journal::open(dir.path()).unwrap();
            // As an older build stored them.
            for (w, day) in [("OLDBUILD", now - 40), ("RECENT", now - 2)] {
                let d = declaration(w, "c1", 5);
                j.declarations
                    .insert(w, serde_json::to_vec(&d).unwrap())
                    .unwrap();
                j.received.insert(w, &day.to_be_bytes()).unwrap();
            }
            let i = instruction("RECENT", "I-RECENT");
            j.instructions
                .insert("RECENT", serde_json::to_vec(&i).unwrap())
                .unwrap();
            j.instruction_ids.insert("I-RECENT", "RECENT").unwrap();
            j.counted
                .insert("OLDBUILD", &(now - 40).to_be_bytes())
                .unwrap();
            j.declarations.insert("GARBLED", &b"{not json"[..]).unwrap();
            j.aging.insert(b"anything", &[]).unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLDBUILD").declaration.is_some());
        assert_eq!(table.known("OLDBUILD").counted_day, Some(now - 40));
        assert_eq!(
            table.known("RECENT").instruction.unwrap().action,
            Action::Release
        );
        assert!(table.instruction_id_seen("I-RECENT"));
        for t in [
            &j.instructions,
            &j.instruction_ids,
            &j.counted,
            &j.received,
            &j.aging,
        ] {
            assert!(t.is_empty());
        }
        assert_eq!(
            j.declarations.len(),
            1,
            "the unreadable entry stays where it lies"
        );
        assert!(j.platform_log_files().unwrap().0 > 0);
        // The next start reads the same from the log alone.
        drop((j, table));
        let j = Journal::open(dir.path()).unwrap();
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLDBUILD").declaration.is_some());
        assert!(table.known("RECENT").declaration.is_some());
        // Forgotten by the day it was received, its history kept.
        let all = purge_all(&j, &table, now - 30, 100);
        assert_eq!(all.waybills, vec!["OLDBUILD".to_string()]);
        assert!(table.known("RECENT").declaration.is_some());
        assert!(
            !j.stored_days().unwrap().is_empty(),
            "its counted parcel's day total"
        );
    }
}

#[cfg(test)]
mod integrity_tests {
    use super::*;
    use bondline_devices::contract::{Action, Declaration, Instruction, SCHEMA};

    use crate::journal::integrity::{Checked, IntegrityKey};
    use crate::rules::clearance::tests::decl as declaration;

    fn instruction(w: &str, id: &str, action: Action) -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: id.into(),
            waybill: w.into(),
            action,
            reason: String::new(),
            issued_at_ms: None,
            signature: None,
        }
    }

    /// The first block of the platform log whose bytes contain `text`: its segment's day,
    /// offset and payload.
    fn unit_holding(j: &Journal, text: &str) -> (u32, u64, Vec<u8>) {
        let mut found = None;
        for (day, _) in j.platform_log.segments().unwrap() {
            j.platform_log
                .read(day, 0, &mut |b| {
                    if found.is_none() && String::from_utf8_lossy(&b.payload).contains(text) {
                        found = Some((day, b.offset, b.payload));
                    }
                    Ok(true)
                })
                .unwrap();
        }
        found.expect("a block holding it")
    }

    /// Flips one byte of the first block holding `text`, as a disk's damage could.
    fn damage_block_holding(j: &Journal, text: &str) {
        let (day, at, _) = unit_holding(j, text);
        let path = j.platform_log_dir().join(super::files::segment_name(day));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize + 40] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }

    /// A new store's load, then a declaration of each waybill stored on its day and synced.
    fn declared_on(j: &Journal, days: &[(&str, u32)]) {
        j.load_clearance().unwrap();
        for &(w, day) in days {
            j.store_declaration_on(&declaration(w, "c1", 5), day)
                .unwrap();
            j.write_platform(true).unwrap();
        }
    }

    /// Removes the platform log's file of `day` under the journal, as a clean-up script
    /// could.
    fn remove_segment(dir: &std::path::Path, day: u32) -> std::io::Result<()> {
        std::fs::remove_file(super::files::dir_of(dir).join(super::files::segment_name(day)))
    }

    /// Where the blocks of the segment of `day` end.
    fn blocks_end(j: &Journal, day: u32) -> u64 {
        let mut end = 0;
        j.platform_log
            .read(day, 0, &mut |b| {
                end = b.offset + (super::files::BLOCK_HEADER + b.payload.len()) as u64;
                Ok(true)
            })
            .unwrap();
        end
    }

    /// Writes a declaration of `w` into the segment of `day` as retention carries one there
    /// (not synced).
    fn carry(j: &Journal, w: &str, day: u32) {
        let d = serde_json::to_vec(&declaration(w, "c1", 5)).unwrap();
        let unit = super::log::encode([super::log::Frame::about(
            super::log::Kind::Declaration,
            day,
            w,
            &d,
        )]);
        j.platform_log.append_sealed(day, &unit).unwrap();
    }

    /// Zeros `from..to` of the segment of `day` of the store in `dir`, as a crash or a disk
    /// leaves it.
    fn zero_on_disk(dir: &std::path::Path, day: u32, from: u64, to: u64) {
        let path = super::files::dir_of(dir).join(super::files::segment_name(day));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[from as usize..to as usize].fill(0);
        std::fs::write(&path, bytes).unwrap();
    }

    /// The store in `dir` opened and loaded, with nothing refused (`what`: the case, for the
    /// message).
    fn loaded_whole(dir: &std::path::Path, what: &str) -> (Journal, crate::rules::ClearanceTable) {
        let j = keyed(dir);
        let table = j.load_clearance().unwrap();
        assert!(
            j.refused_entries().is_empty(),
            "{what}: {:?}",
            j.refused_entries()
        );
        (j, table)
    }

    /// Asserts that the load refused something with `why` in its text.
    fn assert_refused(j: &Journal, why: &str) {
        let refused: Vec<String> = j
            .refused_entries()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(refused.iter().any(|r| r.contains(why)), "{refused:?}");
    }

    /// Puts back where the segments were synced to, as the store recorded it before a
    /// crash: a clean drop syncs and records what a crash would have left unsynced.
    fn crashed_with(dir: &std::path::Path, ends: &super::files::SyncedEnds) {
        let db = crate::journal::open_db(dir).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert(super::META_PLATFORM_SYNCED, ends.encode())
            .unwrap();
        db.flush().unwrap();
    }

    /// Replaces the block at `offset` of the segment of `day` by `payload` and drops what
    /// followed it, as an intruder with the files could.
    fn replace_block(j: &Journal, day: u32, offset: u64, payload: &[u8]) {
        let path = j.platform_log_dir().join(super::files::segment_name(day));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(offset as usize);
        bytes.push(0xB1);
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&super::files::block_crc(payload).to_be_bytes());
        bytes.extend_from_slice(payload);
        std::fs::write(&path, bytes).unwrap();
    }

    /// `bytes` with the first `from` replaced by `to`.
    fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("found");
        [&bytes[..at], to, &bytes[at + from.len()..]].concat()
    }

    /// The day and offset of the last block of the segment of `day`.
    fn unit_last(j: &Journal, day: u32) -> (u32, u64) {
        let mut last = 0;
        j.platform_log
            .read(day, 0, &mut |b| {
                last = b.offset;
                Ok(true)
            })
            .unwrap();
        (day, last)
    }

    /// Replaces the payload of the block at `offset` by one of the same length, with a
    /// checksum made anew, as an intruder with the files could.
    fn edit_block(j: &Journal, day: u32, offset: u64, payload: &[u8]) {
        let path = j.platform_log_dir().join(super::files::segment_name(day));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = offset as usize;
        bytes[at + 5..at + 9].copy_from_slice(&super::files::block_crc(payload).to_be_bytes());
        bytes[at + 9..at + 9 + payload.len()].copy_from_slice(payload);
        std::fs::write(&path, bytes).unwrap();
    }

    fn keyed(dir: &std::path::Path) -> Journal {
        let j = Journal::open(dir).unwrap();
        assert!(j.set_integrity_key(IntegrityKey::from_bytes([9; 32]), false));
        j
    }

    fn keyed_new(dir: &std::path::Path) -> Journal {
        let j = Journal::open(dir).unwrap();
        assert!(j.set_integrity_key(IntegrityKey::from_bytes([9; 32]), true));
        j
    }

    #[test]
    fn a_stored_hold_edited_into_a_release_is_refused_and_held() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = keyed_new(dir.path());
            j.load_clearance().unwrap();
            // A block each: WB1's declaration, its hold (with a reason to trade bytes for the
            // edit below), WB2's release, WB2's declaration.
            let mut hold = instruction("WB1", "I-1", Action::Hold);
            hold.reason = "abc".into();
            j.store_declaration(&declaration("WB1", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
            j.store_instruction(&hold).unwrap();
            j.write_platform(true).unwrap();
            j.store_instruction(&instruction("WB2", "I-2", Action::Release))
                .unwrap();
            j.write_platform(true).unwrap();
            j.store_declaration(&declaration("WB2", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
            // Edited on disk: the hold turned into a release in place (the same length, the
            // tag kept, the block's checksum made anew).
            let (day, at, stored) = unit_holding(&j, "I-1");
            let text = replace(
                &replace(&stored, b"\"hold\"", b"\"release\""),
                b"\"abc\"",
                b"\"\"",
            );
            assert_eq!(text.len(), stored.len());
            edit_block(&j, day, at, &text);
            // And the last block, WB2's declaration, written anew without a tag.
            let (day, at) = unit_last(&j, today());
            let d = serde_json::to_vec(&declaration("WB2", "c9", 1)).unwrap();
            let unit = super::log::encode([super::log::Frame::about(
                super::log::Kind::Declaration,
                today(),
                "WB2",
                &d,
            )]);
            replace_block(&j, day, at, &unit);
        }
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        let held = table.known("WB1").instruction.expect("a stand-in hold");
        assert_eq!(held.action, Action::Hold);
        assert!(
            table.known("WB2").declaration.is_none(),
            "untagged after adoption"
        );
        assert_eq!(
            table.known("WB2").instruction.unwrap().action,
            Action::Release
        );
        // The instruction's tag, the untagged declaration, and the segment now ending short
        // of where it was synced (the block written over was shorter).
        let refused = j.refused_entries();
        assert_eq!(refused.len(), 3, "{refused:?}");
        let text: Vec<String> = refused.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|r| r.contains("cut short on disk")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|r| r.contains("instruction for waybill WB1")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|r| r.contains("declaration of waybill WB2")),
            "{text:?}"
        );
    }

    /// A block damaged on disk (its checksum no longer matches) is refused with the
    /// stand-ins of what it still shows, and its file is kept past the clearance period, so
    /// the stand-in hold of a waybill declared again since does not go with it.
    #[test]
    fn a_damaged_block_holds_its_waybill_and_its_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        let old = now - 40;
        {
            let j = keyed_new(dir.path());
            j.load_clearance().unwrap();
            j.store_declaration_on(&declaration("WB1", "c1", 5), old)
                .unwrap();
            j.store_instruction_on(&instruction("WB1", "I-1", Action::Hold), old)
                .unwrap();
            j.store_declaration_on(&declaration("WB2", "c1", 5), old)
                .unwrap();
            j.store_declaration_on(&declaration("WB1", "c1", 6), now)
                .unwrap();
            j.write_platform(true).unwrap();
            // One byte of the hold's block flipped on disk.
            damage_block_holding(&j, "I-1");
        }
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert_eq!(
            table.known("WB1").instruction.map(|i| i.action),
            Some(Action::Hold)
        );
        assert!(table.known("WB2").declaration.is_some());
        let refused = j.refused_entries();
        assert!(
            refused.iter().any(|r| r.to_string().contains("WB1")),
            "{refused:?}"
        );
        // The purge keeps the damaged file whole: nothing in it is forgotten.
        let f = tests::purge_all(&j, &table, now - 30, 100);
        assert_eq!(f, Forgotten::default());
        assert_eq!(j.platform_log_files().unwrap().0, 2);
        drop((j, table));
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert_eq!(
            table.known("WB1").instruction.map(|i| i.action),
            Some(Action::Hold)
        );
    }

    /// The platform's clock as a start knows it (retention and consumer days count from it,
    /// see `ClearanceTable::counting_ms`): the newest signature time of a message loaded; a
    /// stand-in made at the load does not count.
    #[test]
    fn the_platform_clock_is_the_newest_signature_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let signed = |at: u64| {
            Some(bondline_devices::signing::Signature {
                scheme: 2,
                key_id: "p1".into(),
                signed_at_ms: at,
                target: None,
                ed25519: "00".repeat(64),
            })
        };
        {
            let j = keyed_new(dir.path());
            assert_eq!(j.load_clearance().unwrap().platform_clock_ms(), None);
            let d = Declaration {
                signature: signed(5_000),
                ..declaration("WB1", "c1", 5)
            };
            j.store_declaration(&d).unwrap();
            let i = Instruction {
                signature: signed(9_000),
                ..instruction("WB1", "I-1", Action::Hold)
            };
            j.store_instruction(&i).unwrap();
            let stale = Instruction {
                signature: signed(7_000),
                ..instruction("WB1", "I-0", Action::Release)
            };
            j.remember_instruction_id(&stale).unwrap();
            j.write_platform(true).unwrap();
            // A block after it, damaged: its stand-in is made at the load, and the signature
            // time in it is not trusted.
            let damaged = Instruction {
                signature: signed(20_000),
                ..instruction("WB2", "I-2", Action::Hold)
            };
            j.store_instruction(&damaged).unwrap();
            j.write_platform(true).unwrap();
            j.store_declaration(&declaration("WB3", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
            damage_block_holding(&j, "I-2");
        }
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert_eq!(
            table.known("WB2").instruction.map(|i| i.action),
            Some(Action::Hold)
        );
        assert_eq!(table.platform_clock_ms(), Some(9_000));
    }

    /// The stand-in hold of a refused stored instruction is made at the load: a release
    /// signed before it (such as the one the refused hold replaced, replayed from the
    /// broker) does not replace it; one the platform signs after the load does.
    #[test]
    fn a_stand_in_hold_gives_way_only_to_what_is_signed_after_the_load() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = keyed_new(dir.path());
            j.load_clearance().unwrap();
            j.store_declaration(&declaration("WB1", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
            j.store_instruction(&instruction("WB1", "I-HOLD", Action::Hold))
                .unwrap();
            j.write_platform(true).unwrap();
            // A block after it: the damaged one is not the log's last (a torn tail).
            j.store_declaration(&declaration("WB2", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
            damage_block_holding(&j, "I-HOLD");
        }
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        let now = crate::metrics::unix_ms(std::time::SystemTime::now());
        let release = |id: &str, at: u64| Instruction {
            signature: Some(bondline_devices::signing::Signature {
                scheme: 2,
                key_id: "p1".into(),
                signed_at_ms: at,
                target: None,
                ed25519: "00".repeat(64),
            }),
            ..instruction("WB1", id, Action::Release)
        };
        assert_eq!(
            table.apply_instruction(&release("I-OLD", now - 60_000)),
            crate::rules::Applied::Unchanged
        );
        assert_eq!(
            table.known("WB1").instruction.map(|i| i.action),
            Some(Action::Hold)
        );
        assert_eq!(
            table.apply_instruction(&release("I-NEW", now + 60_000)),
            crate::rules::Applied::Changed
        );
        assert_eq!(
            table.known("WB1").instruction.map(|i| i.action),
            Some(Action::Release)
        );
    }

    /// A damaged block holding a waybill's newer declaration leaves the waybill undeclared
    /// (held), not declared by the older one still intact before it; a declaration stored
    /// after the damage is used again.
    #[test]
    fn a_damaged_newer_declaration_does_not_leave_the_older_one_in_force() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = keyed_new(dir.path());
            j.load_clearance().unwrap();
            for (w, value) in [("WB1", 100), ("WB1", 90_001), ("WB2", 100), ("WB2", 90_002)] {
                j.store_declaration(&declaration(w, "c1", value)).unwrap();
                j.write_platform(true).unwrap();
            }
            j.store_declaration(&declaration("WB2", "c1", 300)).unwrap();
            j.write_platform(true).unwrap();
            damage_block_holding(&j, "90001");
            damage_block_holding(&j, "90002");
        }
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert!(
            table.known("WB1").declaration.is_none(),
            "the older declaration is stale: held as undeclared"
        );
        assert_eq!(
            table.known("WB2").declaration.and_then(|d| d.value_minor),
            Some(300),
            "declared again after the damage"
        );
        let refused = j.refused_entries();
        assert_eq!(refused.len(), 2, "{refused:?}");
    }

    /// The last block of the log, synced (so acknowledged) and damaged on disk afterwards, is
    /// refused at the load (a stand-in hold for its waybill), not cut off as a torn write;
    /// it stays on disk, refused again at the next start, with what is stored after it read.
    #[test]
    fn a_synced_last_block_that_does_not_read_is_refused_not_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = keyed_new(dir.path());
            j.load_clearance().unwrap();
            j.store_declaration(&declaration("WB1", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
            j.store_instruction(&instruction("WB1", "I-HOLD", Action::Hold))
                .unwrap();
            j.write_platform(true).unwrap();
            j.db.flush().unwrap();
            damage_block_holding(&j, "I-HOLD");
        }
        for start in 0..2 {
            let j = keyed(dir.path());
            let table = j.load_clearance().unwrap();
            assert_eq!(
                table.known("WB1").instruction.map(|i| i.action),
                Some(Action::Hold),
                "start {start}"
            );
            let refused = j.refused_entries();
            assert!(
                refused.iter().any(|r| r.to_string().contains("WB1")),
                "start {start}: {refused:?}"
            );
            if start == 0 {
                j.store_declaration(&declaration("WB2", "c1", 5)).unwrap();
                j.write_platform(true).unwrap();
                j.db.flush().unwrap();
            } else {
                assert!(table.known("WB2").declaration.is_some());
            }
        }
    }

    /// Retention carries messages into older segments than the newest: a block it wrote
    /// there and a stop tore before its sync is cut off quietly at the next start (it was
    /// never acknowledged, and the segment it was carried from is removed only after the
    /// sync), not refused as damage; what was synced there before it is kept.
    #[test]
    fn a_torn_block_past_an_older_segments_synced_end_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        let (torn, recorded) = {
            let j = keyed_new(dir.path());
            declared_on(&j, &[("WB1", now - 2), ("WB2", now - 1), ("WB3", now)]);
            let recorded = j.platform_log.synced_ends();
            // Carried into the oldest segment as retention does, not synced yet.
            carry(&j, "WB4", now - 2);
            (blocks_end(&j, now - 2), recorded)
        };
        crashed_with(dir.path(), &recorded);
        zero_on_disk(dir.path(), now - 2, torn - 3, torn);
        let (_j, table) = loaded_whole(dir.path(), "");
        for w in ["WB1", "WB2", "WB3"] {
            assert!(table.known(w).declaration.is_some(), "{w}");
        }
        assert!(table.known("WB4").declaration.is_none(), "torn: cut off");
    }

    /// A damaged file the operator set aside as the README says (into `set-aside/` beside
    /// the log's files) is not taken for one lost from the disk.
    #[test]
    fn a_file_set_aside_by_the_operator_is_not_reported_lost() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        {
            let j = keyed_new(dir.path());
            declared_on(&j, &[("WB1", now - 3), ("WB2", now - 1), ("WB3", now)]);
        }
        let log = super::files::dir_of(dir.path());
        let aside = log.join(super::files::SET_ASIDE);
        std::fs::create_dir_all(&aside).unwrap();
        let name = super::files::segment_name(now - 3);
        std::fs::rename(log.join(&name), aside.join(&name)).unwrap();
        for _ in 0..2 {
            let (_j, table) = loaded_whole(dir.path(), "");
            assert!(table.known("WB1").declaration.is_none());
        }
    }

    /// Files removed while the daemon runs: the one being written to is written back from
    /// the open file (nothing lost, and written to on); an older one synced is lost,
    /// refused from then on and at the next start; one the operator set aside is neither.
    #[test]
    fn a_file_removed_while_running_is_written_back_if_open_and_refused_if_not() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        let log = super::files::dir_of(dir.path());
        let gone = |day: u32| remove_segment(dir.path(), day);
        {
            let j = keyed_new(dir.path());
            declared_on(&j, &[("WB1", now - 3), ("WB2", now - 1), ("WB3", now)]);
            assert!(j.check_platform_files().unwrap().is_empty());
            let aside = log.join(super::files::SET_ASIDE);
            std::fs::create_dir_all(&aside).unwrap();
            let name = super::files::segment_name(now - 3);
            std::fs::rename(log.join(&name), aside.join(&name)).unwrap();
            gone(now - 1).unwrap();
            gone(now).unwrap();
            let alarms = j.check_platform_files().unwrap();
            assert_eq!(alarms.len(), 2, "{alarms:?}");
            assert!(alarms[0].contains("written back"), "{alarms:?}");
            assert!(alarms[1].contains("file gone from the disk"), "{alarms:?}");
            assert_refused(&j, "file gone from the disk");
            assert_eq!(j.refused_entries().len(), 1);
            assert!(!j.integrity_problems().is_empty());
            // Found once.
            assert!(j.check_platform_files().unwrap().is_empty());
            // Written on after it was written back.
            j.store_declaration(&declaration("WB4", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
        }
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        for (w, held) in [("WB1", false), ("WB2", false), ("WB3", true), ("WB4", true)] {
            assert_eq!(table.known(w).declaration.is_some(), held, "{w}");
        }
        assert_refused(&j, "file gone from the disk");
        assert_eq!(j.refused_entries().len(), 1, "{:?}", j.refused_entries());
    }

    /// A synced file removed and not yet checked is reported all the same: by the write
    /// that finds it gone (as the next check's finding), or by the purge.
    #[test]
    fn a_file_gone_before_the_check_is_reported_by_the_next_write_or_the_purge() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        let gone = |day: u32| remove_segment(dir.path(), day);
        let j = keyed_new(dir.path());
        declared_on(&j, &[("WB1", now - 2), ("WB2", now - 1), ("WB3", now)]);
        // Retention carries a message into the older file, which is gone.
        gone(now - 1).unwrap();
        j.platform_log.append_sealed(now - 1, b"carried").unwrap();
        let alarms = j.check_platform_files().unwrap();
        assert!(
            alarms.iter().any(|a| a.contains("file gone from the disk")),
            "{alarms:?}"
        );
        assert_eq!(j.refused_entries().len(), 1);
        // Gone past the purge's cut, before any check: the check after the purge says so.
        gone(now - 2).unwrap();
        j.purge_clearance(now - 1, 100, &crate::rules::ClearanceTable::default())
            .unwrap();
        let alarms = j.check_platform_files().unwrap();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert!(alarms[0].contains("when retention came"), "{alarms:?}");
        assert!(
            j.check_platform_files().unwrap().is_empty(),
            "reported once"
        );
    }

    /// The file being written to, gone where it cannot be written back (here its temporary
    /// file's name is taken): what was written to it and not synced must not be vouched for
    /// by a later sync, so the log stops, and nothing more is acknowledged.
    #[test]
    fn an_open_file_removed_that_cannot_be_written_back_stops_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        let j = keyed_new(dir.path());
        declared_on(&j, &[("WB1", now)]);
        j.store_declaration_on(&declaration("WB2", "c1", 5), now)
            .unwrap();
        let log = super::files::dir_of(dir.path());
        let name = super::files::segment_name(now);
        std::fs::create_dir(log.join(format!("{name}.tmp"))).unwrap();
        std::fs::remove_file(log.join(&name)).unwrap();
        let alarms = j.check_platform_files().unwrap();
        assert!(alarms.iter().any(|a| a.contains("stopped")), "{alarms:?}");
        assert_refused(&j, "file gone from the disk");
        j.store_declaration(&declaration("WB3", "c1", 5)).unwrap();
        assert!(
            j.write_platform(true).is_err(),
            "nothing more is made durable"
        );
    }

    /// Two blocks written after the last recorded sync, the first torn and the second whole
    /// (blocks written between two syncs may reach the disk out of order): neither was
    /// acknowledged, so both are cut off at the next start, with nothing refused, whether
    /// the torn block's header, its first bytes or its payload was lost.
    #[test]
    fn blocks_past_the_synced_end_after_a_torn_one_are_cut_off() {
        for lost in ["header", "its first bytes", "payload"] {
            let dir = tempfile::tempdir().unwrap();
            let (synced, recorded) = {
                let j = keyed_new(dir.path());
                declared_on(&j, &[("WB1", today())]);
                let recorded = j.platform_log.synced_ends();
                let synced = blocks_end(&j, today());
                for w in ["WB2", "WB3"] {
                    j.store_declaration(&declaration(w, "c1", 5)).unwrap();
                    j.write_platform(false).unwrap();
                }
                (synced, recorded)
            };
            crashed_with(dir.path(), &recorded);
            match lost {
                "header" => zero_on_disk(dir.path(), today(), synced, synced + 9),
                "its first bytes" => zero_on_disk(dir.path(), today(), synced, synced + 3),
                _ => zero_on_disk(dir.path(), today(), synced + 20, synced + 24),
            }
            for start in 0..2 {
                let (_j, table) = loaded_whole(dir.path(), &format!("{lost} lost, start {start}"));
                assert!(table.known("WB1").declaration.is_some());
                assert!(table.known("WB2").declaration.is_none());
                assert!(table.known("WB3").declaration.is_none());
            }
        }
    }

    /// A segment older than the two newest, shorter on disk than where it was synced to (cut
    /// by someone with the disk), is refused as cut short: what it lost was acknowledged.
    #[test]
    fn an_older_segment_shorter_than_its_synced_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        {
            let j = keyed_new(dir.path());
            declared_on(&j, &[("WB1", now - 2), ("WB2", now - 1), ("WB3", now)]);
            j.db.flush().unwrap();
        }
        let path = super::files::dir_of(dir.path()).join(super::files::segment_name(now - 2));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // At a block's boundary (its start): the load alone reads what is left and sees
        // nothing wrong.
        f.set_len(0).unwrap();
        drop(f);
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert!(table.known("WB1").declaration.is_none());
        assert_refused(&j, "cut short on disk");
    }

    /// Retention carries messages into a segment of an older day that has none yet: the
    /// new segment is vouched for from its birth, so a block torn in it by a crash is cut
    /// off quietly at the next start, not refused at every start.
    #[test]
    fn a_torn_block_in_a_new_older_segment_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        let (torn, recorded) = {
            let j = keyed_new(dir.path());
            declared_on(&j, &[("WB1", now - 1), ("WB2", now)]);
            carry(&j, "WB3", now - 5);
            let recorded = j.platform_log.synced_ends();
            assert_eq!(recorded.of(now - 5), Some(0), "vouched for from its birth");
            (blocks_end(&j, now - 5), recorded)
        };
        crashed_with(dir.path(), &recorded);
        zero_on_disk(dir.path(), now - 5, torn - 3, torn);
        for start in 0..2 {
            let (_j, table) = loaded_whole(dir.path(), &format!("start {start}"));
            assert!(table.known("WB3").declaration.is_none(), "torn: cut off");
            assert!(table.known("WB1").declaration.is_some());
        }
    }

    /// A file of the log removed by retention is gone without a word at the next start; one
    /// that was synced and is gone from the disk otherwise is refused at every start until
    /// its day is past the clearance period (what it held is lost, and nothing says whom it
    /// was about). A segment older than the two newest whose
    /// synced tail was zeroed in place (its size unchanged) is refused as cut short.
    #[test]
    fn a_synced_file_gone_or_zeroed_is_refused_and_one_removed_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        {
            let j = keyed_new(dir.path());
            declared_on(
                &j,
                &[
                    ("WB1", now - 3),
                    ("WB2", now - 2),
                    ("WB3", now - 1),
                    ("WB4", now),
                ],
            );
            // Removed as retention removes a file.
            j.platform_log.remove(now - 3).unwrap();
        }
        let refused = |j: &Journal| -> Vec<String> {
            j.refused_entries()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        {
            let j = keyed(dir.path());
            j.load_clearance().unwrap();
            assert!(refused(&j).is_empty(), "{:?}", refused(&j));
        }
        let path =
            |day: u32| super::files::dir_of(dir.path()).join(super::files::segment_name(day));
        std::fs::remove_file(path(now - 1)).unwrap();
        let mut bytes = std::fs::read(path(now - 2)).unwrap();
        bytes.fill(0);
        std::fs::write(path(now - 2), bytes).unwrap();
        {
            let j = keyed(dir.path());
            let table = j.load_clearance().unwrap();
            let r = refused(&j);
            assert!(
                r.iter().any(|r| r.contains("file gone from the disk")),
                "{r:?}"
            );
            assert!(r.iter().any(|r| r.contains("cut short on disk")), "{r:?}");
            assert!(table.known("WB4").declaration.is_some());
        }
        // Both at every start, the file gone until its day is past the clearance period, even
        // once its day is written again.
        {
            let j = keyed(dir.path());
            j.load_clearance().unwrap();
            assert_refused(&j, "file gone from the disk");
            assert_refused(&j, "cut short on disk");
            j.platform_log.forget_lost_before(now - 1).unwrap();
            carry(&j, "WB5", now - 1);
            j.write_platform(true).unwrap();
        }
        {
            let j = keyed(dir.path());
            let table = j.load_clearance().unwrap();
            assert_refused(&j, "file gone from the disk");
            assert!(table.known("WB5").declaration.is_some());
            j.platform_log.forget_lost_before(now).unwrap();
        }
        let j = keyed(dir.path());
        j.load_clearance().unwrap();
        let r = refused(&j);
        assert!(!r.iter().any(|r| r.contains("file gone")), "{r:?}");
        assert!(r.iter().any(|r| r.contains("cut short on disk")), "{r:?}");
    }

    /// A segment whose synced blocks are gone from its end (zeroed or cut off on disk) is
    /// refused as damage, since nothing says whom the lost messages were about; a block
    /// written but never synced and torn by a crash is still cut off quietly.
    #[test]
    fn a_log_cut_short_of_its_synced_end_is_refused_and_a_torn_unsynced_block_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let last_block_end = |j: &Journal| blocks_end(j, today());
        let (synced, torn_end, recorded) = {
            let j = keyed_new(dir.path());
            j.load_clearance().unwrap();
            j.store_declaration(&declaration("WB1", "c1", 5)).unwrap();
            j.write_platform(true).unwrap();
            let synced = last_block_end(&j);
            let recorded = j.platform_log.synced_ends();
            // Written, not synced: a crash may tear it.
            j.store_declaration(&declaration("WB2", "c1", 5)).unwrap();
            j.write_platform(false).unwrap();
            (synced, last_block_end(&j), recorded)
        };
        // The crash came before the stop's sync of it was recorded.
        crashed_with(dir.path(), &recorded);
        let zero = |from: u64, to: u64| zero_on_disk(dir.path(), today(), from, to);
        zero(torn_end - 3, torn_end);
        {
            let (_j, table) = loaded_whole(dir.path(), "");
            assert!(table.known("WB1").declaration.is_some());
            assert!(table.known("WB2").declaration.is_none(), "torn: cut off");
        }
        // Now the synced block (the segment's first) is lost too: zeros where it was.
        zero(0, synced);
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert!(table.known("WB1").declaration.is_none());
        assert_refused(&j, "cut short on disk");
    }

    /// A start that created the key stopped during its load (a power loss while the log
    /// was sealed): the next start adopts again (the key's adoption marker, see
    /// `IntegrityKey::open_for_start`), over a log sealed in part, and nothing is refused.
    #[test]
    fn a_load_cut_short_while_adopting_leaves_the_rest_to_the_next_adoption() {
        let dir = tempfile::tempdir().unwrap();
        let now = today();
        // The newer segment holds more than one progress step of the load, so a start
        // stopped at its first step has sealed the older segment and not the newer one.
        let newer = super::load::LOAD_STEP as usize + 10;
        {
            let j = Journal::open(dir.path()).unwrap();
            j.store_declaration_on(&declaration("OLDER", "c1", 5), now - 1)
                .unwrap();
            j.write_platform(true).unwrap();
            for i in 0..newer {
                j.store_declaration_on(&declaration(&format!("NEW{i}"), "c1", 5), now)
                    .unwrap();
            }
            j.write_platform(true).unwrap();
        }
        let genuine = |j: &Journal, text: &str| {
            let (day, at, stored) = unit_holding(j, text);
            matches!(
                IntegrityKey::from_bytes([9; 32]).check(
                    b"platform_log",
                    &super::files::block_key(day, at),
                    &stored
                ),
                Checked::Genuine(_)
            )
        };
        {
            let j = keyed_new(dir.path());
            let table = crate::rules::ClearanceTable::default();
            let adopting = j.begin_clearance_load().unwrap();
            assert!(!j.load_clearance_into(&table, adopting, &|| true).unwrap());
            assert!(genuine(&j, "OLDER"), "the older segment sealed");
            assert!(!genuine(&j, "NEW0"), "the newer one not yet");
        }
        let j = keyed_new(dir.path());
        let table = j.load_clearance().unwrap();
        assert!(j.refused_entries().is_empty(), "{:?}", j.refused_entries());
        assert_eq!(table.declarations(), newer + 1);
        assert_eq!(j.adopted_untagged(), newer);
        assert!(genuine(&j, "NEW0"));
        drop(j);
        // Everything sealed: a start with the key created earlier adopts nothing more.
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert_eq!(table.declarations(), newer + 1);
        assert_eq!(j.adopted_untagged(), 0);
        assert!(j.refused_entries().is_empty());
    }

    /// A clock two years ahead does not drop the consumers' stored year: retention counts it
    /// back from the day it trusts (a day past the newest platform signature).
    #[test]
    fn a_clock_ahead_does_not_drop_the_consumers_stored_year() {
        use crate::rules::history::StoredHistory;
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let table = j.load_clearance().unwrap();
        let now = today();
        let day_ms = 86_400_000u64;
        j.add_to_history(now - 800, "ab", 5).unwrap();
        table.note_platform_time(u64::from(now - 730) * day_ms);
        j.purge_clearance(0, 100, &table).unwrap();
        let days = j.stored_days().unwrap();
        assert_eq!(days.days_of("ab").unwrap(), vec![(now - 800, 1, 5)]);
        // Once the platform's time says the clock was right, the day is over a year old.
        table.note_platform_time(u64::from(now) * day_ms);
        j.purge_clearance(0, 100, &table).unwrap();
        assert!(days.days_of("ab").unwrap().is_empty());
    }

    /// Untagged blocks in a segment that holds damage are adopted but not sealed (the
    /// segment is kept as it lies): counted for the alarm, and refused once the adoption
    /// has ended, as the damage beside them.
    #[test]
    fn untagged_blocks_beside_damage_are_adopted_once_then_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            for w in ["OLD1", "OLD2"] {
                j.store_declaration(&declaration(w, "c1", 5)).unwrap();
                j.write_platform(true).unwrap();
            }
            damage_block_holding(&j, "OLD1");
        }
        let j = keyed_new(dir.path());
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLD2").declaration.is_some());
        assert_refused(&j, "damaged on disk");
        assert_eq!(j.unsealed_adopted(), 1);
        drop(j);
        let j = keyed(dir.path());
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLD2").declaration.is_none());
        assert_refused(&j, "untagged");
        assert_eq!(j.unsealed_adopted(), 0);
    }

    #[test]
    fn an_untagged_store_is_adopted_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Written by a build without a key.
            let j = Journal::open(dir.path()).unwrap();
            j.store_declaration(&declaration("OLD", "c1", 5)).unwrap();
            j.store_instruction(&instruction("OLD", "I-OLD", Action::Release))
                .unwrap();
            j.store_rules(&StoredRules::Platform {
                update: serde_json::from_value(serde_json::json!({
                    "schema": 1, "update_id": "u1", "rules_toml": "x"
                }))
                .unwrap(),
                file_hash: None,
            })
            .unwrap();
        }
        let j = keyed_new(dir.path());
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLD").declaration.is_some());
        // The declaration and the instruction share a block, then the rule set.
        assert_eq!(j.adopted_untagged(), 2);
        assert_eq!(
            table.known("OLD").instruction.unwrap().action,
            Action::Release
        );
        assert!(matches!(
            j.stored_rules().unwrap(),
            StoredRules::Platform { .. }
        ));
        assert!(j.refused_entries().is_empty());
        // Tagged in place: the next start verifies them.
        let (day, at, stored) = unit_holding(&j, "I-OLD");
        assert!(matches!(
            IntegrityKey::from_bytes([9; 32]).check(
                b"platform_log",
                &super::files::block_key(day, at),
                &stored
            ),
            Checked::Genuine(_)
        ));
        drop(j);
        let j = keyed(dir.path());
        j.load_clearance().unwrap();
        assert!(matches!(
            j.stored_rules().unwrap(),
            StoredRules::Platform { .. }
        ));
        assert!(j.refused_entries().is_empty());
        // Opened with another key, everything is refused.
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        j.set_integrity_key(IntegrityKey::from_bytes([1; 32]), false);
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLD").declaration.is_none());
        assert_eq!(table.known("OLD").instruction.unwrap().action, Action::Hold);
        assert!(matches!(j.stored_rules().unwrap(), StoredRules::Local));
        assert_eq!(j.refused_entries().len(), 3);
    }
}
