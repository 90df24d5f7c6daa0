//! Normalisations over the last axis, computed in at least f32 with a two-pass variance as PyTorch
//! does (candle's fused LayerNorm uses `E[x²] - E[x]²`, which cancels badly on large activations).

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

/// The precision a norm computes in: f64 stays f64, everything else is lifted to f32.
fn internal_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Root-mean-square norm with a learned scale and no mean or bias: T5's `T5LayerNorm` and
/// diffusers' `RMSNorm` (the FLUX / SD3.5 query-key norms): `w * x / sqrt(mean(x²) + eps)`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `vb` holds `weight` `[size]`.
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<RmsNorm> {
        Ok(RmsNorm { weight: vb.get(size, "weight")?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(internal_dtype(dtype))?;
        let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (mean_square + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv_rms)?.broadcast_mul(&self.weight.to_dtype(x.dtype())?)?.to_dtype(dtype)
    }
}

/// LayerNorm without a learned scale or bias (`elementwise_affine=False`), as every adaptive norm
/// of the diffusion transformers uses it: `(x - mean) / sqrt(var + eps)`.
#[derive(Debug, Clone, Copy)]
pub struct LayerNorm {
    eps: f64,
}

impl LayerNorm {
    pub fn new(eps: f64) -> LayerNorm {
        LayerNorm { eps }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(internal_dtype(dtype))?;
        let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().unwrap()
    }

    #[test]
    fn rms_norm_scales_by_root_mean_square_and_weight() {
        let w = Tensor::new(&[1f32, 2.0, 0.5], &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(HashMap::from([("weight".to_string(), w)]), DType::F32, &Device::Cpu);
        let norm = RmsNorm::load(3, 0.0, vb).unwrap();
        // rms of (3, 0, 4) is sqrt(25/3).
        let x = Tensor::new(&[[3f32, 0.0, 4.0]], &Device::Cpu).unwrap();
        let r = (25f32 / 3.0).sqrt();
        let got = rows(&norm.forward(&x).unwrap());
        for (g, e) in got[0].iter().zip([3.0 / r, 0.0, 0.5 * 4.0 / r]) {
            assert!((g - e).abs() < 1e-6, "{g} vs {e}");
        }
    }

    #[test]
    fn layer_norm_is_exact_on_large_offsets() {
        // A one-pass variance loses everything here: mean² is 1e8 times the variance.
        let x = Tensor::new(&[[1e4f32 + 1.0, 1e4 - 1.0, 1e4 + 1.0, 1e4 - 1.0]], &Device::Cpu).unwrap();
        let got = rows(&LayerNorm::new(0.0).forward(&x).unwrap());
        for (g, e) in got[0].iter().zip([1f32, -1.0, 1.0, -1.0]) {
            assert!((g - e).abs() < 1e-6, "{g} vs {e}");
        }
    }
}
