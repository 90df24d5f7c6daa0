//! The default model's denoiser: a small diffusion transformer (DiT) over 2x2 patches of the
//! latent image, conditioned by adaLN-Zero on the timestep plus the pooled text embedding, and by
//! cross-attention on the text tokens. Predicts ε or v, as the scheduler config says.
//!
//! Per block: `x += gate₁ · attn(mod₁(norm(x)))`, `x += cross_attn(norm(x), text)`,
//! `x += gate₂ · mlp(mod₂(norm(x)))`, where shift, scale and gate come from
//! `linear(silu(c))`, zero at initialisation. Positions are a fixed 2-D sin-cos table.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::embeddings::timestep_embedding;
use super::patch_embed::sincos_2d_table;
use super::patches::{patchify, unpatchify, TokenLayout};
use crate::model::{Conditioning, Denoiser, ImageInfo};
use crate::nn::trainable::{layer_norm, linear, scale_shift, silu, zero_linear, Attention, Dense, LayerNorm, Mlp};
use crate::{Error, Result};

const NORM_EPS: f64 = 1e-6;

/// `transformer/config.json` of the default model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StippleDitConfig {
    /// Latent channels in and out.
    pub in_channels: usize,
    pub patch_size: usize,
    /// Latent side the model was trained at (16 for 128x128 images).
    pub sample_size: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: usize,
    /// Width of the text encoder's token embeddings.
    pub context_dim: usize,
    /// Width of the pooled text embedding.
    pub pooled_dim: usize,
    /// Sinusoidal timestep features fed to the timestep MLP.
    pub timestep_features: usize,
    /// SwiGLU feed-forward layers instead of SiLU ones, with two thirds of the units so the
    /// parameter count stays the same (`2/3 · mlp_ratio · hidden_size` gated units).
    #[serde(default)]
    pub gated_mlp: bool,
}

impl StippleDitConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Unsupported(format!("stipple DiT config: {what}")));
        if self.in_channels == 0 || self.patch_size == 0 || self.depth == 0 || self.mlp_ratio == 0 {
            return bad("in_channels, patch_size, depth and mlp_ratio must be positive".into());
        }
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 {
            return bad(format!("hidden_size {} is not a multiple of num_heads {}", self.hidden_size, self.num_heads));
        }
        if self.hidden_size % 4 != 0 || self.timestep_features % 2 != 0 {
            return bad("hidden_size must be a multiple of 4 and timestep_features even".into());
        }
        Ok(())
    }
}

/// `[B, n·D]` → `n` contiguous `[B, 1, D]` modulation vectors.
fn chunks(m: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    m.unsqueeze(1)?.chunk(n, 2)?.into_iter().map(|c| Ok(c.contiguous()?)).collect()
}

/// `norm(x) · (1 + scale) + shift` with per-sample `[B, 1, D]` modulation.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(scale_shift(&layer_norm(x, NORM_EPS)?, Some(&(scale + 1.0)?), Some(shift))?)
}

#[derive(Debug, Clone)]
struct Block {
    modulation: Dense,
    attn: Attention,
    cross_norm: LayerNorm,
    cross_attn: Attention,
    mlp: Mlp,
}

impl Block {
    fn new(c: &StippleDitConfig, vb: VarBuilder) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            modulation: zero_linear(d, 6 * d, vb.pp("adaln_modulation"))?,
            attn: Attention::new(d, d, c.num_heads, false, vb.pp("attn"))?,
            cross_norm: LayerNorm::new(d, vb.pp("cross_norm"))?,
            cross_attn: Attention::new(d, c.context_dim, c.num_heads, true, vb.pp("cross_attn"))?,
            mlp: if c.gated_mlp {
                Mlp::gated(d, 2 * d * c.mlp_ratio / 3, vb.pp("mlp"))?
            } else {
                Mlp::new(d, d * c.mlp_ratio, false, vb.pp("mlp"))?
            },
        })
    }

    /// `x` `[B, N, D]`, `c` = silu(conditioning) `[B, D]`, `context` `[B, L, Dc]`.
    fn forward(&self, x: &Tensor, c: &Tensor, context: &Tensor) -> Result<Tensor> {
        let m = chunks(&self.modulation.forward(c)?, 6)?;
        let h = self.attn.forward(&modulate(x, &m[0], &m[1])?, None)?;
        let x = (x + scale_shift(&h, Some(&m[2]), None)?)?;
        let x = (&x + self.cross_attn.forward(&self.cross_norm.forward(&x)?, Some(context))?)?;
        let h = self.mlp.forward(&modulate(&x, &m[3], &m[4])?)?;
        Ok((&x + scale_shift(&h, Some(&m[5]), None)?)?)
    }
}

/// The default model's diffusion transformer.
#[derive(Debug, Clone)]
pub struct StippleDit {
    config: StippleDitConfig,
    patch_embed: Dense,
    time_mlp_1: Dense,
    time_mlp_2: Dense,
    pooled_proj: Dense,
    blocks: Vec<Block>,
    final_modulation: Dense,
    final_proj: Dense,
}

impl StippleDit {
    pub fn new(config: &StippleDitConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let patch_dim = config.in_channels * config.patch_size * config.patch_size;
        let blocks = (0..config.depth).map(|i| Block::new(config, vb.pp(format!("blocks.{i}")))).collect::<Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            patch_embed: linear(patch_dim, d, vb.pp("patch_embed"))?,
            time_mlp_1: linear(config.timestep_features, d, vb.pp("time_embed.linear_1"))?,
            time_mlp_2: linear(d, d, vb.pp("time_embed.linear_2"))?,
            pooled_proj: linear(config.pooled_dim, d, vb.pp("pooled_proj"))?,
            blocks,
            final_modulation: zero_linear(d, 2 * d, vb.pp("final_modulation"))?,
            final_proj: zero_linear(d, patch_dim, vb.pp("final_proj"))?,
        })
    }

    pub fn config(&self) -> &StippleDitConfig {
        &self.config
    }

    /// The prediction (ε or v, as the model was trained) for latents `x` `[B, C, H, W]` at
    /// `timesteps` `[B]` (0..1000), text tokens `context` `[B, L, context_dim]` and `pooled`
    /// `[B, pooled_dim]`.
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor, context: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_tokens(x, timesteps, context, pooled)?.0)
    }

    /// [`Self::forward`], also returning the last hidden tokens `[B, rows·cols, hidden_size]`
    /// (after the final modulation) for heads trained beside the prediction.
    pub fn forward_with_tokens(&self, x: &Tensor, timesteps: &Tensor, context: &Tensor, pooled: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        let (b, ch, h, w) = x.dims4()?;
        if ch != c.in_channels {
            return Err(Error::Unsupported(format!("the DiT takes {} latent channels, got {ch}", c.in_channels)));
        }
        let p = c.patch_size;
        let (rows, cols) = (h / p, w / p);
        let tokens = self.patch_embed.forward(&patchify(x, p)?)?;
        let tokens = tokens.broadcast_add(&self.positions(rows, cols, x.device())?)?;

        let t = super::per_sample(timesteps, b, "timesteps")?;
        let t_features = timestep_embedding(&t, c.timestep_features, true, 0.0)?.to_dtype(x.dtype())?;
        let t_emb = self.time_mlp_2.forward(&silu(&self.time_mlp_1.forward(&t_features)?)?)?;
        let cond = silu(&(t_emb + self.pooled_proj.forward(pooled)?)?)?;

        let mut h_tokens = tokens;
        for block in &self.blocks {
            h_tokens = block.forward(&h_tokens, &cond, context)?;
        }
        let m = chunks(&self.final_modulation.forward(&cond)?, 2)?;
        let h_tokens = modulate(&h_tokens, &m[0], &m[1])?;
        let out = self.final_proj.forward(&h_tokens)?;
        Ok((unpatchify(&out, rows, cols, p, TokenLayout::ChannelMajor)?, h_tokens))
    }

    /// The sin-cos position table `[rows·cols, D]`, measured in units of the training grid so
    /// other sizes see the same spacing.
    fn positions(&self, rows: usize, cols: usize, device: &candle_core::Device) -> Result<Tensor> {
        let grid = rows.max(cols);
        let base = self.config.sample_size / self.config.patch_size;
        let table = sincos_2d_table(self.config.hidden_size, grid, base.max(1))?;
        let table = Tensor::from_vec(table, (grid, grid, self.config.hidden_size), device)?;
        Ok(table.narrow(0, 0, rows)?.narrow(1, 0, cols)?.reshape((rows * cols, self.config.hidden_size))?)
    }
}

impl Denoiser for StippleDit {
    fn forward(&self, x: &Tensor, timesteps: &Tensor, cond: &Conditioning, _info: &ImageInfo) -> Result<Tensor> {
        let pooled = cond.pooled.as_ref().ok_or_else(|| {
            Error::Unsupported("the default model's DiT needs a pooled text embedding; use its own text encoder".into())
        })?;
        let dtype = x.dtype();
        let out = self.forward(&x.to_dtype(DType::F32)?, timesteps, &cond.context, pooled)?;
        Ok(out.to_dtype(dtype)?)
    }

    fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    fn latent_multiple(&self) -> usize {
        self.config.patch_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn tiny_config() -> StippleDitConfig {
        StippleDitConfig {
            in_channels: 4,
            patch_size: 2,
            sample_size: 8,
            hidden_size: 32,
            depth: 2,
            num_heads: 4,
            mlp_ratio: 2,
            context_dim: 16,
            pooled_dim: 16,
            timestep_features: 32,
            gated_mlp: false,
        }
    }

    fn inputs(dev: &Device) -> (Tensor, Tensor, Tensor, Tensor) {
        (
            Tensor::randn(0f32, 1.0, (2, 4, 8, 8), dev).unwrap(),
            Tensor::new(&[10f32, 900.0], dev).unwrap(),
            Tensor::randn(0f32, 1.0, (2, 5, 16), dev).unwrap(),
            Tensor::randn(0f32, 1.0, (2, 16), dev).unwrap(),
        )
    }

    #[test]
    fn starts_at_zero_and_every_weight_gets_a_gradient_after_one_step() {
        for gated_mlp in [false, true] {
            check_gradients(&StippleDitConfig { gated_mlp, ..tiny_config() });
        }
    }

    fn check_gradients(config: &StippleDitConfig) {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let dit = StippleDit::new(config, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let (x, t, ctx, pooled) = inputs(&dev);
        let out = dit.forward(&x, &t, &ctx, &pooled).unwrap();
        assert_eq!(out.dims(), x.dims());
        // adaLN-Zero: the output projection starts at zero.
        assert_eq!(out.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

        // Zero-initialised layers block gradients to the rest at first; nudge them, then check
        // that every weight is reached.
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.contains("final_proj") || name.contains("modulation") || name.contains("to_out") {
                var.set(&(Tensor::randn(0f32, 0.02, var.shape(), &dev).unwrap())).unwrap();
            }
        }
        let loss = dit.forward(&x, &t, &ctx, &pooled).unwrap().sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: {norm}");
        }
    }

    #[test]
    fn gated_feed_forward_has_as_many_weights() {
        let weights = |gated_mlp: bool| {
            let varmap = VarMap::new();
            let config = StippleDitConfig { gated_mlp, mlp_ratio: 3, ..tiny_config() };
            StippleDit::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
            let data = varmap.data().lock().unwrap();
            let fc1 = data["blocks.0.mlp.fc1.weight"].dims().to_vec();
            let count: usize = data.iter().filter(|(n, _)| n.ends_with("weight")).map(|(_, v)| v.elem_count()).sum();
            (fc1, count)
        };
        let ((plain_fc1, plain), (gated_fc1, gated)) = (weights(false), weights(true));
        assert_eq!((plain_fc1, gated_fc1), (vec![96, 32], vec![128, 32]));
        assert_eq!(plain, gated);
    }

    #[test]
    fn batch_rows_are_independent() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let dit = StippleDit::new(&tiny_config(), VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        for (_, var) in varmap.data().lock().unwrap().iter() {
            var.set(&(Tensor::randn(0f32, 0.1, var.shape(), &dev).unwrap())).unwrap();
        }
        let (x, t, ctx, pooled) = inputs(&dev);
        let both = dit.forward(&x, &t, &ctx, &pooled).unwrap();
        let one = |i: usize| {
            let n = |a: &Tensor| a.narrow(0, i, 1).unwrap();
            dit.forward(&n(&x), &n(&t), &n(&ctx), &n(&pooled)).unwrap()
        };
        for i in 0..2 {
            let d: f32 = (both.narrow(0, i, 1).unwrap() - one(i)).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(d < 1e-5, "row {i}: {d}");
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = tiny_config();
        c.num_heads = 5;
        assert!(c.validate().unwrap_err().to_string().contains("num_heads"));
    }
}
