//! What an auditor knows of a customs rule set: which rule is of which kind, and which
//! waybills its random sampling picks.
//!
//! The daemon samples a parcel when the first four bytes of HMAC-SHA256(sampling key, waybill),
//! as a big-endian number, modulo 1,000,000 are below the rule's rate in parts per million
//! (`docs/mqtt.md`, the rules engine's module docs). The key is given to auditors so they can
//! recompute the sample afterwards; [`RuleBook::sampled`] is that recomputation, written here
//! from the documented formula rather than shared with the daemon, so a test comparing the two
//! catches a drift on either side.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use hmac::{Hmac, Mac};
use serde::Deserialize;

/// The demo's rule set: every rule kind this build feeds. `bondline-lab demo` pushes it from the
/// simulated platform; `platform-sim --rules` can push it (or any other set).
pub const DEMO_RULES: &str = include_str!("../../deploy/rules-demo.toml");

/// The parts of a rule set an auditor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleBook {
    pub version: String,
    /// Rule name → rule kind (`instruction`, `sampling`, ...).
    pub kinds: BTreeMap<String, String>,
    sampling_key: Vec<u8>,
    /// The highest sampling rate among the set's sampling rules (they share the key, so the
    /// others' samples are subsets of it); `None` without a sampling rule.
    sampling_ppm: Option<u32>,
}

#[derive(Deserialize)]
struct RawSet {
    version: String,
    #[serde(default)]
    sampling_key_hex: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    name: String,
    kind: String,
    #[serde(default)]
    rate_ppm: Option<u32>,
}

impl RuleBook {
    /// Reads a rule set's TOML text. Only what an auditor needs is checked (names, kinds, the
    /// sampling key); the daemon validates the rest.
    pub fn parse(text: &str) -> anyhow::Result<RuleBook> {
        let raw: RawSet = toml::from_str(text).context("rule set is not valid TOML")?;
        let sampling_key = match &raw.sampling_key_hex {
            Some(h) => hex::decode(h).context("sampling_key_hex is not hex")?,
            None => Vec::new(),
        };
        let mut kinds = BTreeMap::new();
        let mut sampling_ppm: Option<u32> = None;
        for r in raw.rules {
            if r.kind == "sampling" {
                let Some(rate) = r.rate_ppm else {
                    bail!("sampling rule `{}` has no rate_ppm", r.name);
                };
                sampling_ppm = Some(sampling_ppm.map_or(rate, |old| old.max(rate)));
            }
            if kinds.insert(r.name.clone(), r.kind).is_some() {
                bail!("rule `{}` appears twice", r.name);
            }
        }
        if sampling_ppm.is_some() && sampling_key.is_empty() {
            bail!("a sampling rule needs sampling_key_hex");
        }
        Ok(RuleBook {
            version: raw.version,
            kinds,
            sampling_key,
            sampling_ppm,
        })
    }

    /// The demo rule set ([`DEMO_RULES`]).
    pub fn demo() -> RuleBook {
        RuleBook::parse(DEMO_RULES).expect("deploy/rules-demo.toml is a valid rule set")
    }

    /// The kind of the rule named `rule`, if the set has it.
    pub fn kind_of(&self, rule: &str) -> Option<&str> {
        self.kinds.get(rule).map(String::as_str)
    }

    /// Whether the rule set's random sampling picks `waybill`; false without a sampling rule.
    pub fn sampled(&self, waybill: &str) -> bool {
        self.sampling_ppm
            .is_some_and(|ppm| sampled(&self.sampling_key, waybill, ppm))
    }
}

/// The documented sampling formula: HMAC-SHA256(key, waybill), first four bytes big-endian,
/// modulo 1,000,000, below `rate_ppm`.
pub fn sampled(key: &[u8], waybill: &str, rate_ppm: u32) -> bool {
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(waybill.as_bytes());
    let tag = mac.finalize().into_bytes();
    u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]) % 1_000_000 < rate_ppm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ANNUAL_LIMIT_MINOR, FREQUENT_DAILY_LIMIT, SUSPENDED_ENTERPRISE};

    #[test]
    fn demo_rules_hold_every_kind_and_match_the_plan() {
        let book = RuleBook::demo();
        let kinds: std::collections::BTreeSet<&str> =
            book.kinds.values().map(String::as_str).collect();
        for kind in [
            "instruction",
            "undeclared",
            "unverified_identity",
            "suspended_enterprise",
            "weight_mismatch",
            "consumer_limit",
            "sampling",
        ] {
            assert!(kinds.contains(kind), "demo rule set lacks {kind}");
        }
        // The plan's frequent buyers and over-limit parcels are built against these numbers.
        let raw: toml::Table = toml::from_str(DEMO_RULES).unwrap();
        let limits: Vec<(i64, Option<i64>, Option<i64>)> = raw["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"].as_str() == Some("consumer_limit"))
            .map(|r| {
                (
                    r["window_days"].as_integer().unwrap(),
                    r.get("max_parcels").and_then(|v| v.as_integer()),
                    r.get("max_value_minor").and_then(|v| v.as_integer()),
                )
            })
            .collect();
        assert!(limits.contains(&(1, Some(i64::from(FREQUENT_DAILY_LIMIT)), None)));
        assert!(limits.contains(&(365, None, Some(ANNUAL_LIMIT_MINOR as i64))));
        assert!(!SUSPENDED_ENTERPRISE.is_empty());
    }

    #[test]
    fn sampling_follows_the_rate_and_the_key() {
        let key = [7u8; 16];
        let n = (0..20_000)
            .filter(|i| sampled(&key, &format!("BL{i:08}"), 20_000))
            .count();
        assert!((300..500).contains(&n), "{n} of 20000 at 2%");
        assert!((0..1000).all(|i| !sampled(&key, &format!("BL{i:08}"), 0)));
        assert!((0..1000).all(|i| sampled(&key, &format!("BL{i:08}"), 1_000_000)));
        let other = [8u8; 16];
        assert!((0..2000).any(|i| {
            let w = format!("BL{i:08}");
            sampled(&key, &w, 20_000) != sampled(&other, &w, 20_000)
        }));
    }

    #[test]
    fn rule_books_refuse_what_cannot_be_audited() {
        let no_key =
            "version = \"v\"\n[[rules]]\nname = \"s\"\nkind = \"sampling\"\nrate_ppm = 5\n";
        assert!(RuleBook::parse(no_key).is_err());
        assert!(RuleBook::parse("version = ").is_err());
        let dup = "version = \"v\"\n[[rules]]\nname = \"a\"\nkind = \"instruction\"\n[[rules]]\nname = \"a\"\nkind = \"undeclared\"\n";
        assert!(RuleBook::parse(dup).is_err());
        let plain =
            RuleBook::parse("version = \"v\"\n[[rules]]\nname = \"i\"\nkind = \"instruction\"\n")
                .unwrap();
        assert!(!plain.sampled("BL1"));
        assert_eq!(plain.kind_of("i"), Some("instruction"));
    }
}
