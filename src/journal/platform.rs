//! What the platform told the gateway, kept across restarts: declarations, instructions,
//! enterprise notices, the rule set it pushed, and which parcels joined their consumer's
//! history.
//!
//! Everything here is written before the MQTT message that carried it is acknowledged and is
//! durable after the next [`Journal::flush`], so a crash makes the broker deliver it again.
//! Ids of applied and ignored messages are kept too: a redelivery after a restart is still
//! recognised.

use bondline_devices::contract::{Declaration, EnterpriseNotice, Instruction, RuleSetUpdate};

use super::{Journal, JournalError};
use crate::rules::ClearanceTable;

const META_RULES_SOURCE: &[u8] = b"rules_source";
const META_PLATFORM_RULES: &[u8] = b"platform_rules";
const META_REPORT_SENT: &[u8] = b"report_sent";

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

impl Journal {
    /// Stores a declaration; durable after the next [`Journal::flush`].
    pub fn store_declaration(&self, d: &Declaration) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(d).expect("declarations always serialize");
        self.declarations.insert(d.waybill.as_bytes(), bytes)?;
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
        let bytes = serde_json::to_vec(i).expect("instructions always serialize");
        self.instruction_ids
            .insert(i.instruction_id.as_bytes(), i.waybill.as_bytes())?;
        self.instructions.insert(i.waybill.as_bytes(), bytes)?;
        Ok(())
    }

    /// Records an instruction id as seen without storing the instruction (a stale one), so it
    /// stays ignored after a restart too.
    pub fn remember_instruction_id(&self, i: &Instruction) -> Result<(), JournalError> {
        self.instruction_ids
            .insert(i.instruction_id.as_bytes(), i.waybill.as_bytes())?;
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
