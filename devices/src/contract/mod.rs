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
//!
//! Layout:
//! - `wire`: schema version, message clock, topic names, the record chain hash, waybill syntax.
//! - `platform`: platform → edge messages and their validation.
//! - `parcel`: the parcel record and the decision inputs it carries.
//! - `record`: the [`Record`] envelope over every record kind, and its chaining.
//! - `imaging`: X-ray verdict, image, image chunk and camera snapshot records.
//! - `disposition`: the PLC's disposition record.
//! - `alert`: alert records.
//! - `report`: the monthly report record.
//! - `events`: edge → platform events and anomalies, outside the record chain.
//!
//! Everything is re-exported here: users name `contract::X`, never the submodule.

mod alert;
mod disposition;
mod events;
mod imaging;
mod parcel;
mod platform;
mod record;
mod report;
mod wire;

pub use alert::*;
pub use disposition::*;
pub use events::*;
pub use imaging::*;
pub use parcel::*;
pub use platform::*;
pub use record::*;
pub use report::*;
pub use wire::*;

#[cfg(test)]
mod tests;
