//! Whether stored platform state is trusted: entries are sealed with the integrity key when
//! stored and checked when read; untagged state of an older build is adopted once, at the
//! start that created the key (or after a salvage), and refused afterwards. The refused
//! entries are kept for the operator. Kept apart from storing and loading so that the one
//! rule about tags lives in one place.

use super::{
    RefusedEntry, META_INTEGRITY_ADOPT, META_KEY_NEW, TREE_DECLARATIONS, TREE_INSTRUCTIONS,
    TREE_META,
};
use crate::journal::integrity::{self, Checked, IntegrityKey};
use crate::journal::{Journal, JournalError};

/// What the integrity check of one stored entry decided.
pub(super) enum Verdict<'a> {
    Use(&'a [u8]),
    Refuse(&'static str),
}

impl Journal {
    /// Sets the key that tags stored platform state and the chain's head; before the first
    /// [`Journal::load_clearance`]. `created`: the key was created at this start, so state
    /// stored without tags (an older build's) is adopted as it lies; with a key that existed
    /// before, an untagged entry is refused. Returns false if a key was set already (the
    /// first stays).
    ///
    /// A key created at an earlier start whose load did not finish (see
    /// [`Journal::expect_new_integrity_key`]) counts as created at this one.
    pub fn set_integrity_key(&self, key: IntegrityKey, created: bool) -> bool {
        let unfinished = match self.new_integrity_key_expected(&key) {
            Ok(expected) => expected,
            Err(e) => {
                tracing::warn!(error = %e, "whether an earlier start's adoption of untagged state finished cannot be read: untagged state is refused");
                false
            }
        };
        if created && !unfinished {
            if let Err(e) = self.expect_new_integrity_key(&key) {
                tracing::warn!(error = %e, "the adoption of untagged state is not recorded: a start cut short before the load ends refuses what it did not seal");
            }
        }
        let set = self.integrity_key.set(key).is_ok();
        if set && (created || unfinished) {
            self.adopt_untagged
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        set
    }

    /// Sets the key to check stored state with and nothing more, for `bondline journal
    /// verify`: untagged state is refused even while an adoption is unfinished (the next
    /// start adopts it; an inspection seals nothing).
    pub fn inspect_with_integrity_key(&self, key: IntegrityKey) -> bool {
        self.integrity_key.set(key).is_ok()
    }

    /// Records durably, before the file of the new integrity `key` is written, that untagged
    /// state is to be adopted with it; the first load that finishes ends it. A start cut
    /// short after the file is written (a power loss while the platform log is sealed)
    /// adopts at the next start what it had not sealed, rather than refusing it for good.
    /// The record is tagged under the key: one added to the store without it adopts nothing.
    pub fn expect_new_integrity_key(&self, key: &IntegrityKey) -> Result<(), JournalError> {
        self.meta.insert(
            META_KEY_NEW,
            &key.tag(TREE_META.as_bytes(), META_KEY_NEW, &[])[..],
        )?;
        self.meta.flush()?;
        Ok(())
    }

    /// Whether a new integrity key is being adopted: recorded for `key` by
    /// [`Journal::expect_new_integrity_key`] and no load has finished with it since.
    pub fn new_integrity_key_expected(&self, key: &IntegrityKey) -> Result<bool, JournalError> {
        Ok(self
            .meta
            .get(META_KEY_NEW)?
            .is_some_and(|t| t[..] == key.tag(TREE_META.as_bytes(), META_KEY_NEW, &[])[..]))
    }

    /// Whether an adoption of a new key was recorded, whatever key it was for: a key file
    /// found cut short then may have been cut short while it was created.
    pub fn new_integrity_key_recorded(&self) -> Result<bool, JournalError> {
        Ok(self.meta.contains_key(META_KEY_NEW)?)
    }

    /// Ends the adoption begun by [`Journal::expect_new_integrity_key`], once a load has
    /// sealed everything it adopted.
    pub(super) fn end_key_adoption(&self) -> Result<(), JournalError> {
        if self.meta.remove(META_KEY_NEW)?.is_some() {
            self.meta.flush()?;
        }
        Ok(())
    }

    /// Whether untagged state is adopted at this start: the key was created now, or the store
    /// is fresh from `journal salvage`.
    pub(in crate::journal) fn adopting(&self) -> Result<bool, JournalError> {
        Ok(self
            .adopt_untagged
            .load(std::sync::atomic::Ordering::Relaxed)
            || self.meta.contains_key(META_INTEGRITY_ADOPT)?)
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
