//! Alert records: what customs must know about a parcel or a line beyond its decision (late
//! diverts, wrong lanes, forged messages, a broken journal chain, ...). The kinds are many and
//! each is documented, so they have a file of their own.

use serde::{Deserialize, Serialize};

/// Something customs must know about a parcel or a line, beyond its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An instruction changed a parcel's lane after its divert deadline: it went where it went.
    /// Also: a change before the deadline took back a release command the PLC had taken, and
    /// its own command was not taken, so the parcel may reach the release lane.
    LateInstruction,
    /// The PLC acknowledged a divert after the parcel's deadline.
    LateDivert,
    /// The PLC reports a lane other than the one commanded (besides overflow/fail-safe).
    WrongLane,
    /// The parcel reached the release lane without a release decision. Must never happen.
    ReleasedWithoutDecision,
    /// No disposition arrived for a tracked parcel in time.
    NoDisposition,
    /// The PLC's disposition ring overran: some dispositions were never read.
    DispositionsMissed,
    /// An X-ray verdict flagged a parcel after its divert deadline: it went where it went,
    /// and customs must fetch it.
    LateXrayMark,
    /// An X-ray verdict that no tracked parcel matched flagged an item.
    XrayWithoutParcel,
    /// The X-ray scanner's ring overran or held entries that would not decode.
    XrayEventsLost,
    /// A message on a platform topic was not from the platform (unsigned, mis-signed,
    /// expired or replayed) and was not applied. `line` is empty: it concerns the gateway.
    ForgedMessage,
    /// A message on a platform topic could not be used (malformed, unknown, refused rule
    /// set) and was not applied. `line` is empty.
    RejectedMessage,
    /// The broker session was lost (reconnected without the persistent session) or looks
    /// taken over (the broker cut the gateway repeatedly). `line` is empty.
    BrokerSession,
    /// The PLC took a divert command after the gateway had given up waiting for its
    /// acknowledge (the parcel's record says `timeout` or `link_down`): the parcel may go to
    /// that command's lane. `detail` names the sequence, the lane and its role.
    LateAcknowledge,
    /// The PLC was found restarted while commands were in doubt: it can no longer take them,
    /// so their parcels get the PLC's default.
    CommandsDropped,
    /// The PLC reported a parcel for which the gateway has no decision record (a command
    /// written just before a crash, a parcel of a PLC sorting on its own, a ring entry from
    /// long ago). `detail` names the lane and its role, and says so when it is the release
    /// lane.
    UnexplainedDisposition,
    /// At start, a release decision was found stored without the record of its divert
    /// outcome: the gateway stopped in between. Its parcel record follows with status
    /// `interrupted`.
    DivertInterrupted,
    /// The gateway's journal was damaged and salvaged (`bondline journal salvage`): the first
    /// record written after it. `detail` names the old chain's last good record (`seq` and
    /// hash), the old head if it was readable, and how many records were kept and lost.
    /// `line` is empty: it concerns the gateway.
    JournalSalvaged,
    /// A second parcel was scanned with a waybill already commanded to (or put in) the
    /// release lane, and the floor did not show it to be the same parcel come round again
    /// (see README, "Duplicate labels"). The parcel goes to inspection. `parcel` is the new
    /// parcel; `detail` gives the evidence of both: parcel ids, lines, scan times, weights,
    /// lanes, the PLC's disposition of the earlier one and camera snapshot ids.
    DuplicateLabel,
    /// At start, stored platform state (a declaration, instruction, enterprise notice or the
    /// platform rule set) failed its integrity check and was left out, fail closed (a refused
    /// instruction counts as a hold, a refused notice as a suspension). `waybill` names the
    /// waybill when there is one; `detail` names what was refused and why. `line` is empty.
    StoredStateRefused,
    /// The journal's record chain failed its check at start (head or anchor tag, or a break
    /// found by the walk of the whole chain): records may have been edited on disk. `detail`
    /// names the problems. `line` is empty.
    JournalChainBroken,
}

/// An alert record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    pub parcel: Option<u32>,
    pub waybill: Option<String>,
    pub alert: AlertKind,
    pub detail: String,
    pub at_ms: u64,
}

impl AlertRecord {
    /// An alert of `gateway` (and `line`, empty for the gateway as a whole) not yet in the
    /// journal: the journal fills in `seq`, `msg_id` and `prev_hash` when it stores it.
    /// [`AlertRecord::about`] names the parcel and waybill.
    pub fn new(
        gateway: &str,
        line: &str,
        alert: AlertKind,
        detail: impl Into<String>,
        at_ms: u64,
    ) -> AlertRecord {
        AlertRecord {
            schema: super::SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: gateway.to_string(),
            line: line.to_string(),
            parcel: None,
            waybill: None,
            alert,
            detail: detail.into(),
            at_ms,
        }
    }

    /// The same alert, about this parcel and waybill.
    pub fn about(mut self, parcel: Option<u32>, waybill: Option<String>) -> AlertRecord {
        self.parcel = parcel;
        self.waybill = waybill;
        self
    }
}
