//! The match of the daemon's parcel ids to delivered frames (see the `line` module
//! documentation, "Matching the daemon's parcel ids to parcels"): one base per scanner
//! connection, learnt from the divert commands and never overshooting. It is the one
//! inference `line-sim` makes about the daemon, so it is kept pure and tested on its own.

use std::time::Instant;

use crate::plc::PlcState;

/// Matches the daemon's parcel ids to delivered frames (see the module documentation).
///
/// Each scanner connection is an epoch with its own base: a daemon that restarted numbers
/// its parcels from a new random base, and one that only reconnected may have lost frames
/// written into the dying connection; either way the frames of the new connection are
/// numbered consecutively from a base of their own.
#[derive(Debug, Clone, Default)]
pub(super) struct Correlator {
    /// When each delivered frame's write started, by delivery index.
    frames: Vec<Instant>,
    /// By first frame, ascending.
    pub(super) epochs: Vec<Epoch>,
    /// A new scanner connection began: the next frame starts a new epoch.
    new_epoch: bool,
    /// Commands taken into account so far (index into the PLC's command list).
    seen: usize,
}

#[derive(Debug, Clone)]
pub(super) struct Epoch {
    /// Delivery index of the epoch's first frame.
    first: u64,
    /// The daemon's parcel id of that frame, as far as known.
    base: Option<u64>,
    adjustments: u32,
}

impl Correlator {
    /// A new scanner client connected.
    pub(super) fn new_connection(&mut self) {
        self.new_epoch = true;
    }

    /// Records a frame whose write started at `at`; returns its delivery index.
    pub(super) fn frame(&mut self, at: Instant) -> u64 {
        let k = self.frames.len() as u64;
        let reuse = self.epochs.last().is_some_and(|e| e.first == k);
        if (self.epochs.is_empty() || self.new_epoch) && !reuse {
            self.epochs.push(Epoch {
                first: k,
                base: None,
                adjustments: 0,
            });
        }
        self.new_epoch = false;
        self.frames.push(at);
        k
    }

    fn epoch_of(&self, k: u64) -> Option<usize> {
        self.epochs.partition_point(|e| e.first <= k).checked_sub(1)
    }

    /// Frames in epoch `e`.
    fn epoch_len(&self, e: usize) -> u64 {
        let end = self
            .epochs
            .get(e + 1)
            .map_or(self.frames.len() as u64, |n| n.first);
        self.epochs.get(e).map_or(0, |ep| end - ep.first)
    }

    /// Takes a command for parcel id `parcel` that arrived at `at` into account.
    fn command(&mut self, parcel: u32, at: Instant) {
        // The command is for one of the frames whose write had started by `at`, so for
        // frame `last` or before it: the epoch's base is at least `parcel - (last - first)`.
        let started = self.frames.partition_point(|t| *t <= at) as u64;
        let Some(last) = started.checked_sub(1) else {
            // No frame had been written: not a command for this run.
            return;
        };
        let Some(e) = self.epoch_of(last) else {
            return;
        };
        let epoch = &mut self.epochs[e];
        let Some(bound) = u64::from(parcel).checked_sub(last - epoch.first) else {
            return;
        };
        match epoch.base {
            None => epoch.base = Some(bound),
            Some(b) if bound > b => {
                tracing::warn!(
                    from = b,
                    to = bound,
                    "parcel id base raised: earlier parcels may have been matched with an \
                     earlier command"
                );
                epoch.base = Some(bound);
                epoch.adjustments += 1;
            }
            Some(_) => {}
        }
    }

    pub(super) fn follow(&mut self, plc: &PlcState) {
        let new = plc.diverts_since(self.seen);
        self.seen += new.len();
        for d in new {
            self.command(d.parcel, d.at);
        }
    }

    /// The daemon's parcel id of delivered frame `k`, once its epoch's base is known.
    pub(super) fn id_of(&self, k: u64) -> Option<u32> {
        let e = &self.epochs[self.epoch_of(k)?];
        u32::try_from(e.base? + (k - e.first)).ok()
    }

    /// The delivered frame a parcel id belongs to.
    pub(super) fn frame_of(&self, id: u32) -> Option<u64> {
        self.epochs.iter().enumerate().find_map(|(i, e)| {
            let off = u64::from(id).checked_sub(e.base?)?;
            (off < self.epoch_len(i)).then_some(e.first + off)
        })
    }

    /// The first epoch's base.
    pub(super) fn base(&self) -> Option<u64> {
        self.epochs.first().and_then(|e| e.base)
    }

    pub(super) fn adjustments(&self) -> u32 {
        self.epochs.iter().map(|e| e.adjustments).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn correlator_finds_the_base_and_never_overshoots() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Frames every 100 ms; the daemon's ids start at 5000.
        let mut c = Correlator::default();
        for i in 0..5 {
            assert_eq!(c.frame(at(i * 100)), i);
        }
        // A command from before any frame is ignored.
        c.command(4999, t0 - Duration::from_millis(1));
        assert_eq!(c.base(), None);
        assert_eq!(c.id_of(0), None);
        // Frame 0's command was lost; frame 1's arrived late, after frame 3 was written.
        c.command(5001, at(350));
        assert_eq!(c.base(), Some(4998), "a lower bound only");
        // Frame 2's command arrived before frame 3: exact.
        c.command(5002, at(250));
        assert_eq!(c.base(), Some(5000));
        assert_eq!(c.adjustments(), 1);
        // Slow commands never raise it beyond the truth.
        c.command(5003, at(450));
        c.command(5004, at(460));
        assert_eq!(c.base(), Some(5000));
        assert_eq!(c.id_of(3), Some(5003));
        assert_eq!(c.frame_of(5004), Some(4));
        assert_eq!(c.frame_of(5005), None);
        assert_eq!(c.frame_of(4999), None);
    }

    #[test]
    fn correlator_starts_a_new_base_per_scanner_connection() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Correlator::default();
        c.new_connection();
        for i in 0..3 {
            c.frame(at(i * 100));
        }
        c.command(100, at(10));
        // The daemon restarted: a new connection, ids from a new random base, lower than
        // the old one. A connection that carried no frame does not count.
        c.new_connection();
        c.new_connection();
        for i in 3..6 {
            c.frame(at(i * 100));
        }
        c.command(7, at(310));
        assert_eq!(c.epochs.len(), 2);
        assert_eq!(c.base(), Some(100));
        assert_eq!(
            (0..6).map(|k| c.id_of(k)).collect::<Vec<_>>(),
            vec![Some(100), Some(101), Some(102), Some(7), Some(8), Some(9)]
        );
        assert_eq!(c.frame_of(102), Some(2));
        assert_eq!(c.frame_of(103), None, "past the first epoch's frames");
        assert_eq!(c.frame_of(9), Some(5));
        assert_eq!(c.adjustments(), 0);
    }
}
