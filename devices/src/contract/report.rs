//! The monthly movement report record and its totals (by lane role, enterprise and lane),
//! stored and delivered like evidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::LaneRole;

/// A month's movement totals, sent as a record so it is stored and delivered like evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    /// Empty: a report covers every line of the gateway.
    pub line: String,
    /// Always null; present so every record kind has the same leading fields.
    pub waybill: Option<String>,
    pub report: MonthlyReport,
    pub at_ms: u64,
}

/// Parcels scanned in one calendar month (UTC), by their final decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthlyReport {
    /// `YYYY-MM`.
    pub month: String,
    /// The month as Unix ms, `[from_ms, to_ms)`, by scan time.
    pub from_ms: u64,
    pub to_ms: u64,
    /// False when records of the month may be missing: the journal had already removed older
    /// records (retention or a short disk) and the oldest one kept is after the month began.
    pub complete: bool,
    /// Scan (or event) time of the oldest record the journal still held.
    pub oldest_record_ms: Option<u64>,
    pub total: Totals,
    /// By declaring enterprise; `(undeclared)` and `(no read)` for parcels without one.
    pub by_enterprise: BTreeMap<String, Totals>,
    /// By line and lane number.
    pub by_lane: Vec<LaneTotals>,
}

/// Parcel counts by final lane role, and the declared value of all of them by currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub scanned: u64,
    pub released: u64,
    pub inspected: u64,
    pub held: u64,
    pub exception: u64,
    pub declared_value_minor: BTreeMap<String, u64>,
}

/// Parcels decided to one lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneTotals {
    pub line: String,
    pub lane: u16,
    pub lane_role: LaneRole,
    pub parcels: u64,
    pub declared_value_minor: BTreeMap<String, u64>,
}
