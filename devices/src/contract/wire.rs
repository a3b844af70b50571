//! The contract's common ground: the schema version, the clock every message is stamped
//! with, the topic names, the hash that chains records, waybill syntax and the wire name of an
//! enum value. Every message kind builds on these, so they live apart from any one of them.

use std::time::SystemTime;

use serde::Serialize;

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

/// The name a unit-like enum value has on the wire (`"operator_mark"`), for messages and
/// tables; empty for anything else.
pub fn wire_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

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
