//! The 32-bit Mersenne Twister exactly as ATen's `at::mt19937` runs it.
//!
//! ATen keeps the full 64-bit seed for reporting but initialises the state from its low 32 bits
//! only, so seeds that agree in their low 32 bits give the same stream (`2**32 + 5` ≡ `5`).

const STATE_N: usize = 624;
const STATE_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

#[derive(Clone)]
pub struct Mt19937 {
    seed: u64,
    state: [u32; STATE_N],
    /// Index of the next state word to temper; `STATE_N` means the state must be regenerated.
    next: usize,
}

impl Mt19937 {
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_N];
        state[0] = seed as u32;
        for j in 1..STATE_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        // ATen starts with `left_ = 1`: the first draw regenerates the whole state.
        Mt19937 { seed, state, next: STATE_N }
    }

    /// The seed as given (all 64 bits), like `Generator.initial_seed()`.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.next == STATE_N {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn regenerate(&mut self) {
        let twist = |u: u32, v: u32| {
            let mixed = (u & UPPER_MASK) | (v & LOWER_MASK);
            (mixed >> 1) ^ if v & 1 == 1 { MATRIX_A } else { 0 }
        };
        for j in 0..STATE_N {
            let following = self.state[(j + 1) % STATE_N];
            self.state[j] = self.state[(j + STATE_M) % STATE_N] ^ twist(self.state[j], following);
        }
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_mt19937_outputs() {
        // C++ [rand.predef]: the 10000th output of a default-constructed std::mt19937 (seed 5489).
        let mut mt = Mt19937::new(5489);
        let ten_thousandth = (0..10_000).map(|_| mt.next_u32()).last();
        assert_eq!(ten_thousandth, Some(4_123_659_995));
        // First outputs for seed 5489, from the authors' mt19937ar.c init_genrand.
        let mut mt = Mt19937::new(5489);
        assert_eq!([mt.next_u32(), mt.next_u32(), mt.next_u32()], [3_499_211_612, 581_869_302, 3_890_346_734]);
    }

    #[test]
    fn only_the_low_32_bits_of_the_seed_reach_the_state() {
        let mut a = Mt19937::new(5);
        let mut b = Mt19937::new((1u64 << 32) + 5);
        for _ in 0..700 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
        assert_eq!(b.seed(), (1u64 << 32) + 5);
    }
}
