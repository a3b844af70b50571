//! The rule set in force as stored: whether it is the local file's or a platform update
//! (with the update itself), the ids of rule set updates seen, and the last month whose
//! report was published. Small bookkeeping in `meta`, apart from the per-waybill state.

use bondline_devices::contract::RuleSetUpdate;

use super::trust::Verdict;
use super::{RefusedEntry, META_PLATFORM_RULES, TREE_META};
use crate::journal::integrity;
use crate::journal::{Journal, JournalError};

const META_RULES_SOURCE: &[u8] = b"rules_source";
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
        let adopted = !self.adopting();
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
