//! What the line's state machine ([`super::Line`]) asks its task to do, and the time it is
//! given: the machine reads no clock and holds no channel (rumqttc's `state.rs` beside
//! `eventloop.rs` is the model). The line task reads both clocks once per turn, hands the
//! turn to one handler, and carries out the effects in the order they were made.
//!
//! The machine does read and update the gateway's in-memory tables that every line shares
//! (the clearance table and its consumer counts, the released-waybill registry, the PLC's
//! lane states, the metrics): they are state, not I/O, and none of them waits.

use std::time::{Instant, SystemTime};

use bondline_devices::contract::{Anomaly, ParcelRecord, Record};

use crate::camera::schedule::Capture;

/// The time of one turn: both clocks, read once by the task.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic, for deadlines and latency.
    pub instant: Instant,
    /// Wall clock, for records.
    pub wall: SystemTime,
}

impl Now {
    /// The clocks now (the task's one clock read per turn).
    pub fn read() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A divert command for the PLC.
#[derive(Debug, Clone)]
pub struct Divert {
    pub parcel: u32,
    pub lane: u16,
    pub revision: u32,
    /// The latest moment the command may reach the PLC.
    pub deadline: Instant,
    /// For the release lane: the decision record written ahead. The task stores it before
    /// handing the command over, and the command waits for it to be durable.
    pub intent: Option<Box<ParcelRecord>>,
    /// Takes back a release command handed to the PLC earlier (see
    /// [`crate::floor::DivertJob::withdraws_release`]).
    pub withdraws_release: bool,
}

/// One thing for the task to do.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A record for the journal.
    Record(Box<Record>),
    /// A command for the PLC link, handed over without waiting. If its queue is full the
    /// task tells the machine ([`super::Line::divert_refused`]), whose effects come next.
    Divert(Divert),
    /// An anomaly for the platform, sent at once when the uplink has room.
    Anomaly(Box<Anomaly>),
    /// Camera snapshots to ask for.
    Snapshots(Vec<Capture>),
}

/// One turn of the machine: its time, and the effects it made, in order.
#[derive(Debug)]
pub struct Turn {
    pub now: Now,
    pub effects: Vec<Effect>,
}

impl Turn {
    pub fn at(now: Now) -> Turn {
        Turn {
            now,
            effects: Vec::new(),
        }
    }

    /// A record for the journal.
    pub fn record(&mut self, record: impl Into<Record>) {
        self.effects.push(Effect::Record(Box::new(record.into())));
    }

    pub fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}
