//! The PLC disposition record: where a parcel physically went, as the sorter reported it.
//! It is the PLC's word, kept apart from the gateway's decision it is checked against.

use serde::{Deserialize, Serialize};

use super::LaneRole;

/// What the PLC reported it did with a parcel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispositionKind {
    /// Sorted to the commanded lane.
    Sorted,
    /// The commanded lane was full; the PLC sent it to its overflow lane.
    Overflow,
    /// No command reached the PLC in time; exception lane.
    NoDestination,
    /// The PLC lost track of it.
    Lost,
    /// The PLC had lost the controller's heartbeat; fail-safe lane.
    FailSafe,
}

impl DispositionKind {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            DispositionKind::Sorted => "sorted",
            DispositionKind::Overflow => "overflow",
            DispositionKind::NoDestination => "no_destination",
            DispositionKind::Lost => "lost",
            DispositionKind::FailSafe => "fail_safe",
        }
    }
}

/// A PLC disposition: where the parcel physically went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispositionRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    pub parcel: u32,
    pub waybill: Option<String>,
    pub disposition: DispositionKind,
    /// The lane the parcel went to (0 when lost).
    pub lane: u16,
    /// The role of that lane in the line's configuration.
    pub lane_role: Option<LaneRole>,
    /// The lane the gateway had commanded, if any.
    pub commanded_lane: Option<u16>,
    pub at_ms: u64,
}
