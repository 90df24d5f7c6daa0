//! Stable Diffusion 3's MMDiT (diffusers `SD3Transformer2DModel`): patch-embedded latents and
//! projected text tokens pass through joint blocks that attend over both streams at once, each
//! stream with its own adaptive norms and MLP; the last block only feeds the text stream into the
//! attention (`context_pre_only`). SD3.5 adds RMS query/key norms (`qk_norm`) and, in the blocks
//! of `dual_attention_layers`, a second self-attention over the image stream. Checked against
//! diffusers by `testdata/vectors` (SD3) and `testdata/pipelines` (SD3.5-large- and
//! SD3.5-medium-like transformers, and a whole SD3.5-medium-like pipeline).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use crate::layers::{linear, Linear, ModelWeights};
use serde::Deserialize;

use super::adaln::{gated, modulate, AdaLayerNormContinuous, AdaLayerNormZero};
use super::attention::{Attention, AttentionParts, JointOrder};
use super::embeddings::TimeTextEmbedding;
use super::feed_forward::FeedForward;
use super::patch_embed::PatchEmbed;
use super::patches::{unpatchify, TokenLayout};
use super::per_sample;
use crate::layers::LayerNorm;
use crate::model::{Conditioning, Denoiser, ImageInfo};
use crate::{Error, Result};

/// A `SD3Transformer2DModel` config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Sd3Config {
    /// Latent size the model was trained at; sets the scale of the position table.
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the text token embeddings (CLIP-L + CLIP-G padded, and T5).
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    /// Width of the pooled CLIP embeddings (CLIP-L ⊕ CLIP-G).
    pub pooled_projection_dim: usize,
    /// `None`: the same as `in_channels`.
    pub out_channels: Option<usize>,
    /// Side of the position table in patches.
    pub pos_embed_max_size: Option<usize>,
    /// Blocks with SD3.5's second self-attention.
    pub dual_attention_layers: Vec<usize>,
    /// `"rms_norm"` (SD3.5) or `None`.
    pub qk_norm: Option<String>,
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
}

impl Default for Sd3Config {
    /// diffusers' defaults.
    fn default() -> Self {
        Sd3Config {
            sample_size: 128,
            patch_size: 2,
            in_channels: 16,
            num_layers: 18,
            attention_head_dim: 64,
            num_attention_heads: 18,
            joint_attention_dim: 4096,
            caption_projection_dim: 1152,
            pooled_projection_dim: 2048,
            out_channels: Some(16),
            pos_embed_max_size: Some(96),
            dual_attention_layers: Vec::new(),
            qk_norm: None,
            class_name: None,
        }
    }
}

impl Sd3Config {
    /// Parse a diffusers `transformer/config.json`; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Sd3Config> {
        let c: Sd3Config = serde_json::from_str(text).map_err(|e| Error::invalid_file(path, e.to_string()))?;
        let bad = |reason: String| Err(Error::invalid_file(path, reason));
        if let Some(class) = c.class_name.as_deref().filter(|&n| n != "SD3Transformer2DModel") {
            return bad(format!("this is a `{class}` config, not an SD3Transformer2DModel one"));
        }
        if c.patch_size == 0 || c.num_attention_heads == 0 || c.attention_head_dim == 0 || c.num_layers == 0 {
            return bad("patch_size, num_layers, num_attention_heads and attention_head_dim must be positive".into());
        }
        if c.caption_projection_dim != c.inner_dim() {
            return bad(format!(
                "caption_projection_dim {} must equal num_attention_heads × attention_head_dim = {}",
                c.caption_projection_dim,
                c.inner_dim()
            ));
        }
        if c.pos_embed_max_size.is_none() {
            return bad("pos_embed_max_size is missing; every SD3 / SD3.5 transformer sets it".into());
        }
        if c.sample_size < c.patch_size {
            return bad(format!("sample_size {} is smaller than patch_size {}", c.sample_size, c.patch_size));
        }
        if let Some(norm) = c.qk_norm.as_deref().filter(|&n| n != "rms_norm") {
            return bad(format!("qk_norm `{norm}` is not supported (SD3.5 uses rms_norm)"));
        }
        if let Some(layer) = c.dual_attention_layers.iter().find(|&&i| i >= c.num_layers) {
            return bad(format!("dual_attention_layers names block {layer}, but there are {} blocks", c.num_layers));
        }
        Ok(c)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }
}

/// The text stream of a joint block.
#[derive(Debug, Clone)]
enum ContextStream {
    /// Modulated into the attention, then updated by it and an MLP.
    Full { norm1: AdaLayerNormZero, ff: FeedForward },
    /// The last block: only feeds the attention (`context_pre_only`).
    PreOnly { norm1: AdaLayerNormContinuous },
}

/// diffusers' `JointTransformerBlock`.
#[derive(Debug, Clone)]
struct JointBlock {
    norm1: AdaLayerNormZero,
    context: ContextStream,
    attn: Attention,
    /// SD3.5's second self-attention over the image stream.
    attn2: Option<Attention>,
    norm2: LayerNorm,
    ff: FeedForward,
}

impl JointBlock {
    fn load(c: &Sd3Config, index: usize, vb: ModelWeights) -> candle_core::Result<JointBlock> {
        let dim = c.inner_dim();
        let (heads, head_dim) = (c.num_attention_heads, c.attention_head_dim);
        let qk_norm = c.qk_norm.is_some();
        let dual = c.dual_attention_layers.contains(&index);
        let pre_only = index + 1 == c.num_layers;
        let context = if pre_only {
            ContextStream::PreOnly { norm1: AdaLayerNormContinuous::load(dim, dim, vb.pp("norm1_context"))? }
        } else {
            ContextStream::Full {
                norm1: AdaLayerNormZero::load(dim, false, vb.pp("norm1_context"))?,
                ff: FeedForward::load(dim, vb.pp("ff_context"))?,
            }
        };
        let joint = AttentionParts { qk_norm, context: true, context_out: !pre_only, out: true };
        let attn2 = if dual {
            let parts = AttentionParts { qk_norm, context: false, context_out: false, out: true };
            Some(Attention::load(dim, heads, head_dim, parts, vb.pp("attn2"))?)
        } else {
            None
        };
        Ok(JointBlock {
            norm1: AdaLayerNormZero::load(dim, dual, vb.pp("norm1"))?,
            context,
            attn: Attention::load(dim, heads, head_dim, joint, vb.pp("attn"))?,
            attn2,
            norm2: LayerNorm::new(1e-6),
            ff: FeedForward::load(dim, vb.pp("ff"))?,
        })
    }

    /// Returns the new image stream and, except in the last block, the new text stream.
    fn forward(&self, img: &Tensor, txt: &Tensor, temb: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let m = self.norm1.forward(img, temb)?;
        let (txt_in, m_txt) = match &self.context {
            ContextStream::Full { norm1, .. } => {
                let m_txt = norm1.forward(txt, temb)?;
                (m_txt.x.clone(), Some(m_txt))
            }
            ContextStream::PreOnly { norm1 } => (norm1.forward(txt, temb)?, None),
        };
        let (img_attn, txt_attn) = self.attn.forward_joint(&m.x, &txt_in, JointOrder::ImageFirst, None)?;

        let mut img = (img + gated(&m.gate_msa, &img_attn)?)?;
        if let (Some(attn2), Some((x2, gate2))) = (&self.attn2, &m.second_attention) {
            img = (&img + gated(gate2, &attn2.forward(x2, None)?)?)?;
        }
        let ff_in = modulate(&self.norm2.forward(&img)?, &m.shift_mlp, &m.scale_mlp)?;
        let img = (&img + gated(&m.gate_mlp, &self.ff.forward(&ff_in)?)?)?;

        let txt = match (&self.context, m_txt, txt_attn) {
            (ContextStream::Full { ff, .. }, Some(m_txt), Some(txt_attn)) => {
                let txt = (txt + gated(&m_txt.gate_msa, &txt_attn)?)?;
                let ff_in = modulate(&self.norm2.forward(&txt)?, &m_txt.shift_mlp, &m_txt.scale_mlp)?;
                Some((&txt + gated(&m_txt.gate_mlp, &ff.forward(&ff_in)?)?)?)
            }
            _ => None,
        };
        Ok((img, txt))
    }
}

/// An SD3 / SD3.5 transformer with its weights.
#[derive(Debug, Clone)]
pub struct Sd3Transformer {
    config: Sd3Config,
    pos_embed: PatchEmbed,
    time_text_embed: TimeTextEmbedding,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
}

impl Sd3Transformer {
    /// Load a diffusers `transformer/` folder: `config.json` + `diffusion_pytorch_model.safetensors`
    /// (or its sharded index).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Sd3Transformer> {
        let component = crate::checkpoint::open_component(dir)?;
        let config = Sd3Config::from_json(&component.config.to_string(), &dir.join("config.json"))?;
        Sd3Transformer::new(config, component.var_builder(dtype, device))
    }

    /// Build from a config and weights under diffusers' key names.
    pub fn new(config: Sd3Config, weights: impl Into<ModelWeights>) -> Result<Sd3Transformer> {
        let vb = weights.into();
        let c = &config;
        let dim = c.inner_dim();
        // Checked by `Sd3Config::from_json`; a hand-built config may still lack it.
        let max_grid = c.pos_embed_max_size.ok_or_else(|| Error::Unsupported("SD3 needs pos_embed_max_size".into()))?;
        let pos_embed = PatchEmbed::load(
            c.in_channels,
            dim,
            c.patch_size,
            max_grid,
            c.sample_size / c.patch_size,
            vb.pp("pos_embed"),
        )?;
        let blocks = (0..c.num_layers)
            .map(|i| JointBlock::load(c, i, vb.pp(format!("transformer_blocks.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Sd3Transformer {
            pos_embed,
            time_text_embed: TimeTextEmbedding::load(dim, c.pooled_projection_dim, false, vb.pp("time_text_embed"))?,
            context_embedder: linear(
                c.joint_attention_dim,
                c.caption_projection_dim,
                vb.pp("context_embedder"),
            )?,
            blocks,
            norm_out: AdaLayerNormContinuous::load(dim, dim, vb.pp("norm_out"))?,
            proj_out: linear(dim, c.patch_size * c.patch_size * c.out_channels(), vb.pp("proj_out"))?,
            config,
        })
    }

    pub fn config(&self) -> &Sd3Config {
        &self.config
    }

    /// `transformer(hidden_states, encoder_hidden_states, pooled_projections, timestep).sample`:
    /// latents `x` `[B, C, H, W]`, `timestep` `[B]` (or `[1]`) in scheduler units (0..1000),
    /// `context` `[B, T, joint_attention_dim]`, `pooled` `[B, pooled_projection_dim]`.
    /// Returns `[B, out_channels, H, W]`.
    pub fn forward(&self, x: &Tensor, timestep: &Tensor, context: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (batch, channels, height, width) = x.dims4()?;
        let (txt_batch, _, txt_width) = context.dims3()?;
        if channels != c.in_channels || txt_width != c.joint_attention_dim || txt_batch != batch {
            return Err(Error::param(
                "inputs",
                format!(
                    "SD3 takes latents [B, {}, H, W] and text embeddings [B, T, {}]; got {:?} and {:?}",
                    c.in_channels,
                    c.joint_attention_dim,
                    x.dims(),
                    context.dims()
                ),
            ));
        }
        let timestep = per_sample(timestep, batch, "timestep")?;

        let mut img = self.pos_embed.forward(x)?;
        let temb = self.time_text_embed.forward(&timestep, None, pooled)?;
        let mut txt = self.context_embedder.forward(context)?;
        for block in &self.blocks {
            let (next_img, next_txt) = block.forward(&img, &txt, &temb)?;
            img = next_img;
            if let Some(next_txt) = next_txt {
                txt = next_txt;
            }
        }
        let img = self.proj_out.forward(&self.norm_out.forward(&img, &temb)?)?;
        let p = c.patch_size;
        unpatchify(&img, height / p, width / p, p, TokenLayout::ChannelMinor)
    }
}

impl Denoiser for Sd3Transformer {
    /// Latents `[B, C, H, W]`, timesteps in the scheduler's units (σ·1000, as
    /// StableDiffusion3Pipeline passes them), `cond.context` the joint CLIP+T5 embeddings and
    /// `cond.pooled` the pooled CLIP-L ⊕ CLIP-G embedding.
    fn forward(&self, x: &Tensor, timesteps: &Tensor, cond: &Conditioning, _info: &ImageInfo) -> Result<Tensor> {
        let pooled = cond.pooled.as_ref().ok_or_else(|| {
            Error::param("conditioning", "SD3 needs the pooled CLIP text embeddings; the text encoder gave none")
        })?;
        // The pipeline passes the scheduler's f32 timesteps as they are (no cast to the model dtype).
        Sd3Transformer::forward(self, x, timesteps, &cond.context, pooled)
    }

    fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    fn latent_multiple(&self) -> usize {
        self.config.patch_size
    }
}

/// stabilityai/stable-diffusion-3-medium-diffusers, `transformer/config.json` (for benchmarks at
/// real size).
pub const SD3_MEDIUM_CONFIG: &str = r#"{
  "_class_name": "SD3Transformer2DModel",
  "_diffusers_version": "0.29.0.dev0",
  "attention_head_dim": 64,
  "caption_projection_dim": 1536,
  "in_channels": 16,
  "joint_attention_dim": 4096,
  "num_attention_heads": 24,
  "num_layers": 24,
  "out_channels": 16,
  "patch_size": 2,
  "pooled_projection_dim": 2048,
  "pos_embed_max_size": 192,
  "sample_size": 128
}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/models/sd3_tiny")
    }


    #[test]
    fn published_sd3_medium_config_parses_with_diffusers_defaults() {
        let c = Sd3Config::from_json(SD3_MEDIUM_CONFIG, Path::new("transformer/config.json")).unwrap();
        assert_eq!((c.inner_dim(), c.num_layers, c.patch_size), (1536, 24, 2));
        assert_eq!((c.in_channels, c.out_channels(), c.pos_embed_max_size), (16, 16, Some(192)));
        assert_eq!((c.joint_attention_dim, c.pooled_projection_dim, c.sample_size), (4096, 2048, 128));
        assert!(c.dual_attention_layers.is_empty() && c.qk_norm.is_none(), "absent keys: diffusers' defaults");
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let p = Path::new("transformer/config.json");
        for (json, needle) in [
            (r#"{"caption_projection_dim": 1000}"#, "caption_projection_dim"),
            (r#"{"qk_norm": "layer_norm", "caption_projection_dim": 1152}"#, "layer_norm"),
            (r#"{"dual_attention_layers": [18], "caption_projection_dim": 1152}"#, "block 18"),
            (r#"{"pos_embed_max_size": null, "caption_projection_dim": 1152}"#, "pos_embed_max_size"),
            (r#"{"_class_name": "FluxTransformer2DModel"}"#, "FluxTransformer2DModel"),
        ] {
            let err = Sd3Config::from_json(json, p).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("transformer/config.json"), "{err}");
        }
    }

    /// SD3.5-style blocks load diffusers' key names and shapes: RMS query/key norms everywhere,
    /// `attn2` and a 9-way `norm1` in the dual-attention blocks, no text output in the last.
    #[test]
    fn sd35_dual_attention_and_qk_norm_use_diffusers_keys() {
        let json = r#"{"sample_size": 8, "patch_size": 2, "in_channels": 4, "num_layers": 3, "attention_head_dim": 8,
            "num_attention_heads": 2, "joint_attention_dim": 12, "caption_projection_dim": 16,
            "pooled_projection_dim": 10, "out_channels": 4, "pos_embed_max_size": 8,
            "dual_attention_layers": [0, 1], "qk_norm": "rms_norm"}"#;
        let config = Sd3Config::from_json(json, Path::new("config.json")).unwrap();
        let vars = VarMap::new();
        let model = Sd3Transformer::new(config, candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu)).unwrap();
        let shapes: std::collections::HashMap<String, Vec<usize>> =
            vars.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        assert_eq!(shapes["transformer_blocks.0.norm1.linear.weight"], vec![9 * 16, 16]);
        assert_eq!(shapes["transformer_blocks.2.norm1.linear.weight"], vec![6 * 16, 16]);
        assert_eq!(shapes["transformer_blocks.1.attn2.norm_k.weight"], vec![8]);
        assert_eq!(shapes["transformer_blocks.2.attn.norm_added_q.weight"], vec![8]);
        assert_eq!(shapes["transformer_blocks.2.norm1_context.linear.weight"], vec![2 * 16, 16]);
        assert!(!shapes.contains_key("transformer_blocks.2.attn2.to_q.weight"));
        assert!(!shapes.contains_key("transformer_blocks.2.attn.to_add_out.weight"));
        assert!(!shapes.contains_key("transformer_blocks.2.ff_context.net.2.weight"));
        assert!(shapes.contains_key("transformer_blocks.1.attn.to_add_out.weight"));

        let x = Tensor::randn(0f32, 1.0, (1, 4, 6, 4), &Device::Cpu).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (1, 3, 12), &Device::Cpu).unwrap();
        let pooled = Tensor::randn(0f32, 1.0, (1, 10), &Device::Cpu).unwrap();
        let t = Tensor::new(&[300f32], &Device::Cpu).unwrap();
        assert_eq!(model.forward(&x, &t, &ctx, &pooled).unwrap().dims(), &[1, 4, 6, 4]);
    }

    #[test]
    fn denoiser_needs_pooled_and_takes_one_timestep_for_the_batch() {
        let dev = Device::Cpu;
        let model = Sd3Transformer::load(&tiny_dir(), DType::F32, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let context = Tensor::randn(0f32, 1.0, (2, 5, 32), &dev).unwrap();
        let pooled = Tensor::randn(0f32, 1.0, (2, 64), &dev).unwrap();
        let one = Tensor::new(&[500f32], &dev).unwrap();
        let both = Tensor::new(&[500f32, 500.0], &dev).unwrap();
        let cond = Conditioning { context: context.clone(), pooled: Some(pooled) };
        let a = Denoiser::forward(&model, &x, &one, &cond, &ImageInfo::default()).unwrap();
        let b = Denoiser::forward(&model, &x, &both, &cond, &ImageInfo::default()).unwrap();
        assert_eq!(a.dims(), &[2, 4, 8, 8]);
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);

        let no_pooled = Conditioning { context, pooled: None };
        let err = Denoiser::forward(&model, &x, &both, &no_pooled, &ImageInfo::default()).unwrap_err();
        assert!(err.to_string().contains("pooled"), "{err}");
    }
}
