//! Whether stored platform state is trusted: entries are sealed with the integrity key when
//! stored and checked when read; untagged state of an older build is adopted once, at the
//! start that created the key (or after a salvage), and refused afterwards. The refused
//! entries are kept for the operator. Kept apart from storing and loading so that the one
//! rule about tags lives in one place.

use super::{RefusedEntry, TREE_DECLARATIONS, TREE_INSTRUCTIONS, TREE_META};
use crate::journal::integrity::{self, Checked, IntegrityKey};
use crate::journal::{Journal, JournalError};

/// What the integrity check of one stored entry decided.
pub(super) enum Verdict<'a> {
    Use(&'a [u8]),
    Refuse(&'static str),
}

impl Journal {
    /// Sets the key that tags stored platform state and the chain's head; before the first
    /// [`Journal::load_clearance`]. `created`: the key's adoption is open (created at this
    /// start, or marked beside it, see `integrity::IntegrityKey::open_for_start`), so state
    /// stored without tags (an older build's) is adopted as it lies; otherwise an untagged
    /// entry is refused. Returns false if a key was set already (the
    /// first stays).
    pub fn set_integrity_key(&self, key: IntegrityKey, created: bool) -> bool {
        let set = self.integrity_key.set(key).is_ok();
        if set && created {
            self.adopt_untagged
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        set
    }

    /// Whether untagged state is adopted at this start: the key was created now, or its
    /// adoption marker beside it says so (a start cut short in its load, a store fresh from
    /// `journal salvage`). Nothing in the store decides it.
    pub(in crate::journal) fn adopting(&self) -> bool {
        self.adopt_untagged
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Untagged blocks a load adopted and could not seal, in segments kept for their
    /// damage: refused from the next start on, once the adoption ends.
    pub fn unsealed_adopted(&self) -> usize {
        self.unsealed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many untagged entries were adopted at this start (platform state, chain head and
    /// anchor), for an alarm: adoption trusts the store as it lies.
    pub fn adopted_untagged(&self) -> usize {
        *self.adopted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stored platform entries refused since the store was opened.
    pub fn refused_entries(&self) -> Vec<RefusedEntry> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What keeps the gateway from being ready for integrity reasons, as operator text: the
    /// refused stored state (until a restart finds none).
    pub fn integrity_problems(&self) -> Vec<String> {
        let refused = self.refused_entries();
        let mut out = Vec::new();
        if let Some(first) = refused.first() {
            out.push(format!(
                "stored state refused: {} entr{} failed the integrity check (first: {first}); see README, Stored state integrity",
                refused.len(),
                if refused.len() == 1 { "y" } else { "ies" }
            ));
        }
        if let Some(chain) = self.chain_problem() {
            out.push(format!("journal integrity: {chain}"));
        }
        out
    }

    pub(super) fn note_refused(&self, r: RefusedEntry) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    /// `payload` tagged for `key` in `tree`, or as it is without an integrity key.
    pub(super) fn seal(&self, tree: &str, key: &[u8], payload: Vec<u8>) -> Vec<u8> {
        match self.integrity_key.get() {
            Some(k) => k.seal(tree.as_bytes(), key, &payload),
            None => payload,
        }
    }

    /// Checks one stored entry. An untagged entry is adopted (tagged in place) while the
    /// store is not yet adopted. Without a key, everything is used as it lies.
    pub(super) fn verdict<'a>(
        &self,
        tree: &str,
        key: &[u8],
        stored: &'a [u8],
        adopted: bool,
    ) -> Result<Verdict<'a>, JournalError> {
        let Some(k) = self.integrity_key.get() else {
            return Ok(Verdict::Use(integrity::payload(stored)));
        };
        Ok(match k.check(tree.as_bytes(), key, stored) {
            Checked::Genuine(p) => Verdict::Use(p),
            Checked::Untagged(p) if !adopted => {
                if tree != TREE_META {
                    let t = match tree {
                        TREE_DECLARATIONS => &self.declarations,
                        TREE_INSTRUCTIONS => &self.instructions,
                        _ => &self.enterprises,
                    };
                    t.insert(key, k.seal(tree.as_bytes(), key, p))?;
                }
                Verdict::Use(p)
            }
            Checked::Untagged(_) => Verdict::Refuse("untagged"),
            Checked::Forged => Verdict::Refuse("tag does not verify"),
        })
    }
}
