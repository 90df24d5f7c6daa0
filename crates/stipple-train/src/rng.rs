//! The generator's random numbers: SplitMix64, small and fully specified, so a seed gives the
//! same data on every platform and in every version of the dependencies.

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for item `index` of the stream `seed`: items are independent of each other, so
    /// any item can be made alone (and in parallel) without replaying the ones before it.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut mixer = SplitMix64::new(seed ^ 0x5851_f42d_4c95_7f2d);
        let base = mixer.next_u64();
        SplitMix64::new(base.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(17) ^ index)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is below 2^-40 for the small `n` used here.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// A standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln stays finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_first_outputs() {
        // Reference values of SplitMix64 seeded with 0 (as in the published C code).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn items_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|i| SplitMix64::for_item(7, i).next_u64()).collect();
        let b: Vec<u64> = (0..4).map(|i| SplitMix64::for_item(7, i).next_u64()).collect();
        assert_eq!(a, b);
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 4);
        assert_ne!(SplitMix64::for_item(8, 0).next_u64(), a[0]);
    }

    #[test]
    fn ranges_hold() {
        let mut r = SplitMix64::new(3);
        for _ in 0..10_000 {
            let u = r.uniform(-4.0, 4.0);
            assert!((-4.0..4.0).contains(&u));
            assert!(r.below(9) < 9);
        }
    }
}
