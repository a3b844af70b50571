//! What the platform sends the edge (`P/declarations`, `P/instructions`, `P/enterprises`,
//! `P/rules`) and how each payload is parsed and checked. Inbound messages are validated
//! whole here, before the daemon applies any of them, so a malformed message is refused in
//! one place and never half-applied.

use serde::{Deserialize, Serialize};

use super::wire::{is_valid_waybill, SCHEMA};

/// The most pieces one declared waybill may cover: a larger figure is refused as malformed
/// (a waybill for a thousand boxes is not a parcel shipment, and an unbounded figure would
/// switch the duplicate-label rule off).
pub const MAX_PIECES: u32 = 999;

/// What the e-commerce company declared for one waybill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    pub schema: u32,
    pub waybill: String,
    /// Customs code of the e-commerce enterprise.
    pub enterprise: String,
    /// Consumer identity as a keyed hash; never the raw identity.
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(default)]
    pub identity_verified: bool,
    /// Declared value in minor units of `currency` (fen for CNY).
    #[serde(default)]
    pub value_minor: Option<u64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub gross_weight_g: Option<u32>,
    #[serde(default)]
    pub items: Vec<DeclaredItem>,
    /// The e-commerce order the waybill belongs to, when one order ships as several waybills:
    /// a `transaction_limit` rule sums the declared values of every waybill of the same
    /// enterprise and order. Absent from the signed bytes when not given, so signatures made
    /// before the field existed still hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// How many physical parcels the waybill covers (1 to [`MAX_PIECES`]; absent means one):
    /// the duplicate-label rule admits as many released parcels with this waybill. Absent
    /// from the signed bytes when not given, as `order_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<u32>,
    /// The platform's signature (see [`crate::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::Signature>,
}

/// One line of a declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredItem {
    pub description: String,
    pub quantity: u32,
}

/// What customs orders for one waybill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Release,
    Inspect,
    Hold,
}

/// A customs order for one waybill. A later instruction for the same waybill replaces an
/// earlier one; the same `instruction_id` delivered twice is applied once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instruction {
    pub schema: u32,
    pub instruction_id: String,
    pub waybill: String,
    pub action: Action,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub issued_at_ms: Option<u64>,
    /// The platform's signature (see [`crate::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::Signature>,
}

/// What the platform orders for an e-commerce enterprise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnterpriseAction {
    /// Hold every parcel the enterprise declared, whatever its instruction.
    Suspend,
    /// End a suspension.
    Lift,
}

/// A suspension or a lift for one enterprise. The latest notice per enterprise is in force;
/// the same `notice_id` delivered twice is applied once; an older notice does not replace a
/// newer one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnterpriseNotice {
    pub schema: u32,
    pub notice_id: String,
    pub enterprise: String,
    pub action: EnterpriseAction,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub issued_at_ms: Option<u64>,
    /// The platform's signature (see [`crate::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::Signature>,
}

/// A customs rule set pushed by the platform: the TOML text of the rule file format (see
/// `deploy/rules.toml`), applied whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetUpdate {
    pub schema: u32,
    pub update_id: String,
    pub rules_toml: String,
    #[serde(default)]
    pub issued_at_ms: Option<u64>,
    /// The platform's signature (see [`crate::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::Signature>,
}

/// Longest rule set text accepted from the platform.
pub const MAX_RULES_LEN: usize = 256 * 1024;

/// Why an inbound platform message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("not valid JSON for this topic: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema {found} is not supported (this build reads schema {SCHEMA})")]
    Schema { found: u32 },
    #[error("field `{field}`: {reason}")]
    Field {
        field: &'static str,
        reason: &'static str,
    },
}

/// Longest instruction reason accepted.
pub const MAX_REASON_LEN: usize = 1000;

fn check_waybill(w: &str) -> Result<(), MessageError> {
    if !is_valid_waybill(w.as_bytes()) {
        return Err(MessageError::Field {
            field: "waybill",
            reason: "must be 1 to 64 characters of A-Z a-z 0-9 - _",
        });
    }
    Ok(())
}

impl Declaration {
    /// Parses and checks a declaration payload.
    pub fn parse(payload: &[u8]) -> Result<Declaration, MessageError> {
        let d: Declaration = decode(payload, |m: &Declaration| m.schema)?;
        check_waybill(&d.waybill)?;
        check_id("enterprise", &d.enterprise)?;
        if d.consumer
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 128)
        {
            return Err(MessageError::Field {
                field: "consumer",
                reason: "must be 1 to 128 characters when given",
            });
        }
        if d.currency
            .as_ref()
            .is_some_and(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(MessageError::Field {
                field: "currency",
                reason: "must be a three-letter ISO 4217 code such as CNY",
            });
        }
        if let Some(o) = &d.order_id {
            check_id("order_id", o)?;
        }
        if d.pieces.is_some_and(|n| !(1..=MAX_PIECES).contains(&n)) {
            return Err(MessageError::Field {
                field: "pieces",
                reason: "must be 1 to 999 when given",
            });
        }
        Ok(d)
    }
}

impl Instruction {
    /// Parses and checks an instruction payload.
    pub fn parse(payload: &[u8]) -> Result<Instruction, MessageError> {
        let i: Instruction = decode(payload, |m: &Instruction| m.schema)?;
        check_waybill(&i.waybill)?;
        check_id("instruction_id", &i.instruction_id)?;
        if i.reason.len() > MAX_REASON_LEN {
            return Err(MessageError::Field {
                field: "reason",
                reason: "must be at most 1000 bytes: it is copied into every record it decides",
            });
        }
        Ok(i)
    }
}

/// Parses a platform message of schema [`SCHEMA`]; `schema` reads the message's version.
fn decode<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    schema: impl Fn(&T) -> u32,
) -> Result<T, MessageError> {
    let m: T = serde_json::from_slice(payload)?;
    match schema(&m) {
        SCHEMA => Ok(m),
        found => Err(MessageError::Schema { found }),
    }
}

fn check_id(field: &'static str, id: &str) -> Result<(), MessageError> {
    if id.is_empty() || id.len() > 128 {
        return Err(MessageError::Field {
            field,
            reason: "must be 1 to 128 characters",
        });
    }
    Ok(())
}

impl EnterpriseNotice {
    /// Parses and checks an enterprise notice payload.
    pub fn parse(payload: &[u8]) -> Result<EnterpriseNotice, MessageError> {
        let n: EnterpriseNotice = decode(payload, |m: &EnterpriseNotice| m.schema)?;
        check_id("notice_id", &n.notice_id)?;
        check_id("enterprise", &n.enterprise)?;
        if n.reason.len() > MAX_REASON_LEN {
            return Err(MessageError::Field {
                field: "reason",
                reason: "must be at most 1000 bytes",
            });
        }
        Ok(n)
    }
}

impl RuleSetUpdate {
    /// Parses and checks the envelope of a rule set update; the rule set itself is validated
    /// by the daemon's rules engine.
    pub fn parse(payload: &[u8]) -> Result<RuleSetUpdate, MessageError> {
        let u: RuleSetUpdate = decode(payload, |m: &RuleSetUpdate| m.schema)?;
        check_id("update_id", &u.update_id)?;
        if u.rules_toml.len() > MAX_RULES_LEN {
            return Err(MessageError::Field {
                field: "rules_toml",
                reason: "must be at most 256 KiB",
            });
        }
        Ok(u)
    }
}
