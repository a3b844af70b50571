//! Latency histograms on HdrHistogram (the `hdrhistogram` crate), in microseconds.
//!
//! Recording takes one uncontended mutex around `saturating_record` (tens of nanoseconds),
//! never held across anything else, so the decision path can record every parcel. Readers
//! (`/metrics`, summaries, benches) take a [`Snapshot`] under the same lock, a copy of about
//! 20 KiB, and compute outside it. Two significant digits: every quantile is within 1% of the
//! recorded value; values up to an hour are tracked, longer ones count as an hour. The count,
//! the sum and the maximum are also kept exactly, on atomics.
//!
//! `/metrics` keeps the Prometheus histogram shape: its buckets ([`LATENCY_BUCKETS_US`]) are
//! counted from the HDR histogram, each value at the top of its 1% range (so a value is never
//! counted in a bucket below the one it belongs to).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the Prometheus buckets, in microseconds; the last bucket is unbounded.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 20_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000,
];

/// Largest value tracked, in µs: an hour.
const HIGHEST_US: u64 = 3_600_000_000;
/// Significant digits of the live histograms.
const SIGFIG: u8 = 2;

/// A latency histogram that many tasks record into.
#[derive(Debug)]
pub struct Histogram {
    hdr: Mutex<hdrhistogram::Histogram<u64>>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            hdr: Mutex::new(new_hdr(SIGFIG)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

/// An empty HDR histogram from 1 µs to an hour with `sigfig` significant digits.
pub fn new_hdr(sigfig: u8) -> hdrhistogram::Histogram<u64> {
    // The bounds are constants within the crate's limits: creation cannot fail.
    hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_US, sigfig)
        .expect("constant histogram bounds are valid")
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.hdr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(us.max(1));
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    /// The largest value recorded, exactly.
    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }

    /// A copy to read from without holding up recorders.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            hdr: self.hdr.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            max_us: self.max_us(),
        }
    }

    /// Per Prometheus bucket: (upper bound in µs, or None for the last; count).
    pub fn buckets(&self) -> Vec<(Option<u64>, u64)> {
        self.snapshot().buckets()
    }

    /// The value at quantile `q` (0..=1), in µs, within 1%.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.snapshot().quantile_us(q)
    }

    /// p50, p99, p99.9 and max.
    pub fn percentiles(&self) -> Percentiles {
        self.snapshot().percentiles()
    }
}

/// A histogram's state at one moment.
pub struct Snapshot {
    hdr: hdrhistogram::Histogram<u64>,
    max_us: u64,
}

impl Snapshot {
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.hdr.is_empty() {
            return 0;
        }
        self.hdr.value_at_quantile(q).min(self.max_us)
    }

    /// The quantiles are capped at the exact maximum (the HDR histogram reports the top of a
    /// value's 1% range).
    pub fn percentiles(&self) -> Percentiles {
        let mut p = Percentiles::of(&self.hdr, 1.0);
        let max = self.max_us as f64;
        p.p50_us = p.p50_us.min(max);
        p.p99_us = p.p99_us.min(max);
        p.p999_us = p.p999_us.min(max);
        p.max_us = max;
        p
    }

    pub fn buckets(&self) -> Vec<(Option<u64>, u64)> {
        let mut counts = vec![0u64; LATENCY_BUCKETS_US.len() + 1];
        for v in self.hdr.iter_recorded() {
            let top = v.value_iterated_to();
            let i = LATENCY_BUCKETS_US
                .iter()
                .position(|b| top <= *b)
                .unwrap_or(LATENCY_BUCKETS_US.len());
            counts[i] += v.count_at_value();
        }
        counts
            .into_iter()
            .enumerate()
            .map(|(i, n)| (LATENCY_BUCKETS_US.get(i).copied(), n))
            .collect()
    }
}

/// The figures every latency printout gives, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub n: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// From an HDR histogram whose unit is `1/per_us` µs (1.0: µs; 1000.0: ns).
    pub fn of(h: &hdrhistogram::Histogram<u64>, per_us: f64) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / per_us;
        Percentiles {
            n: h.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: h.max() as f64 / per_us,
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |v: f64| {
            if v < 10.0 {
                format!("{v:.2}")
            } else if v < 1000.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        };
        write!(
            f,
            "n {} p50 {} µs p99 {} µs p99.9 {} µs max {} µs",
            self.n,
            us(self.p50_us),
            us(self.p99_us),
            us(self.p999_us),
            us(self.max_us)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent_and_max_is_exact() {
        let h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        assert_eq!(p.n, 10_000);
        for (got, want) in [
            (p.p50_us, 5_000.0),
            (p.p99_us, 9_900.0),
            (p.p999_us, 9_990.0),
        ] {
            assert!((got - want).abs() <= want * 0.01, "{got} vs {want}");
        }
        assert_eq!(p.max_us, 10_000.0);
        assert_eq!(h.max_us(), 10_000);
        assert_eq!(h.sum_us(), 10_000 * 10_001 / 2);
    }

    #[test]
    fn prometheus_buckets_count_every_value_never_below_its_bucket() {
        let h = Histogram::default();
        for us in [40, 50, 99, 300, 2_000_000] {
            h.record(Duration::from_micros(us));
        }
        let b = h.buckets();
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 5);
        assert_eq!(b[0], (Some(50), 2), "40 and 50 µs are ≤ 50 µs");
        assert_eq!(b[1], (Some(100), 1));
        assert_eq!(
            b.last().copied(),
            Some((None, 1)),
            "2 s is beyond the last bound"
        );
        let at_300: u64 = b.iter().take(4).map(|(_, n)| n).sum();
        assert!(at_300 >= 3, "{b:?}");
    }

    #[test]
    fn an_empty_histogram_reads_zero_and_huge_values_saturate() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.99), 0);
        assert_eq!(h.percentiles(), Percentiles::default());
        h.record(Duration::from_secs(10_000));
        assert_eq!(h.count(), 1);
        assert!(h.quantile_us(1.0) >= HIGHEST_US / 2);
    }
}
