//! What the edge tells the platform at once, outside the chained records: [`EdgeEvent`]s on
//! `P/events` (rejections, alarms, state requests) and [`Anomaly`] notices on `P/anomalies`.
//! Neither is evidence (the records are), so they are apart from the record kinds.

use serde::{Deserialize, Serialize};

use super::{DecisionInputs, FiredRule, LaneRole};

/// An edge-to-platform notice: a rejected inbound message or an alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeEvent {
    pub schema: u32,
    pub gateway: String,
    pub kind: EventKind,
    pub at_ms: u64,
    pub detail: String,
    /// The topic of the message the event is about, if any.
    #[serde(default)]
    pub topic: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RejectedMessage,
    Alarm,
    /// A platform rule set was applied (`detail` names its version).
    RuleSetApplied,
    /// A message on a platform topic that is not from the platform: unsigned, mis-signed,
    /// expired or replayed. It was not applied.
    ForgedMessage,
    /// A platform message validly signed for other gateways (its signature target names
    /// neither this gateway nor its warehouse): a replay from elsewhere. It was not applied.
    WrongTarget,
    /// The gateway lost its persistent broker session and asks the platform to send the
    /// current state again (declarations, instructions, notices, rule set).
    StateRequest,
}

/// Sent on `P/anomalies` as soon as a rule other than a platform instruction sends a parcel
/// to inspection or hold: the evidence customs needs to act promptly. The parcel's record in
/// `P/records` carries the same facts durably; an anomaly may be sent more than once (dedupe
/// on `anomaly_id`) and, after a long broker outage, may be missing: the record is the proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    pub schema: u32,
    /// `<gateway>-<line>-<parcel>-<revision>`.
    pub anomaly_id: String,
    pub gateway: String,
    pub line: String,
    pub parcel: u32,
    pub waybill: Option<String>,
    pub lane: u16,
    pub lane_role: LaneRole,
    pub rule_set: String,
    pub rules_fired: Vec<FiredRule>,
    pub inputs: DecisionInputs,
    pub scanned_at_ms: u64,
    pub at_ms: u64,
}
