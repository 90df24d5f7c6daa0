//! diffusers `FeedForward` with the GEGLU activation (the transformer blocks' MLP):
//! `net.2(hidden * gelu(gate))` where `[hidden | gate] = net.0.proj(x)`, GELU exact (erf).
//!
//! On the CPU in f32 the gating is one vectorised pass ([`super::fast_math::gelu`]); elsewhere
//! candle's erf GELU and a multiplication.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use rayon::prelude::*;

use super::group_norm::contiguous_f32;
use crate::Result;

#[derive(Debug, Clone)]
pub struct GegluFeedForward {
    /// First half of `net.0.proj`: the value path.
    hidden: Linear,
    /// Second half of `net.0.proj`: the gate that goes through GELU.
    gate: Linear,
    out: Linear,
}

impl GegluFeedForward {
    /// `dim` → `inner_dim` (diffusers: `4 * dim`) → `dim`, loaded from `net.0.proj` and `net.2`.
    pub fn new(vb: VarBuilder, dim: usize, inner_dim: usize) -> Result<Self> {
        let proj = vb.pp("net.0.proj");
        let w = proj.get((2 * inner_dim, dim), "weight")?;
        let b = proj.get(2 * inner_dim, "bias")?;
        // Row slices of a contiguous matrix are views: the two halves share the loaded storage and
        // each matmul writes a contiguous result (no strided `chunk` of a joint output).
        let half = |i: usize| -> Result<Linear> {
            Ok(Linear::new(w.narrow(0, i * inner_dim, inner_dim)?, Some(b.narrow(0, i * inner_dim, inner_dim)?)))
        };
        Ok(Self { hidden: half(0)?, gate: half(1)?, out: candle_nn::linear(inner_dim, dim, vb.pp("net.2"))? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (hidden, gate) = (self.hidden.forward(x)?, self.gate.forward(x)?);
        let gated = if hidden.device().is_cpu() && hidden.dtype() == DType::F32 {
            hidden.contiguous()?.apply_op2_no_bwd(&gate.contiguous()?, &GegluCpu)?
        } else {
            (hidden * gate.gelu_erf()?)?
        };
        Ok(self.out.forward(&gated)?)
    }
}

/// `hidden * gelu(gate)` elementwise.
struct GegluCpu;

impl CustomOp2 for GegluCpu {
    fn name(&self) -> &'static str {
        "stipple-geglu"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let hidden = contiguous_f32(hs, hl, "hidden")?;
        let gate = contiguous_f32(gs, gl, "gate")?;
        if hl.shape() != gl.shape() {
            candle_core::bail!("GEGLU halves differ in shape: {:?} and {:?}", hl.shape(), gl.shape());
        }
        let mut out = vec![0f32; hidden.len()];
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK).zip(hidden.par_chunks(CHUNK).zip(gate.par_chunks(CHUNK))).for_each(|(o, (h, g))| {
            super::fast_math::geglu(h, g, o);
        });
        Ok((CpuStorage::F32(out), hl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
    use candle_core::{DType, Device, D};

    #[test]
    fn equals_chunked_geglu() {
        let dev = Device::Cpu;
        let (dim, inner) = (4, 6);
        let w = seeded(&[2 * inner, dim], 1, &dev);
        let b = seeded(&[2 * inner], 2, &dev);
        let w2 = seeded(&[dim, inner], 3, &dev);
        let b2 = seeded(&[dim], 4, &dev);
        let vb = VarBuilder::from_tensors(
            [
                ("net.0.proj.weight", w.clone()),
                ("net.0.proj.bias", b.clone()),
                ("net.2.weight", w2.clone()),
                ("net.2.bias", b2.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            DType::F32,
            &dev,
        );
        let ff = GegluFeedForward::new(vb, dim, inner).unwrap();
        let x = seeded(&[2, 3, dim], 5, &dev);
        // diffusers: proj, chunk(2, dim=-1), hidden * gelu(gate), then net.2.
        let projected = Linear::new(w, Some(b)).forward(&x).unwrap();
        let chunks = projected.chunk(2, D::Minus1).unwrap();
        let want = Linear::new(w2, Some(b2)).forward(&(&chunks[0] * chunks[1].gelu_erf().unwrap()).unwrap()).unwrap();
        assert!(max_abs_diff(&ff.forward(&x).unwrap(), &want) < 1e-6);
    }
}
