//! The messages the floor's tasks pass each other: scans from the scanner readers, divert
//! jobs to the PLC links and their answers, the lane states the PLC reports, X-ray verdicts,
//! and the clearance changes the uplink announces. They live here, below every task, so that
//! `fieldbus`, `line` and `uplink` all import this module and none imports another for its
//! types (docs/architecture.md, "Modules by layer").

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use bondline_devices::contract::DivertOutcome;
use bondline_devices::plc::{Disposition, LANE_DISABLED, LANE_FULL, LANE_REGISTERS};
use bondline_devices::xray::XrayEvent;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What the scanner reported for one parcel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanRead {
    Waybill(String),
    NoRead,
}

/// One parcel seen by the scanner.
#[derive(Debug, Clone)]
pub struct ScanEvent {
    pub read: ScanRead,
    /// The scale's reading, from a scanner station that weighs (its profile has a weight field).
    pub weight_g: Option<u32>,
    /// Wall clock at the frame's arrival, for records.
    pub at: SystemTime,
    /// Monotonic clock at the frame's arrival, for latency.
    pub instant: std::time::Instant,
}

/// What a written command was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub parcel: u32,
    pub lane: u16,
    /// The line's decision revision; `None` for a command an earlier run of the gateway
    /// wrote (read back from the PLC's divert block at connect).
    pub revision: Option<u32>,
}

/// A command written to the PLC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub seq: u16,
    pub command: Command,
    /// When it was written (for an earlier run's command: when this run first saw it).
    pub at_ms: u64,
}

/// A decided parcel on its way to the PLC.
#[derive(Debug)]
pub struct DivertJob {
    pub parcel: u32,
    pub lane: u16,
    pub revision: u32,
    /// The latest moment the command may reach the PLC.
    pub deadline: Instant,
    /// An earlier revision of the parcel was a release command: this one takes it back, and
    /// is written even past the deadline. The PLC replaces a parcel's command as long as the
    /// parcel has not reached its gate (and ignores it after), so late it may still keep the
    /// parcel out of the release lane; not written, the release would stand.
    pub withdraws_release: bool,
    /// For a command to the release lane: resolves `true` once the parcel's decision is
    /// durable in the journal, `false` (or dropped) if it could not be stored. The command is
    /// not written before.
    pub durable: Option<oneshot::Receiver<bool>>,
}

/// What the PLC link reports to its line.
#[derive(Debug, Clone)]
pub enum PlcEvent {
    /// What became of a divert job.
    Outcome {
        parcel: u32,
        revision: u32,
        /// The lane the job commanded.
        lane: u16,
        outcome: DivertOutcome,
        /// When the outcome was known (the acknowledge, for acked jobs).
        at: Instant,
    },
    /// The PLC reported where a parcel went.
    Disposition(Disposition),
    /// The PLC's ring overran before it was read: this many dispositions are lost.
    DispositionsMissed(u16),
    /// The PLC took a command after its job had ended without the acknowledge (`timeout`, a
    /// failed link): the parcel may go to that command's lane.
    LateAck { written: Written, after: Duration },
    /// The PLC was found restarted with these commands in doubt: it can no longer take them.
    CommandsDropped(Vec<Written>),
}

/// Lane states read from the PLC (bit 0 full, bit 1 disabled), shared with the line's
/// decision path, which reads them without waiting.
#[derive(Debug, Default)]
pub struct LaneStates {
    lanes: [AtomicU16; LANE_REGISTERS as usize],
}

impl LaneStates {
    /// Whether `lane` may take parcels now (unknown lanes count as available).
    pub fn available(&self, lane: u16) -> bool {
        match lane.checked_sub(1).and_then(|i| self.lanes.get(i as usize)) {
            Some(s) => s.load(Ordering::Relaxed) & (LANE_FULL | LANE_DISABLED) == 0,
            None => true,
        }
    }

    /// Why `lane` is unavailable, for records.
    pub fn describe(&self, lane: u16) -> &'static str {
        let s = lane
            .checked_sub(1)
            .and_then(|i| self.lanes.get(i as usize))
            .map_or(0, |s| s.load(Ordering::Relaxed));
        if s & LANE_DISABLED != 0 {
            "disabled"
        } else if s & LANE_FULL != 0 {
            "full"
        } else {
            "available"
        }
    }

    pub fn set(&self, lane: u16, state: u16) {
        if let Some(s) = lane.checked_sub(1).and_then(|i| self.lanes.get(i as usize)) {
            s.store(state, Ordering::Relaxed);
        }
    }
}

/// What an X-ray scanner's task tells its line.
#[derive(Debug, Clone)]
pub enum XrayMsg {
    /// A new verdict from the ring.
    Verdict { device: String, event: XrayEvent },
    /// Verdicts that could not be read: overwritten in the ring, or garbage.
    Lost { device: String, detail: String },
}

/// New clearance information, from the uplink to every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearanceChange {
    /// A declaration or instruction for this waybill: its tracked parcels are decided again
    /// before their deadline; past it, a changed lane raises a `late_instruction` alert.
    Waybill(String),
    /// An enterprise notice or a new rule set: every tracked parcel before its deadline is
    /// decided again. Parcels past it went where the rules in force sent them; no alert.
    All,
    /// Retention forgot these waybills (their clearance period is over; one message per
    /// step of the purge): their tracked parcels before their deadline are decided again
    /// (undeclared: held), so a parcel decided on a forgotten declaration just before does
    /// not keep a release it can no longer be counted for. Not new clearance: no alert for
    /// parcels past their deadline.
    Forgotten(std::sync::Arc<[String]>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_states_mark_full_and_disabled_lanes_unavailable() {
        let l = LaneStates::default();
        assert!(l.available(2));
        l.set(2, LANE_FULL);
        l.set(3, LANE_DISABLED);
        assert!(!l.available(2));
        assert!(!l.available(3));
        assert_eq!(l.describe(2), "full");
        assert_eq!(l.describe(3), "disabled");
        assert!(
            l.available(40),
            "lanes beyond the status block are not known to be down"
        );
        l.set(2, 0);
        assert!(l.available(2));
    }
}

/// What the journal knows of a parcel an earlier run handled, handed to its line at start
/// (read by `journal::intents`), so that the PLC's dispositions of that run's parcels are
/// explained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent {
    pub waybill: Option<String>,
    /// The lane of its last recorded decision.
    pub lane: Option<u16>,
    pub role: Option<bondline_devices::contract::LaneRole>,
    pub revision: u32,
    /// A parcel record exists.
    pub decided: bool,
    /// Its last recorded decision was acknowledged by the PLC.
    pub acked: bool,
    /// A disposition record exists.
    pub disposed: bool,
}
