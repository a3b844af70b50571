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
//!
//! Layout: [`ruleset`] is the rule set's model and its parsing and validation, [`inputs`]
//! what a decision looks at, [`evaluation`] the evaluation and its guards, and [`conditions`]
//! the rule kinds that weigh figures.

mod conditions;
mod evaluation;
mod inputs;
mod ruleset;

pub use evaluation::{
    evaluate, Evaluation, Fired, AWAITING_RELEASE, AWAITING_XRAY, ENTERPRISE_SUSPENDED,
    IDENTITY_UNVERIFIED, XRAY_FLAGGED,
};
pub use inputs::{ConsumerWindow, Declared, Inputs, Ordered, XrayInput};
pub use ruleset::{CalendarWindow, Rule, RuleKind, RuleSet, RuleSetError, BUILTIN};

#[cfg(test)]
pub(crate) mod tests;
