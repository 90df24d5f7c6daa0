//! The conditioning vector of the diffusion transformers: sinusoidal timestep features through an
//! MLP, plus the pooled text embedding through another (diffusers
//! `CombinedTimestepTextProjEmbeddings`), plus FLUX-dev's guidance MLP
//! (`CombinedTimestepGuidanceTextProjEmbeddings`).

use candle_core::{Module, Tensor};
use crate::layers::{linear, Linear, ModelWeights};

/// Width of the sinusoidal features FLUX and SD3 feed their timestep MLPs.
pub const TIMESTEP_FEATURES: usize = 256;
const MAX_PERIOD: f64 = 10000.0;

/// diffusers' `get_timestep_embedding` for `t` `[B]`: `[B, dim]` of `sin(t·f_i)` and `cos(t·f_i)`
/// with `f_i = exp(-ln(10000)·i / (dim/2 - shift))`, cosines first when `flip_sin_to_cos`.
/// Computed in f32 step by step as PyTorch does, since `t` reaches 1000 (FLUX guidance 3500) and
/// an ulp in `f_i` shifts the phase visibly.
pub fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let neg_log_period = -(MAX_PERIOD.ln()) as f32;
    let denominator = half as f32 - downscale_freq_shift;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * neg_log_period / denominator).exp()).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(candle_core::DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let parts = if flip_sin_to_cos { [cos, sin] } else { [sin, cos] };
    let emb = Tensor::cat(&parts, 1)?;
    if dim % 2 == 1 {
        // An odd width gets one zero column, as diffusers pads it.
        let zero = Tensor::zeros((emb.dim(0)?, 1), emb.dtype(), emb.device())?;
        return Tensor::cat(&[emb, zero], 1);
    }
    Ok(emb)
}

/// `linear_2(silu(linear_1(x)))`: diffusers' `TimestepEmbedding` and `PixArtAlphaTextProjection`
/// (with `act_fn="silu"`), which share this shape and these key names.
#[derive(Debug, Clone)]
pub struct MlpEmbedder {
    linear_1: Linear,
    linear_2: Linear,
}

impl MlpEmbedder {
    pub fn load(in_dim: usize, out_dim: usize, vb: ModelWeights) -> candle_core::Result<MlpEmbedder> {
        Ok(MlpEmbedder {
            linear_1: linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// `time_text_embed`: timestep MLP + pooled-text MLP (+ guidance MLP), summed.
#[derive(Debug, Clone)]
pub struct TimeTextEmbedding {
    timestep_embedder: MlpEmbedder,
    guidance_embedder: Option<MlpEmbedder>,
    text_embedder: MlpEmbedder,
}

impl TimeTextEmbedding {
    /// `vb` is `time_text_embed`; `with_guidance` adds `guidance_embedder` (FLUX-dev).
    pub fn load(
        dim: usize,
        pooled_dim: usize,
        with_guidance: bool,
        vb: ModelWeights,
    ) -> candle_core::Result<TimeTextEmbedding> {
        let guidance_embedder = if with_guidance {
            Some(MlpEmbedder::load(TIMESTEP_FEATURES, dim, vb.pp("guidance_embedder"))?)
        } else {
            None
        };
        Ok(TimeTextEmbedding {
            timestep_embedder: MlpEmbedder::load(TIMESTEP_FEATURES, dim, vb.pp("timestep_embedder"))?,
            guidance_embedder,
            text_embedder: MlpEmbedder::load(pooled_dim, dim, vb.pp("text_embedder"))?,
        })
    }

    pub fn has_guidance(&self) -> bool {
        self.guidance_embedder.is_some()
    }

    /// `timestep` `[B]` and `guidance` `[B]` in the units the MLPs were trained on (FLUX: ×1000
    /// already applied); `pooled` `[B, pooled_dim]`. Returns `[B, dim]`. `guidance` is ignored
    /// without a guidance MLP, as diffusers ignores it.
    pub fn forward(
        &self,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let features = |t: &Tensor| timestep_embedding(t, TIMESTEP_FEATURES, true, 0.0);
        let dtype = pooled.dtype();
        let mut emb = self.timestep_embedder.forward(&features(timestep)?.to_dtype(dtype)?)?;
        if let Some(embedder) = &self.guidance_embedder {
            let Some(guidance) = guidance else {
                candle_core::bail!("this model embeds a guidance value, but none was given");
            };
            emb = (emb + embedder.forward(&features(guidance)?.to_dtype(dtype)?)?)?;
        }
        emb + self.text_embedder.forward(pooled)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn timestep_embedding_matches_the_closed_form() {
        let t = Tensor::new(&[0f32, 750.0], &Device::Cpu).unwrap();
        let emb = timestep_embedding(&t, 8, true, 0.0).unwrap().to_vec2::<f32>().unwrap();
        // t = 0: cosines 1, sines 0.
        assert_eq!(emb[0], vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        for i in 0..4 {
            let f = (-(10000f64.ln()) * i as f64 / 4.0).exp();
            assert!((emb[1][i] as f64 - (750.0 * f).cos()).abs() < 1e-4, "cos {i}");
            assert!((emb[1][4 + i] as f64 - (750.0 * f).sin()).abs() < 1e-4, "sin {i}");
        }
        let unflipped = timestep_embedding(&t, 8, false, 0.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(&unflipped[1][..4], &emb[1][4..]);
        let odd = timestep_embedding(&t, 9, true, 1.0).unwrap();
        assert_eq!(odd.dims(), &[2, 9]);
    }
}
