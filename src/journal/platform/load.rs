//! Loading the stored platform state into the clearance table at start: every entry is
//! checked (see [`super::trust`]) and applied, with progress reported, and a refused entry
//! is replaced by its fail-closed stand-in. Its own module because the load is the one reader
//! of the whole state, and it runs before the uplink may write any.

use bondline_devices::contract::{
    Action, Declaration, EnterpriseAction, EnterpriseNotice, Instruction, SCHEMA,
};

use super::retention::decode_total;
use super::trust::Verdict;
use super::{
    be_u32, RefusedEntry, META_PLATFORM_RULES, TREE_DECLARATIONS, TREE_ENTERPRISES,
    TREE_INSTRUCTIONS, TREE_META,
};
use crate::journal::integrity::Checked;
use crate::journal::{Journal, JournalError};
use crate::rules::ClearanceTable;

/// How many stored entries the last complete load applied: the next load's progress and the
/// room the table makes before it (`u64`, big-endian).
const META_LOADED_ENTRIES: &[u8] = b"clearance_loaded_entries";

/// Entries applied between two progress reports of a load.
const LOAD_STEP: u64 = 16_384;

impl Journal {
    /// Rebuilds the clearance table from what was stored, for a restart. Unreadable entries
    /// (written by an older build) are skipped with a warning.
    ///
    /// With an integrity key set, every declaration, instruction and enterprise notice is
    /// checked first (see [`crate::journal::integrity`]). A refused one is left out, fail closed: a refused
    /// declaration leaves its waybill undeclared, a refused instruction is replaced by a hold
    /// and a refused notice by a suspension, whatever they said; each is noted for
    /// [`Journal::refused_entries`]. Untagged entries of an older build are adopted (tagged in
    /// place) at the first start with a key, and refused afterwards.
    pub fn load_clearance(&self) -> Result<ClearanceTable, JournalError> {
        let table = ClearanceTable::default();
        let adopting = self.begin_clearance_load()?;
        self.load_clearance_into(&table, adopting, &|| false)?;
        Ok(table)
    }

    /// What must happen before the rest of start-up, of a load: whether untagged state is
    /// adopted at this start (decided now, before `check_chain_tags` ends a salvage's
    /// adoption), and the stored platform rule set adopted with it, before the policy reads it.
    /// Pass the result to [`Journal::load_clearance_into`].
    pub fn begin_clearance_load(&self) -> Result<bool, JournalError> {
        let adopting = self.adopting()?;
        if adopting {
            if let Some(key) = self.integrity_key.get() {
                if let Some(v) = self.meta.get(META_PLATFORM_RULES)? {
                    if let Checked::Untagged(p) =
                        key.check(TREE_META.as_bytes(), META_PLATFORM_RULES, &v)
                    {
                        let sealed = key.seal(TREE_META.as_bytes(), META_PLATFORM_RULES, p);
                        self.meta.insert(META_PLATFORM_RULES, sealed)?;
                        tracing::warn!("stored platform rule set without an integrity tag adopted as it lies on disk");
                        *self.adopted.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    }
                }
            }
        }
        Ok(adopting)
    }

    /// How many stored entries, and declarations among them, the last complete load applied
    /// (zeros before the first).
    pub fn clearance_load_hint(&self) -> (u64, u64) {
        let v = self.meta.get(META_LOADED_ENTRIES).ok().flatten();
        let at = |i: usize| {
            v.as_deref()
                .and_then(|v| Some(u64::from_be_bytes(v.get(i..i + 8)?.try_into().ok()?)))
                .unwrap_or(0)
        };
        (at(0), at(8))
    }

    /// [`Journal::load_clearance`] into a table the lines already read: each entry is applied
    /// with the table's own per-shard locking (no lock is held across entries), and progress
    /// is counted with [`ClearanceTable::loaded`]. The caller marks the table loading before
    /// and finished after; nothing else may write platform state meanwhile (the uplink starts
    /// after the load).
    ///
    /// `adopting`: from [`Journal::begin_clearance_load`]. Stops early, returning false, once
    /// `cancelled` says so (a shutdown during the load); true when everything was applied.
    pub fn load_clearance_into(
        &self,
        table: &ClearanceTable,
        adopting: bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<bool, JournalError> {
        let mut applied = 0u64;
        let mut step = 0u64;
        let mut stop = false;
        // The platform state's bytes, summed on the way (see `Journal::platform_bytes`).
        let mut platform_bytes = 0u64;
        let mut tick = |table: &ClearanceTable| {
            applied += 1;
            step += 1;
            if step == LOAD_STEP {
                table.loaded(step);
                step = 0;
                stop = cancelled();
            }
            stop
        };
        for entry in self.instruction_ids.iter() {
            let (id, v) = entry?;
            platform_bytes += (id.len() + v.len()) as u64;
            table.mark_instruction_seen(&String::from_utf8_lossy(&id));
            if tick(table) {
                return Ok(false);
            }
        }
        for entry in self.notice_ids.iter() {
            let (id, v) = entry?;
            platform_bytes += (id.len() + v.len()) as u64;
            table.mark_notice_seen(&String::from_utf8_lossy(&id));
            if tick(table) {
                return Ok(false);
            }
        }
        let adopted = !adopting;
        let mut unreadable = 0usize;
        let mut adopting = 0usize;
        let mut refused = Vec::new();
        for (name, tree) in [
            (TREE_DECLARATIONS, &self.declarations),
            (TREE_INSTRUCTIONS, &self.instructions),
            (TREE_ENTERPRISES, &self.enterprises),
        ] {
            for entry in tree.iter() {
                let (k, v) = entry?;
                platform_bytes += (k.len() + v.len()) as u64;
                if tick(table) {
                    return Ok(false);
                }
                let payload = match self.verdict(name, &k, &v, adopted)? {
                    Verdict::Use(p) => p,
                    Verdict::Refuse(why) => {
                        let key = String::from_utf8_lossy(&k).into_owned();
                        refuse_into(table, name, &key);
                        refused.push(RefusedEntry {
                            tree: name,
                            key,
                            why,
                        });
                        continue;
                    }
                };
                if !adopted && self.integrity_key.get().is_some() && payload.len() == v.len() {
                    adopting += 1;
                }
                let ok = match name {
                    TREE_DECLARATIONS => serde_json::from_slice::<Declaration>(payload)
                        .map(|d| {
                            table.restore_declaration(&d, payload);
                        })
                        .is_ok(),
                    TREE_INSTRUCTIONS => serde_json::from_slice::<Instruction>(payload)
                        .map(|i| table.restore_instruction(&i))
                        .is_ok(),
                    _ => serde_json::from_slice::<EnterpriseNotice>(payload)
                        .map(|n| table.restore_notice(&n))
                        .is_ok(),
                };
                if !ok {
                    unreadable += 1;
                }
            }
        }
        for entry in self.rule_update_ids.iter() {
            let (id, v) = entry?;
            platform_bytes += (id.len() + v.len()) as u64;
        }
        if let Some(v) = self.meta.get(META_PLATFORM_RULES)? {
            platform_bytes += (META_PLATFORM_RULES.len() + v.len()) as u64;
        }
        self.platform_bytes
            .store(platform_bytes, std::sync::atomic::Ordering::Relaxed);
        for entry in self.counted.iter() {
            let (w, day) = entry?;
            if tick(table) {
                return Ok(false);
            }
            if let (Ok(w), Ok(day)) = (std::str::from_utf8(&w), <[u8; 4]>::try_from(&day[..])) {
                table.count(w, u32::from_be_bytes(day));
            }
        }
        for entry in self.history.iter() {
            let (k, v) = entry?;
            if tick(table) {
                return Ok(false);
            }
            if let (Some(day), Ok(consumer)) =
                (be_u32(&k), std::str::from_utf8(&k[4.min(k.len())..]))
            {
                let (parcels, value) = decode_total(&v);
                table.add_history(consumer, day, parcels, value);
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                entries = unreadable,
                "stored platform messages that this build cannot read were skipped"
            );
        }
        if !adopted && self.integrity_key.get().is_some() && adopting > 0 {
            tracing::warn!(
                entries = adopting,
                "stored platform state without integrity tags adopted as it lies on disk (integrity key created at this start): it is tagged from now on, and an untagged entry found later is refused"
            );
            *self.adopted.lock().unwrap_or_else(|e| e.into_inner()) += adopting;
        }
        for r in refused {
            tracing::error!(refused = %r, "stored platform state failed its integrity check and was left out");
            self.note_refused(r);
        }
        table.loaded(step);
        if cancelled() {
            return Ok(false);
        }
        let mut hint = applied.to_be_bytes().to_vec();
        hint.extend_from_slice(&(table.declarations() as u64).to_be_bytes());
        self.meta.insert(META_LOADED_ENTRIES, hint)?;
        // Millions of decoded messages came and went between the table's long-lived entries:
        // their freed memory goes back to the system rather than staying resident.
        crate::memory::give_back();
        Ok(true)
    }
}

/// Puts the fail-closed stand-in of a refused entry in the table: a refused instruction
/// becomes a hold, a refused notice a suspension; a refused declaration stays out
/// (undeclared: held).
fn refuse_into(table: &ClearanceTable, tree: &str, key: &str) {
    const REASON: &str = "stored state failed its integrity check";
    match tree {
        TREE_INSTRUCTIONS => table.restore_instruction(&Instruction {
            schema: SCHEMA,
            instruction_id: String::new(),
            waybill: key.to_string(),
            action: Action::Hold,
            reason: REASON.into(),
            issued_at_ms: None,
            signature: None,
        }),
        TREE_ENTERPRISES => table.restore_notice(&EnterpriseNotice {
            schema: SCHEMA,
            notice_id: String::new(),
            enterprise: key.to_string(),
            action: EnterpriseAction::Suspend,
            reason: REASON.into(),
            issued_at_ms: None,
            signature: None,
        }),
        _ => {}
    }
}
