//! JSON messages between bondline and the customs clearance platform (schema version 1).
//!
//! Topics hang under a per-gateway prefix `P` (config `uplink.topic_prefix`):
//! - `P/declarations` (platform → edge): [`Declaration`]
//! - `P/instructions` (platform → edge): [`Instruction`]
//! - `P/enterprises` (platform → edge): [`EnterpriseNotice`], suspensions and lifts
//! - `P/rules` (platform → edge): [`RuleSetUpdate`], a new customs rule set
//! - `P/records` (edge → platform): [`Record`] (a parcel decision, a PLC disposition or an
//!   alert), QoS 1, at least once, dedupe on `msg_id`
//! - `P/anomalies` (edge → platform): [`Anomaly`], sent at once when a rule flags a parcel
//! - `P/events` (edge → platform): [`EdgeEvent`], rejections and alarms
//!
//! Every message carries `schema`; a message with another schema or an unknown field is
//! rejected whole, never half-applied. The full contract is in `docs/mqtt.md`.

use std::collections::BTreeMap;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the time of every record and message of the contract
/// (a clock before 1970 reads 0).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The schema version this build reads and writes.
pub const SCHEMA: u32 = 1;

/// The `prev_hash` of a journal's first record (`seq` 1): 32 zero bytes, 64 zeros in hex.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The hash that chains records: SHA-256 of a record's exact payload bytes, as the gateway
/// stores and sends them. The next record's `prev_hash` is its lowercase hex. Computed over the
/// bytes as received, never over a re-serialization of the parsed JSON. The gateway's journal
/// and the platform simulator's chain verifier both use this function.
pub fn chain_hash(payload: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(payload).into()
}

/// Topic suffixes under the gateway prefix.
pub mod topic {
    pub const DECLARATIONS: &str = "declarations";
    pub const INSTRUCTIONS: &str = "instructions";
    pub const ENTERPRISES: &str = "enterprises";
    pub const RULES: &str = "rules";
    pub const ANOMALIES: &str = "anomalies";
    pub const RECORDS: &str = "records";
    pub const EVENTS: &str = "events";
}

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

/// The name a unit-like enum value has on the wire (`"operator_mark"`), for messages and
/// tables; empty for anything else.
pub fn wire_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Any record of the journal, as sent on `P/records`: the `kind` field tells which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Parcel(ParcelRecord),
    Disposition(DispositionRecord),
    Alert(AlertRecord),
    Report(ReportRecord),
    Xray(XrayRecord),
    Image(ImageRecord),
    ImageChunk(ImageChunkRecord),
    Snapshot(SnapshotRecord),
}

impl From<ParcelRecord> for Record {
    fn from(r: ParcelRecord) -> Record {
        Record::Parcel(r)
    }
}

impl From<DispositionRecord> for Record {
    fn from(r: DispositionRecord) -> Record {
        Record::Disposition(r)
    }
}

impl From<AlertRecord> for Record {
    fn from(r: AlertRecord) -> Record {
        Record::Alert(r)
    }
}

impl From<ReportRecord> for Record {
    fn from(r: ReportRecord) -> Record {
        Record::Report(r)
    }
}

impl From<XrayRecord> for Record {
    fn from(r: XrayRecord) -> Record {
        Record::Xray(r)
    }
}

impl From<ImageRecord> for Record {
    fn from(r: ImageRecord) -> Record {
        Record::Image(r)
    }
}

impl From<ImageChunkRecord> for Record {
    fn from(r: ImageChunkRecord) -> Record {
        Record::ImageChunk(r)
    }
}

impl From<SnapshotRecord> for Record {
    fn from(r: SnapshotRecord) -> Record {
        Record::Snapshot(r)
    }
}

/// Applies the same expression to whichever record kind `$record` holds.
macro_rules! each_kind {
    ($record:expr, $r:ident => $e:expr) => {
        match $record {
            Record::Parcel($r) => $e,
            Record::Disposition($r) => $e,
            Record::Alert($r) => $e,
            Record::Report($r) => $e,
            Record::Xray($r) => $e,
            Record::Image($r) => $e,
            Record::ImageChunk($r) => $e,
            Record::Snapshot($r) => $e,
        }
    };
}

impl Record {
    pub fn seq(&self) -> u64 {
        each_kind!(self, r => r.seq)
    }

    pub fn msg_id(&self) -> &str {
        each_kind!(self, r => &r.msg_id)
    }

    pub fn prev_hash(&self) -> &str {
        each_kind!(self, r => &r.prev_hash)
    }

    pub fn gateway(&self) -> &str {
        each_kind!(self, r => &r.gateway)
    }

    pub fn line(&self) -> &str {
        each_kind!(self, r => &r.line)
    }

    pub fn waybill(&self) -> Option<&str> {
        each_kind!(self, r => r.waybill.as_deref())
    }

    pub fn schema(&self) -> u32 {
        each_kind!(self, r => r.schema)
    }

    /// When it happened (Unix ms): the scan for a parcel record.
    pub fn at_ms(&self) -> u64 {
        match self {
            Record::Parcel(r) => r.scanned_at_ms,
            Record::Disposition(r) => r.at_ms,
            Record::Alert(r) => r.at_ms,
            Record::Report(r) => r.at_ms,
            Record::Xray(r) => r.at_ms,
            Record::Image(r) => r.at_ms,
            Record::ImageChunk(r) => r.at_ms,
            Record::Snapshot(r) => r.at_ms,
        }
    }

    /// Sets what the journal fills in: sequence, message id and chain link.
    pub fn stamp(&mut self, seq: u64, prev_hash: String) {
        let msg_id = format!("{}-{}", self.gateway(), seq);
        each_kind!(self, r => {
            r.seq = seq;
            r.msg_id = msg_id;
            r.prev_hash = prev_hash;
        })
    }

    /// Makes this record the `seq`-th of a chain whose previous record hashes to `prev`: stamps
    /// it ([`Record::stamp`]) and returns its payload, the compact JSON the gateway stores and
    /// sends byte for byte, with the payload's [`chain_hash`]. The journal writer chains every
    /// record with it.
    pub fn chain_after(&mut self, seq: u64, prev: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
        self.stamp(seq, hex::encode(prev));
        let payload = serde_json::to_vec(&*self).expect("records always serialize");
        let hash = chain_hash(&payload);
        (payload, hash)
    }

    pub fn as_parcel(&self) -> Option<&ParcelRecord> {
        match self {
            Record::Parcel(r) => Some(r),
            _ => None,
        }
    }
}

/// How an X-ray verdict and a tracked parcel were joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XrayJoin {
    /// The verdict belongs to this parcel.
    Matched,
    /// No tracked parcel was in the tunnel at the verdict's time: an item the scanner saw
    /// that the barcode scanner did not (or a clock out of step). Customs should look.
    NoParcel,
    /// The parcel reached its divert deadline without a verdict: the rules failed closed.
    NoResult,
    /// Two waiting parcels were about as close to the verdict's time: it was given to neither,
    /// and they go to inspection unless verdicts of their own come.
    Ambiguous,
    /// A later verdict for a scan already joined (an officer's mark), joined the same way.
    Update,
}

/// An X-ray verdict and what it was joined to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XrayRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    /// The X-ray device's name in the configuration.
    pub device: String,
    /// The scanner's number for the passage; none for `no_result`.
    pub scan_id: Option<u32>,
    pub parcel: Option<u32>,
    pub waybill: Option<String>,
    pub result: Option<crate::xray::XrayResult>,
    pub material: Option<crate::xray::Material>,
    /// When the parcel entered the tunnel, by the scanner's clock.
    pub entered_at_ms: Option<u64>,
    pub join: XrayJoin,
    /// When the gateway read the verdict (or gave up waiting for one).
    pub at_ms: u64,
}

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// The X-ray workstation's spool directory.
    Spool,
    /// The HTTP upload endpoint.
    Upload,
}

/// One view of an X-ray scan: its hash, a thumbnail, and how the original travels.
///
/// The original follows as `chunks` [`ImageChunkRecord`]s with the same `sha256`, each
/// carrying up to `IMAGE_CHUNK_BYTES` of it, through the same store-and-forward path as every
/// record; the platform joins them and checks the hash. An original larger than the
/// configured cap is not forwarded (`chunks` is 0) and stays on the gateway at `kept_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    pub device: String,
    pub scan_id: u32,
    /// The view's name from the file name (`top`, `side`, ...).
    pub view: String,
    /// The parcel the scan was joined to, once it was.
    pub parcel: Option<u32>,
    pub waybill: Option<String>,
    pub source: ImageSource,
    pub file_name: String,
    /// SHA-256 of the original bytes, hex.
    pub sha256: String,
    pub bytes: u64,
    /// `jpeg` or `png`, when it decoded.
    pub format: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A small JPEG for the staff view, base64.
    pub thumbnail_jpeg_b64: Option<String>,
    /// Why the image could not be decoded; the original is kept and forwarded all the same.
    pub error: Option<String>,
    pub chunks: u32,
    /// Where the original is kept on the gateway.
    pub kept_at: Option<String>,
    pub at_ms: u64,
}

/// Largest piece of an original image in one [`ImageChunkRecord`] (before base64).
pub const IMAGE_CHUNK_BYTES: usize = 96 * 1024;

/// One piece of an original image; see [`ImageRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageChunkRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    /// Always empty: chunks are found by their image's hash.
    pub waybill: Option<String>,
    pub sha256: String,
    /// 0-based.
    pub index: u32,
    pub count: u32,
    /// Base64 of the piece.
    pub data_b64: String,
    pub at_ms: u64,
}

/// Where along the line a camera looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraPoint {
    /// Just past the barcode scanner: every scanned parcel is photographed.
    Scan,
    /// Over a divert lane: parcels diverted to that lane are photographed there.
    Lane,
}

/// A camera snapshot of one parcel, or why there is none.
///
/// Like an [`ImageRecord`], the JPEG original follows as `chunks` [`ImageChunkRecord`]s with
/// the same `sha256` through the store-and-forward path. A snapshot that could not be taken
/// (camera down, too slow, not an image, capture queue full) is a record all the same, with
/// `error` = `"no evidence: <reason>"` and no hash: the parcel's file then says why it has no
/// picture instead of silently lacking one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    /// The camera's name in the configuration.
    pub camera: String,
    pub point: CameraPoint,
    /// The lane watched, for a lane camera.
    pub lane: Option<u16>,
    pub parcel: u32,
    pub waybill: Option<String>,
    /// When the parcel was due in the camera's field (Unix ms): scan time plus the offset.
    pub due_at_ms: u64,
    /// When the snapshot's bytes arrived; none when none did.
    pub taken_at_ms: Option<u64>,
    /// SHA-256 of the JPEG, hex; none without a picture.
    pub sha256: Option<String>,
    pub bytes: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A small JPEG for the staff view, base64.
    pub thumbnail_jpeg_b64: Option<String>,
    pub chunks: u32,
    /// Where the original is kept on the gateway.
    pub kept_at: Option<String>,
    /// `no evidence: <reason>` when there is no usable picture.
    pub error: Option<String>,
    pub at_ms: u64,
}

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

/// Something customs must know about a parcel or a line, beyond its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An instruction changed a parcel's lane after its divert deadline: it went where it went.
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

/// Longest waybill number accepted anywhere (scanner profiles cannot allow more).
pub const WAYBILL_MAX_LEN: usize = 64;

/// Whether `w` can be a waybill number: 1 to [`WAYBILL_MAX_LEN`] bytes of `A-Z a-z 0-9 - _`.
/// The scanner framing and the platform messages share this rule, so every declared waybill
/// can be scanned and every scanned one declared.
pub fn is_valid_waybill(w: &[u8]) -> bool {
    !w.is_empty()
        && w.len() <= WAYBILL_MAX_LEN
        && w.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_parses_and_rejects() {
        let ok = br#"{"schema":1,"instruction_id":"i-1","waybill":"BL1","action":"release"}"#;
        assert_eq!(Instruction::parse(ok).unwrap().action, Action::Release);
        let wrong_schema =
            br#"{"schema":2,"instruction_id":"i-1","waybill":"BL1","action":"hold"}"#;
        assert!(matches!(
            Instruction::parse(wrong_schema),
            Err(MessageError::Schema { found: 2 })
        ));
        let unknown = br#"{"schema":1,"instruction_id":"i","waybill":"BL1","action":"fly"}"#;
        assert!(Instruction::parse(unknown).is_err());
        assert!(Instruction::parse(b"\xff\xfe garbage").is_err());
        let extra = br#"{"schema":1,"instruction_id":"i","waybill":"BL1","action":"hold","x":1}"#;
        assert!(Instruction::parse(extra).is_err());
    }

    #[test]
    fn records_carry_their_kind_and_reject_unknown_fields() {
        let alert = Record::Alert(AlertRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            parcel: Some(7),
            waybill: None,
            alert: AlertKind::LateInstruction,
            detail: "x".into(),
            at_ms: 1,
        });
        let mut stamped = alert.clone();
        stamped.stamp(5, "ab".into());
        assert_eq!((stamped.seq(), stamped.msg_id()), (5, "gw-5"));
        let json = serde_json::to_string(&stamped).unwrap();
        assert!(json.starts_with("{\"kind\":\"alert\""), "{json}");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), stamped);
        let extra = json.replacen("\"detail\"", "\"bogus\":1,\"detail\"", 1);
        assert!(serde_json::from_str::<Record>(&extra).is_err());
    }

    #[test]
    fn chained_records_carry_the_hash_of_their_predecessor_s_payload() {
        assert_eq!(
            hex::encode(chain_hash(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let alert = |parcel| {
            Record::Alert(AlertRecord {
                schema: SCHEMA,
                msg_id: String::new(),
                seq: 0,
                prev_hash: String::new(),
                gateway: "gw".into(),
                line: "L1".into(),
                parcel: Some(parcel),
                waybill: None,
                alert: AlertKind::NoDisposition,
                detail: "x".into(),
                at_ms: 1,
            })
        };
        let (mut first, mut second) = (alert(1), alert(2));
        let (p1, h1) = first.chain_after(1, &GENESIS_HASH);
        let (p2, h2) = second.chain_after(2, &h1);
        assert_eq!(p1, serde_json::to_vec(&first).unwrap());
        assert_eq!((h1, h2), (chain_hash(&p1), chain_hash(&p2)));
        assert_eq!(first.prev_hash(), "0".repeat(64));
        assert_eq!(second.prev_hash(), hex::encode(h1));
        assert_eq!((second.seq(), second.msg_id()), (2, "gw-2"));
    }

    #[test]
    fn declaration_needs_enterprise_and_waybill() {
        let ok = br#"{"schema":1,"waybill":"BL1","enterprise":"E1"}"#;
        assert!(Declaration::parse(ok).is_ok());
        let bad = br#"{"schema":1,"waybill":"","enterprise":"E1"}"#;
        assert!(Declaration::parse(bad).is_err());
    }
}
