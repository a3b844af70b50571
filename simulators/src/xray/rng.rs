//! A tiny seeded generator (SplitMix64) for the X-ray simulator's images and verdicts.
//!
//! Written out rather than taken from `rand` because the outputs are part of what tests pin
//! down (the same scan id gives the same image and verdict): `rand`'s `StdRng` may change its
//! algorithm between versions, this cannot.

/// SplitMix64 (Steele, Lea and Flood): passes BigCrush, one add and a few multiplies a draw.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for one purpose (`salt`) and one key (a scan id): independent streams, so
    /// a scan's draws do not depend on which other scans were drawn before.
    pub(crate) fn keyed(seed: u64, salt: u64, key: u64) -> SplitMix64 {
        let mut g = SplitMix64(seed ^ salt.rotate_left(17));
        let base = g.next_u64();
        SplitMix64(base ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)` (or `lo` when the range is empty).
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo).max(0.0) * self.unit()
    }

    /// Uniform integer in `lo..=hi`.
    pub(crate) fn int(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi.saturating_sub(lo)) + 1;
        lo + (self.next_u64() % span) as u32
    }

    /// True with probability `p` (clamped to 0..=1).
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_keyed() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut g = SplitMix64::keyed(7, 1, 42);
                move |_| g.next_u64()
            })
            .collect();
        let mut g = SplitMix64::keyed(7, 1, 42);
        assert_eq!(a, (0..4).map(|_| g.next_u64()).collect::<Vec<_>>());
        assert_ne!(
            SplitMix64::keyed(7, 1, 42).next_u64(),
            SplitMix64::keyed(7, 1, 43).next_u64()
        );
        assert_ne!(
            SplitMix64::keyed(7, 1, 42).next_u64(),
            SplitMix64::keyed(7, 2, 42).next_u64()
        );
        let mut g = SplitMix64::keyed(1, 0, 0);
        for _ in 0..1000 {
            let u = g.unit();
            assert!((0.0..1.0).contains(&u));
            assert!((3..=5).contains(&g.int(3, 5)));
        }
    }
}
