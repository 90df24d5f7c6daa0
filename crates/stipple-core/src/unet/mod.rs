//! diffusers' `UNet2DConditionModel` (SD 1.x, SD 2.x, SDXL).
//!
//! `conv_in` → down blocks (keeping skip connections) → mid block → up blocks (consuming them)
//! → GroupNorm, activation, `conv_out`; every ResNet receives the time embedding, every spatial
//! transformer the text context.

pub mod config;
mod down_block;
mod mid_block;
mod up_block;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::UNetConfig;
use config::{AttentionPlan, TextTimePlan, UNetPlan};
use down_block::DownBlock;
use mid_block::MidBlock;
use up_block::UpBlock;

use crate::model::{Conditioning, Denoiser, ImageInfo};
use crate::nn::activation::Activation;
use crate::nn::conv2d::Conv2d;
use crate::nn::group_norm::GroupNorm;
use crate::nn::loading::{diffusers_weight_files, open_safetensors, read_json_config};
use crate::nn::resnet::{ResnetConfig, TimeEmbeddingNorm};
use crate::nn::spatial_transformer::SpatialTransformerConfig;
use crate::nn::timestep_embedding::{sinusoidal_embedding, TimestepEmbedding};
use crate::{Error, Result};

/// Number of SDXL micro-conditioning values per image.
const TIME_ID_COUNT: usize = 6;

/// Settings every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSettings {
    temb_channels: usize,
    groups: usize,
    eps: f64,
    act: Activation,
    time_embedding_norm: TimeEmbeddingNorm,
    mid_block_scale_factor: f64,
    use_linear_projection: bool,
    downsample_padding: usize,
}

impl BlockSettings {
    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            act: self.act,
            output_scale_factor: 1.0,
            time_embedding_norm: self.time_embedding_norm,
        }
    }

    fn mid_resnet(&self, channels: usize) -> ResnetConfig {
        ResnetConfig { output_scale_factor: self.mid_block_scale_factor, ..self.resnet(channels, channels) }
    }

    fn transformer(&self, channels: usize, attn: &AttentionPlan, depth: usize) -> SpatialTransformerConfig {
        SpatialTransformerConfig {
            channels,
            heads: attn.heads,
            depth,
            context_dim: attn.context_dim,
            norm_groups: self.groups,
            use_linear_projection: self.use_linear_projection,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    plan: UNetPlan,
    dtype: DType,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    /// SDXL's `add_embedding` over `[text_embeds | sinusoidal(time_ids)]`.
    add_embedding: Option<(TextTimePlan, TimestepEmbedding)>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Build from weights under `vb` (diffusers key names, no prefix) and a parsed config.
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        let plan = config.plan()?;
        let c0 = config.block_out_channels[0];
        let settings = BlockSettings {
            temb_channels: plan.time_embed_dim,
            groups: plan.norm_groups,
            eps: config.norm_eps,
            act: config.act_fn,
            time_embedding_norm: config.resnet_time_scale_shift,
            mid_block_scale_factor: config.mid_block_scale_factor,
            use_linear_projection: config.use_linear_projection,
            downsample_padding: config.downsample_padding,
        };
        let (k_in, k_out) = (config.conv_in_kernel, config.conv_out_kernel);
        let conv_in = Conv2d::new(vb.pp("conv_in"), config.in_channels, c0, k_in, 1, (k_in - 1) / 2)?;
        let time_embedding = TimestepEmbedding::new(
            vb.pp("time_embedding"),
            plan.timestep_dim,
            plan.time_embed_dim,
            config.act_fn,
            config.timestep_post_act,
        )?;
        let add_embedding = match plan.text_time {
            Some(tt) => {
                // diffusers builds add_embedding with TimestepEmbedding's default act (SiLU), not act_fn.
                let emb = TimestepEmbedding::new(
                    vb.pp("add_embedding"),
                    tt.input_dim,
                    plan.time_embed_dim,
                    Activation::Silu,
                    None,
                )?;
                Some((tt, emb))
            }
            None => None,
        };
        let down_blocks = plan
            .down
            .iter()
            .enumerate()
            .map(|(i, p)| DownBlock::new(vb.pp(format!("down_blocks.{i}")), p, &settings))
            .collect::<Result<Vec<_>>>()?;
        let mid_block = match &plan.mid {
            Some(p) => Some(MidBlock::new(vb.pp("mid_block"), p, &settings)?),
            None => None,
        };
        let up_blocks = plan
            .up
            .iter()
            .enumerate()
            .map(|(i, p)| UpBlock::new(vb.pp(format!("up_blocks.{i}")), p, &settings))
            .collect::<Result<Vec<_>>>()?;
        let conv_norm_out = GroupNorm::new(vb.pp("conv_norm_out"), plan.norm_groups, c0, config.norm_eps)?;
        let conv_out = Conv2d::new(vb.pp("conv_out"), c0, config.out_channels, k_out, 1, (k_out - 1) / 2)?;
        Ok(Self {
            config: config.clone(),
            plan,
            dtype: vb.dtype(),
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Load a diffusers `unet/` folder: `config.json` and its safetensors weights.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: UNetConfig = read_json_config(&config_path)?;
        let files = diffusers_weight_files(dir)?;
        let vb = open_safetensors(&files, dtype, device)?;
        Self::new(vb, &config).map_err(|e| match e {
            Error::Tensor(t) => {
                Error::invalid_file(&files[0], format!("weights do not match {}: {t}", config_path.display()))
            }
            Error::Unsupported(msg) => Error::Unsupported(format!("{}: {msg}", config_path.display())),
            other => other,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Whether [`Self::forward_with_added`] needs SDXL's `(text_embeds, time_ids)`.
    pub fn needs_added_conditioning(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// `unet(sample, timesteps, context[, added_cond_kwargs]).sample`.
    ///
    /// * `sample` `[B, in_channels, H, W]`
    /// * `timesteps` `[B]`, or `[1]` / a scalar for the whole batch (any numeric dtype; used as f32)
    /// * `context` `[B, S, cross_attention_dim]`
    /// * `added`: `(text_embeds [B, P], time_ids [B, 6])` for `addition_embed_type: "text_time"`
    ///
    /// Returns `[B, out_channels, H, W]` in the dtype of `sample`.
    pub fn forward_with_added(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (batch, channels, _, _) = sample.dims4()?;
        if channels != self.config.in_channels {
            return Err(Error::param(
                "sample",
                format!("has {channels} channels, the UNet expects {}", self.config.in_channels),
            ));
        }
        if context.rank() != 3 || context.dim(0)? != batch {
            return Err(Error::param(
                "encoder_hidden_states",
                format!("shape {:?} does not match a batch of {batch} ([B, S, D] expected)", context.dims()),
            ));
        }
        let out_dtype = sample.dtype();
        let mut x = sample.to_dtype(self.dtype)?;
        let context = context.to_dtype(self.dtype)?;
        if self.config.center_input_sample {
            x = ((x * 2.0)? - 1.0)?;
        }

        let emb = self.time_embedding(batch, timesteps, added)?;

        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &emb, &context, &mut skips)?;
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &emb, &context)?;
        }
        for block in &self.up_blocks {
            h = block.forward(&h, &emb, &context, &mut skips)?;
        }
        let h = self.conv_norm_out.forward_activated(&h, self.config.act_fn)?;
        Ok(self.conv_out.forward(&h)?.to_dtype(out_dtype)?)
    }

    /// The embedding fed to every ResNet: time MLP of the sinusoidal timestep embedding, plus
    /// SDXL's added embedding, then the optional `time_embedding_act_fn`.
    fn time_embedding(&self, batch: usize, timesteps: &Tensor, added: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        let t = timesteps.to_dtype(DType::F32)?.flatten_all()?;
        let t = match t.dim(0)? {
            n if n == batch => t,
            1 => t.broadcast_as(batch)?.contiguous()?,
            n => {
                return Err(Error::param(
                    "timesteps",
                    format!("has {n} values for a batch of {batch} (give one per image, or one for all)"),
                ))
            }
        };
        let t_emb =
            sinusoidal_embedding(&t, self.plan.timestep_dim, self.config.flip_sin_to_cos, self.config.freq_shift)?;
        let mut emb = self.time_embedding.forward(&t_emb.to_dtype(self.dtype)?)?;

        match (&self.add_embedding, added) {
            (Some((plan, add_embedding)), Some((text_embeds, time_ids))) => {
                let text_width = plan.input_dim - TIME_ID_COUNT * plan.time_embed_dim;
                if text_embeds.dims() != [batch, text_width] {
                    return Err(Error::param(
                        "text_embeds",
                        format!(
                            "shape {:?}, expected [{batch}, {text_width}] (pooled text embedding)",
                            text_embeds.dims()
                        ),
                    ));
                }
                if time_ids.dims() != [batch, TIME_ID_COUNT] {
                    return Err(Error::param(
                        "time_ids",
                        format!("shape {:?}, expected [{batch}, {TIME_ID_COUNT}]", time_ids.dims()),
                    ));
                }
                let time_embeds = sinusoidal_embedding(
                    &time_ids.flatten_all()?,
                    plan.time_embed_dim,
                    self.config.flip_sin_to_cos,
                    self.config.freq_shift,
                )?
                .reshape((batch, TIME_ID_COUNT * plan.time_embed_dim))?;
                let add_in = Tensor::cat(&[&text_embeds.to_dtype(self.dtype)?, &time_embeds.to_dtype(self.dtype)?], 1)?;
                emb = (emb + add_embedding.forward(&add_in)?)?;
            }
            (Some(_), None) => {
                return Err(Error::param(
                    "added conditioning",
                    "this UNet (addition_embed_type \"text_time\", SDXL) needs text_embeds and time_ids",
                ))
            }
            (None, _) => {}
        }
        match self.config.time_embedding_act_fn {
            Some(act) => act.apply(&emb),
            None => Ok(emb),
        }
    }
}

/// SDXL `time_ids` `[B, 6]` = `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]` per image.
pub fn sdxl_time_ids(info: &ImageInfo, batch: usize, device: &Device) -> Result<Tensor> {
    if info.target_size.0 == 0 || info.target_size.1 == 0 || info.original_size.0 == 0 || info.original_size.1 == 0 {
        return Err(Error::param(
            "image info",
            "SDXL needs original_size and target_size (height, width in pixels); they are unset",
        ));
    }
    let (oh, ow) = info.original_size;
    let (ct, cl) = info.crop_top_left;
    let (th, tw) = info.target_size;
    let row = [oh, ow, ct, cl, th, tw].map(|v| v as f32);
    Ok(Tensor::new(&row, device)?.unsqueeze(0)?.repeat((batch, 1))?)
}

impl Denoiser for UNet2DConditionModel {
    fn forward(&self, x: &Tensor, timesteps: &Tensor, cond: &Conditioning, info: &ImageInfo) -> Result<Tensor> {
        if !self.needs_added_conditioning() {
            return self.forward_with_added(x, timesteps, &cond.context, None);
        }
        let pooled = cond.pooled.as_ref().ok_or_else(|| {
            Error::param(
                "conditioning",
                "SDXL's UNet needs the pooled text embedding (text_embeds); the text encoder gave none",
            )
        })?;
        let time_ids = sdxl_time_ids(info, x.dim(0)?, x.device())?;
        self.forward_with_added(x, timesteps, &cond.context, Some((pooled, &time_ids)))
    }

    fn in_channels(&self) -> usize {
        self.config.in_channels
    }
}

#[cfg(test)]
mod tests {
    use super::config::tests::{SD15, SD21, SDXL};
    use super::*;
    use crate::test_support::{RandomBackend, ShapeOnlyBackend};

    fn param_count(config_json: &str) -> usize {
        let config: UNetConfig = serde_json::from_str(config_json).unwrap();
        let (vb, backend) = ShapeOnlyBackend::var_builder();
        UNet2DConditionModel::new(vb, &config).unwrap();
        backend.total_elements()
    }

    #[test]
    fn published_parameter_counts() {
        // Totals of the published checkpoints' unet/diffusion_pytorch_model.safetensors.
        assert_eq!(param_count(SD15), 859_520_964);
        assert_eq!(param_count(SD21), 865_910_724);
        assert_eq!(param_count(SDXL), 2_567_463_684);
    }

    /// The tiny SD UNet of the reference vectors: the f32 CPU kernels, and in f64 the generic
    /// tensor-op paths that other devices use, against diffusers' output.
    #[test]
    fn tiny_reference_model_in_f32_and_f64() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors");
        let case =
            candle_core::safetensors::load(root.join("cases/unet/unet_sd_tiny_tbatch.safetensors"), &Device::Cpu)
                .unwrap();
        let want = case["output"].to_dtype(DType::F64).unwrap();
        let allowance = 1e-6
            + 1.2e-5
                * want
                    .abs()
                    .unwrap()
                    .max_keepdim(0)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
        for dtype in [DType::F32, DType::F64] {
            let unet = UNet2DConditionModel::load(&root.join("models/sd_tiny/unet"), dtype, &Device::Cpu).unwrap();
            let cond = Conditioning { context: case["encoder_hidden_states"].clone(), pooled: None };
            let got =
                Denoiser::forward(&unet, &case["sample"], &case["timestep"], &cond, &ImageInfo::default()).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let err = crate::test_support::max_abs_diff(&got, &want);
            assert!(err <= allowance, "{dtype:?}: {err} > {allowance}");
        }
    }

    /// A tiny SDXL-layout UNet (text_time embedding, attention-free first block, per-block depth).
    fn tiny_sdxl() -> UNet2DConditionModel {
        let config: UNetConfig = serde_json::from_str(
            r#"{"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [2, 4],
                "transformer_layers_per_block": [1, 2], "cross_attention_dim": 16, "norm_num_groups": 8,
                "use_linear_projection": true, "addition_embed_type": "text_time", "addition_time_embed_dim": 4,
                "projection_class_embeddings_input_dim": 36, "layers_per_block": 1}"#,
        )
        .unwrap();
        UNet2DConditionModel::new(RandomBackend::var_builder(), &config).unwrap()
    }

    #[test]
    fn text_time_conditioning_is_required_and_used() {
        let unet = tiny_sdxl();
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let t = Tensor::new(&[500f32], &dev).unwrap();
        let context = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
        let pooled = Tensor::randn(0f32, 1.0, (2, 12), &dev).unwrap();
        let info = ImageInfo { original_size: (64, 64), crop_top_left: (0, 0), target_size: (64, 64), guidance: None };

        let without = Conditioning { context: context.clone(), pooled: None };
        assert!(Denoiser::forward(&unet, &x, &t, &without, &info).unwrap_err().to_string().contains("pooled"));

        let cond = Conditioning { context, pooled: Some(pooled) };
        let a = Denoiser::forward(&unet, &x, &t, &cond, &info).unwrap();
        assert_eq!(a.dims(), &[2, 4, 8, 8]);
        let cropped = ImageInfo { crop_top_left: (16, 0), ..info };
        let b = Denoiser::forward(&unet, &x, &t, &cond, &cropped).unwrap();
        assert!(crate::test_support::max_abs_diff(&a, &b) > 1e-6);

        let bad_pooled = Conditioning { pooled: Some(Tensor::zeros((2, 7), DType::F32, &dev).unwrap()), ..cond };
        assert!(Denoiser::forward(&unet, &x, &t, &bad_pooled, &info).unwrap_err().to_string().contains("text_embeds"));
    }

    #[test]
    fn timesteps_broadcast_and_validate() {
        let unet = tiny_sdxl();
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
        let text = Tensor::randn(0f32, 1.0, (2, 12), &dev).unwrap();
        let ids = Tensor::new(&[[64f32, 64., 0., 0., 64., 64.], [64., 64., 0., 0., 64., 64.]], &dev).unwrap();
        let added = Some((&text, &ids));
        let one = unet.forward_with_added(&x, &Tensor::new(&[250f32], &dev).unwrap(), &ctx, added).unwrap();
        let both = unet.forward_with_added(&x, &Tensor::new(&[250f32, 250.], &dev).unwrap(), &ctx, added).unwrap();
        assert_eq!(crate::test_support::max_abs_diff(&one, &both), 0.0);
        assert!(unet.forward_with_added(&x, &Tensor::new(&[1f32, 2., 3.], &dev).unwrap(), &ctx, added).is_err());
        // Spatial size not a multiple of the downsampling factor: upsampling follows the skips.
        let odd = Tensor::randn(0f32, 1.0, (2, 4, 7, 9), &dev).unwrap();
        assert_eq!(
            unet.forward_with_added(&odd, &Tensor::new(&[3f32], &dev).unwrap(), &ctx, added).unwrap().dims(),
            &[2, 4, 7, 9]
        );
    }

    #[test]
    fn time_ids_layout_and_missing_sizes() {
        let info = ImageInfo { original_size: (768, 1024), crop_top_left: (16, 32), target_size: (1024, 1024), guidance: None };
        let ids = sdxl_time_ids(&info, 2, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ids, vec![vec![768., 1024., 16., 32., 1024., 1024.]; 2]);
        assert!(sdxl_time_ids(&ImageInfo::default(), 1, &Device::Cpu).is_err());
    }

    /// SD 1.5 at 512² with classifier-free guidance (batch 2), random weights:
    /// `cargo test --release -p stipple-core sd15_forward_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: several GiB and tens of seconds"]
    fn sd15_forward_timing() {
        let config: UNetConfig = serde_json::from_str(SD15).unwrap();
        let t0 = std::time::Instant::now();
        let unet = UNet2DConditionModel::new(RandomBackend::var_builder(), &config).unwrap();
        eprintln!("build: {:.2?}", t0.elapsed());
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 64, 64), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev).unwrap();
        let t = Tensor::new(&[981f32, 981.0], &dev).unwrap();
        for run in 0..2 {
            let t0 = std::time::Instant::now();
            let y = unet.forward_with_added(&x, &t, &ctx, None).unwrap();
            assert_eq!(y.dims(), &[2, 4, 64, 64]);
            eprintln!("forward {run}: {:.2?}", t0.elapsed());
        }
    }
}
