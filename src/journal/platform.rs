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

use bondline_devices::contract::{Declaration, EnterpriseNotice, Instruction, RuleSetUpdate};

use super::{Journal, JournalError};
use crate::rules::ClearanceTable;

const META_RULES_SOURCE: &[u8] = b"rules_source";
const META_PLATFORM_RULES: &[u8] = b"platform_rules";
const META_REPORT_SENT: &[u8] = b"report_sent";
const META_AGES_BACKFILLED: &[u8] = b"ages_backfilled";

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
        self.declarations.insert(d.waybill.as_bytes(), bytes)?;
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
                        self.declarations.remove(name)?;
                        self.instructions.remove(name)?;
                        self.counted.remove(name)?;
                        self.received.remove(name)?;
                        out.waybills
                            .push(String::from_utf8_lossy(name).into_owned());
                    }
                }
                AGE_INSTRUCTION_ID => {
                    self.instruction_ids.remove(name)?;
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
            .and_then(|v| serde_json::from_slice::<Declaration>(&v).ok())
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
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Stores an instruction; durable after the next [`Journal::flush`]. Callers store only
    /// instructions that [`ClearanceTable::instruction_is_new`] accepts, so a stale one never
    /// overwrites.
    pub fn store_instruction(&self, i: &Instruction) -> Result<(), JournalError> {
        self.store_instruction_on(i, today())
    }

    fn store_instruction_on(&self, i: &Instruction, day: u32) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(i).expect("instructions always serialize");
        self.remember_instruction_id_on(i, day)?;
        self.instructions.insert(i.waybill.as_bytes(), bytes)?;
        self.touch_waybill(&i.waybill, day)
    }

    /// Records an instruction id as seen without storing the instruction (a stale one), so it
    /// stays ignored after a restart too.
    pub fn remember_instruction_id(&self, i: &Instruction) -> Result<(), JournalError> {
        self.remember_instruction_id_on(i, today())
    }

    fn remember_instruction_id_on(&self, i: &Instruction, day: u32) -> Result<(), JournalError> {
        let first = self
            .instruction_ids
            .insert(i.instruction_id.as_bytes(), i.waybill.as_bytes())?
            .is_none();
        if first {
            self.touch_instruction_id(&i.instruction_id, day)?;
        }
        Ok(())
    }

    /// Stores the notice now in force for its enterprise.
    pub fn store_notice(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(n).expect("notices always serialize");
        self.notice_ids
            .insert(n.notice_id.as_bytes(), n.enterprise.as_bytes())?;
        self.enterprises.insert(n.enterprise.as_bytes(), bytes)?;
        Ok(())
    }

    /// Records a notice id as seen without applying it (a stale one).
    pub fn remember_notice_id(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        self.notice_ids
            .insert(n.notice_id.as_bytes(), n.enterprise.as_bytes())?;
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
    pub fn load_clearance(&self) -> Result<ClearanceTable, JournalError> {
        let mut table = ClearanceTable::default();
        for entry in self.instruction_ids.iter() {
            let (id, _) = entry?;
            table.mark_instruction_seen(&String::from_utf8_lossy(&id));
        }
        for entry in self.notice_ids.iter() {
            let (id, _) = entry?;
            table.mark_notice_seen(&String::from_utf8_lossy(&id));
        }
        let mut unreadable = 0usize;
        for entry in self.declarations.iter() {
            let (_, v) = entry?;
            match serde_json::from_slice::<Declaration>(&v) {
                Ok(d) => {
                    table.apply_declaration(&d);
                }
                Err(_) => unreadable += 1,
            }
        }
        for entry in self.instructions.iter() {
            let (_, v) = entry?;
            match serde_json::from_slice::<Instruction>(&v) {
                Ok(i) => table.restore_instruction(&i),
                Err(_) => unreadable += 1,
            }
        }
        for entry in self.enterprises.iter() {
            let (_, v) = entry?;
            match serde_json::from_slice::<EnterpriseNotice>(&v) {
                Ok(n) => table.restore_notice(&n),
                Err(_) => unreadable += 1,
            }
        }
        for entry in self.counted.iter() {
            let (w, day) = entry?;
            if let (Ok(w), Ok(day)) = (std::str::from_utf8(&w), <[u8; 4]>::try_from(&day[..])) {
                table.count(w, u32::from_be_bytes(day));
            }
        }
        for entry in self.history.iter() {
            let (k, v) = entry?;
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
        Ok(table)
    }

    /// Whether a rule set update with this id was seen before.
    pub fn rule_update_seen(&self, update_id: &str) -> Result<bool, JournalError> {
        Ok(self.rule_update_ids.contains_key(update_id.as_bytes())?)
    }

    /// Records a rule set update id as seen (applied, refused or stale).
    pub fn remember_rule_update(&self, update_id: &str) -> Result<(), JournalError> {
        self.rule_update_ids.insert(update_id.as_bytes(), &[])?;
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
                self.meta.insert(META_PLATFORM_RULES, v)?;
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
        let Some(v) = self.meta.get(META_PLATFORM_RULES)? else {
            return Ok(StoredRules::Local);
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
