//! PyTorch-compatible CPU noise, so a seed gives the same image as diffusers.
//!
//! [`TorchRng`] reproduces `torch.randn(shape, generator=torch.Generator().manual_seed(seed),
//! dtype=torch.float32)` on the CPU bit for bit, and successive draws continue the generator's
//! stream the way one `torch.Generator` does across calls (initial latents, then per-step noise).
//!
//! What PyTorch does (ATen `CPUGeneratorImpl`, `DistributionsHelper.h`, `cpu/DistributionTemplates.h`):
//! * the engine is MT19937 seeded from the low 32 bits of the 64-bit seed ([`mt19937`]);
//! * a float uniform takes one 32-bit draw and keeps 24 bits (`(r & (2^24-1)) * 2^-24`), a double
//!   uniform takes a 64-bit draw (first word high) and keeps 53 bits;
//! * a contiguous float32 tensor with at least 16 elements is first filled with float uniforms,
//!   then transformed by Box–Muller in blocks of 16 (`u1 = 1 - data[j]`, `u2 = data[j + 8]`,
//!   `r = sqrt(-2 ln u1)`, `data[j] = r cos(2πu2)`, `data[j + 8] = r sin(2πu2)`); when the size is
//!   not a multiple of 16 the last 16 elements are refilled with fresh uniforms and transformed
//!   again;
//! * smaller tensors draw each element from the double-precision Box–Muller sampler, which makes
//!   two values from two double uniforms and caches the second in the generator for the next call;
//!   the float path neither uses nor clears that cache.
//!
//! Which `log`/`sin`/`cos` the 16-block transform uses depends on the CPU kernel PyTorch
//! dispatches to, see [`BoxMullerKernel`].

mod avx_mathfun;
mod mt19937;

use candle_core::{Device, Tensor};

use crate::Result;
use mt19937::Mt19937;

/// The implementation of PyTorch's 16-element Box–Muller block to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoxMullerKernel {
    /// `normal_fill_16_AVX2`: what PyTorch runs on every x86-64 CPU with AVX2 (its AVX2 and
    /// AVX-512 kernels share it), i.e. what diffusers on a PC or server CPU produces. Uses the
    /// Cephes-style `log256_ps` / `sincos256_ps` approximations in f32.
    #[default]
    X86Avx2,
    /// The portable `normal_fill_16` (PyTorch's `DEFAULT` CPU capability, e.g.
    /// `ATEN_CPU_CAPABILITY=default`): f32 `log`, `cos`, `sin` from the platform's libm, which
    /// matches PyTorch only when both use the same libm (glibc on Linux).
    PortableLibm,
}

/// A `torch.Generator` on the CPU, limited to what diffusers draws with it: standard-normal f32.
#[derive(Clone)]
pub struct TorchRng {
    engine: Mt19937,
    /// The second value of the last double Box–Muller pair (ATen's `next_double_normal_sample`).
    cached_normal: Option<f64>,
    kernel: BoxMullerKernel,
}

/// Tensors with fewer elements (or non-f32 ones, which Stipple never draws) take the scalar path.
const BLOCK: usize = 16;
const HALF_BLOCK: usize = BLOCK / 2;

impl TorchRng {
    /// `torch.Generator().manual_seed(seed)` with the kernel of x86 PyTorch builds.
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, BoxMullerKernel::default())
    }

    pub fn with_kernel(seed: u64, kernel: BoxMullerKernel) -> Self {
        TorchRng { engine: Mt19937::new(seed), cached_normal: None, kernel }
    }

    /// The seed this generator was created with (all 64 bits, like `initial_seed()`).
    pub fn initial_seed(&self) -> u64 {
        self.engine.seed()
    }

    pub fn kernel(&self) -> BoxMullerKernel {
        self.kernel
    }

    /// One raw 32-bit draw (ATen `random()`).
    pub fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// One raw 64-bit draw from two 32-bit ones, the first in the high half (ATen `random64()`).
    pub fn random64(&mut self) -> u64 {
        let hi = self.engine.next_u32() as u64;
        let lo = self.engine.next_u32() as u64;
        (hi << 32) | lo
    }

    /// A float uniform in [0, 1) with 24 random bits (`uniform_real_distribution<float>(0, 1)`).
    pub fn uniform_f32(&mut self) -> f32 {
        const MANTISSA: u32 = (1 << f32::MANTISSA_DIGITS) - 1;
        (self.random() & MANTISSA) as f32 * (1.0 / (1u32 << f32::MANTISSA_DIGITS) as f32)
    }

    /// A double uniform in [0, 1) with 53 random bits (`uniform_real_distribution<double>(0, 1)`).
    pub fn uniform_f64(&mut self) -> f64 {
        const MANTISSA: u64 = (1 << f64::MANTISSA_DIGITS) - 1;
        (self.random64() & MANTISSA) as f64 * (1.0 / (1u64 << f64::MANTISSA_DIGITS) as f64)
    }

    /// One standard-normal double from ATen's `normal_distribution<double>`, using and refilling
    /// the cached second value of a Box–Muller pair.
    pub fn normal_f64(&mut self) -> f64 {
        // Each value passes through `x * std + mean` with std 1, mean 0, which turns -0 into +0.
        if let Some(cached) = self.cached_normal.take() {
            return cached + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos() + 0.0
    }

    /// `torch.randn(numel, generator=self, dtype=torch.float32)` as a flat vector.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel < BLOCK {
            return (0..numel).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(BLOCK) {
            self.box_muller_16(block);
        }
        if numel % BLOCK != 0 {
            // PyTorch redraws the last 16 values (overlapping the last full block) and transforms them.
            let tail = &mut data[numel - BLOCK..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            self.box_muller_16(tail);
        }
        data
    }

    /// `torch.randn(shape, generator=self, dtype=torch.float32)` as an f32 tensor on `device`
    /// (always drawn on the CPU, as diffusers does with a CPU generator).
    pub fn randn_tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let numel = shape.iter().product();
        Ok(Tensor::from_vec(self.randn(numel), shape, device)?)
    }

    /// Turn 16 uniforms into 16 standard normals in place.
    fn box_muller_16(&self, block: &mut [f32]) {
        let (first, second) = block.split_at_mut(HALF_BLOCK);
        for (a, b) in first.iter_mut().zip(second.iter_mut()) {
            let (n1, n2) = match self.kernel {
                BoxMullerKernel::X86Avx2 => box_muller_avx2(*a, *b),
                BoxMullerKernel::PortableLibm => box_muller_libm(*a, *b),
            };
            *a = n1;
            *b = n2;
        }
    }
}

/// The float 2π PyTorch broadcasts: `(float)(2.0f * c10::pi<double>)`.
const TWO_PI_F32: f32 = (2.0 * std::f64::consts::PI) as f32;

/// One lane of `normal_fill_16_AVX2` with mean 0 and std 1.
fn box_muller_avx2(uniform1: f32, uniform2: f32) -> (f32, f32) {
    let radius = (-2.0 * avx_mathfun::log_ps(1.0 - uniform1)).sqrt();
    let (sin, cos) = avx_mathfun::sincos_ps(TWO_PI_F32 * uniform2);
    // `fmadd(n, std = 1, mean = 0)`: the + 0 turns a -0 into +0 as PyTorch's does.
    (radius * cos + 0.0, radius * sin + 0.0)
}

/// One lane of the portable `normal_fill_16<float>` with mean 0 and std 1.
fn box_muller_libm(uniform1: f32, uniform2: f32) -> (f32, f32) {
    let radius = (-2.0 * (1.0 - uniform1).ln()).sqrt();
    // `2.0f * c10::pi<double> * u2` is evaluated in double, then stored as float.
    let theta = (2.0 * std::f64::consts::PI * uniform2 as f64) as f32;
    (radius * theta.cos() + 0.0, radius * theta.sin() + 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use safetensors::SafeTensors;
    use serde::Deserialize;

    /// Written by `testdata/torch_randn/make_torch_randn.py` (see the README there).
    const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/torch_randn/torch_randn.safetensors");

    #[derive(Deserialize)]
    struct ReferenceCase {
        kernel: String,
        name: String,
        seed: String,
        shapes: Vec<Vec<usize>>,
    }

    /// Worst distance in units in the last place between two f32 slices (equal bits = 0).
    fn max_ulp_distance(a: &[f32], b: &[f32]) -> u32 {
        // Map the sign-magnitude bit patterns onto a monotonic integer line.
        let ordered = |x: f32| {
            let bits = x.to_bits() as i32;
            if bits < 0 { i32::MIN.wrapping_sub(bits) } else { bits }
        };
        a.iter().zip(b).map(|(&x, &y)| ordered(x).abs_diff(ordered(y))).max().unwrap_or(0)
    }

    fn reference_values(tensors: &SafeTensors, key: &str) -> Vec<f32> {
        let view = tensors.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{key}");
        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// Every case PyTorch recorded, replayed per kernel; returns how many draws were compared.
    fn check_against_torch(kernel: BoxMullerKernel, kernel_name: &str) -> usize {
        let bytes = std::fs::read(REFERENCE).expect("reading the torch_randn reference file");
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("reference header");
        let cases_json = metadata.metadata().as_ref().and_then(|m| m.get("cases")).expect("`cases` metadata");
        let cases: Vec<ReferenceCase> = serde_json::from_str(cases_json).expect("`cases` JSON");
        let tensors = SafeTensors::deserialize(&bytes).expect("reference tensors");

        let mut compared = 0;
        for case in cases.iter().filter(|c| c.kernel == kernel_name) {
            let seed: u64 = case.seed.parse().expect("decimal seed");
            let mut rng = TorchRng::with_kernel(seed, kernel);
            for (i, shape) in case.shapes.iter().enumerate() {
                let key = format!("{}/{}/{}", case.kernel, case.name, i);
                let expected = reference_values(&tensors, &key);
                let actual = rng.randn_tensor(shape, &Device::Cpu).unwrap();
                assert_eq!(actual.dims(), shape.as_slice(), "{key}");
                let actual = actual.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let ulps = max_ulp_distance(&actual, &expected);
                let abs = actual.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert_eq!(ulps, 0, "{key}: max {ulps} ulp, max |diff| {abs:e} from PyTorch");
                compared += 1;
            }
        }
        compared
    }

    #[test]
    fn x86_kernel_is_bit_exact_with_torch() {
        assert_eq!(check_against_torch(BoxMullerKernel::X86Avx2, "x86_avx2"), 28);
    }

    /// The portable kernel leans on libm's `logf`/`sinf`/`cosf`; the reference was made with glibc.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn portable_kernel_is_bit_exact_with_torch_default_capability() {
        assert_eq!(check_against_torch(BoxMullerKernel::PortableLibm, "portable"), 7);
    }

    #[test]
    fn float_uniforms_keep_24_bits_of_one_draw() {
        let mut a = TorchRng::new(3);
        let mut b = TorchRng::new(3);
        for _ in 0..100 {
            let u = a.uniform_f32();
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u, (b.random() & 0xff_ffff) as f32 / 16_777_216.0);
        }
    }

    #[test]
    fn double_uniforms_keep_53_bits_of_a_high_first_64_bit_draw() {
        let mut a = TorchRng::new(3);
        let mut b = TorchRng::new(3);
        let u = a.uniform_f64();
        let (hi, lo) = (b.random() as u64, b.random() as u64);
        assert_eq!(u, (((hi << 32) | lo) & ((1 << 53) - 1)) as f64 / 9_007_199_254_740_992.0);
    }

    #[test]
    fn tail_redraws_the_last_sixteen_values() {
        // 20 values: one full block from uniforms 0..16, then 4 filler uniforms (16..20) that the
        // tail overwrites with the 16 uniforms 20..36 at positions 4..20.
        let mut rng = TorchRng::new(11);
        let noise = rng.randn(20);
        let mut replay = TorchRng::new(11);
        let mut uniforms: Vec<f32> = (0..36).map(|_| replay.uniform_f32()).collect();
        replay.box_muller_16(&mut uniforms[0..16]);
        replay.box_muller_16(&mut uniforms[20..36]);
        assert_eq!(&noise[0..4], &uniforms[0..4]);
        assert_eq!(&noise[4..20], &uniforms[20..36]);
        // Both generators have consumed 36 draws.
        assert_eq!(rng.random(), replay.random());
    }

    #[test]
    fn small_draws_share_the_cached_second_normal_across_calls() {
        let mut split = TorchRng::new(5);
        let mut whole = TorchRng::new(5);
        let mut joined = split.randn(3);
        joined.extend(split.randn(3));
        assert_eq!(joined, whole.randn(6));
        // Odd count: one cached value is left over and is not a fresh draw.
        let mut rng = TorchRng::new(5);
        rng.randn(1);
        assert!(rng.cached_normal.is_some());
    }

    #[test]
    fn the_box_muller_output_is_standard_normal() {
        let noise = TorchRng::new(0).randn(1 << 16);
        let n = noise.len() as f64;
        let mean = noise.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = noise.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "mean {mean}, variance {var}");
    }

    #[test]
    fn avx_log_and_sincos_stay_close_to_libm() {
        for i in 1..=1000 {
            let x = i as f32 / 1000.0;
            assert!((avx_mathfun::log_ps(x) - x.ln()).abs() <= 4.0 * f32::EPSILON * x.ln().abs().max(1.0));
            let theta = TWO_PI_F32 * x;
            let (s, c) = avx_mathfun::sincos_ps(theta);
            assert!((s - theta.sin()).abs() < 1e-6 && (c - theta.cos()).abs() < 1e-6, "theta {theta}");
        }
        assert!(avx_mathfun::log_ps(0.0).is_nan() && avx_mathfun::log_ps(-1.0).is_nan());
    }
}
