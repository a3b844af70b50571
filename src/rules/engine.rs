//! The customs rule set: a versioned file of prioritised rules, evaluated purely.
//!
//! A rule set is TOML: a `version`, an optional `sampling_key_hex`, and `[[rules]]`, each
//! with a `name`, a `kind`, a `priority` and (except for `instruction`) a `target` lane role.
//! Every rule whose condition holds *fires* and is reported with its reason; the lane is the
//! target of the highest-priority fired rule. These hold whatever the file says, so a
//! mistaken or partial rule set can never release a parcel it should not:
//! - a target of `release` is refused at load: only a platform release instruction releases;
//! - a release needs a declaration and a release instruction, and no other rule firing;
//! - a parcel for which nothing fired is held ("no release decision");
//! - a parcel of a suspended enterprise, or of a consumer whose identity is not verified, is
//!   held even when the set has no rule for it ([`ENTERPRISE_SUSPENDED`],
//!   [`IDENTITY_UNVERIFIED`]), and on an X-ray line a release needs a clear verdict
//!   ([`AWAITING_XRAY`], [`XRAY_FLAGGED`]).
//!
//! Random sampling is verifiable afterwards: a parcel is sampled when the first four bytes of
//! HMAC-SHA256(sampling key, waybill), as a big-endian number, modulo 1,000,000 are below the
//! rate in parts per million. An auditor with the key recomputes it.

use std::collections::BTreeSet;

use bondline_devices::contract::{Action, LaneRole};
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
pub const BUILTIN: &str = include_str!("default.toml");

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

/// A consumer's recent history, for limits over rolling windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerWindow {
    pub parcels: u32,
    pub value_minor: u64,
}

/// What a declaration says, as far as rules look at it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Declared<'a> {
    pub enterprise: &'a str,
    pub consumer: Option<&'a str>,
    pub identity_verified: bool,
    pub value_minor: Option<u64>,
    pub currency: Option<&'a str>,
    pub gross_weight_g: Option<u32>,
}

/// The platform instruction held for a waybill.
#[derive(Debug, Clone, Copy)]
pub struct Ordered<'a> {
    pub id: &'a str,
    pub action: Action,
    pub reason: &'a str,
}

/// Everything a decision may look at, gathered before evaluation.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    pub waybill: &'a str,
    pub declaration: Option<Declared<'a>>,
    pub instruction: Option<Ordered<'a>>,
    /// The reason of the declaring enterprise's suspension, if it is suspended.
    pub suspension: Option<&'a str>,
    pub measured_weight_g: Option<u32>,
    /// Whether the parcel's scanner station weighs: a weight rule then needs both a reading
    /// and a declared weight, and fires when either is missing.
    pub weighing: bool,
    /// The X-ray verdict joined to the parcel, on a line with an X-ray scanner.
    pub xray: XrayInput,
    /// The consumer's history over each limit rule's window, by rule index; parcels and
    /// value before this one.
    pub consumer: &'a [(usize, ConsumerWindow)],
    /// The declared figures of the parcel's transaction (its order, or itself alone), for
    /// `transaction_limit` rules; `None` without a declaration.
    pub transaction: Option<crate::rules::orders::Transaction>,
}

/// The name under which a parcel is held because no rule decided it (no release yet).
pub const AWAITING_RELEASE: &str = "awaiting_release";
/// The name under which a parcel that would be released goes to inspection because no X-ray
/// verdict is joined to it (yet): on a line with an X-ray scanner, release needs a clear one.
pub const AWAITING_XRAY: &str = "awaiting_xray";
/// The name under which a flagged X-ray verdict stops a release when the rule set has no
/// `xray_suspect` rule of its own: a suspect parcel is never released.
pub const XRAY_FLAGGED: &str = "xray_flagged";
/// The name under which a parcel of a suspended enterprise is held when the rule set has no
/// `suspended_enterprise` rule of its own (or gave it a target the engine would release).
pub const ENTERPRISE_SUSPENDED: &str = "enterprise_suspended";
/// The name under which a parcel whose consumer identity is not verified is held when the
/// rule set has no `unverified_identity` rule of its own.
pub const IDENTITY_UNVERIFIED: &str = "identity_unverified";

/// What the X-ray scanner said about a parcel, as far as a decision is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XrayInput {
    /// The line has no X-ray scanner.
    #[default]
    NotOnLine,
    /// The line has one and no verdict is joined to the parcel yet.
    Pending,
    /// The latest verdict joined to the parcel.
    Verdict(bondline_devices::xray::XrayResult),
}

impl XrayInput {
    fn flagged(self) -> Option<bondline_devices::xray::XrayResult> {
        match self {
            XrayInput::Verdict(r) if r.flags() => Some(r),
            _ => None,
        }
    }
}

/// One rule that fired, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub rule: String,
    pub target: LaneRole,
    pub reason: String,
    /// Whether this is the platform-instruction rule (its instruction id goes on the record).
    pub rule_kind_instruction: bool,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub role: LaneRole,
    /// The rules that fired, deciding one first.
    pub fired: Vec<Fired>,
    pub version: String,
}

/// Whether the consumer-limit rule at index `i` fires, and why.
fn consumer_limit(
    inp: &Inputs,
    i: usize,
    window: Window,
    max_parcels: Option<u32>,
    max_value_minor: Option<u64>,
    currency: Option<&str>,
) -> Option<(LaneRole, String)> {
    let d = inp.declaration?;
    d.consumer?;
    let value = d.value_minor.unwrap_or(0);
    if let (Some(limit_cur), Some(_)) = (currency, max_value_minor) {
        if d.currency != Some(limit_cur) {
            return Some((
                LaneRole::Inspection,
                format!(
                    "declared value in {} cannot be checked against the {} limit in {limit_cur}",
                    d.currency.unwrap_or("no currency"),
                    window.describe()
                ),
            ));
        }
    }
    let seen = inp
        .consumer
        .iter()
        .find(|(r, _)| *r == i)
        .map(|(_, w)| *w)
        .unwrap_or_default();
    let over_count = max_parcels.is_some_and(|m| seen.parcels.saturating_add(1) > m);
    let over_value = max_value_minor.is_some_and(|m| seen.value_minor.saturating_add(value) > m);
    (over_count || over_value).then(|| {
        (
            LaneRole::Inspection,
            format!(
                "consumer over its {} limit: {} parcel(s) and {} in value before this one, {value} in this one",
                window.describe(), seen.parcels, seen.value_minor
            ),
        )
    })
}

/// Whether a transaction-limit rule fires, and why: the transaction's declared value, this
/// parcel included, above `max_value_minor`; or a value that cannot be checked (another
/// currency than the rule's, a waybill without a value): fail closed.
fn transaction_limit(
    inp: &Inputs,
    max_value_minor: u64,
    currency: Option<&str>,
) -> Option<(LaneRole, String)> {
    inp.declaration?;
    let t = inp.transaction.as_ref()?;
    let which = match &t.order_id {
        Some(o) => format!("order {o} ({} waybill(s))", t.parcels),
        None => "this waybill".to_string(),
    };
    if let Some(limit_cur) = currency {
        if t.currency.as_deref() != Some(limit_cur) {
            return Some((
                LaneRole::Inspection,
                format!(
                    "declared value of {which} in {} cannot be checked against the transaction limit in {limit_cur}",
                    t.currency.as_deref().unwrap_or("no single currency")
                ),
            ));
        }
    }
    if t.without_value > 0 {
        return Some((
            LaneRole::Inspection,
            format!(
                "{which}: {} waybill(s) declared without a value, the transaction limit cannot be checked",
                t.without_value
            ),
        ));
    }
    (t.value_minor > max_value_minor).then(|| {
        (
            LaneRole::Inspection,
            format!(
                "transaction over its limit: {which} declared {} in value, limit {max_value_minor}",
                t.value_minor
            ),
        )
    })
}

/// Whether a weight rule fires, and why. On a weighing line an unweighed parcel, or one
/// declared without a gross weight, cannot be checked and fires: fail closed. A line without
/// a scale cannot feed the rule at all (the daemon warns about such a rule at load).
fn weight_mismatch(
    inp: &Inputs,
    tolerance_pct: f64,
    tolerance_g: u32,
) -> Option<(LaneRole, String)> {
    let d = inp.declaration?;
    if !inp.weighing {
        return None;
    }
    let reason = match (d.gross_weight_g, inp.measured_weight_g) {
        (Some(declared), Some(measured)) => {
            let diff = declared.abs_diff(measured);
            let pct = diff as f64 * 100.0 / declared.max(1) as f64;
            if diff <= tolerance_g || pct <= tolerance_pct {
                return None;
            }
            format!("weighed {measured} g, declared {declared} g")
        }
        (None, _) => "no declared gross weight to check the scale against".into(),
        (Some(declared), None) => format!("the scale gave no reading (declared {declared} g)"),
    };
    Some((LaneRole::Inspection, reason))
}

/// What stops a release whatever the rule set holds, first match: on an X-ray line no clear
/// verdict yet, or a flagged one the set did not look at; a suspended enterprise; an
/// unverified consumer (a set without rules for them, or giving them other targets, must not
/// open the release lane).
fn guard(inp: &Inputs) -> Option<(&'static str, LaneRole, String)> {
    match inp.xray {
        XrayInput::Pending => {
            return Some((
                AWAITING_XRAY,
                LaneRole::Inspection,
                "no X-ray verdict joined to this parcel".into(),
            ))
        }
        XrayInput::Verdict(r) if r.flags() => {
            return Some((
                XRAY_FLAGGED,
                LaneRole::Inspection,
                format!("X-ray verdict: {}", r.as_str().replace('_', " ")),
            ))
        }
        _ => {}
    }
    if inp.suspension.is_some() {
        return Some((
            ENTERPRISE_SUSPENDED,
            LaneRole::Hold,
            "the declaring enterprise is suspended".into(),
        ));
    }
    inp.declaration.filter(|d| !d.identity_verified).map(|_| {
        (
            IDENTITY_UNVERIFIED,
            LaneRole::Hold,
            "consumer identity not verified".into(),
        )
    })
}

/// Evaluates `set` on one read parcel. Pure: the same inputs give the same lane.
pub fn evaluate(set: &RuleSet, inp: &Inputs) -> Evaluation {
    let mut fired = Vec::new();
    for (i, rule) in set.rules.iter().enumerate() {
        let hit: Option<(LaneRole, String)> = match &rule.kind {
            RuleKind::Instruction => inp.instruction.map(|ins| {
                let role = match ins.action {
                    Action::Release => LaneRole::Release,
                    Action::Inspect => LaneRole::Inspection,
                    Action::Hold => LaneRole::Hold,
                };
                (
                    role,
                    format!("instruction {}: {:?} {}", ins.id, ins.action, ins.reason)
                        .trim_end()
                        .to_string(),
                )
            }),
            RuleKind::Undeclared => inp
                .declaration
                .is_none()
                .then(|| (LaneRole::Hold, "no declaration for this waybill".into())),
            RuleKind::UnverifiedIdentity => inp
                .declaration
                .filter(|d| !d.identity_verified)
                .map(|_| (LaneRole::Hold, "consumer identity not verified".into())),
            RuleKind::SuspendedEnterprise => inp.suspension.map(|why| {
                (
                    LaneRole::Hold,
                    format!(
                        "enterprise {} is suspended: {why}",
                        inp.declaration.map_or("?", |d| d.enterprise)
                    )
                    .trim_end_matches([':', ' '])
                    .to_string(),
                )
            }),
            RuleKind::WeightMismatch {
                tolerance_pct,
                tolerance_g,
            } => weight_mismatch(inp, *tolerance_pct, *tolerance_g),
            RuleKind::ConsumerLimit {
                max_parcels,
                max_value_minor,
                currency,
                ..
            } => consumer_limit(
                inp,
                i,
                rule.kind.consumer_window().unwrap_or(Window::Day),
                *max_parcels,
                *max_value_minor,
                currency.as_deref(),
            ),
            RuleKind::TransactionLimit {
                max_value_minor,
                currency,
            } => transaction_limit(inp, *max_value_minor, currency.as_deref()),
            RuleKind::Sampling { rate_ppm } => set.sampled(inp.waybill, *rate_ppm).then(|| {
                (
                    LaneRole::Inspection,
                    format!("random sample ({rate_ppm} ppm)"),
                )
            }),
            RuleKind::XraySuspect => inp.xray.flagged().map(|r| {
                (
                    LaneRole::Inspection,
                    format!("X-ray verdict: {}", r.as_str().replace('_', " ")),
                )
            }),
        };
        if let Some((natural, reason)) = hit {
            let target = rule.target.unwrap_or(natural);
            fired.push(Fired {
                rule: rule.name.clone(),
                target,
                reason,
                rule_kind_instruction: rule.kind == RuleKind::Instruction,
            });
        }
    }
    // The highest-priority rule that does not release decides; a release stands only alone,
    // and only for a declared parcel.
    let deciding = fired.iter().position(|f| f.target != LaneRole::Release);
    let role = match deciding {
        Some(i) => {
            let f = fired.remove(i);
            let role = f.target;
            fired.insert(0, f);
            role
        }
        None if !fired.is_empty() && inp.declaration.is_some() => LaneRole::Release,
        None => {
            fired.insert(
                0,
                Fired {
                    rule: AWAITING_RELEASE.into(),
                    target: LaneRole::Hold,
                    reason: if inp.declaration.is_none() {
                        "no declaration for this waybill".into()
                    } else {
                        "declared, no release instruction yet".into()
                    },
                    rule_kind_instruction: false,
                },
            );
            LaneRole::Hold
        }
    };
    // The engine's own guards stop a release whatever the set holds (see the module docs).
    let guarded = (role == LaneRole::Release).then(|| guard(inp)).flatten();
    let role = match guarded {
        Some((rule, target, reason)) => {
            fired.insert(
                0,
                Fired {
                    rule: rule.into(),
                    target,
                    reason,
                    rule_kind_instruction: false,
                },
            );
            target
        }
        None => role,
    };
    Evaluation {
        role,
        fired,
        version: set.version.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bondline_devices::xray::XrayResult;
    use proptest::prelude::*;

    /// A rule set with every kind, shared by the engine's and the decision's tests.
    pub(crate) const SET: &str = r#"
version = "test-1"
sampling_key_hex = "000102030405060708090a0b0c0d0e0f"
[[rules]]
name = "platform"
kind = "instruction"
priority = 100
[[rules]]
name = "suspended"
kind = "suspended_enterprise"
priority = 90
target = "hold"
[[rules]]
name = "identity"
kind = "unverified_identity"
priority = 80
target = "hold"
[[rules]]
name = "undeclared"
kind = "undeclared"
priority = 70
target = "hold"
[[rules]]
name = "xray"
kind = "xray_suspect"
priority = 60
target = "inspection"
[[rules]]
name = "weight"
kind = "weight_mismatch"
priority = 50
target = "inspection"
tolerance_pct = 10.0
tolerance_g = 50
[[rules]]
name = "daily"
kind = "consumer_limit"
priority = 40
target = "inspection"
window_days = 1
max_parcels = 3
[[rules]]
name = "sample"
kind = "sampling"
priority = 10
target = "inspection"
rate_ppm = 100000
"#;

    fn set() -> RuleSet {
        RuleSet::parse("test", SET).unwrap()
    }

    fn decl(verified: bool, weight: Option<u32>) -> Declared<'static> {
        Declared {
            enterprise: "E1",
            consumer: Some("c1"),
            identity_verified: verified,
            value_minor: Some(1000),
            currency: Some("CNY"),
            gross_weight_g: weight,
        }
    }

    fn instr(action: Action) -> Ordered<'static> {
        Ordered {
            id: "i",
            action,
            reason: "",
        }
    }

    /// A waybill the test key does not sample.
    fn unsampled(set: &RuleSet) -> String {
        (0..)
            .map(|i| format!("W{i}"))
            .find(|w| !set.sampled(w, 100_000))
            .unwrap()
    }

    #[test]
    fn a_release_stands_only_alone() {
        let s = set();
        let w = unsampled(&s);
        let d = decl(true, Some(1000));
        let rel = instr(Action::Release);
        let base = Inputs {
            waybill: &w,
            declaration: Some(d),
            instruction: Some(rel),
            measured_weight_g: Some(1010),
            weighing: true,
            ..Default::default()
        };
        let e = evaluate(&s, &base);
        assert_eq!(e.role, LaneRole::Release, "{e:?}");
        assert_eq!(e.version, "test-1");
        let heavy = Inputs {
            measured_weight_g: Some(1500),
            ..base.clone()
        };
        let e = evaluate(&s, &heavy);
        assert_eq!(e.role, LaneRole::Inspection);
        assert_eq!(e.fired[0].rule, "weight");
        assert!(
            e.fired.iter().any(|f| f.rule == "platform"),
            "every fired rule is reported"
        );
        let suspended = Inputs {
            suspension: Some("documents"),
            ..heavy
        };
        assert_eq!(
            evaluate(&s, &suspended).role,
            LaneRole::Hold,
            "priority decides"
        );
    }

    #[test]
    fn a_weighing_line_fails_closed_on_missing_weights() {
        let s = set();
        let w = unsampled(&s);
        let base = Inputs {
            waybill: &w,
            declaration: Some(decl(true, Some(1000))),
            instruction: Some(instr(Action::Release)),
            measured_weight_g: None,
            weighing: true,
            ..Default::default()
        };
        let e = evaluate(&s, &base);
        assert_eq!(e.role, LaneRole::Inspection);
        assert_eq!(e.fired[0].rule, "weight");
        assert!(e.fired[0].reason.contains("no reading"), "{e:?}");
        let undeclared_weight = Inputs {
            declaration: Some(decl(true, None)),
            measured_weight_g: Some(900),
            ..base.clone()
        };
        let e = evaluate(&s, &undeclared_weight);
        assert_eq!(e.role, LaneRole::Inspection);
        assert!(
            e.fired[0].reason.contains("no declared gross weight"),
            "{e:?}"
        );
        // A line without a scale cannot feed the rule: the load-time warning covers it.
        let no_scale = Inputs {
            weighing: false,
            ..base
        };
        assert_eq!(evaluate(&s, &no_scale).role, LaneRole::Release);
    }

    #[test]
    fn the_built_in_table_of_docs_mqtt_md_is_what_the_built_in_set_decides() {
        // Each row of the table "With the built-in rule set" in docs/mqtt.md, as written
        // there, and the inputs it stands for. A platform written from that doc alone must
        // see what the engine does (identity_verified absent is false: held).
        let doc = include_str!("../../docs/mqtt.md");
        let s = RuleSet::builtin();
        // (row, instruction held, declaration, lane role, deciding rule)
        type Row<'a> = (
            &'a str,
            Option<Action>,
            Option<Declared<'a>>,
            LaneRole,
            &'a str,
        );
        let rows: [Row; 9] = [
            ("| waybill | `inspect` | any | inspection | `instruction` |", Some(Action::Inspect), Some(decl(false, None)), LaneRole::Inspection, "instruction"),
            ("| waybill | `hold` | any | hold | `instruction` |", Some(Action::Hold), None, LaneRole::Hold, "instruction"),
            ("| waybill | `release` or none | no | hold | `undeclared` |", Some(Action::Release), None, LaneRole::Hold, "undeclared"),
            ("| waybill | `release` or none | no | hold | `undeclared` |", None, None, LaneRole::Hold, "undeclared"),
            ("| waybill | `release` or none | yes, `identity_verified` `false` or absent | hold | `unverified_identity` |", Some(Action::Release), Some(decl(false, None)), LaneRole::Hold, "unverified_identity"),
            ("| waybill | `release` or none | yes, `identity_verified` `false` or absent | hold | `unverified_identity` |", None, Some(decl(false, None)), LaneRole::Hold, "unverified_identity"),
            ("| waybill | `release` | yes, `identity_verified: true` | release | `instruction` |", Some(Action::Release), Some(decl(true, None)), LaneRole::Release, "instruction"),
            ("| waybill | none | yes, `identity_verified: true` | hold | `awaiting_release` |", None, Some(decl(true, None)), LaneRole::Hold, AWAITING_RELEASE),
            ("| waybill | `inspect` | any | inspection | `instruction` |", Some(Action::Inspect), None, LaneRole::Inspection, "instruction"),
        ];
        for (row, action, declaration, role, rule) in rows {
            assert!(doc.contains(row), "docs/mqtt.md lacks the row {row}");
            let inp = Inputs {
                waybill: "W1",
                declaration,
                instruction: action.map(instr),
                ..Default::default()
            };
            let e = evaluate(&s, &inp);
            assert_eq!((e.role, e.fired[0].rule.as_str()), (role, rule), "{row}");
        }
    }

    #[test]
    fn suspension_and_unverified_identity_hold_without_their_rules() {
        let only_instruction = RuleSet::parse(
            "t",
            "version = \"bare-1\"\n[[rules]]\nname = \"platform\"\nkind = \"instruction\"\npriority = 100\n",
        )
        .unwrap();
        let w = "W1";
        let released = Inputs {
            waybill: w,
            declaration: Some(decl(true, None)),
            instruction: Some(instr(Action::Release)),
            ..Default::default()
        };
        assert_eq!(
            evaluate(&only_instruction, &released).role,
            LaneRole::Release
        );
        let suspended = Inputs {
            suspension: Some("licence withdrawn"),
            ..released.clone()
        };
        let e = evaluate(&only_instruction, &suspended);
        assert_eq!(
            (e.role, e.fired[0].rule.as_str()),
            (LaneRole::Hold, ENTERPRISE_SUSPENDED)
        );
        let unverified = Inputs {
            declaration: Some(decl(false, None)),
            ..released
        };
        let e = evaluate(&only_instruction, &unverified);
        assert_eq!(
            (e.role, e.fired[0].rule.as_str()),
            (LaneRole::Hold, IDENTITY_UNVERIFIED)
        );
    }

    #[test]
    fn a_consumer_limit_needs_exactly_one_window() {
        let set = |w: &str| {
            RuleSet::parse(
                "t",
                &format!(
                    "version = \"v\"\n[[rules]]\nname = \"i\"\nkind = \"instruction\"\npriority = 9\n\
                     [[rules]]\nname = \"c\"\nkind = \"consumer_limit\"\npriority = 5\ntarget = \"inspection\"\nmax_parcels = 1\n{w}"
                ),
            )
        };
        let both = set("window = \"calendar_year\"\nwindow_days = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("window") && both.contains("not both"),
            "{both}"
        );
        let none = set("").unwrap_err().to_string();
        assert!(none.contains("calendar_day"), "{none}");
        let bad = set("window = \"fortnight\"\n").unwrap_err().to_string();
        assert!(
            bad.contains("fortnight") || bad.contains("calendar_day"),
            "{bad}"
        );
        let year = set("window = \"calendar_year\"\n").unwrap();
        assert_eq!(year.rules[1].kind.consumer_window(), Some(Window::Year));
        let rolling = set("window_days = 30\n").unwrap();
        assert_eq!(
            rolling.rules[1].kind.consumer_window(),
            Some(Window::Rolling(30))
        );
    }

    #[test]
    fn consumer_limits_count_this_parcel() {
        let s = set();
        let w = unsampled(&s);
        let d = decl(true, None);
        let rel = instr(Action::Release);
        let daily = s.rules.iter().position(|r| r.name == "daily").unwrap();
        let history = [(
            daily,
            ConsumerWindow {
                parcels: 3,
                value_minor: 0,
            },
        )];
        let inp = Inputs {
            waybill: &w,
            declaration: Some(d),
            instruction: Some(rel),
            consumer: &history,
            ..Default::default()
        };
        assert_eq!(evaluate(&s, &inp).role, LaneRole::Inspection);
        let history = [(
            daily,
            ConsumerWindow {
                parcels: 2,
                value_minor: 0,
            },
        )];
        let inp = Inputs {
            consumer: &history,
            ..inp
        };
        assert_eq!(evaluate(&s, &inp).role, LaneRole::Release);
    }

    #[test]
    fn sampling_is_keyed_and_close_to_its_rate() {
        let s = set();
        let n = (0..20_000)
            .filter(|i| s.sampled(&format!("BL{i:08}"), 100_000))
            .count();
        assert!((1_700..2_300).contains(&n), "{n} of 20000 at 10%");
        let other = RuleSet::parse("t", &SET.replace("000102", "ff0102")).unwrap();
        let same = (0..2_000)
            .filter(|i| {
                s.sampled(&format!("BL{i:08}"), 100_000)
                    == other.sampled(&format!("BL{i:08}"), 100_000)
            })
            .count();
        assert!(same < 2_000, "a different key samples differently");
    }

    #[test]
    fn invalid_rule_sets_are_rejected_whole() {
        for (from, to, key) in [
            (
                "target = \"hold\"\n[[rules]]\nname = \"identity\"",
                "target = \"release\"\n[[rules]]\nname = \"identity\"",
                "rules[1].target",
            ),
            (
                "name = \"identity\"",
                "name = \"suspended\"",
                "rules[2].name",
            ),
            (
                "rate_ppm = 100000",
                "rate_ppm = 2000000",
                "rules[7].rate_ppm",
            ),
            ("max_parcels = 3", "max_parcel = 3", "rules[6]"),
        ] {
            let e = RuleSet::parse("t", &SET.replacen(from, to, 1)).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let e = RuleSet::parse("t", "version = \"x\"\nrules = []\n").unwrap_err();
        assert!(e.reason.contains("instruction"), "{e}");
        let example = include_str!("../../deploy/rules.toml");
        assert!(RuleSet::parse("deploy/rules.toml", example).is_ok());
    }

    proptest! {
        /// Whatever the inputs and whichever rules the set has, a parcel reaches release only
        /// when it is declared, has a release instruction, is verified, of an enterprise not
        /// suspended, X-ray clear (on an X-ray line) and nothing else fired; and every decision
        /// names its version.
        #[test]
        fn nothing_is_released_without_declaration_and_release_instruction(
            declared in any::<bool>(),
            verified in any::<bool>(),
            action in prop_oneof![Just(None), Just(Some(Action::Release)), Just(Some(Action::Inspect)), Just(Some(Action::Hold))],
            suspended in any::<bool>(),
            xray in prop_oneof![
                Just(XrayInput::NotOnLine),
                Just(XrayInput::Pending),
                Just(XrayInput::Verdict(XrayResult::Clear)),
                Just(XrayInput::Verdict(XrayResult::Suspect)),
                Just(XrayInput::Verdict(XrayResult::OperatorMark)),
            ],
            keep in proptest::collection::vec(any::<bool>(), 8),
            weighing in any::<bool>(),
            weight in proptest::option::of(0u32..5000),
            measured in proptest::option::of(0u32..5000),
            history in 0u32..6,
            waybill in "[A-Z0-9]{6,20}",
        ) {
            // Any subset of the rules (the instruction rule is required at load), so the
            // guarantees cannot lean on the set having a rule for each case.
            let mut s = set();
            let mut k = keep.iter();
            s.rules.retain(|r| r.kind == RuleKind::Instruction || *k.next().unwrap_or(&true));
            let d = decl(verified, weight);
            let ins = action.map(instr);
            let h: Vec<_> = s.rules.iter().position(|r| r.name == "daily")
                .map(|daily| (daily, ConsumerWindow { parcels: history, value_minor: 0 }))
                .into_iter()
                .collect();
            let inp = Inputs {
                waybill: &waybill,
                declaration: declared.then_some(d),
                instruction: ins,
                suspension: suspended.then_some("suspended"),
                measured_weight_g: measured,
                weighing,
                xray,
                consumer: &h,
                transaction: None,
            };
            let e = evaluate(&s, &inp);
            prop_assert_eq!(&e.version, "test-1");
            prop_assert!(!e.fired.is_empty());
            if e.role == LaneRole::Release {
                prop_assert!(declared && action == Some(Action::Release));
                prop_assert!(verified && !suspended);
                prop_assert!(matches!(xray, XrayInput::NotOnLine | XrayInput::Verdict(XrayResult::Clear)));
                prop_assert!(e.fired.iter().all(|f| f.target == LaneRole::Release));
            }
            if !declared || !verified || suspended || action == Some(Action::Inspect) || action == Some(Action::Hold) {
                prop_assert_ne!(e.role, LaneRole::Release);
            }
            let weight_rule = s.rules.iter().any(|r| matches!(r.kind, RuleKind::WeightMismatch { .. }));
            if weight_rule && weighing && (weight.is_none() || measured.is_none()) {
                prop_assert_ne!(e.role, LaneRole::Release, "an unchecked weight is never released");
            }
        }
    }
}
