//! The rule set's model and its loading: the rule kinds as the TOML file names them, a rule
//! set parsed and validated whole (a target of `release` is refused, an `instruction` rule
//! is required, every kind's keys are checked), and the keyed sampling a set carries.
//! Evaluation is [`super::evaluation`]'s.

use std::collections::BTreeSet;

use bondline_devices::contract::LaneRole;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::rules::calendar::Window;

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleKind {
    /// The platform's instruction for the waybill (release, inspect or hold).
    Instruction,
    /// No declaration for the waybill.
    Undeclared,
    /// The declaration says the consumer's identity is not verified.
    UnverifiedIdentity,
    /// The declaring enterprise is suspended.
    SuspendedEnterprise,
    /// The line scale's weight differs from the declared gross weight by more than
    /// `tolerance_pct` percent and `tolerance_g` grams.
    WeightMismatch {
        tolerance_pct: f64,
        tolerance_g: u32,
    },
    /// The consumer's parcels or declared value in the window would exceed a limit. The
    /// window is a calendar one (`window = "calendar_day" | "calendar_month" |
    /// "calendar_year"`, local days in the configured time zone) or the rolling `window_days`
    /// local days ending with the parcel's day; exactly one of the two.
    /// With `currency`, a declaration in another currency (or none) cannot be checked against
    /// `max_value_minor` and fires too: fail closed.
    ConsumerLimit {
        #[serde(default)]
        window: Option<CalendarWindow>,
        #[serde(default)]
        window_days: Option<u32>,
        #[serde(default)]
        max_parcels: Option<u32>,
        #[serde(default)]
        max_value_minor: Option<u64>,
        #[serde(default)]
        currency: Option<String>,
    },
    /// The declared value of the parcel's transaction would exceed `max_value_minor`: the sum
    /// over every waybill declared with the same enterprise and `order_id`, or the waybill's
    /// own value when its declaration names no order. With `currency`, a transaction declared
    /// (wholly or partly) in another currency or none fires: fail closed. A waybill of the
    /// transaction declared without a value fires too: its value cannot be checked.
    TransactionLimit {
        max_value_minor: u64,
        #[serde(default)]
        currency: Option<String>,
    },
    /// Random sampling at `rate_ppm` parts per million, keyed (see the module docs).
    Sampling { rate_ppm: u32 },
    /// The X-ray result or an operator mark says suspect.
    XraySuspect,
}

/// A calendar window as the rule file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalendarWindow {
    CalendarDay,
    CalendarMonth,
    CalendarYear,
}

impl RuleKind {
    /// The window of a consumer-limit rule (validated at load: exactly one of `window` and
    /// `window_days`).
    pub fn consumer_window(&self) -> Option<Window> {
        match self {
            RuleKind::ConsumerLimit {
                window,
                window_days,
                ..
            } => Some(match (window, window_days) {
                (Some(CalendarWindow::CalendarDay), _) => Window::Day,
                (Some(CalendarWindow::CalendarMonth), _) => Window::Month,
                (Some(CalendarWindow::CalendarYear), _) => Window::Year,
                (None, n) => Window::Rolling(n.unwrap_or(1)),
            }),
            _ => None,
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub priority: u32,
    pub kind: RuleKind,
    /// Where the parcel goes when the rule fires; `None` for `instruction`, whose target is
    /// the instruction's own action.
    pub target: Option<LaneRole>,
}

/// A validated rule set, rules in evaluation order (highest priority first).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub version: String,
    pub rules: Vec<Rule>,
    sampling_key: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleSet {
    version: String,
    #[serde(default)]
    sampling_key_hex: Option<String>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    name: String,
    priority: u32,
    #[serde(default)]
    target: Option<LaneRole>,
    /// `kind` and the kind's own keys, checked strictly by [`RuleKind`].
    #[serde(flatten)]
    rest: toml::Table,
}

/// A rule set that cannot be used, with the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("rule set {origin}: key `{key}`: {reason}")]
pub struct RuleSetError {
    pub origin: String,
    pub key: String,
    pub reason: String,
}

/// The rule set used when the configuration names none: the fail-closed core.
pub const BUILTIN: &str = include_str!("../default.toml");

impl RuleSet {
    /// The built-in rule set ([`BUILTIN`]).
    pub fn builtin() -> RuleSet {
        RuleSet::parse("builtin", BUILTIN).expect("the built-in rule set is valid")
    }

    /// Parses and validates a rule set; `origin` names it in errors. Invalid sets are
    /// rejected whole.
    pub fn parse(origin: &str, text: &str) -> Result<RuleSet, RuleSetError> {
        let err = |key: &str, reason: String| RuleSetError {
            origin: origin.to_string(),
            key: key.to_string(),
            reason,
        };
        let raw: RawRuleSet =
            toml::from_str(text).map_err(|e| err("(file)", e.message().to_string()))?;
        if raw.version.trim().is_empty() {
            return Err(err("version", "must not be empty".into()));
        }
        let sampling_key = match &raw.sampling_key_hex {
            Some(h) => hex::decode(h).map_err(|e| err("sampling_key_hex", e.to_string()))?,
            None => Vec::new(),
        };
        let mut names = BTreeSet::new();
        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            let kind = RuleKind::deserialize(toml::Value::Table(r.rest))
                .map_err(|e| err(&format!("rules[{i}]"), e.message().to_string()))?;
            let r = Rule {
                name: r.name,
                priority: r.priority,
                kind,
                target: r.target,
            };
            if !names.insert(r.name.clone()) {
                return Err(err(
                    &key("name"),
                    format!("rule `{}` appears twice", r.name),
                ));
            }
            match (&r.kind, r.target) {
                (RuleKind::Instruction, None) => {}
                (RuleKind::Instruction, Some(_)) => {
                    return Err(err(
                        &key("target"),
                        "an instruction rule takes its lane from the instruction".into(),
                    ))
                }
                (_, None) => {
                    return Err(err(&key("target"), "a target lane role is needed".into()))
                }
                (_, Some(LaneRole::Release)) => {
                    return Err(err(
                        &key("target"),
                        "only a platform release instruction may release a parcel".into(),
                    ))
                }
                _ => {}
            }
            match &r.kind {
                RuleKind::WeightMismatch { tolerance_pct, .. }
                    if !(0.0..=100.0).contains(tolerance_pct) =>
                {
                    return Err(err(&key("tolerance_pct"), "must be 0 to 100".into()))
                }
                RuleKind::ConsumerLimit {
                    window,
                    window_days,
                    max_parcels,
                    max_value_minor,
                    currency,
                } => {
                    if currency
                        .as_ref()
                        .is_some_and(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
                    {
                        return Err(err(
                            &key("currency"),
                            "must be a three-letter code such as CNY".into(),
                        ));
                    }
                    match (window, window_days) {
                        (Some(_), Some(_)) => {
                            return Err(err(
                                &key("window"),
                                "give either window (a calendar window) or window_days (a rolling window), not both".into(),
                            ))
                        }
                        (None, None) => {
                            return Err(err(
                                &key("window"),
                                "a consumer limit needs window = \"calendar_day\", \"calendar_month\" or \"calendar_year\", or window_days = N".into(),
                            ))
                        }
                        (None, Some(n)) if !(1..=366).contains(n) => {
                            return Err(err(&key("window_days"), "must be 1 to 366".into()));
                        }
                        _ => {}
                    }
                    if max_parcels.is_none() && max_value_minor.is_none() {
                        return Err(err(
                            &key("max_parcels"),
                            "give max_parcels, max_value_minor or both".into(),
                        ));
                    }
                }
                RuleKind::TransactionLimit {
                    currency: Some(c), ..
                } if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) => {
                    return Err(err(
                        &key("currency"),
                        "must be a three-letter code such as CNY".into(),
                    ))
                }
                RuleKind::Sampling { rate_ppm } => {
                    if *rate_ppm > 1_000_000 {
                        return Err(err(&key("rate_ppm"), "must be at most 1000000".into()));
                    }
                    if sampling_key.len() < 16 {
                        return Err(err(
                            "sampling_key_hex",
                            "sampling needs a key of at least 16 bytes (32 hex digits)".into(),
                        ));
                    }
                }
                _ => {}
            }
            rules.push(r);
        }
        if !rules.iter().any(|r| r.kind == RuleKind::Instruction) {
            return Err(err(
                "rules",
                "an `instruction` rule is needed: without it nothing could ever be released".into(),
            ));
        }
        rules.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
        Ok(RuleSet {
            version: raw.version,
            rules,
            sampling_key,
        })
    }

    /// Whether `waybill` is in the random sample at `rate_ppm` (see the module docs).
    pub fn sampled(&self, waybill: &str, rate_ppm: u32) -> bool {
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.sampling_key) else {
            return false;
        };
        mac.update(waybill.as_bytes());
        let tag = mac.finalize().into_bytes();
        let n = u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]);
        n % 1_000_000 < rate_ppm
    }
}
