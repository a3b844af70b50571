//! Joining X-ray verdicts and images to tracked parcels. Pure: no clock reads, no I/O.
//!
//! The X-ray scanner does not know waybills: it numbers each passage (the scan id) and says
//! when the parcel entered the tunnel. The line knows when each parcel passed the barcode
//! scanner and how long the belt takes from there to the tunnel (`scan_to_xray_m` / belt
//! speed). A verdict is joined to the parcel whose expected entry time is clearly the closest
//! to the verdict's, within the configured window, if that parcel is still waiting for one.
//! Parcels that already have a verdict count in the comparison: a verdict whose closest
//! parcel is taken belongs to something else on the belt (an item without a readable label),
//! and giving it to the next waiting parcel would shift every later verdict onto its
//! neighbour. Explicit outcomes:
//!
//! - **matched**: the verdict is the parcel's; it is decided again with it before its
//!   deadline (a clear verdict may release it, a flagged one sends it to inspection);
//! - **no parcel**: nothing tracked was in the tunnel then (an item without a readable
//!   label, or clocks out of step), or a clear verdict's closest parcel already has its
//!   verdict; recorded, and alerted when the verdict flags. A *flagging* verdict whose
//!   closest parcel already has a verdict goes to that parcel as an update: a flag is never
//!   dropped;
//! - **ambiguous**: two parcels are about as close; the verdict is given to neither, waiting
//!   ones wait on and, without a verdict of their own, go to inspection; a flagging verdict
//!   also flags those that already had a verdict; alerted when the verdict flags;
//! - **no result**: the parcel reached its deadline without a verdict. Its decisions never
//!   released it (release needs a clear verdict), so it went to inspection: fail closed.
//! - **update**: a later verdict for a joined scan id (an officer's mark seconds after the
//!   automatic verdict) goes to the same parcel. Flags stick: a later clear does not undo
//!   an earlier suspect or mark. After the deadline a flag on a released parcel raises a
//!   `late_xray_mark` alert. A verdict under a joined scan id but with another tunnel-entry
//!   time is a new passage (the scanner restarted its numbering) and is joined afresh.
//!
//! Images carry the scan id in their file name and may arrive before or after the verdict:
//! an image whose scan id is not joined yet waits (up to [`IMAGE_WAIT`]), then is recorded
//! without a parcel. Joined scan ids are remembered for [`JOIN_MEMORY`] for late marks and
//! images.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bondline_devices::contract::ImageRecord;

/// How long an image may wait for its scan's verdict before it is recorded unjoined.
pub const IMAGE_WAIT: Duration = Duration::from_secs(30);
/// How long a scan id's join is remembered, for late marks and late images.
pub const JOIN_MEMORY: Duration = Duration::from_secs(600);

/// What a scan id was joined to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub parcel: Option<u32>,
    pub waybill: Option<String>,
    /// The passage's tunnel-entry time: a verdict for the same scan id with another time is
    /// a new passage (the scanner restarted its numbering), not an update.
    pub entered_at_ms: u64,
}

/// What a verdict's tunnel-entry time says about the waiting parcels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// One waiting parcel, clearly the closest.
    One(u32),
    /// No parcel within the window.
    None,
    /// The clearly closest parcel already has a verdict: this one is not a waiting parcel's.
    Taken(u32),
    /// Two or more within the window, the runner-up not clearly farther than the closest:
    /// the verdict could be either's, so it is given to neither (they fail closed). The
    /// parcels within the window, closest first: those still waiting, and those that
    /// already have a verdict (a flag must still reach them).
    Ambiguous { waiting: Vec<u32>, joined: Vec<u32> },
}

/// The parcel the verdict entering at `entered_at_ms` belongs to, within `window_ms`, among
/// tracked parcels `(parcel, expected entry ms, still waiting for a verdict)`. The runner-up
/// must be at least a third of the window farther than the closest, or the pick is
/// ambiguous: clocks a little out of step must not hand a parcel its neighbour's clear
/// verdict. A clearly closest parcel that already has a verdict is [`Pick::Taken`].
pub fn pick(
    candidates: impl IntoIterator<Item = (u32, u64, bool)>,
    entered_at_ms: u64,
    window_ms: u64,
) -> Pick {
    let mut near: Vec<(u64, u64, u32, bool)> = candidates
        .into_iter()
        .map(|(p, expected, waiting)| (expected.abs_diff(entered_at_ms), expected, p, waiting))
        .filter(|(d, _, _, _)| *d <= window_ms)
        .collect();
    near.sort_unstable();
    let clear = match near.as_slice() {
        [] => return Pick::None,
        [only] => *only,
        [first, second, ..] if second.0 - first.0 >= window_ms / 3 => *first,
        _ => {
            let (waiting, joined): (Vec<&(u64, u64, u32, bool)>, Vec<_>) =
                near.iter().partition(|n| n.3);
            return Pick::Ambiguous {
                waiting: waiting.iter().map(|n| n.2).collect(),
                joined: joined.iter().map(|n| n.2).collect(),
            };
        }
    };
    match clear {
        (_, _, p, true) => Pick::One(p),
        (_, _, p, false) => Pick::Taken(p),
    }
}

/// One line's join state.
#[derive(Debug, Default)]
pub struct Joiner {
    joined: HashMap<u32, (Instant, Joined)>,
    joined_order: VecDeque<(Instant, u32)>,
    waiting: HashMap<u32, Vec<ImageRecord>>,
    waiting_order: VecDeque<(Instant, u32)>,
}

impl Joiner {
    /// What `scan_id` was joined to, if it was.
    pub fn joined(&self, scan_id: u32) -> Option<&Joined> {
        self.joined.get(&scan_id).map(|(_, j)| j)
    }

    /// Remembers a join; returns the images that were waiting for it, filled in.
    pub fn join(&mut self, scan_id: u32, to: Joined, now: Instant) -> Vec<ImageRecord> {
        self.joined_order.push_back((now, scan_id));
        let images = self.waiting.remove(&scan_id).unwrap_or_default();
        let out = images.into_iter().map(|i| fill(i, &to)).collect();
        self.joined.insert(scan_id, (now, to));
        out
    }

    /// An image arrived: returned at once, filled in, if its scan is joined; else it waits.
    pub fn image(&mut self, image: ImageRecord, now: Instant) -> Option<ImageRecord> {
        if let Some((_, j)) = self.joined.get(&image.scan_id) {
            return Some(fill(image, j));
        }
        self.waiting_order.push_back((now, image.scan_id));
        self.waiting.entry(image.scan_id).or_default().push(image);
        None
    }

    /// Forgets old joins and returns the images that waited too long, unjoined.
    pub fn expire(&mut self, now: Instant) -> Vec<ImageRecord> {
        while let Some(&(at, scan)) = self.joined_order.front() {
            if now.saturating_duration_since(at) < JOIN_MEMORY {
                break;
            }
            self.joined_order.pop_front();
            // A scan id joined again since (a new passage under a reused id) keeps its entry.
            if self.joined.get(&scan).is_some_and(|(t, _)| *t == at) {
                self.joined.remove(&scan);
            }
        }
        let mut out = Vec::new();
        while let Some(&(at, scan)) = self.waiting_order.front() {
            if now.saturating_duration_since(at) < IMAGE_WAIT {
                break;
            }
            self.waiting_order.pop_front();
            out.extend(self.waiting.remove(&scan).unwrap_or_default());
        }
        out
    }

    /// Images still waiting, for shutdown: recorded unjoined rather than lost.
    pub fn drain_waiting(&mut self) -> Vec<ImageRecord> {
        self.waiting_order.clear();
        self.waiting.drain().flat_map(|(_, v)| v).collect()
    }
}

fn fill(mut image: ImageRecord, to: &Joined) -> ImageRecord {
    image.parcel = to.parcel;
    image.waybill = to.waybill.clone();
    image
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{ImageSource, SCHEMA};

    fn image(scan_id: u32, view: &str) -> ImageRecord {
        ImageRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            device: "xray-1".into(),
            scan_id,
            view: view.into(),
            parcel: None,
            waybill: None,
            source: ImageSource::Spool,
            file_name: format!("{scan_id}_{view}.png"),
            sha256: "00".into(),
            bytes: 1,
            format: None,
            width: None,
            height: None,
            thumbnail_jpeg_b64: None,
            error: None,
            chunks: 0,
            kept_at: None,
            at_ms: 0,
        }
    }

    #[test]
    fn the_clearly_closest_parcel_within_the_window_matches() {
        let c = [(1, 1_000, true), (2, 1_300, true), (3, 1_600, true)];
        assert_eq!(pick(c, 1_290, 150), Pick::One(2));
        assert_eq!(pick(c, 2_000, 100), Pick::None);
        assert_eq!(pick([], 2_000, 100), Pick::None);
        // Halfway between two parcels: either could be the one.
        assert_eq!(
            pick(c, 1_150, 200),
            Pick::Ambiguous {
                waiting: vec![1, 2],
                joined: vec![]
            }
        );
        // Parcels 90 ms apart (40,000/h) with a tight window and synchronised clocks.
        let dense = [(1, 1_000, true), (2, 1_090, true), (3, 1_180, true)];
        assert_eq!(pick(dense, 1_095, 60), Pick::One(2));
        assert_eq!(
            pick(dense, 1_140, 60),
            Pick::Ambiguous {
                waiting: vec![3, 2],
                joined: vec![]
            }
        );
    }

    #[test]
    fn a_verdict_never_slides_onto_the_next_parcel() {
        // Parcels 125 ms apart, a 300 ms window. Parcel 1 has its verdict; an item without a
        // readable label passed at 1_125 and parcel 2 (1_250) waits for its own.
        let c = [(1, 1_000, false), (2, 1_250, true), (3, 1_375, true)];
        // The label-less item's verdict is about as close to parcel 1 as to parcel 2: given
        // to none (parcel 2 waits on for its own).
        assert_eq!(
            pick(c, 1_125, 300),
            Pick::Ambiguous {
                waiting: vec![2, 3],
                joined: vec![1]
            }
        );
        // A second verdict for parcel 1's passage time (a duplicate item): taken, not slid.
        assert_eq!(pick(c, 1_000, 300), Pick::Taken(1));
        // Parcel 2's own verdict still finds it.
        assert_eq!(pick(c, 1_250, 300), Pick::One(2));
    }

    #[test]
    fn images_before_and_after_the_verdict_are_joined() {
        let t0 = Instant::now();
        let mut j = Joiner::default();
        assert!(j.image(image(7, "top"), t0).is_none(), "waits for its scan");
        let to = Joined {
            parcel: Some(42),
            waybill: Some("W1".into()),
            entered_at_ms: 1,
        };
        let waited = j.join(7, to.clone(), t0);
        assert_eq!(waited.len(), 1);
        assert_eq!(waited[0].parcel, Some(42));
        let after = j.image(image(7, "side"), t0).unwrap();
        assert_eq!(after.waybill.as_deref(), Some("W1"));
        assert_eq!(j.joined(7), Some(&to));
    }

    #[test]
    fn images_without_a_verdict_are_released_unjoined_and_joins_are_forgotten() {
        let t0 = Instant::now();
        let mut j = Joiner::default();
        assert!(j.image(image(9, "top"), t0).is_none());
        assert!(j.expire(t0 + Duration::from_secs(1)).is_empty());
        let late = j.expire(t0 + IMAGE_WAIT);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].parcel, None);
        j.join(
            5,
            Joined {
                parcel: None,
                waybill: None,
                entered_at_ms: 1,
            },
            t0,
        );
        j.expire(t0 + JOIN_MEMORY);
        assert!(j.joined(5).is_none());
        assert!(j.image(image(3, "x"), t0).is_none());
        assert_eq!(j.drain_waiting().len(), 1);
    }
}
