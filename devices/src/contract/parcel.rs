//! The parcel record: what was read, the lane decided and why, what the PLC was told, and
//! everything the decision looked at (declaration, consumer windows, transactions, X-ray).
//! It is the core piece of evidence, so it and its parts are kept together, apart from the
//! other record kinds.

use serde::{Deserialize, Serialize};

use super::Action;

/// The role of a divert lane. Lane numbers are per line, in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneRole {
    Release,
    Inspection,
    Hold,
    Exception,
}

impl LaneRole {
    pub const ALL: [LaneRole; 4] = [
        LaneRole::Release,
        LaneRole::Inspection,
        LaneRole::Hold,
        LaneRole::Exception,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LaneRole::Release => "release",
            LaneRole::Inspection => "inspection",
            LaneRole::Hold => "hold",
            LaneRole::Exception => "exception",
        }
    }
}

/// Whether the scanner read a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadOutcome {
    Ok,
    NoRead,
}

/// What became of the divert command sent to the PLC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DivertStatus {
    /// The PLC echoed the command's sequence: it holds the lane for this parcel.
    Acked,
    /// No acknowledge within the timeout: either the PLC did not echo the sequence in time
    /// or it did not answer at all (`detail` says which). The PLC may still have taken the
    /// command late; the parcel's physical lane is then the PLC's to report.
    Timeout,
    /// The PLC answered with a Modbus exception.
    Refused,
    /// No link to the PLC. The PLC keeps the parcel's previous command if it had one, else
    /// its default (exception lane) applies.
    LinkDown,
    /// The PLC link's command queue was full (or closed) when the parcel was decided; no
    /// command was sent and the PLC's default (exception) applies.
    Overload,
    /// The divert deadline passed before the command could be sent; it was not sent, and the
    /// PLC's default (exception) applies. For a release, this includes a decision that was
    /// not yet durable in the journal by the deadline.
    DeadlineMissed,
    /// A release command was not sent because its decision could not be stored in the
    /// journal (commands to the release lane are written only after their decision is
    /// durable); the PLC's default (exception) applies.
    NotRecorded,
    /// The gateway stopped (crash, power loss) after this release decision was stored and
    /// before the PLC's answer was recorded: the command may or may not have reached the PLC.
    /// Written at the next start from the stored decision; the parcel's disposition, if the
    /// PLC reports one, says where it went.
    Interrupted,
}

impl DivertStatus {
    /// The status as the records name it.
    pub fn as_str(self) -> &'static str {
        match self {
            DivertStatus::Acked => "acked",
            DivertStatus::Timeout => "timeout",
            DivertStatus::Refused => "refused",
            DivertStatus::LinkDown => "link_down",
            DivertStatus::Overload => "overload",
            DivertStatus::DeadlineMissed => "deadline_missed",
            DivertStatus::NotRecorded => "not_recorded",
            DivertStatus::Interrupted => "interrupted",
        }
    }
}

/// The divert part of a parcel record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DivertOutcome {
    pub status: DivertStatus,
    /// The handshake sequence used, when a command was written.
    pub plc_seq: Option<u16>,
    /// Error text when the status is not `acked`.
    pub detail: Option<String>,
    pub at_ms: u64,
    /// The acknowledge came after the divert deadline: the parcel may have passed its gate.
    #[serde(default)]
    pub late: bool,
}

/// One scanned parcel: what was read, what was decided and why, what the PLC was told.
/// Records are evidence: they are chained by `prev_hash` (SHA-256, hex, of the previous
/// record's exact payload bytes) so the platform can detect a gap or an edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParcelRecord {
    pub schema: u32,
    /// Unique and stable across retries: `<gateway>-<seq>`. Deduplicate on it.
    pub msg_id: String,
    /// The gateway's journal sequence, strictly increasing, no gaps.
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    /// The line's tracking number for the physical parcel, also sent to the PLC.
    pub parcel: u32,
    pub read: ReadOutcome,
    pub waybill: Option<String>,
    pub lane: u16,
    pub lane_role: LaneRole,
    /// Which rule decided the lane.
    pub rule: String,
    pub reason: String,
    pub instruction_id: Option<String>,
    pub scanned_at_ms: u64,
    pub decided_at_ms: u64,
    pub divert: DivertOutcome,
    /// 0 for the first decision; 1, 2, ... when new clearance information (an instruction or
    /// a declaration) changed the lane before the deadline and the parcel was re-commanded.
    #[serde(default)]
    pub revision: u32,
    /// The latest moment (Unix ms) a divert command could reach the PLC for this parcel:
    /// scan time plus the belt's travel time to the gate, less the line's margin.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The version of the rule set that decided.
    #[serde(default)]
    pub rule_set: Option<String>,
    /// Every rule that fired, the deciding one first.
    #[serde(default)]
    pub rules_fired: Vec<FiredRule>,
    /// What the decision saw, so it can be explained and re-checked afterwards.
    #[serde(default)]
    pub inputs: Option<Box<DecisionInputs>>,
}

/// Everything a lane decision looked at, as it was at that moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionInputs {
    /// Whether a declaration was held for the waybill.
    pub declared: bool,
    #[serde(default)]
    pub enterprise: Option<String>,
    /// Whether the declaring enterprise was suspended.
    #[serde(default)]
    pub enterprise_suspended: bool,
    /// The consumer's keyed hash, as declared.
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(default)]
    pub identity_verified: Option<bool>,
    #[serde(default)]
    pub value_minor: Option<u64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub declared_weight_g: Option<u32>,
    /// The line scale's reading, if the scanner station weighs.
    #[serde(default)]
    pub measured_weight_g: Option<u32>,
    /// The platform instruction held for the waybill.
    #[serde(default)]
    pub instruction: Option<Action>,
    /// The consumer's history before this parcel, per consumer-limit rule.
    #[serde(default)]
    pub consumer_windows: Vec<ConsumerWindowSeen>,
    /// Whether this parcel was added to its consumer's history by this decision (its first
    /// scan); a re-scan or a re-decision does not count again.
    #[serde(default)]
    pub counted: bool,
    /// The local day number (days since 1970-01-01 in the configured time zone) the parcel
    /// was counted on, when `counted`: the journal keeps the consumer's history by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_day: Option<u32>,
    /// The X-ray verdict joined to the parcel; absent on a line without an X-ray scanner.
    #[serde(default)]
    pub xray: Option<XraySeen>,
    /// The transaction's figures, per `transaction_limit` rule; absent (not written) when the
    /// rule set has none, so records written before the rule existed keep their bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transactions: Vec<TransactionSeen>,
    /// The pieces the declaration says the waybill covers, when it says more than one: the
    /// duplicate-label rule admits as many released parcels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<u32>,
}

/// What a `transaction_limit` rule saw: the declared value of the parcel's transaction (every
/// waybill of its order, or the waybill alone without an order id), so an officer can check
/// the arithmetic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionSeen {
    /// The rule's name.
    pub rule: String,
    /// The declaration's order id; `None` when the waybill is the transaction alone.
    #[serde(default)]
    pub order_id: Option<String>,
    /// Waybills of the transaction declared so far, this one included.
    pub parcels: u32,
    /// Declared value of the transaction's other waybills (before this parcel).
    pub value_minor: u64,
    /// Declared value of the whole transaction, this parcel included.
    pub value_minor_after: u64,
    /// The currency every waybill of the transaction is declared in; `None` when one has no
    /// currency or they differ.
    #[serde(default)]
    pub currency: Option<String>,
    /// The rule's limit, in minor units of its currency.
    pub max_value_minor: u64,
    /// Waybills of the transaction declared without a value (which the rule cannot check).
    #[serde(default)]
    pub without_value: u32,
}

/// The X-ray verdict a decision saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XraySeen {
    /// No verdict joined to the parcel yet.
    Pending,
    Clear,
    Suspect,
    OperatorMark,
}

impl From<crate::xray::XrayResult> for XraySeen {
    fn from(r: crate::xray::XrayResult) -> XraySeen {
        match r {
            crate::xray::XrayResult::Clear => XraySeen::Clear,
            crate::xray::XrayResult::Suspect => XraySeen::Suspect,
            crate::xray::XrayResult::OperatorMark => XraySeen::OperatorMark,
        }
    }
}

/// A consumer's parcels and declared value in one limit rule's window, before this parcel,
/// with what an officer needs to check the arithmetic: which window, its bounds, the figures
/// after this parcel and the limit. Fields after `value_minor` are absent from records
/// written before calendar windows existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerWindowSeen {
    pub rule: String,
    /// Days in the window (for a calendar window, the days of that day, month or year).
    pub window_days: u32,
    pub parcels: u32,
    pub value_minor: u64,
    /// `calendar_day`, `calendar_month`, `calendar_year` or `rolling_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The time zone the window's days are counted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The window's first instant, in local time (RFC 3339 with offset) and Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_local: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// The instant the window ends (exclusive), in local time and Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_local: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// The figures with this parcel counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parcels_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_minor_after: Option<u64>,
    /// The rule's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parcels: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_minor: Option<u64>,
}

/// A rule that fired for a parcel, with its target and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiredRule {
    pub rule: String,
    pub target: LaneRole,
    pub reason: String,
}
