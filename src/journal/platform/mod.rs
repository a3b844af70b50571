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
//! as long as the longest consumer-limit window.
//!
//! Layout: [`messages`] stores what arrives, [`load`] rebuilds the clearance table from it at
//! start, [`retention`] forgets what is old, [`trust`] seals and checks stored entries with
//! the integrity key, and [`rules`] keeps the rule set in force.

mod load;
mod messages;
mod retention;
mod rules;
mod trust;

use super::Journal;

pub use retention::Forgotten;
pub use rules::StoredRules;

const META_PLATFORM_RULES: &[u8] = b"platform_rules";
/// Set by `journal salvage` in the fresh store: its untagged state (the rule set, the chain's
/// head and anchor) is adopted at the next start, as with a key created at that start.
pub(super) const META_INTEGRITY_ADOPT: &[u8] = b"integrity_adopt";

/// Names of the tagged trees, part of every tag (an entry moved between trees fails).
const TREE_DECLARATIONS: &str = "declarations";
const TREE_INSTRUCTIONS: &str = "instructions";
const TREE_ENTERPRISES: &str = "enterprises";
const TREE_META: &str = "meta";

/// A stored platform entry that failed its integrity check and was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedEntry {
    /// The tree: `declarations`, `instructions`, `enterprises` or `meta` (the rule set).
    pub tree: &'static str,
    /// The entry's key: the waybill, the enterprise, or `platform_rules`.
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
        if self.tree == TREE_META {
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

    #[test]
    fn old_clearance_is_forgotten_and_its_consumer_history_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let now = today();
        let (old, recent) = (now - 40, now - 5);
        // OLD: declared, instructed and counted 40 days ago. KEPT: declared then, and
        // instructed again recently. NEW: recent.
        j.store_declaration_on(&declaration("OLD", "c1", 500), old)
            .unwrap();
        j.store_instruction_on(&instruction("OLD", "I-OLD"), old)
            .unwrap();
        j.mark_counted([("OLD", old)]).unwrap();
        j.store_declaration_on(&declaration("KEPT", "c2", 10), old)
            .unwrap();
        j.store_instruction_on(&instruction("KEPT", "I-KEPT"), recent)
            .unwrap();
        j.store_declaration_on(&declaration("NEW", "c1", 20), recent)
            .unwrap();

        let f = j.purge_clearance(now - 30, 1).unwrap();
        assert!(f.more, "one entry per step");
        let mut all = f;
        loop {
            let f = j.purge_clearance(now - 30, 1).unwrap();
            all.waybills.extend(f.waybills);
            all.instruction_ids.extend(f.instruction_ids);
            if !f.more {
                break;
            }
        }
        assert_eq!(all.waybills, vec!["OLD".to_string()]);
        assert_eq!(all.instruction_ids, vec!["I-OLD".to_string()]);
        assert!(j.declaration("OLD").unwrap().is_none());
        assert!(j.declaration("KEPT").unwrap().is_some());
        assert!(j.declaration("NEW").unwrap().is_some());

        // After a restart: OLD is undeclared, its instruction id new again, and consumer c1
        // still has OLD's parcel in its history.
        let table = j.load_clearance().unwrap();
        assert!(table.known("OLD").declaration.is_none());
        assert!(table.known("KEPT").instruction.is_some());
        assert!(!table.instruction_id_seen("I-OLD"));
        assert!(table.instruction_id_seen("I-KEPT"));
        let w = table.consumer_window("NEW", now - 364, now);
        assert_eq!((w.parcels, w.value_minor), (1, 500));
        // Nothing left to forget.
        assert_eq!(
            j.purge_clearance(now - 30, 100).unwrap(),
            Forgotten::default()
        );
    }

    /// The platform state's bytes follow every store, replacement and purge, and a restart
    /// sums the same figure from the trees; the capacity policy counts them towards the quota.
    #[test]
    fn platform_state_bytes_are_counted_towards_the_quota() {
        use crate::journal::capacity::{level, Level, Limits};
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let now = today();
        let trees = |j: &Journal| -> u64 {
            [
                &j.declarations,
                &j.instructions,
                &j.instruction_ids,
                &j.enterprises,
                &j.notice_ids,
                &j.rule_update_ids,
            ]
            .iter()
            .flat_map(|t| t.iter().flatten())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
        };
        assert_eq!(j.platform_bytes(), 0);
        for i in 0..50 {
            let w = format!("W{i:04}");
            j.store_declaration_on(&declaration(&w, "c1", 500), now - 40 * (i % 2))
                .unwrap();
            j.store_instruction_on(&instruction(&w, &format!("I-{w}")), now - 40 * (i % 2))
                .unwrap();
        }
        // A replacement changes the figure by its difference only.
        j.store_declaration_on(&declaration("W0001", "a-longer-consumer-hash", 50_000), now)
            .unwrap();
        j.remember_rule_update("R-1").unwrap();
        assert_eq!(j.platform_bytes(), trees(&j));
        let full = j.platform_bytes();
        while j.purge_clearance(now - 30, 7).unwrap().more {}
        assert!(j.platform_bytes() < full);
        assert_eq!(j.platform_bytes(), trees(&j));
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

    #[test]
    fn state_of_an_older_build_is_dated_once_and_forgotten_in_its_turn() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        // As an older build stored them: no ages.
        let d = declaration("OLDBUILD", "c1", 5);
        j.declarations
            .insert("OLDBUILD", serde_json::to_vec(&d).unwrap())
            .unwrap();
        j.instruction_ids.insert("I-OLDBUILD", "OLDBUILD").unwrap();
        let now = today();
        assert_eq!(j.backfill_ages(now).unwrap(), 2);
        assert_eq!(j.backfill_ages(now).unwrap(), 0, "once");
        assert_eq!(j.purge_clearance(now, 100).unwrap(), Forgotten::default());
        let f = j.purge_clearance(now + 1, 100).unwrap();
        assert_eq!(f.waybills, vec!["OLDBUILD".to_string()]);
        assert_eq!(f.instruction_ids, vec!["I-OLDBUILD".to_string()]);
    }
}

#[cfg(test)]
mod integrity_tests {
    use super::*;
    use bondline_devices::contract::{Action, Instruction, SCHEMA};

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
            j.store_declaration(&declaration("WB1", "c1", 5)).unwrap();
            j.store_instruction(&instruction("WB1", "I-1", Action::Hold))
                .unwrap();
            j.store_declaration(&declaration("WB2", "c1", 5)).unwrap();
            j.store_instruction(&instruction("WB2", "I-2", Action::Release))
                .unwrap();
            // Edited on disk: the hold's payload turned into a release, the tag kept.
            let stored = j.instructions.get("WB1").unwrap().unwrap().to_vec();
            let text = String::from_utf8_lossy(&stored[..stored.len() - 33])
                .replace("\"hold\"", "\"release\"");
            let mut edited = text.into_bytes();
            edited.extend_from_slice(&stored[stored.len() - 33..]);
            j.instructions.insert("WB1", edited).unwrap();
            // And a declaration rewritten without its tag.
            let d = serde_json::to_vec(&declaration("WB2", "c9", 1)).unwrap();
            j.declarations.insert("WB2", d).unwrap();
            j.db.flush().unwrap();
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
        let refused = j.refused_entries();
        assert_eq!(refused.len(), 2, "{refused:?}");
        let text: Vec<String> = refused.iter().map(ToString::to_string).collect();
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
        assert_eq!(j.adopted_untagged(), 3);
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
        let stored = j.instructions.get("OLD").unwrap().unwrap();
        assert!(matches!(
            IntegrityKey::from_bytes([9; 32]).check(b"instructions", b"OLD", &stored),
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
