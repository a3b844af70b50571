//! Evaluating a rule set on one parcel: every rule whose condition holds fires, the
//! highest-priority one that does not release decides, a release stands only alone and for
//! a declared parcel, and the engine's own guards stop a release whatever the set holds.
//! Pure: the same inputs give the same lane.

use bondline_devices::contract::{Action, LaneRole};

use super::conditions::{consumer_limit, transaction_limit, weight_mismatch};
use super::{Inputs, RuleKind, RuleSet, XrayInput};
use crate::rules::calendar::Window;

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
