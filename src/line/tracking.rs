//! Parcel tracking on one line: from scan to the PLC's disposition, against the divert
//! deadline. Pure: no clock reads, no I/O; times are passed in.
//!
//! A parcel is *seen* when its frame arrives and *decided* at once; its divert job then goes
//! to the PLC (*committed* when acknowledged). New information about its waybill (an
//! instruction) before the deadline re-decides it and, if the lane changes, re-commits it
//! with the next revision; after the deadline the parcel went where it went and the change
//! is an alert. The PLC's disposition *confirms* it; the parcel stays tracked until its
//! deadline plus the disposition timeout, so that a mark arriving after it reached its lane
//! still finds it and raises an alert. A parcel with no disposition by then is dropped from
//! tracking (and, where the PLC reports dispositions, alerted as such).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::floor::ScanRead;
use crate::rules::Decision;

/// When a parcel must be decided, from the line's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Belt travel time from the scanner to the divert point (first gate).
    pub travel: Duration,
    /// PLC scan, actuator and safety time to keep before the divert point.
    pub margin: Duration,
    /// How long after the deadline a disposition may still come.
    pub disposition_timeout: Duration,
}

impl Geometry {
    /// The latest moment a divert command may reach the PLC for a parcel scanned at `scanned`.
    pub fn deadline(&self, scanned: Instant) -> Instant {
        scanned + self.travel.saturating_sub(self.margin)
    }
}

/// One tracked parcel.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub parcel: u32,
    pub read: ScanRead,
    /// The line scale's reading, if the scanner station weighs.
    pub weight_g: Option<u32>,
    pub scanned_at: SystemTime,
    /// The time the parcel counts at in its consumer's history (its scan's, or the
    /// platform's if the clock was far behind it then; see `ClearanceTable::counting_ms`),
    /// fixed at the scan so that every decision of the parcel counts it on the same day.
    pub counting_ms: u64,
    pub scanned: Instant,
    pub deadline: Instant,
    pub decision: Decision,
    /// When the current decision was made.
    pub decided_at: SystemTime,
    /// The lane currently decided.
    pub lane: u16,
    /// 0 for the first decision, +1 per re-commit.
    pub revision: u32,
    /// The lane the PLC last acknowledged, if any.
    pub committed_lane: Option<u16>,
    /// The revision of the command that named it (see [`Tracked::acknowledged`]).
    pub committed_revision: Option<u32>,
    /// A release command for the parcel was handed to the PLC link.
    pub release_sent: bool,
    /// The current revision's command is known not to have been taken (timeout, link down,
    /// deadline missed...): if it took back a lane the PLC acknowledged, deciding the parcel
    /// again commits it again, even to the same lane.
    pub not_taken: bool,
    /// How often the tick tried again a take-back that was not taken (see
    /// `Line::retry_take_backs`).
    pub take_back_tries: u8,
    /// Not tried again by the tick before this (a gap after the last answer).
    pub retry_at: Instant,
    /// The lane the PLC reported the parcel in, once it did.
    pub disposed_lane: Option<u16>,
    /// The X-ray verdict joined to the parcel so far.
    pub xray: crate::rules::engine::XrayInput,
    /// A verdict was joined, or its absence at the deadline recorded.
    pub xray_settled: bool,
    /// The lane cameras were asked for this parcel (at its deadline), or none watch it.
    pub lane_camera_asked: bool,
}

impl Tracked {
    /// The PLC acknowledged the command of `revision`, to `lane`: it holds that lane now,
    /// unless it acknowledged a newer revision already (commands are written in revision
    /// order, and the PLC keeps the last one it took). An acknowledge that comes late, for a
    /// superseded revision, does not undo a newer one's.
    pub fn acknowledged(&mut self, lane: u16, revision: u32) {
        if self.committed_revision.is_none_or(|r| revision >= r) {
            self.committed_lane = Some(lane);
            self.committed_revision = Some(revision);
        }
    }

    pub fn waybill(&self) -> Option<&str> {
        match &self.read {
            ScanRead::Waybill(w) => Some(w),
            ScanRead::NoRead => None,
        }
    }
}

/// What new information about a waybill means for one tracked parcel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Before the deadline: decide again (and re-commit if the lane changes).
    Redecide(u32),
    /// After the deadline: too late to divert differently.
    Late(u32),
}

/// The parcels of one line between scan and disposition.
#[derive(Debug, Default)]
pub struct Tracker {
    parcels: HashMap<u32, Tracked>,
    by_waybill: HashMap<String, Vec<u32>>,
    /// Parcel ids in scan order, for expiry (scan order is deadline order).
    order: VecDeque<u32>,
}

impl Tracker {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.parcels.is_empty()
    }

    pub fn insert(&mut self, t: Tracked) {
        if let Some(w) = t.waybill() {
            self.by_waybill
                .entry(w.to_string())
                .or_default()
                .push(t.parcel);
        }
        self.order.push_back(t.parcel);
        self.parcels.insert(t.parcel, t);
    }

    pub fn get(&self, parcel: u32) -> Option<&Tracked> {
        self.parcels.get(&parcel)
    }

    pub fn get_mut(&mut self, parcel: u32) -> Option<&mut Tracked> {
        self.parcels.get_mut(&parcel)
    }

    /// Every tracked parcel, in no particular order, to update in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Tracked> {
        self.parcels.values_mut()
    }

    /// Every tracked parcel, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Tracked> {
        self.parcels.values()
    }

    /// What a change to `waybill`'s clearance means for the parcels carrying it.
    pub fn changes_for(&self, waybill: &str, now: Instant) -> Vec<Change> {
        self.by_waybill
            .get(waybill)
            .into_iter()
            .flatten()
            .filter_map(|p| self.parcels.get(p))
            .map(|t| {
                if now < t.deadline {
                    Change::Redecide(t.parcel)
                } else {
                    Change::Late(t.parcel)
                }
            })
            .collect()
    }

    /// Every tracked parcel still before its deadline, for a change that may concern any
    /// parcel (an enterprise notice, a new rule set).
    pub fn before_deadline(&self, now: Instant) -> Vec<u32> {
        self.order
            .iter()
            .filter_map(|p| self.parcels.get(p))
            .filter(|t| now < t.deadline)
            .map(|t| t.parcel)
            .collect()
    }

    /// Notes a parcel's disposition. The parcel stays tracked until it expires, so that an
    /// instruction arriving after it reached its lane still finds it (and raises an alert).
    pub fn dispose(&mut self, parcel: u32, lane: u16) -> Option<&Tracked> {
        let t = self.parcels.get_mut(&parcel)?;
        t.disposed_lane = Some(lane);
        Some(t)
    }

    /// Stops tracking a parcel.
    pub fn remove(&mut self, parcel: u32) -> Option<Tracked> {
        let t = self.parcels.remove(&parcel)?;
        if let Some(w) = t.waybill() {
            if let Some(ids) = self.by_waybill.get_mut(w) {
                ids.retain(|p| *p != parcel);
                if ids.is_empty() {
                    self.by_waybill.remove(w);
                }
            }
        }
        Some(t)
    }

    /// Removes and returns the parcels whose disposition is overdue at `now`.
    pub fn expire(&mut self, now: Instant, disposition_timeout: Duration) -> Vec<Tracked> {
        let mut out = Vec::new();
        while let Some(&p) = self.order.front() {
            match self.parcels.get(&p) {
                // Already confirmed and removed.
                None => {
                    self.order.pop_front();
                }
                Some(t) if now >= t.deadline + disposition_timeout => {
                    self.order.pop_front();
                    out.extend(self.remove(p));
                }
                Some(_) => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::LaneRole;

    fn tracked(parcel: u32, waybill: &str, scanned: Instant, g: &Geometry) -> Tracked {
        Tracked {
            parcel,
            read: ScanRead::Waybill(waybill.into()),
            weight_g: None,
            scanned_at: SystemTime::UNIX_EPOCH,
            counting_ms: 0,
            scanned,
            deadline: g.deadline(scanned),
            decided_at: SystemTime::UNIX_EPOCH,
            decision: Decision {
                role: LaneRole::Hold,
                rule: "undeclared".into(),
                reason: String::new(),
                instruction_id: None,
                fired: Vec::new(),
                rule_set: "test".into(),
                inputs: None,
            },
            lane: 3,
            revision: 0,
            committed_lane: None,
            committed_revision: None,
            release_sent: false,
            not_taken: false,
            take_back_tries: 0,
            retry_at: Instant::now(),
            disposed_lane: None,
            xray: crate::rules::engine::XrayInput::NotOnLine,
            lane_camera_asked: false,
            xray_settled: false,
        }
    }

    const G: Geometry = Geometry {
        travel: Duration::from_millis(1500),
        margin: Duration::from_millis(300),
        disposition_timeout: Duration::from_secs(5),
    };

    #[test]
    fn deadline_is_travel_less_margin() {
        let t0 = Instant::now();
        assert_eq!(G.deadline(t0), t0 + Duration::from_millis(1200));
        let tight = Geometry {
            margin: Duration::from_secs(9),
            ..G
        };
        assert_eq!(
            tight.deadline(t0),
            t0,
            "a margin beyond the travel means: now"
        );
    }

    #[test]
    fn changes_before_the_deadline_redecide_and_after_it_are_late() {
        let t0 = Instant::now();
        let mut tr = Tracker::default();
        tr.insert(tracked(1, "W1", t0, &G));
        tr.insert(tracked(2, "W1", t0 + Duration::from_secs(1), &G));
        tr.insert(tracked(3, "W2", t0, &G));
        let at = t0 + Duration::from_millis(1500);
        assert_eq!(
            tr.changes_for("W1", at),
            vec![Change::Late(1), Change::Redecide(2)]
        );
        assert!(tr.changes_for("nobody", at).is_empty());
    }

    #[test]
    fn confirmed_parcels_leave_and_overdue_ones_expire_in_order() {
        let t0 = Instant::now();
        let mut tr = Tracker::default();
        for p in 1..=3 {
            tr.insert(tracked(
                p,
                &format!("W{p}"),
                t0 + Duration::from_millis(p as u64),
                &G,
            ));
        }
        assert!(tr.remove(2).is_some());
        assert!(tr.changes_for("W2", t0).is_empty());
        assert!(tr
            .expire(t0 + Duration::from_secs(6), G.disposition_timeout)
            .is_empty());
        let gone = tr.expire(t0 + Duration::from_secs(7), G.disposition_timeout);
        assert_eq!(
            gone.iter().map(|t| t.parcel).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(tr.is_empty());
    }
}
