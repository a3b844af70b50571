//! The platform ingest's pace while the lines sort.
//!
//! Taking in a platform backlog at full speed keeps both cores of a small gateway busy:
//! parsing, checking signatures and storing here, and the broker's and the kernel's work for
//! every message. The floor thread runs at real-time priority (`crate::threads`), but
//! priority is not enough on every machine: a kernel that does not preempt inside system
//! calls (`PREEMPT_NONE`, the default of many server and cloud kernels) lets a neighbour's
//! system call finish first, and a virtual machine's host takes a busy vCPU away for
//! milliseconds at a time. On the 2-core bench machine the other lanes' p99 per line was
//! 0.6-5.8 ms beside a flood taken in at full speed (28,000-30,000 messages/s), and
//! 0.25-0.53 ms in two runs of three with the ingest held to 15,000/s (BENCHMARKS.md).
//!
//! So while parcels are being scanned, the ingest takes in at most
//! `uplink.platform_rate_while_sorting` messages per second, which leaves the floor a core's
//! worth of room. The floor notes the time of every scan (`Metrics::last_scan_ms`, a relaxed
//! store); when none came for [`SORTING_QUIET`] (the night shift after an outage, a line
//! stopped for the backlog), the ingest runs at full speed again. The pace is a budget per
//! batch (one batch of checked messages is taken at a time), so it costs one timer per batch,
//! not per message; a paced batch holds at most a second's worth.
//!
//! Pacing never loses or reorders anything: messages not yet taken wait in order, at the
//! broker or in the gateway's memory (up to the broker's in-flight window for the gateway,
//! `max_inflight_messages`), exactly as they do when the gateway is busy for any other
//! reason. Everything queued waits its turn: an instruction behind a large backlog is
//! applied later than at full speed.

use std::time::{Duration, Instant};

/// The lines count as sorting until this long after the last parcel was scanned.
pub const SORTING_QUIET: Duration = Duration::from_secs(10);

/// Whether a pace of `rate` applies at `now_ms`, the last parcel having been scanned at
/// `last_scan_ms` (both on `metrics::mono_ms`'s clock; 0: no parcel since start): a rate is
/// set and the lines scanned a parcel within [`SORTING_QUIET`].
pub fn applies(rate: u32, now_ms: u64, last_scan_ms: u64) -> bool {
    rate > 0
        && last_scan_ms != 0
        && now_ms.saturating_sub(last_scan_ms) < SORTING_QUIET.as_millis() as u64
}

/// Decides when the ingest takes its next batch, and how large it may be. Pure: the caller
/// gives it the time and whether [`applies`].
#[derive(Debug)]
pub struct IngestPace {
    /// Messages per second at most while sorting; 0: never paced.
    rate: u32,
    /// When the budget of the batches taken so far is used up.
    next: Instant,
}

impl IngestPace {
    /// A pace of `rate` messages per second while the lines sort (0: none).
    pub fn new(rate: u32, now: Instant) -> IngestPace {
        IngestPace { rate, next: now }
    }

    /// [`applies`] for this pace's rate.
    pub fn paced(&self, now_ms: u64, last_scan_ms: u64) -> bool {
        applies(self.rate, now_ms, last_scan_ms)
    }

    /// When the next batch may be taken: `now`, or while `paced`, once the budget of the
    /// batches before it is used up.
    pub fn ready_at(&self, now: Instant, paced: bool) -> Instant {
        if paced {
            self.next.max(now)
        } else {
            now
        }
    }

    /// The most messages a batch may take: `most`, or while `paced`, no more than a second's
    /// worth, so that a low rate still stores something every second (the ingest-stall alarm
    /// waits for progress, not for speed).
    pub fn batch_limit(&self, paced: bool, most: usize) -> usize {
        if paced && self.rate > 0 {
            most.min(self.rate as usize).max(1)
        } else {
            most
        }
    }

    /// Counts a batch of `n` messages taken at `at`: while `paced` it uses `n / rate`
    /// seconds of budget from the later of `at` and the budget's end, so time spent idle is
    /// not saved up for a burst later.
    pub fn took(&mut self, at: Instant, n: usize, paced: bool) {
        self.next = if paced && self.rate > 0 {
            self.next.max(at) + Duration::from_secs_f64(n as f64 / f64::from(self.rate))
        } else {
            at
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paced_from_the_first_scan_until_the_lines_are_quiet() {
        assert!(!applies(15_000, 5_000, 0), "no parcel since start");
        assert!(applies(15_000, 5_000, 4_000));
        assert!(applies(15_000, 13_999, 4_000));
        assert!(!applies(15_000, 14_000, 4_000), "quiet for 10 s");
        assert!(!applies(0, 5_000, 4_000), "no rate set");
        // A scan stored by the floor after the ingest read the clock.
        assert!(applies(15_000, 4_000, 4_001));
    }

    #[test]
    fn a_rate_of_zero_never_paces() {
        let t0 = Instant::now();
        let mut p = IngestPace::new(0, t0);
        assert!(!p.paced(1_000, 1_000));
        p.took(t0, 512, false);
        assert_eq!(p.ready_at(t0, false), t0);
    }

    #[test]
    fn a_paced_batch_holds_at_most_a_seconds_worth() {
        let t0 = Instant::now();
        let p = IngestPace::new(10, t0);
        assert_eq!(p.batch_limit(true, 512), 10);
        assert_eq!(p.batch_limit(false, 512), 512);
        let fast = IngestPace::new(15_000, t0);
        assert_eq!(fast.batch_limit(true, 512), 512);
        // A batch of a second's worth takes at most a second of budget: progress every second.
        let mut slow = IngestPace::new(10, t0);
        slow.took(t0, slow.batch_limit(true, 512), true);
        assert_eq!(slow.ready_at(t0, true), t0 + Duration::from_secs(1));
    }

    #[test]
    fn idle_time_is_not_saved_up() {
        let t0 = Instant::now();
        let mut p = IngestPace::new(1000, t0);
        p.took(t0, 100, true);
        assert_eq!(p.ready_at(t0, true), t0 + Duration::from_millis(100));
        // A long pause, then a batch: its budget starts when it was taken.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.ready_at(later, true), later);
        p.took(later, 100, true);
        assert_eq!(p.ready_at(later, true), later + Duration::from_millis(100));
    }

    proptest! {
        /// Whatever the batch sizes and however late the caller comes back, batches taken
        /// when `ready_at` allows never exceed the rate: n messages in total take at least
        /// (n - last batch) / rate seconds from the first batch to the last.
        #[test]
        fn paced_batches_never_exceed_the_rate(
            rate in 1u32..50_000,
            batches in proptest::collection::vec((1usize..=512, 0u64..50_000), 1..64),
        ) {
            let t0 = Instant::now();
            let mut p = IngestPace::new(rate, t0);
            let mut now = t0;
            let mut first = None;
            let mut total = 0usize;
            let mut last_n = 0usize;
            for (n, late_us) in batches {
                now = p.ready_at(now, true) + Duration::from_micros(late_us);
                first.get_or_insert(now);
                p.took(now, n, true);
                total += n;
                last_n = n;
            }
            let span = now.duration_since(first.unwrap()).as_secs_f64();
            let budget = (total - last_n) as f64 / f64::from(rate);
            prop_assert!(span + 1e-6 >= budget, "span {span} < budget {budget}");
        }
    }
}
