//! Scalar, bit-exact re-enactment of the `log256_ps` and `sincos256_ps` that PyTorch's x86 CPU
//! builds (AVX2 and AVX-512 kernels alike) use in `normal_fill_16_AVX2`.
//!
//! They are Julien Pommier's / Giovanni Garberoglio's Cephes-derived approximations (zlib
//! licence), evaluated lane by lane in f32. They are *not* correctly rounded, so libm's `ln`,
//! `sin` and `cos` differ from them in the last bits; only the same operation sequence gives
//! PyTorch's noise bit for bit.
//!
//! PyTorch compiles these intrinsics with GCC and `-mfma` in GNU mode, where floating-point
//! contraction is on: every multiply whose only use is an add or subtract is fused into one FMA
//! (GCC fuses greedily in statement order). `fma` below marks exactly those places; with plain
//! multiply-then-add the noise differs from PyTorch's by up to 2 ulp.

#[inline]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

const SQRT_HALF: f32 = 0.707_106_781_186_547_524;
const LOG_P: [f32; 9] = [
    7.037_683_629_2E-2,
    -1.151_461_031_0E-1,
    1.167_699_874_0E-1,
    -1.242_014_084_6E-1,
    1.424_932_278_7E-1,
    -1.666_805_766_5E-1,
    2.000_071_476_5E-1,
    -2.499_999_399_3E-1,
    3.333_333_117_4E-1,
];
const LOG_Q1: f32 = -2.121_944_40e-4;
const LOG_Q2: f32 = 0.693_359_375;

/// `log256_ps` for one lane. Arguments `<= 0` give NaN, like the original.
pub fn log_ps(x: f32) -> f32 {
    if x <= 0.0 {
        return f32::NAN;
    }
    // Flush denormals to the smallest normal, then split into exponent and mantissa in [0.5, 1).
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    // if x < sqrt(1/2) { e -= 1; x = x + x - 1 } else { x = x - 1 }
    let below = x < SQRT_HALF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;

    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = fma(y, x, p);
    }
    y *= x;
    y = fma(y, z, e * LOG_Q1);
    y = fma(-z, 0.5, y);
    fma(e, LOG_Q2, x + y)
}

const MINUS_DP1: f32 = -0.785_156_25;
const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4;
const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8;
const SINCOF: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
const COSCOF: [f32; 3] = [2.443_315_711_809_948E-005, -1.388_731_625_493_765E-003, 4.166_664_568_298_827E-002];
const FOUR_OVER_PI: f32 = 1.273_239_544_735_16;

/// `sincos256_ps` for one lane: `(sin x, cos x)`.
pub fn sincos_ps(x: f32) -> (f32, f32) {
    let sign_sin = x.to_bits() & 0x8000_0000;
    let x = x.abs();

    // Octant j = (trunc(x * 4/pi) + 1) & !1, as the AVX code converts with truncation.
    let j = ((x * FOUR_OVER_PI) as i32).wrapping_add(1) & !1;
    let y = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    // Octants 1, 2 (mod 4) take the sine from the cosine polynomial and vice versa.
    let swap_polys = j & 2 != 0;
    let sign_cos = ((!(j.wrapping_sub(2)) & 4) as u32) << 29;
    let sign_sin = sign_sin ^ swap_sign_sin;

    // Extended-precision reduction x - j*pi/4 in three steps.
    let x = fma(y, MINUS_DP1, x);
    let x = fma(y, MINUS_DP2, x);
    let x = fma(y, MINUS_DP3, x);

    let z = x * x;
    let mut cos_poly = fma(COSCOF[0], z, COSCOF[1]);
    cos_poly = fma(cos_poly, z, COSCOF[2]);
    cos_poly *= z;
    cos_poly = fma(cos_poly, z, -(z * 0.5));
    cos_poly += 1.0;

    let mut sin_poly = fma(SINCOF[0], z, SINCOF[1]);
    sin_poly = fma(sin_poly, z, SINCOF[2]);
    sin_poly *= z;
    sin_poly = fma(sin_poly, x, x);

    // The AVX code selects with masks and adds the masked-out zero, which turns -0 into +0.
    let (sin, cos) = if swap_polys { (cos_poly + 0.0, 0.0 + sin_poly) } else { (0.0 + sin_poly, cos_poly + 0.0) };
    (f32::from_bits(sin.to_bits() ^ sign_sin), f32::from_bits(cos.to_bits() ^ sign_cos))
}
