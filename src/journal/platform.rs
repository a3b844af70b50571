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

use bondline_devices::contract::{
    Action, Declaration, EnterpriseAction, EnterpriseNotice, Instruction, RuleSetUpdate, SCHEMA,
};

use super::integrity::{self, Checked, IntegrityKey};
use super::{Journal, JournalError};
use crate::rules::ClearanceTable;

const META_RULES_SOURCE: &[u8] = b"rules_source";
const META_PLATFORM_RULES: &[u8] = b"platform_rules";
const META_REPORT_SENT: &[u8] = b"report_sent";
const META_AGES_BACKFILLED: &[u8] = b"ages_backfilled";
/// How many stored entries the last complete load applied: the next load's progress and the
/// room the table makes before it (`u64`, big-endian).
const META_LOADED_ENTRIES: &[u8] = b"clearance_loaded_entries";
/// Entries applied between two progress reports of a load.
const LOAD_STEP: u64 = 16_384;
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

/// What the integrity check of one stored entry decided.
enum Verdict<'a> {
    Use(&'a [u8]),
    Refuse(&'static str),
}

/// What an `aging` entry ages: a waybill's stored state, or an instruction id.
const AGE_WAYBILL: u8 = b'w';
const AGE_INSTRUCTION_ID: u8 = b'i';

/// `aging` key: the UTC day (big-endian, so keys sort by day), the kind, the name.
fn age_key(day: u32, kind: u8, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + name.len());
    k.extend_from_slice(&day.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(name);
    k
}

/// `history` key: the UTC day, then the consumer.
fn history_key(day: u32, consumer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + consumer.len());
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(consumer.as_bytes());
    k
}

fn today() -> u32 {
    crate::rules::history::day_of(crate::metrics::unix_ms(std::time::SystemTime::now()))
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// What [`Journal::purge_clearance`] forgot, for the clearance table to forget too.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub waybills: Vec<String>,
    pub instruction_ids: Vec<String>,
    /// Whether entries older than the cutoff may remain (the purge stopped at its limit).
    pub more: bool,
}

/// Where the rule set in force came from, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRules {
    /// The configuration's rule file (or the built-in set): read it at start.
    Local,
    /// A platform update, with the SHA-256 of the rule file's text when it was applied: a
    /// rule file changed since then is newer and wins.
    Platform {
        update: RuleSetUpdate,
        file_hash: Option<[u8; 32]>,
    },
}

/// A stored consumer day total: parcels (`u32`) and value (`u64`), big-endian.
fn decode_total(v: &[u8]) -> (u32, u64) {
    let parcels = be_u32(v).unwrap_or(0);
    let value = v
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    (parcels, value)
}

impl Journal {
    /// Stores a declaration; durable after the next [`Journal::flush`].
    pub fn store_declaration(&self, d: &Declaration) -> Result<(), JournalError> {
        self.store_declaration_on(d, today())
    }

    fn store_declaration_on(&self, d: &Declaration, day: u32) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(d).expect("declarations always serialize");
        let bytes = self.seal(TREE_DECLARATIONS, d.waybill.as_bytes(), bytes);
        let k = d.waybill.as_bytes();
        let old = self.declarations.insert(k, bytes.as_slice())?;
        self.platform_change(k, old.as_deref(), Some(&bytes));
        self.touch_waybill(&d.waybill, day)
    }

    /// Held by whoever stores platform state and applies it to the clearance table, and by
    /// whoever forgets old state from both, so the two never interleave: a declaration stored
    /// while old state is forgotten is neither deleted on disk nor forgotten in memory.
    /// An async lock: the uplink waits for it without holding up a runtime thread while a
    /// purge step runs (which takes it with `blocking_lock` on a blocking thread).
    pub fn platform_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.platform_lock
    }

    /// Gives state stored before ages were kept (an older build) the age `day`, once, so it
    /// is forgotten in its turn. Returns how many entries it aged.
    pub fn backfill_ages(&self, day: u32) -> Result<usize, JournalError> {
        if self.meta.contains_key(META_AGES_BACKFILLED)? {
            return Ok(0);
        }
        let mut n = 0;
        for key in self
            .declarations
            .iter()
            .keys()
            .chain(self.instructions.iter().keys())
        {
            let key = key?;
            if !self.received.contains_key(&key)? {
                self.received.insert(&key, &day.to_be_bytes())?;
                self.aging.insert(age_key(day, AGE_WAYBILL, &key), &[])?;
                n += 1;
            }
        }
        for key in self.instruction_ids.iter().keys() {
            self.aging
                .insert(age_key(day, AGE_INSTRUCTION_ID, &key?), &[])?;
            n += 1;
        }
        self.meta.insert(META_AGES_BACKFILLED, &[])?;
        Ok(n)
    }

    /// Notes that `waybill`'s state was stored on `day`.
    fn touch_waybill(&self, waybill: &str, day: u32) -> Result<(), JournalError> {
        let last = self
            .received
            .insert(waybill.as_bytes(), &day.to_be_bytes())?;
        if last.as_deref().and_then(be_u32) != Some(day) {
            self.aging
                .insert(age_key(day, AGE_WAYBILL, waybill.as_bytes()), &[])?;
        }
        Ok(())
    }

    fn touch_instruction_id(&self, id: &str, day: u32) -> Result<(), JournalError> {
        self.aging
            .insert(age_key(day, AGE_INSTRUCTION_ID, id.as_bytes()), &[])?;
        Ok(())
    }

    /// Forgets waybills and instruction ids stored before UTC day `before_day`, at most
    /// `max` of them (call again while [`Forgotten::more`]). A waybill stored again since
    /// is kept. A forgotten declaration that was counted in its consumer's history leaves
    /// its day total behind; day totals older than the longest window go too.
    pub fn purge_clearance(&self, before_day: u32, max: usize) -> Result<Forgotten, JournalError> {
        let mut out = Forgotten::default();
        let end = age_key(before_day, 0, &[]);
        for (seen, entry) in self.aging.range(..end).enumerate() {
            if seen == max {
                out.more = true;
                break;
            }
            let (k, _) = entry?;
            let (Some(day), Some(&kind)) = (be_u32(&k), k.get(4)) else {
                self.aging.remove(&k)?;
                continue;
            };
            let name = &k[5..];
            match kind {
                AGE_WAYBILL => {
                    let last = self.received.get(name)?.as_deref().and_then(be_u32);
                    if last.is_none_or(|l| l <= day) {
                        self.fold_into_history(name)?;
                        let d = self.declarations.remove(name)?;
                        self.platform_change(name, d.as_deref(), None);
                        let i = self.instructions.remove(name)?;
                        self.platform_change(name, i.as_deref(), None);
                        self.counted.remove(name)?;
                        self.received.remove(name)?;
                        out.waybills
                            .push(String::from_utf8_lossy(name).into_owned());
                    }
                }
                AGE_INSTRUCTION_ID => {
                    let old = self.instruction_ids.remove(name)?;
                    self.platform_change(name, old.as_deref(), None);
                    out.instruction_ids
                        .push(String::from_utf8_lossy(name).into_owned());
                }
                _ => {}
            }
            self.aging.remove(&k)?;
        }
        let oldest = today().saturating_sub(crate::rules::history::KEEP_DAYS);
        for k in self.history.range(..oldest.to_be_bytes()).keys() {
            self.history.remove(k?)?;
        }
        Ok(out)
    }

    /// Adds a counted declaration's parcel to its consumer's stored day total.
    fn fold_into_history(&self, waybill: &[u8]) -> Result<(), JournalError> {
        let Some(day) = self.counted.get(waybill)?.as_deref().and_then(be_u32) else {
            return Ok(());
        };
        let Some(d) = self
            .declarations
            .get(waybill)?
            .and_then(|v| serde_json::from_slice::<Declaration>(integrity::payload(&v)).ok())
        else {
            return Ok(());
        };
        let Some(consumer) = d.consumer else {
            return Ok(());
        };
        let key = history_key(day, &consumer);
        let (parcels, value) = self
            .history
            .get(&key)?
            .map(|v| decode_total(&v))
            .unwrap_or((0, 0));
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&parcels.saturating_add(1).to_be_bytes());
        v.extend_from_slice(
            &value
                .saturating_add(d.value_minor.unwrap_or(0))
                .to_be_bytes(),
        );
        self.history.insert(key, v)?;
        Ok(())
    }

    /// The stored declaration of `waybill`, for lookups.
    pub fn declaration(&self, waybill: &str) -> Result<Option<Declaration>, JournalError> {
        Ok(self
            .declarations
            .get(waybill.as_bytes())?
            .and_then(|v| serde_json::from_slice(integrity::payload(&v)).ok()))
    }

    /// Stores an instruction; durable after the next [`Journal::flush`]. Callers store only
    /// instructions that [`ClearanceTable::instruction_is_new`] accepts, so a stale one never
    /// overwrites.
    pub fn store_instruction(&self, i: &Instruction) -> Result<(), JournalError> {
        self.store_instruction_on(i, today())
    }

    fn store_instruction_on(&self, i: &Instruction, day: u32) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(i).expect("instructions always serialize");
        let bytes = self.seal(TREE_INSTRUCTIONS, i.waybill.as_bytes(), bytes);
        self.remember_instruction_id_on(i, day)?;
        let k = i.waybill.as_bytes();
        let old = self.instructions.insert(k, bytes.as_slice())?;
        self.platform_change(k, old.as_deref(), Some(&bytes));
        self.touch_waybill(&i.waybill, day)
    }

    /// Records an instruction id as seen without storing the instruction (a stale one), so it
    /// stays ignored after a restart too.
    pub fn remember_instruction_id(&self, i: &Instruction) -> Result<(), JournalError> {
        self.remember_instruction_id_on(i, today())
    }

    fn remember_instruction_id_on(&self, i: &Instruction, day: u32) -> Result<(), JournalError> {
        let k = i.instruction_id.as_bytes();
        let old = self.instruction_ids.insert(k, i.waybill.as_bytes())?;
        self.platform_change(k, old.as_deref(), Some(i.waybill.as_bytes()));
        let first = old.is_none();
        if first {
            self.touch_instruction_id(&i.instruction_id, day)?;
        }
        Ok(())
    }

    /// Stores the notice now in force for its enterprise.
    pub fn store_notice(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(n).expect("notices always serialize");
        let bytes = self.seal(TREE_ENTERPRISES, n.enterprise.as_bytes(), bytes);
        self.remember_notice_id(n)?;
        let k = n.enterprise.as_bytes();
        let old = self.enterprises.insert(k, bytes.as_slice())?;
        self.platform_change(k, old.as_deref(), Some(&bytes));
        Ok(())
    }

    /// Records a notice id as seen without applying it (a stale one).
    pub fn remember_notice_id(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        let k = n.notice_id.as_bytes();
        let old = self.notice_ids.insert(k, n.enterprise.as_bytes())?;
        self.platform_change(k, old.as_deref(), Some(n.enterprise.as_bytes()));
        Ok(())
    }

    /// Marks waybills as counted in their consumers' history on the given UTC days. The
    /// writer stores the marks just before the records that carry them, so after a crash a
    /// parcel may be counted without its record (the limit errs strict), never the reverse.
    pub fn mark_counted<'a>(
        &self,
        marks: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<(), JournalError> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for (waybill, day) in marks {
            batch.insert(waybill.as_bytes(), &day.to_be_bytes()[..]);
            any = true;
        }
        if any {
            self.counted.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Rebuilds the clearance table from what was stored, for a restart. Unreadable entries
    /// (written by an older build) are skipped with a warning.
    ///
    /// With an integrity key set, every declaration, instruction and enterprise notice is
    /// checked first (see [`integrity`]). A refused one is left out, fail closed: a refused
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
        Ok(true)
    }

    /// Sets the key that tags stored platform state and the chain's head; before the first
    /// [`Journal::load_clearance`]. `created`: the key was created at this start, so state
    /// stored without tags (an older build's) is adopted as it lies; with a key that existed
    /// before, an untagged entry is refused. Returns false if a key was set already (the
    /// first stays).
    pub fn set_integrity_key(&self, key: IntegrityKey, created: bool) -> bool {
        let set = self.integrity_key.set(key).is_ok();
        if set && created {
            self.adopt_untagged
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        set
    }

    /// Whether untagged state is adopted at this start: the key was created now, or the store
    /// is fresh from `journal salvage`.
    pub(super) fn adopting(&self) -> Result<bool, JournalError> {
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

    fn note_refused(&self, r: RefusedEntry) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    /// `payload` tagged for `key` in `tree`, or as it is without an integrity key.
    fn seal(&self, tree: &str, key: &[u8], payload: Vec<u8>) -> Vec<u8> {
        match self.integrity_key.get() {
            Some(k) => k.seal(tree.as_bytes(), key, &payload),
            None => payload,
        }
    }

    /// Checks one stored entry. An untagged entry is adopted (tagged in place) while the
    /// store is not yet adopted. Without a key, everything is used as it lies.
    fn verdict<'a>(
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

    /// Whether a rule set update with this id was seen before.
    pub fn rule_update_seen(&self, update_id: &str) -> Result<bool, JournalError> {
        Ok(self.rule_update_ids.contains_key(update_id.as_bytes())?)
    }

    /// Records a rule set update id as seen (applied, refused or stale).
    pub fn remember_rule_update(&self, update_id: &str) -> Result<(), JournalError> {
        let k = update_id.as_bytes();
        let old = self.rule_update_ids.insert(k, &[])?;
        self.platform_change(k, old.as_deref(), Some(&[]));
        Ok(())
    }

    /// Stores which rule set is in force.
    pub fn store_rules(&self, rules: &StoredRules) -> Result<(), JournalError> {
        match rules {
            StoredRules::Local => {
                self.meta.insert(META_RULES_SOURCE, &b"local"[..])?;
            }
            StoredRules::Platform { update, file_hash } => {
                let mut v = Vec::new();
                v.extend_from_slice(file_hash.as_ref().map_or(&[0u8; 32][..], |h| &h[..]));
                v.push(u8::from(file_hash.is_some()));
                v.extend_from_slice(&serde_json::to_vec(update).expect("updates serialize"));
                let v = self.seal(TREE_META, META_PLATFORM_RULES, v);
                let old = self.meta.insert(META_PLATFORM_RULES, v.as_slice())?;
                self.platform_change(META_PLATFORM_RULES, old.as_deref(), Some(&v));
                self.meta.insert(META_RULES_SOURCE, &b"platform"[..])?;
            }
        }
        Ok(())
    }

    /// Which rule set was in force when the gateway stopped.
    pub fn stored_rules(&self) -> Result<StoredRules, JournalError> {
        if self.meta.get(META_RULES_SOURCE)?.as_deref() != Some(b"platform") {
            return Ok(StoredRules::Local);
        }
        let Some(stored) = self.meta.get(META_PLATFORM_RULES)? else {
            return Ok(StoredRules::Local);
        };
        let adopted = !self.adopting()?;
        let v = match self.verdict(TREE_META, META_PLATFORM_RULES, &stored, adopted)? {
            Verdict::Use(v) => v,
            Verdict::Refuse(why) => {
                let refused = RefusedEntry {
                    tree: TREE_META,
                    key: String::from_utf8_lossy(META_PLATFORM_RULES).into_owned(),
                    why,
                };
                tracing::error!(refused = %refused, "the local rule set is used instead");
                self.note_refused(refused);
                return Ok(StoredRules::Local);
            }
        };
        if v.len() < 33 {
            return Ok(StoredRules::Local);
        }
        let hash: [u8; 32] = v[..32].try_into().expect("32 bytes");
        let file_hash = (v[32] == 1).then_some(hash);
        match serde_json::from_slice::<RuleSetUpdate>(&v[33..]) {
            Ok(update) => Ok(StoredRules::Platform { update, file_hash }),
            Err(e) => {
                tracing::warn!(error = %e, "stored platform rule set unreadable; using the local one");
                Ok(StoredRules::Local)
            }
        }
    }

    /// The last platform rule set update applied, even if a local file replaced it since.
    pub fn last_platform_rules(&self) -> Result<Option<RuleSetUpdate>, JournalError> {
        Ok(self
            .meta
            .get(META_PLATFORM_RULES)?
            .map(|v| integrity::payload(&v).to_vec())
            .filter(|v| v.len() >= 33)
            .and_then(|v| serde_json::from_slice(&v[33..]).ok()))
    }

    /// The last month (`YYYY-MM`) whose report was published to the platform.
    pub fn report_sent(&self) -> Result<Option<String>, JournalError> {
        Ok(self
            .meta
            .get(META_REPORT_SENT)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Remembers that `month`'s report was published.
    pub fn set_report_sent(&self, month: &str) -> Result<(), JournalError> {
        self.meta.insert(META_REPORT_SENT, month.as_bytes())?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{Action, SCHEMA};

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
