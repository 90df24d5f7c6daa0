//! Vectorisable `exp` and GELU for the CPU kernels (softmax, SiLU, GEGLU).
//!
//! libm's `expf`/`erff` are scalar calls, and at SD sizes the attention softmax alone evaluates
//! a few hundred million exponentials per UNet step. These are branch-free so the loops below
//! compile to SIMD, with AVX2 chosen at run time where the CPU has it.
//!
//! * [`exp`]: Cody-Waite reduction and Cephes' degree-7 polynomial, within 2 ulp of `exp` for
//!   arguments in [-87, 88]; 0 below (where `exp` is subnormal or 0), `exp(88)` above.
//! * [`gelu`]: exact-form GELU `x/2 · (1 + erf(x/√2))` with `erf` from Abramowitz & Stegun 7.1.26
//!   (absolute error below 1.5e-7), the same approximation PyTorch's vectorised CPU GELU uses.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5·2²³ rounds an f32 of magnitude below 2²² to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
const EXP_MIN_ARG: f32 = -87.0;
const EXP_MAX_ARG: f32 = 88.0;

#[inline(always)]
pub(crate) fn exp(arg: f32) -> f32 {
    let x = arg.clamp(EXP_MIN_ARG, EXP_MAX_ARG);
    // After adding the magic number the low mantissa bits hold n = round(x·log2 e) (offset by
    // the magic number's own bits): integer arithmetic on the bits then builds 2ⁿ, avoiding a
    // float-to-int conversion that would keep the loops scalar.
    let shifted = x * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    // A select, not a branch: the loops stay vectorised.
    if arg < EXP_MIN_ARG {
        0.0
    } else {
        p * two_n
    }
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (P * a + 1.0);
    let poly = (((A5 * t + A4) * t + A3) * t + A2) * t + A1;
    let y = 1.0 - poly * t * exp(-(x * x));
    y.copysign(x)
}

#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Defines `pub(crate) fn $name` running `$body` with AVX2 code generation when available.
macro_rules! with_simd {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked on the line above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

with_simd! {
    /// Largest value of `row` (-inf for an empty row).
    fn max_value(row: &[f32]) -> f32 {
        const LANES: usize = 8;
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for chunk in chunks {
            for i in 0..LANES {
                acc[i] = acc[i].max(chunk[i]);
            }
        }
        acc.iter().fold(tail, |a, &b| a.max(b))
    }
}

with_simd! {
    /// `row[i] = exp(row[i] - shift)`; returns the sum of the new values.
    fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        // Two simple loops (map, then a lane-wise sum) vectorise; a fused one does not.
        for v in row.iter_mut() {
            *v = exp(*v - shift);
        }
        const LANES: usize = 8;
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().sum();
        for chunk in chunks {
            for i in 0..LANES {
                acc[i] += chunk[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

with_simd! {
    /// `out[i] = hidden[i] · gelu(gate[i])` (GEGLU).
    fn geglu(hidden: &[f32], gate: &[f32], out: &mut [f32]) -> () {
        for ((o, &h), &g) in out.iter_mut().zip(hidden).zip(gate) {
            *o = h * gelu(g);
        }
    }
}

with_simd! {
    /// `out[i] = silu(((x[i] - mean) · scale) + shift)` or without the SiLU: the per-channel
    /// step of the group norm.
    fn scale_shift(x: &[f32], mean: f32, scale: f32, shift: f32, apply_silu: bool, out: &mut [f32]) -> () {
        if apply_silu {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = silu((v - mean) * scale + shift);
            }
        } else {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (v - mean) * scale + shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // High-precision reference: the Taylor series for |x| < 2.5, else the continued
        // fraction erfc(a) = exp(-a²) / (√π (a + (1/2)/(a + 1/(a + (3/2)/(a + ...))))).
        let a = x.abs();
        if a >= 2.5 {
            let mut k = a;
            for n in (1..100).rev() {
                k = a + (n as f64 / 2.0) / k;
            }
            return x.signum() * (1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * k));
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(-86.9) > 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn gelu_and_silu_match_definitions() {
        for i in -600..=600 {
            let x = i as f32 / 50.0;
            let want = x as f64 * 0.5 * (1.0 + erf_f64(x as f64 / std::f64::consts::SQRT_2));
            // erf's absolute error (< 1.5e-7) is scaled by x/2.
            assert!((gelu(x) as f64 - want).abs() < 2e-7 * (1.0 + x.abs() as f64), "gelu({x})");
            let want = x as f64 / (1.0 + (-x as f64).exp());
            assert!((silu(x) as f64 - want).abs() < 3e-7 * (1.0 + want.abs()), "silu({x})");
        }
        assert_eq!(gelu(-200.0), 0.0);
        assert!(silu(-200.0).abs() < 1e-30);
    }

    #[test]
    fn slice_kernels_cover_remainders() {
        let mut row: Vec<f32> = (0..13).map(|i| i as f32 * 0.3).collect();
        assert_eq!(max_value(&row), 12.0 * 0.3);
        assert_eq!(max_value(&row[..3]), 2.0 * 0.3);
        assert_eq!(max_value(&[]), f32::NEG_INFINITY);
        let expected: Vec<f32> = row.iter().map(|&v| exp(v - 2.0)).collect();
        let sum = exp_shifted_sum(&mut row, 2.0);
        assert_eq!(row, expected);
        assert!((sum - expected.iter().sum::<f32>()).abs() < 1e-5);

        let (h, g): (Vec<f32>, Vec<f32>) = (0..11).map(|i| (i as f32 - 5.0, 0.5 * i as f32 - 2.0)).unzip();
        let mut out = vec![0f32; 11];
        geglu(&h, &g, &mut out);
        for i in 0..11 {
            assert_eq!(out[i], h[i] * gelu(g[i]));
        }
        let mut out = vec![0f32; 11];
        scale_shift(&h, 1.0, 2.0, 0.5, true, &mut out);
        assert_eq!(out[10], silu((h[10] - 1.0) * 2.0 + 0.5));
    }
}
