//! One sorting line's pipeline: scan in, decision, divert job out; acknowledges and
//! dispositions back; records to the journal.
//!
//! The decision path is this task's handling of a scan: a lookup in the clearance table (one
//! shard's read lock while one entry is copied out, see [`crate::rules::clearance`]),
//! [`crate::rules::decide`], a look at the lane states, then a non-blocking
//! hand-off to the PLC task. It never waits on the network, the disk or a device. If the PLC
//! queue is full the parcel is recorded as `overload` at once; the PLC's own default sends it
//! to the exception lane.
//!
//! Lanes the PLC reports full or disabled are not chosen; a parcel falls back to a stricter
//! lane (release → hold, inspection → hold, hold → exception), never towards release.
//!
//! [`tracking`] follows each parcel to its disposition; new clearance information for a
//! tracked waybill re-decides it before its deadline, or raises an alert after it.
//!
//! [`Line`] is a state machine: each handler takes one input and the turn's time and
//! returns effects (records, divert commands with their write-ahead intent, anomalies,
//! snapshot requests; see [`effects`]). It reads no clock and holds no channel. [`run`] is
//! its I/O: it waits for the next input, reads the clocks once, calls the handler and carries
//! the effects out in order. The tests drive the machine directly, without sockets, over
//! arbitrary interleavings of scans, platform orders, lane states, PLC answers and time.
//!
//! Layout: [`task`] is the I/O around the machine ([`run`]); the machine's handlers are
//! split by what they handle: [`scan`] (a scan's decision, lane fallback and the
//! duplicate-label rule), [`redecide`] (clearance changes for parcels on the belt),
//! [`divert`] (the divert job and the PLC's answers), [`disposition`] (where the PLC says
//! parcels went), [`verdicts`] (the X-ray join, over the pure [`xray`]), [`deadlines`]
//! (what the tick expires), [`alerts`] (alerts and anomalies) and [`records`] (the
//! journal records they build).

mod alerts;
mod deadlines;
mod disposition;
mod divert;
pub mod duplicates;
mod earlier;
pub mod effects;
mod records;
mod redecide;
mod scan;
mod task;
pub mod tracking;
mod verdicts;
pub mod xray;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::LaneMap;
use crate::floor::LaneStates;
use crate::floor::Recent;
use crate::metrics::Metrics;
use crate::rules::ClearanceTable;
use tracking::{Geometry, Tracker};

pub use task::{run, LineIo};

/// What a line task needs besides its channels.
pub struct LineCtx {
    pub gateway: String,
    pub line: String,
    pub lanes: LaneMap,
    pub geometry: Geometry,
    pub table: Arc<ClearanceTable>,
    /// The rule set in force; replaced whole on a reload.
    pub rules: crate::policy::SharedRules,
    pub lane_states: Arc<LaneStates>,
    pub metrics: Arc<Metrics>,
    /// Whether the PLC reports dispositions (its profile has a status section).
    pub dispositions: bool,
    /// Whether the line's scanner station weighs parcels (its profile has a weight field).
    pub weighing: bool,
    /// The time zone consumers' days and windows are counted in.
    pub calendar: crate::rules::calendar::Calendar,
    /// Beats on every tick of the line's loop, for the service watchdog.
    pub beat: crate::service::Beat,
    /// The line's X-ray scanner (its name) and where its tunnel is.
    pub xray: Option<(String, crate::config::XrayGeometry)>,
    /// The line's cameras: requests leave with `try_send`, never waiting.
    pub cameras: Option<crate::camera::LineCameras>,
    /// What the journal holds of parcels an earlier run handled, by parcel id: the PLC's
    /// dispositions of those parcels are recorded with their waybill and lane, and one with
    /// no decision record at all raises `unexplained_disposition`.
    pub recent: HashMap<u32, Recent>,
    /// Waybills released on any line of the gateway (the duplicate-label rule).
    pub released: Arc<duplicates::Released>,
}

struct Line {
    ctx: LineCtx,
    /// Parcels no longer tracked: an earlier run's, and this run's once tracking ended.
    earlier: earlier::Earlier,
    next_parcel: u32,
    tracker: Tracker,
    /// X-ray verdicts and images joined to parcels.
    joiner: xray::Joiner,
    /// Jobs sent to the PLC and not yet answered.
    in_flight: usize,
    /// The line started before the store was read: what it holds of an earlier run's
    /// parcels comes later ([`Line::on_earlier`]); dispositions of parcels the line does not
    /// know wait for it in `deferred`.
    earlier_pending: bool,
    deferred: Vec<bondline_devices::plc::Disposition>,
}

impl Line {
    fn new(ctx: LineCtx, recent: HashMap<u32, Recent>, first_parcel: u32) -> Line {
        Line {
            earlier: earlier::Earlier::from_journal(recent),
            next_parcel: first_parcel,
            tracker: Tracker::default(),
            joiner: xray::Joiner::default(),
            in_flight: 0,
            earlier_pending: false,
            deferred: Vec::new(),
            ctx,
        }
    }
}

#[cfg(test)]
mod tests;
