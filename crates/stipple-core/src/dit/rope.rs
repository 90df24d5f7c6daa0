//! FLUX's rotary position embedding (diffusers `FluxPosEmbed`): every token has an id of a few
//! axes (FLUX: `(0, row, col)` for image tokens, zeros for text); axis `a` rotates its own slice of
//! `axes_dims[a]` channels of each head by angles `id_a · θ^(-2i/axes_dims[a])`. Channels are
//! rotated in interleaved pairs `(2i, 2i+1)`.

use candle_core::{DType, Device, Tensor, D};

/// The base of the rotary frequencies in FLUX.
pub const FLUX_ROPE_THETA: f64 = 10000.0;

/// Cosines and sines `[S, head_dim]` for one sequence of ids.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    /// `ids` `[S, axes]` (any float dtype); `axes_dims` the channels per axis, each even.
    /// Angles are computed in f64 and rounded to f32 once, as diffusers does on CPU and CUDA.
    pub fn new(ids: &Tensor, axes_dims: &[usize], theta: f64, device: &Device) -> candle_core::Result<RotaryEmbedding> {
        let (seq_len, axes) = ids.dims2()?;
        if axes != axes_dims.len() {
            candle_core::bail!("position ids have {axes} axes, but the model's axes_dims_rope has {}", axes_dims.len());
        }
        if let Some(odd) = axes_dims.iter().find(|&&d| d % 2 == 1) {
            candle_core::bail!("axes_dims_rope entry {odd} is odd; rotary channels come in pairs");
        }
        let ids = ids.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        // 1 / θ^(2i/d) per axis, as `get_1d_rotary_pos_embed(freqs_dtype=float64)` computes it.
        let inv_freqs: Vec<Vec<f64>> = axes_dims
            .iter()
            .map(|&d| (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64)).collect())
            .collect();
        let head_dim: usize = axes_dims.iter().sum();
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for row in &ids {
            for (&position, freqs) in row.iter().zip(&inv_freqs) {
                for &f in freqs {
                    let angle = f64::from(position) * f;
                    let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                    cos.extend([c, c]);
                    sin.extend([s, s]);
                }
            }
        }
        Ok(RotaryEmbedding {
            cos: Tensor::from_vec(cos, (seq_len, head_dim), device)?,
            sin: Tensor::from_vec(sin, (seq_len, head_dim), device)?,
        })
    }

    /// Rotate `x` `[B, H, S, head_dim]`: `x·cos + rot(x)·sin`, `rot` mapping each pair `(a, b)` to
    /// `(-b, a)`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, s, d) = x.dims4()?;
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let pairs = x.reshape((b, h, s, d / 2, 2))?;
        let (first, second) = (pairs.narrow(D::Minus1, 0, 1)?, pairs.narrow(D::Minus1, 1, 1)?);
        let rotated = Tensor::cat(&[second.neg()?, first], D::Minus1)?.reshape((b, h, s, d))?;
        (x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ids_leave_vectors_unchanged_and_each_axis_rotates_its_own_pairs() {
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[0f32, 0.0], [0.0, 3.0]], &dev).unwrap();
        let rope = RotaryEmbedding::new(&ids, &[2, 4], FLUX_ROPE_THETA, &dev).unwrap();
        let x = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], &dev).unwrap().reshape((1, 1, 1, 6)).unwrap();
        let x = x.broadcast_as((1, 1, 2, 6)).unwrap().contiguous().unwrap();
        let out = rope.apply(&x).unwrap().reshape((2, 6)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(out[0], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Token 1: axis 0 (id 0) untouched; axis 1 (id 3) rotates (3, 4) by 3 rad and (5, 6) by 3/100 rad.
        assert_eq!(&out[1][..2], &[1.0, 2.0]);
        let (c, s) = (3f32.cos(), 3f32.sin());
        assert!((out[1][2] - (3.0 * c - 4.0 * s)).abs() < 1e-5 && (out[1][3] - (4.0 * c + 3.0 * s)).abs() < 1e-5);
        let (c, s) = (0.03f32.cos(), 0.03f32.sin());
        assert!((out[1][4] - (5.0 * c - 6.0 * s)).abs() < 1e-5 && (out[1][5] - (6.0 * c + 5.0 * s)).abs() < 1e-5);
    }

    #[test]
    fn mismatched_axes_are_refused() {
        let dev = Device::Cpu;
        let ids = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
        assert!(RotaryEmbedding::new(&ids, &[4, 4], FLUX_ROPE_THETA, &dev).is_err());
        assert!(RotaryEmbedding::new(&ids, &[4, 3, 4], FLUX_ROPE_THETA, &dev).is_err());
    }
}
