//! FLUX.1's transformer (diffusers `FluxTransformer2DModel`): double-stream blocks that keep the
//! image and text tokens apart but attend jointly, then single-stream blocks over the concatenated
//! sequence, all modulated by one conditioning vector (timestep + pooled CLIP text [+ guidance]);
//! rotary position ids instead of position embeddings.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use crate::layers::{linear, Linear, ModelWeights};
use serde::Deserialize;

use super::adaln::{gated, modulate, AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle};
use super::attention::{Attention, AttentionParts, JointOrder};
use super::embeddings::TimeTextEmbedding;
use super::feed_forward::FeedForward;
use super::patches::{image_ids, patchify, unpatchify, TokenLayout};
use super::per_sample;
use super::rope::{RotaryEmbedding, FLUX_ROPE_THETA};
use crate::layers::LayerNorm;
use crate::model::{Conditioning, Denoiser, GuidanceMode, ImageInfo};
use crate::{Error, Result};

/// FluxPipeline packs 2x2 latent patches into one token.
const PACK: usize = 2;
/// The default guidance of `FluxPipeline.__call__` (FLUX.1-dev).
pub const DEFAULT_FLUX_GUIDANCE: f32 = 3.5;
/// The single-stream MLP is this much wider than the model.
const SINGLE_MLP_RATIO: usize = 4;

/// A `FluxTransformer2DModel` config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FluxConfig {
    pub patch_size: usize,
    /// Channels of a packed token (4 × the latent channels).
    pub in_channels: usize,
    /// `None`: the same as `in_channels`.
    pub out_channels: Option<usize>,
    /// Double-stream blocks.
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the T5 token embeddings.
    pub joint_attention_dim: usize,
    /// Width of the pooled CLIP embedding.
    pub pooled_projection_dim: usize,
    /// FLUX.1-dev: a guidance-distilled model that embeds the guidance value.
    pub guidance_embeds: bool,
    /// Rotary channels per id axis; they sum to `attention_head_dim`.
    pub axes_dims_rope: Vec<usize>,
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
}

impl Default for FluxConfig {
    /// diffusers' defaults (FLUX.1's sizes).
    fn default() -> Self {
        FluxConfig {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
            class_name: None,
        }
    }
}

impl FluxConfig {
    /// Parse a diffusers `transformer/config.json`; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<FluxConfig> {
        let c: FluxConfig = serde_json::from_str(text).map_err(|e| Error::invalid_file(path, e.to_string()))?;
        let bad = |reason: String| Err(Error::invalid_file(path, reason));
        if let Some(class) = c.class_name.as_deref().filter(|&n| n != "FluxTransformer2DModel") {
            return bad(format!("this is a `{class}` config, not a FluxTransformer2DModel one"));
        }
        if c.patch_size != 1 {
            return bad(format!(
                "patch_size {} is not supported (FLUX packs 2x2 latent patches itself; use 1)",
                c.patch_size
            ));
        }
        if c.num_attention_heads == 0 || c.attention_head_dim == 0 {
            return bad("num_attention_heads and attention_head_dim must be positive".into());
        }
        if c.axes_dims_rope.iter().sum::<usize>() != c.attention_head_dim || c.axes_dims_rope.iter().any(|d| d % 2 == 1)
        {
            return bad(format!(
                "axes_dims_rope {:?} must be even and sum to attention_head_dim {}",
                c.axes_dims_rope, c.attention_head_dim
            ));
        }
        if c.in_channels % (PACK * PACK) != 0 || c.out_channels() % (PACK * PACK) != 0 {
            return bad(format!(
                "in_channels {} / out_channels {} must be multiples of 4 (2x2-packed latent channels)",
                c.in_channels,
                c.out_channels()
            ));
        }
        Ok(c)
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// `FluxTransformerBlock`: separate modulation, MLPs and projections per stream, one joint attention.
#[derive(Debug, Clone)]
struct DoubleStreamBlock {
    norm1: AdaLayerNormZero,
    norm1_context: AdaLayerNormZero,
    attn: Attention,
    norm2: LayerNorm,
    ff: FeedForward,
    ff_context: FeedForward,
}

impl DoubleStreamBlock {
    fn load(c: &FluxConfig, vb: ModelWeights) -> candle_core::Result<DoubleStreamBlock> {
        let dim = c.inner_dim();
        let parts = AttentionParts { qk_norm: true, context: true, context_out: true, out: true };
        Ok(DoubleStreamBlock {
            norm1: AdaLayerNormZero::load(dim, false, vb.pp("norm1"))?,
            norm1_context: AdaLayerNormZero::load(dim, false, vb.pp("norm1_context"))?,
            attn: Attention::load(dim, c.num_attention_heads, c.attention_head_dim, parts, vb.pp("attn"))?,
            norm2: LayerNorm::new(1e-6),
            ff: FeedForward::load(dim, vb.pp("ff"))?,
            ff_context: FeedForward::load(dim, vb.pp("ff_context"))?,
        })
    }

    /// Returns the new `(image, text)` streams.
    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        rope: &RotaryEmbedding,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let m_img = self.norm1.forward(img, temb)?;
        let m_txt = self.norm1_context.forward(txt, temb)?;
        let (img_attn, txt_attn) = self.attn.forward_joint(&m_img.x, &m_txt.x, JointOrder::TextFirst, Some(rope))?;
        let Some(txt_attn) = txt_attn else {
            candle_core::bail!("FLUX double-stream attention lost its text output");
        };

        let img = (img + gated(&m_img.gate_msa, &img_attn)?)?;
        let ff_in = modulate(&self.norm2.forward(&img)?, &m_img.shift_mlp, &m_img.scale_mlp)?;
        let img = (&img + gated(&m_img.gate_mlp, &self.ff.forward(&ff_in)?)?)?;

        let txt = (txt + gated(&m_txt.gate_msa, &txt_attn)?)?;
        let ff_in = modulate(&self.norm2.forward(&txt)?, &m_txt.shift_mlp, &m_txt.scale_mlp)?;
        let txt = (&txt + gated(&m_txt.gate_mlp, &self.ff_context.forward(&ff_in)?)?)?;
        Ok((img, txt))
    }
}

/// `FluxSingleTransformerBlock`: attention and MLP side by side on one modulated input, joined by
/// one output projection.
#[derive(Debug, Clone)]
struct SingleStreamBlock {
    norm: AdaLayerNormZeroSingle,
    attn: Attention,
    proj_mlp: Linear,
    proj_out: Linear,
}

impl SingleStreamBlock {
    fn load(c: &FluxConfig, vb: ModelWeights) -> candle_core::Result<SingleStreamBlock> {
        let dim = c.inner_dim();
        let mlp = SINGLE_MLP_RATIO * dim;
        let parts = AttentionParts { qk_norm: true, context: false, context_out: false, out: false };
        Ok(SingleStreamBlock {
            norm: AdaLayerNormZeroSingle::load(dim, vb.pp("norm"))?,
            attn: Attention::load(dim, c.num_attention_heads, c.attention_head_dim, parts, vb.pp("attn"))?,
            proj_mlp: linear(dim, mlp, vb.pp("proj_mlp"))?,
            proj_out: linear(dim + mlp, dim, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor, rope: &RotaryEmbedding) -> candle_core::Result<Tensor> {
        let (normed, gate) = self.norm.forward(x, temb)?;
        let mlp = self.proj_mlp.forward(&normed)?.gelu()?;
        let attn = self.attn.forward(&normed, Some(rope))?;
        let joined = Tensor::cat(&[attn, mlp], 2)?;
        x + gated(&gate, &self.proj_out.forward(&joined)?)?
    }
}

/// The inputs of one FLUX forward pass on packed tokens, as diffusers' `forward` takes them.
#[derive(Debug, Clone, Copy)]
pub struct FluxInputs<'a> {
    /// Packed image tokens `[B, N, in_channels]`.
    pub hidden_states: &'a Tensor,
    /// T5 token embeddings `[B, T, joint_attention_dim]`.
    pub encoder_hidden_states: &'a Tensor,
    /// Pooled CLIP embedding `[B, pooled_projection_dim]`.
    pub pooled_projections: &'a Tensor,
    /// `[B]` (or `[1]`): the sigma in [0, 1], i.e. the scheduler's timestep / 1000.
    pub timestep: &'a Tensor,
    /// `[N, 3]` rotary ids of the image tokens.
    pub img_ids: &'a Tensor,
    /// `[T, 3]` rotary ids of the text tokens.
    pub txt_ids: &'a Tensor,
    /// `[B]` (or `[1]`) guidance scale, required by guidance-distilled models.
    pub guidance: Option<&'a Tensor>,
}

/// A FLUX transformer with its weights.
#[derive(Debug, Clone)]
pub struct FluxTransformer {
    config: FluxConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    time_text_embed: TimeTextEmbedding,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
    guidance: f32,
}

impl FluxTransformer {
    /// Load a diffusers `transformer/` folder: `config.json` + `diffusion_pytorch_model.safetensors`
    /// (or its sharded index).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<FluxTransformer> {
        let component = crate::checkpoint::open_component(dir)?;
        let config = FluxConfig::from_json(&component.config.to_string(), &dir.join("config.json"))?;
        FluxTransformer::new(config, component.var_builder(dtype, device))
    }

    /// Build from a config and weights under diffusers' key names.
    pub fn new(config: FluxConfig, weights: impl Into<ModelWeights>) -> Result<FluxTransformer> {
        let vb = weights.into();
        let c = &config;
        let dim = c.inner_dim();
        let double_blocks = (0..c.num_layers)
            .map(|i| DoubleStreamBlock::load(c, vb.pp(format!("transformer_blocks.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let single_blocks = (0..c.num_single_layers)
            .map(|i| SingleStreamBlock::load(c, vb.pp(format!("single_transformer_blocks.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(FluxTransformer {
            x_embedder: linear(c.in_channels, dim, vb.pp("x_embedder"))?,
            context_embedder: linear(c.joint_attention_dim, dim, vb.pp("context_embedder"))?,
            time_text_embed: TimeTextEmbedding::load(
                dim,
                c.pooled_projection_dim,
                c.guidance_embeds,
                vb.pp("time_text_embed"),
            )?,
            double_blocks,
            single_blocks,
            norm_out: AdaLayerNormContinuous::load(dim, dim, vb.pp("norm_out"))?,
            proj_out: linear(dim, c.patch_size * c.patch_size * c.out_channels(), vb.pp("proj_out"))?,
            guidance: DEFAULT_FLUX_GUIDANCE,
            config,
        })
    }

    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// The guidance value the [`Denoiser`] passes to guidance-distilled models (FLUX.1-dev) when
    /// [`ImageInfo::guidance`] is `None`; ignored by the others. FluxPipeline's default is 3.5.
    pub fn set_guidance(&mut self, guidance: f32) {
        self.guidance = guidance;
    }

    pub fn guidance(&self) -> f32 {
        self.guidance
    }

    /// `transformer(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
    /// txt_ids[, guidance]).sample`: `[B, N, out_channels]` for packed tokens.
    pub fn forward_packed(&self, inputs: &FluxInputs) -> Result<Tensor> {
        let c = &self.config;
        let (batch, n_img, channels) = inputs.hidden_states.dims3()?;
        let (txt_batch, n_txt, txt_width) = inputs.encoder_hidden_states.dims3()?;
        if channels != c.in_channels || txt_width != c.joint_attention_dim || txt_batch != batch {
            return Err(Error::param(
                "inputs",
                format!(
                    "FLUX takes image tokens [B, N, {}] and text embeddings [B, T, {}]; got {:?} and {:?}",
                    c.in_channels,
                    c.joint_attention_dim,
                    inputs.hidden_states.dims(),
                    inputs.encoder_hidden_states.dims()
                ),
            ));
        }
        if inputs.img_ids.dims2()?.0 != n_img || inputs.txt_ids.dims2()?.0 != n_txt {
            return Err(Error::param("ids", "img_ids / txt_ids must have one row per image / text token"));
        }
        let guidance = match (self.time_text_embed.has_guidance(), inputs.guidance) {
            (true, None) => {
                return Err(Error::param(
                    "guidance",
                    "this FLUX model is guidance-distilled and needs a guidance value",
                ))
            }
            (true, Some(g)) => {
                Some((per_sample(g, batch, "guidance")?.to_dtype(inputs.hidden_states.dtype())? * 1000.0)?)
            }
            (false, _) => None,
        };
        // The model embeds the timestep in the units it was trained with (×1000).
        let timestep = per_sample(inputs.timestep, batch, "timestep")?;
        let timestep = (timestep.to_dtype(inputs.hidden_states.dtype())? * 1000.0)?;

        let mut img = self.x_embedder.forward(inputs.hidden_states)?;
        let temb = self.time_text_embed.forward(&timestep, guidance.as_ref(), inputs.pooled_projections)?;
        let mut txt = self.context_embedder.forward(inputs.encoder_hidden_states)?;

        let ids = Tensor::cat(&[inputs.txt_ids, inputs.img_ids], 0)?;
        let rope = RotaryEmbedding::new(&ids, &c.axes_dims_rope, FLUX_ROPE_THETA, img.device())?;

        for block in &self.double_blocks {
            (img, txt) = block.forward(&img, &txt, &temb, &rope)?;
        }
        let mut joint = Tensor::cat(&[txt, img], 1)?;
        for block in &self.single_blocks {
            joint = block.forward(&joint, &temb, &rope)?;
        }
        let img = joint.narrow(1, n_txt, n_img)?;
        let img = self.norm_out.forward(&img, &temb)?;
        Ok(self.proj_out.forward(&img)?)
    }
}

impl Denoiser for FluxTransformer {
    /// Latents `[B, C, H, W]` (unpacked, `C = in_channels / 4`), timesteps in the scheduler's units
    /// (σ·1000), `cond.context` the T5 embeddings and `cond.pooled` the pooled CLIP embedding.
    /// Packs 2x2 patches into tokens as FluxPipeline does and unpacks the prediction.
    fn forward(&self, x: &Tensor, timesteps: &Tensor, cond: &Conditioning, info: &ImageInfo) -> Result<Tensor> {
        let (batch, channels, height, width) = x.dims4()?;
        if channels != self.in_channels() {
            return Err(Error::param(
                "latents",
                format!("FLUX takes {} latent channels, got {channels}", self.in_channels()),
            ));
        }
        let pooled = cond.pooled.as_ref().ok_or_else(|| {
            Error::param("conditioning", "FLUX needs the pooled CLIP text embedding; the text encoder gave none")
        })?;
        let tokens = patchify(x, PACK)?;
        let (rows, cols) = (height / PACK, width / PACK);
        let device = x.device();
        let img_ids = image_ids(rows, cols, device)?;
        let txt_ids = Tensor::zeros((cond.context.dim(1)?, 3), DType::F32, device)?;
        // FluxPipeline hands the model `t / 1000` (which the model multiplies back by 1000). A true
        // division, as PyTorch's: candle's `tensor / 1000.0` multiplies by 0.001, which is an ulp
        // off for t = 750 and shifts the output by a few ulps.
        let thousand = Tensor::new(1000f32, device)?.to_dtype(x.dtype())?;
        let sigma = timesteps.to_dtype(x.dtype())?.broadcast_div(&thousand)?;
        let guidance = Tensor::full(info.guidance.unwrap_or(self.guidance), batch, device)?;
        let out = self.forward_packed(&FluxInputs {
            hidden_states: &tokens,
            encoder_hidden_states: &cond.context,
            pooled_projections: pooled,
            timestep: &sigma,
            img_ids: &img_ids,
            txt_ids: &txt_ids,
            guidance: Some(&guidance),
        })?;
        unpatchify(&out, rows, cols, PACK, TokenLayout::ChannelMajor)
    }

    fn in_channels(&self) -> usize {
        self.config.in_channels / (PACK * PACK)
    }

    fn latent_multiple(&self) -> usize {
        PACK
    }

    /// FLUX.1-dev embeds the guidance scale; FLUX.1-schnell takes none. Neither runs an
    /// unconditional pass.
    fn guidance_mode(&self) -> GuidanceMode {
        if self.config.guidance_embeds {
            GuidanceMode::Distilled
        } else {
            GuidanceMode::Unguided
        }
    }
}

/// black-forest-labs/FLUX.1-schnell, `transformer/config.json` (for benchmarks at real size).
pub const FLUX_SCHNELL_CONFIG: &str = r#"{
  "_class_name": "FluxTransformer2DModel",
  "_diffusers_version": "0.30.0.dev0",
  "attention_head_dim": 128,
  "guidance_embeds": false,
  "in_channels": 64,
  "joint_attention_dim": 4096,
  "num_attention_heads": 24,
  "num_layers": 19,
  "num_single_layers": 38,
  "patch_size": 1,
  "pooled_projection_dim": 768
}"#;

/// black-forest-labs/FLUX.1-dev, `transformer/config.json` (defaults for its single files).
pub const FLUX_DEV_CONFIG: &str = r#"{
  "_class_name": "FluxTransformer2DModel",
  "_diffusers_version": "0.30.0.dev0",
  "attention_head_dim": 128,
  "guidance_embeds": true,
  "in_channels": 64,
  "joint_attention_dim": 4096,
  "num_attention_heads": 24,
  "num_layers": 19,
  "num_single_layers": 38,
  "patch_size": 1,
  "pooled_projection_dim": 768
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_dir(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/models").join(name)
    }



    #[test]
    fn published_schnell_and_dev_configs_parse_with_diffusers_defaults() {
        let p = Path::new("transformer/config.json");
        let schnell = FluxConfig::from_json(FLUX_SCHNELL_CONFIG, p).unwrap();
        assert!(!schnell.guidance_embeds);
        assert_eq!((schnell.num_layers, schnell.num_single_layers, schnell.inner_dim()), (19, 38, 3072));
        assert_eq!(schnell.axes_dims_rope, vec![16, 56, 56], "absent key: diffusers' default");
        assert_eq!((schnell.in_channels, schnell.out_channels()), (64, 64));
        assert_eq!((schnell.joint_attention_dim, schnell.pooled_projection_dim), (4096, 768));

        let dev = FluxConfig::from_json(FLUX_DEV_CONFIG, p).unwrap();
        assert!(dev.guidance_embeds);
        assert_eq!(FluxConfig { guidance_embeds: false, ..dev }, schnell);
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let p = Path::new("transformer/config.json");
        for (json, needle) in [
            (r#"{"axes_dims_rope": [16, 56, 50]}"#, "axes_dims_rope"),
            (r#"{"patch_size": 2}"#, "patch_size"),
            (r#"{"in_channels": 62}"#, "multiples of 4"),
            (r#"{"_class_name": "SD3Transformer2DModel"}"#, "SD3Transformer2DModel"),
        ] {
            let err = FluxConfig::from_json(json, p).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("transformer/config.json"), "{err}");
        }
    }

    /// The denoiser packs, runs the packed forward with pipeline ids and `t/1000`, and unpacks.
    #[test]
    fn denoiser_equals_packed_forward_with_pipeline_conventions() {
        let dev = Device::Cpu;
        let mut model = FluxTransformer::load(&tiny_dir("flux_tiny_guidance"), DType::F32, &dev).unwrap();
        model.set_guidance(4.0);
        assert_eq!(model.in_channels(), 1);
        let x = Tensor::randn(0f32, 1.0, (2, 1, 6, 4), &dev).unwrap();
        let context = Tensor::randn(0f32, 1.0, (2, 5, 32), &dev).unwrap();
        let pooled = Tensor::randn(0f32, 1.0, (2, 32), &dev).unwrap();
        let t = Tensor::new(&[750f32, 250.0], &dev).unwrap();
        let cond = Conditioning { context: context.clone(), pooled: Some(pooled.clone()) };
        let out = Denoiser::forward(&model, &x, &t, &cond, &ImageInfo::default()).unwrap();
        assert_eq!(out.dims(), &[2, 1, 6, 4]);

        let tokens = patchify(&x, 2).unwrap();
        let packed = model
            .forward_packed(&FluxInputs {
                hidden_states: &tokens,
                encoder_hidden_states: &context,
                pooled_projections: &pooled,
                timestep: &Tensor::new(&[0.75f32, 0.25], &dev).unwrap(),
                img_ids: &image_ids(3, 2, &dev).unwrap(),
                txt_ids: &Tensor::zeros((5, 3), DType::F32, &dev).unwrap(),
                guidance: Some(&Tensor::new(&[4f32, 4.0], &dev).unwrap()),
            })
            .unwrap();
        let expect = unpatchify(&packed, 3, 2, 2, TokenLayout::ChannelMajor).unwrap();
        let max_diff =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // The same computation both ways, to the bit.
        assert_eq!(max_diff(&out, &expect), 0.0);

        // The guidance value matters to a guidance-distilled model.
        model.set_guidance(1.0);
        let other = Denoiser::forward(&model, &x, &t, &cond, &ImageInfo::default()).unwrap();
        assert!(max_diff(&out, &other) > 1e-4);
        // The request's guidance (ImageInfo) wins over the model's default.
        let info = ImageInfo { guidance: Some(4.0), ..ImageInfo::default() };
        let from_request = Denoiser::forward(&model, &x, &t, &cond, &info).unwrap();
        assert!(max_diff(&out, &from_request) < 1e-6);
        assert_eq!((model.guidance_mode(), model.latent_multiple()), (GuidanceMode::Distilled, 2));
    }

    #[test]
    fn missing_pooled_and_guidance_are_errors() {
        let dev = Device::Cpu;
        let model = FluxTransformer::load(&tiny_dir("flux_tiny_guidance"), DType::F32, &dev).unwrap();
        let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &dev).unwrap();
        let cond = Conditioning { context: Tensor::zeros((1, 3, 32), DType::F32, &dev).unwrap(), pooled: None };
        let t = Tensor::new(&[500f32], &dev).unwrap();
        let err = Denoiser::forward(&model, &x, &t, &cond, &ImageInfo::default()).unwrap_err();
        assert!(err.to_string().contains("pooled"), "{err}");

        let tokens = Tensor::zeros((1, 4, 4), DType::F32, &dev).unwrap();
        let pooled = Tensor::zeros((1, 32), DType::F32, &dev).unwrap();
        let err = model
            .forward_packed(&FluxInputs {
                hidden_states: &tokens,
                encoder_hidden_states: &cond.context,
                pooled_projections: &pooled,
                timestep: &t,
                img_ids: &image_ids(2, 2, &dev).unwrap(),
                txt_ids: &Tensor::zeros((3, 3), DType::F32, &dev).unwrap(),
                guidance: None,
            })
            .unwrap_err();
        assert!(err.to_string().contains("guidance"), "{err}");
    }
}
