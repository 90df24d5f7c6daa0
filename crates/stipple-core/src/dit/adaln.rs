//! Adaptive LayerNorms: a LayerNorm without parameters whose shift, scale (and the residual
//! gates of the block) are regressed from the conditioning vector by `linear(silu(temb))`.

use candle_core::{Module, Tensor};
use crate::layers::{linear, Linear, ModelWeights};

use crate::layers::LayerNorm;

/// The epsilon every adaptive norm of FLUX and SD3 uses.
const EPS: f64 = 1e-6;

/// `norm(x) * (1 + scale) + shift` with `[B, D]` modulation broadcast over the tokens of `x`
/// `[B, S, D]`.
pub fn modulate(normed: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    normed.broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// `gate * y` with a `[B, D]` gate broadcast over the tokens of `y` `[B, S, D]`.
pub fn gated(gate: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    y.broadcast_mul(&gate.unsqueeze(1)?)
}

/// `linear(silu(emb))` split into `n` `[B, D]` chunks.
fn modulation(linear: &Linear, emb: &Tensor, n: usize) -> candle_core::Result<Vec<Tensor>> {
    linear.forward(&emb.silu()?)?.chunk(n, 1)
}

/// What [`AdaLayerNormZero`] hands its block.
pub struct ZeroNormOutput {
    /// The modulated input of the attention.
    pub x: Tensor,
    pub gate_msa: Tensor,
    pub shift_mlp: Tensor,
    pub scale_mlp: Tensor,
    pub gate_mlp: Tensor,
    /// SD3.5's second self-attention: its modulated input and its gate.
    pub second_attention: Option<(Tensor, Tensor)>,
}

/// diffusers' `AdaLayerNormZero` (6 chunks: shift, scale, gate of the attention; shift, scale,
/// gate of the MLP), or SD3.5's `SD35AdaLayerNormZeroX` (3 more for the second attention).
#[derive(Debug, Clone)]
pub struct AdaLayerNormZero {
    linear: Linear,
    norm: LayerNorm,
    second_attention: bool,
}

impl AdaLayerNormZero {
    pub fn load(dim: usize, second_attention: bool, vb: ModelWeights) -> candle_core::Result<AdaLayerNormZero> {
        let chunks = if second_attention { 9 } else { 6 };
        Ok(AdaLayerNormZero {
            linear: linear(dim, chunks * dim, vb.pp("linear"))?,
            norm: LayerNorm::new(EPS),
            second_attention,
        })
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> candle_core::Result<ZeroNormOutput> {
        let m = modulation(&self.linear, emb, if self.second_attention { 9 } else { 6 })?;
        let normed = self.norm.forward(x)?;
        let second_attention =
            if self.second_attention { Some((modulate(&normed, &m[6], &m[7])?, m[8].clone())) } else { None };
        Ok(ZeroNormOutput {
            x: modulate(&normed, &m[0], &m[1])?,
            gate_msa: m[2].clone(),
            shift_mlp: m[3].clone(),
            scale_mlp: m[4].clone(),
            gate_mlp: m[5].clone(),
            second_attention,
        })
    }
}

/// diffusers' `AdaLayerNormZeroSingle` (3 chunks: shift, scale, gate) of FLUX's single-stream
/// blocks. Returns the modulated input and the gate.
#[derive(Debug, Clone)]
pub struct AdaLayerNormZeroSingle {
    linear: Linear,
    norm: LayerNorm,
}

impl AdaLayerNormZeroSingle {
    pub fn load(dim: usize, vb: ModelWeights) -> candle_core::Result<AdaLayerNormZeroSingle> {
        Ok(AdaLayerNormZeroSingle {
            linear: linear(dim, 3 * dim, vb.pp("linear"))?,
            norm: LayerNorm::new(EPS),
        })
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let m = modulation(&self.linear, emb, 3)?;
        Ok((modulate(&self.norm.forward(x)?, &m[0], &m[1])?, m[2].clone()))
    }
}

/// diffusers' `AdaLayerNormContinuous` (2 chunks, **scale first**, then shift) of `norm_out` and of
/// SD3's last context stream.
#[derive(Debug, Clone)]
pub struct AdaLayerNormContinuous {
    linear: Linear,
    norm: LayerNorm,
}

impl AdaLayerNormContinuous {
    pub fn load(dim: usize, conditioning_dim: usize, vb: ModelWeights) -> candle_core::Result<AdaLayerNormContinuous> {
        Ok(AdaLayerNormContinuous {
            linear: linear(conditioning_dim, 2 * dim, vb.pp("linear"))?,
            norm: LayerNorm::new(EPS),
        })
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> candle_core::Result<Tensor> {
        let m = modulation(&self.linear, emb, 2)?;
        modulate(&self.norm.forward(x)?, &m[1], &m[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// A `linear` whose output is its bias alone (zero weight), so the chunks are known.
    fn vb_with_bias(dim: usize, bias: Vec<f32>) -> ModelWeights {
        let n = bias.len();
        let w = HashMap::from([
            ("linear.weight".to_string(), Tensor::zeros((n, dim), DType::F32, &Device::Cpu).unwrap()),
            ("linear.bias".to_string(), Tensor::from_vec(bias, n, &Device::Cpu).unwrap()),
        ]);
        candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu).into()
    }

    #[test]
    fn continuous_norm_takes_scale_before_shift() {
        // scale = (1, 1), shift = (10, 20): out = norm(x) * 2 + shift.
        let norm = AdaLayerNormContinuous::load(2, 2, vb_with_bias(2, vec![1.0, 1.0, 10.0, 20.0])).unwrap();
        let x = Tensor::new(&[[[3f32, 5.0]]], &Device::Cpu).unwrap();
        let emb = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
        let out = norm.forward(&x, &emb).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // norm((3, 5)) = (-1, 1).
        assert!((out[0] - 8.0).abs() < 1e-4 && (out[1] - 22.0).abs() < 1e-4, "{out:?}");
    }

    #[test]
    fn zero_norm_chunks_are_shift_scale_gate_per_branch() {
        let bias: Vec<f32> = (0..18).map(|i| i as f32).collect();
        let norm = AdaLayerNormZero::load(2, false, vb_with_bias(2, bias[..12].to_vec())).unwrap();
        let x = Tensor::new(&[[[3f32, 5.0]]], &Device::Cpu).unwrap();
        let emb = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
        let out = norm.forward(&x, &emb).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // shift (0, 1), scale (2, 3): (-1, 1) * (3, 4) + (0, 1).
        let xs = v(&out.x);
        assert!((xs[0] + 3.0).abs() < 1e-4 && (xs[1] - 5.0).abs() < 1e-4, "{xs:?}");
        assert_eq!((v(&out.gate_msa), v(&out.shift_mlp)), (vec![4.0, 5.0], vec![6.0, 7.0]));
        assert_eq!((v(&out.scale_mlp), v(&out.gate_mlp)), (vec![8.0, 9.0], vec![10.0, 11.0]));
        assert!(out.second_attention.is_none());

        let dual = AdaLayerNormZero::load(2, true, vb_with_bias(2, bias)).unwrap();
        let out = dual.forward(&x, &emb).unwrap();
        let (x2, gate2) = out.second_attention.unwrap();
        // shift2 (12, 13), scale2 (14, 15).
        let x2 = v(&x2);
        assert!((x2[0] - (-15.0 + 12.0)).abs() < 1e-3 && (x2[1] - (16.0 + 13.0)).abs() < 1e-3, "{x2:?}");
        assert_eq!(v(&gate2), vec![16.0, 17.0]);
    }
}
