//! `UNet2DConditionModel`'s `config.json`, with diffusers' defaults for absent keys, and the
//! per-block architecture it implies ([`UNetConfig::plan`]).

use serde::Deserialize;

use crate::nn::activation::Activation;
use crate::nn::resnet::TimeEmbeddingNorm;
use crate::{Error, Result};

/// A value given once for all down blocks or once per down block (diffusers accepts both).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    // Listed first: an untagged `One(LayerCount)` would also accept a list.
    Each(Vec<T>),
    One(T),
}

impl<T: Clone> PerBlock<T> {
    fn resolve(&self, blocks: usize, key: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::Unsupported(format!(
                "config key `{key}` lists {} values but the UNet has {blocks} down blocks",
                v.len()
            ))),
        }
    }
}

/// Transformer depth of one block: the same for each of its layers, or one value per layer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum LayerCount {
    Uniform(usize),
    PerLayer(Vec<usize>),
}

impl LayerCount {
    fn per_layer(&self, layers: usize) -> Result<Vec<usize>> {
        match self {
            LayerCount::Uniform(d) => Ok(vec![*d; layers]),
            LayerCount::PerLayer(v) if v.len() >= layers => Ok(v[..layers].to_vec()),
            LayerCount::PerLayer(v) => Err(Error::Unsupported(format!(
                "transformer_layers_per_block entry {v:?} has fewer values than the block's {layers} layers"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpBlockType {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MidBlockType {
    /// ResNet, then (transformer, ResNet) pairs.
    UNetMidBlock2DCrossAttn,
    /// One ResNet, no attention.
    UNetMidBlock2D,
}

/// diffusers' `UNet2DConditionModel` config. Keys this engine does not use are ignored:
/// `sample_size`, `_class_name`, and `resnet_skip_time_act` / `resnet_out_scale_factor`, which
/// diffusers passes only to block types other than the four implemented here. Keys that select
/// features it does not implement are accepted here and refused by [`UNetConfig::plan`] with a
/// message naming them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<DownBlockType>,
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: Activation,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<LayerCount>,
    pub reverse_transformer_layers_per_block: Option<Vec<LayerCount>>,
    pub encoder_hid_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    /// The number of heads per block unless `num_attention_heads` is set (diffusers' legacy naming).
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub dual_cross_attention: Option<bool>,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub num_class_embeds: Option<usize>,
    /// Only changes float16 runs (softmax in f32); no effect on the f32 forward.
    pub upcast_attention: Option<bool>,
    pub resnet_time_scale_shift: TimeEmbeddingNorm,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<Activation>,
    pub timestep_post_act: Option<Activation>,
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub projection_class_embeddings_input_dim: Option<usize>,
    pub attention_type: String,
}

impl Default for UNetConfig {
    /// diffusers' constructor defaults (those of SD 1.x).
    fn default() -> Self {
        use DownBlockType::*;
        use UpBlockType::*;
        Self {
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![CrossAttnDownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D, DownBlock2D],
            mid_block_type: Some(MidBlockType::UNetMidBlock2DCrossAttn),
            up_block_types: vec![UpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D],
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: Activation::Silu,
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(LayerCount::Uniform(1)),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: None,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: None,
            resnet_time_scale_shift: TimeEmbeddingNorm::Default,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".into(),
        }
    }
}

/// The cross-attention stage of one block.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionPlan {
    pub heads: usize,
    /// Transformer blocks in the stage after each ResNet layer.
    pub depth_per_layer: Vec<usize>,
    pub context_dim: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DownBlockPlan {
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub attention: Option<AttentionPlan>,
    pub downsample: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MidBlockPlan {
    pub channels: usize,
    pub attention: Option<AttentionPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpBlockPlan {
    /// Channels of the deepest skip connection this block consumes (its last layer's).
    pub in_channels: usize,
    /// Channels coming from the block below.
    pub prev_output_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub attention: Option<AttentionPlan>,
    pub upsample: bool,
}

/// The SDXL micro-conditioning embedding (`addition_embed_type: "text_time"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimePlan {
    /// Width of each `time_ids` entry's sinusoidal embedding.
    pub time_embed_dim: usize,
    /// `text_embeds` width + 6 × `time_embed_dim`.
    pub input_dim: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UNetPlan {
    /// Width of the sinusoidal timestep embedding (`block_out_channels[0]`).
    pub timestep_dim: usize,
    /// Width of the time embedding fed to every ResNet.
    pub time_embed_dim: usize,
    pub norm_groups: usize,
    pub text_time: Option<TextTimePlan>,
    pub down: Vec<DownBlockPlan>,
    pub mid: Option<MidBlockPlan>,
    pub up: Vec<UpBlockPlan>,
}

impl UNetConfig {
    /// Check the config against what this engine implements and resolve the per-block shapes.
    pub fn plan(&self) -> Result<UNetPlan> {
        self.refuse_unsupported()?;
        let n = self.down_block_types.len();
        if n == 0 || self.up_block_types.len() != n || self.block_out_channels.len() != n {
            return Err(Error::Unsupported(format!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({}) must have the same, non-zero length",
                n,
                self.up_block_types.len(),
                self.block_out_channels.len()
            )));
        }
        let norm_groups = self.norm_num_groups.ok_or_else(|| {
            Error::Unsupported("norm_num_groups null (UNets without group norm) is not supported".into())
        })?;
        let heads =
            self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).resolve(n, "attention_head_dim")?;
        let context = self.cross_attention_dim.resolve(n, "cross_attention_dim")?;
        let layers = self.layers_per_block.resolve(n, "layers_per_block")?;
        let depths = self.transformer_layers_per_block.resolve(n, "transformer_layers_per_block")?;
        let channels = &self.block_out_channels;

        let attention =
            |cross: bool, i: usize, depth: &LayerCount, num_layers: usize| -> Result<Option<AttentionPlan>> {
                if !cross {
                    return Ok(None);
                }
                Ok(Some(AttentionPlan {
                    heads: heads[i],
                    depth_per_layer: depth.per_layer(num_layers)?,
                    context_dim: context[i],
                }))
            };

        let mut down = Vec::with_capacity(n);
        for (i, ty) in self.down_block_types.iter().enumerate() {
            let cross = *ty == DownBlockType::CrossAttnDownBlock2D;
            down.push(DownBlockPlan {
                in_channels: if i == 0 { channels[0] } else { channels[i - 1] },
                out_channels: channels[i],
                num_layers: layers[i],
                attention: attention(cross, i, &depths[i], layers[i])?,
                downsample: i + 1 < n,
            });
        }

        let mid = match self.mid_block_type {
            None => None,
            Some(ty) => Some(MidBlockPlan {
                channels: channels[n - 1],
                attention: attention(ty == MidBlockType::UNetMidBlock2DCrossAttn, n - 1, &depths[n - 1], 1)?,
            }),
        };

        let reversed_depths: Vec<LayerCount> = match &self.reverse_transformer_layers_per_block {
            Some(r) if r.len() == n => r.clone(),
            Some(r) => {
                return Err(Error::Unsupported(format!(
                    "reverse_transformer_layers_per_block lists {} blocks but the UNet has {n}",
                    r.len()
                )))
            }
            None => depths.iter().rev().cloned().collect(),
        };
        let mut up = Vec::with_capacity(n);
        for (i, ty) in self.up_block_types.iter().enumerate() {
            // Up block i mirrors down block n-1-i (heads, context width and layer counts reversed).
            let mirror = n - 1 - i;
            let num_layers = layers[mirror] + 1;
            let cross = *ty == UpBlockType::CrossAttnUpBlock2D;
            up.push(UpBlockPlan {
                in_channels: channels[mirror.saturating_sub(1)],
                prev_output_channels: if i == 0 { channels[n - 1] } else { channels[mirror + 1] },
                out_channels: channels[mirror],
                num_layers,
                attention: attention(cross, mirror, &reversed_depths[i], num_layers)?,
                upsample: i + 1 < n,
            });
        }

        let timestep_dim = channels[0];
        let time_embed_dim = self.time_embedding_dim.unwrap_or(4 * channels[0]);
        Ok(UNetPlan { timestep_dim, time_embed_dim, norm_groups, text_time: self.text_time_plan()?, down, mid, up })
    }

    fn text_time_plan(&self) -> Result<Option<TextTimePlan>> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => match (self.addition_time_embed_dim, self.projection_class_embeddings_input_dim) {
                (Some(time_embed_dim), Some(input_dim)) if input_dim > 6 * time_embed_dim => {
                    Ok(Some(TextTimePlan { time_embed_dim, input_dim }))
                }
                _ => Err(Error::Unsupported(
                    "addition_embed_type \"text_time\" needs addition_time_embed_dim and \
                     projection_class_embeddings_input_dim (> 6 × addition_time_embed_dim) in config.json"
                        .into(),
                )),
            },
            Some(other) => Err(Error::Unsupported(format!(
                "addition_embed_type \"{other}\" is not supported (only \"text_time\", SDXL's)"
            ))),
        }
    }

    fn refuse_unsupported(&self) -> Result<()> {
        let refuse = |what: String| Err(Error::Unsupported(format!("UNet config: {what} is not supported")));
        if self.time_embedding_type != "positional" {
            return refuse(format!("time_embedding_type \"{}\"", self.time_embedding_type));
        }
        if let Some(t) = &self.class_embed_type {
            return refuse(format!("class_embed_type \"{t}\""));
        }
        if self.num_class_embeds.is_some() {
            return refuse("num_class_embeds (class-conditional UNets)".into());
        }
        if self.encoder_hid_dim.is_some() || self.encoder_hid_dim_type.is_some() {
            return refuse("encoder_hid_dim / encoder_hid_dim_type (projected encoder states)".into());
        }
        if self.time_cond_proj_dim.is_some() {
            return refuse("time_cond_proj_dim (guidance-embedding distilled UNets)".into());
        }
        if self.dual_cross_attention == Some(true) {
            return refuse("dual_cross_attention".into());
        }
        let n = self.down_block_types.len();
        if self.only_cross_attention.resolve(n, "only_cross_attention")?.iter().any(|&b| b) {
            return refuse("only_cross_attention".into());
        }
        if self.attention_type != "default" {
            return refuse(format!("attention_type \"{}\"", self.attention_type));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return refuse("an even conv_in_kernel / conv_out_kernel".into());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// runwayml/stable-diffusion-v1-5 `unet/config.json`.
    pub(crate) const SD15: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
      "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
      "cross_attention_dim": 768,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
      "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    }"#;

    /// stabilityai/stable-diffusion-2-1 `unet/config.json`.
    pub(crate) const SD21: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
      "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
      "center_input_sample": false, "cross_attention_dim": 1024,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
      "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
      "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4, "sample_size": 96,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
      "use_linear_projection": true, "upcast_attention": true
    }"#;

    /// stabilityai/stable-diffusion-xl-base-1.0 `unet/config.json`.
    pub(crate) const SDXL: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0", "act_fn": "silu",
      "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
      "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": false,
      "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3,
      "cross_attention_dim": 2048, "cross_attention_norm": null,
      "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null, "encoder_hid_dim_type": null,
      "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
      "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
      "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": null, "num_class_embeds": null,
      "only_cross_attention": false, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
      "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
      "sample_size": 128, "time_cond_proj_dim": null, "time_embedding_act_fn": null, "time_embedding_dim": null,
      "time_embedding_type": "positional", "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
      "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": null,
      "use_linear_projection": true
    }"#;

    fn parse(s: &str) -> UNetConfig {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn sd15_plan() {
        let cfg = parse(SD15);
        assert!(!cfg.use_linear_projection && cfg.addition_embed_type.is_none());
        let p = cfg.plan().unwrap();
        assert_eq!((p.timestep_dim, p.time_embed_dim, p.norm_groups), (320, 1280, 32));
        assert_eq!(p.down.len(), 4);
        let d0 = &p.down[0];
        assert_eq!((d0.in_channels, d0.out_channels, d0.num_layers, d0.downsample), (320, 320, 2, true));
        assert_eq!(d0.attention, Some(AttentionPlan { heads: 8, depth_per_layer: vec![1, 1], context_dim: 768 }));
        assert_eq!(p.down[3].attention, None);
        assert!(!p.down[3].downsample);
        assert_eq!(p.mid.as_ref().unwrap().attention.as_ref().unwrap().heads, 8);
        let u0 = &p.up[0];
        assert_eq!((u0.prev_output_channels, u0.in_channels, u0.out_channels, u0.num_layers), (1280, 1280, 1280, 3));
        assert!(u0.attention.is_none() && u0.upsample);
        let u3 = &p.up[3];
        assert_eq!((u3.prev_output_channels, u3.in_channels, u3.out_channels, u3.upsample), (640, 320, 320, false));
        assert_eq!(u3.attention.as_ref().unwrap().depth_per_layer, vec![1, 1, 1]);
    }

    #[test]
    fn sd21_heads_per_block_reversed_for_up_blocks() {
        let cfg = parse(SD21);
        assert!(cfg.use_linear_projection);
        let p = cfg.plan().unwrap();
        let down_heads: Vec<_> = p.down.iter().filter_map(|b| b.attention.as_ref().map(|a| a.heads)).collect();
        assert_eq!(down_heads, vec![5, 10, 20]);
        let up_heads: Vec<_> = p.up.iter().filter_map(|b| b.attention.as_ref().map(|a| a.heads)).collect();
        // Up blocks 1..3 mirror down blocks 2..0: heads 20, 10, 5 (64 channels each).
        assert_eq!(up_heads, vec![20, 10, 5]);
        assert_eq!(p.mid.unwrap().attention.unwrap().heads, 20);
        assert_eq!(p.up[1].attention.as_ref().unwrap().context_dim, 1024);
    }

    #[test]
    fn sdxl_plan() {
        let cfg = parse(SDXL);
        let p = cfg.plan().unwrap();
        assert_eq!(p.text_time, Some(TextTimePlan { time_embed_dim: 256, input_dim: 2816 }));
        assert!(p.down[0].attention.is_none());
        assert_eq!(p.down[1].attention.as_ref().unwrap().depth_per_layer, vec![2, 2]);
        assert_eq!(p.down[2].attention.as_ref().unwrap().depth_per_layer, vec![10, 10]);
        assert_eq!(p.mid.as_ref().unwrap().attention.as_ref().unwrap().depth_per_layer, vec![10]);
        assert_eq!(p.up[0].attention.as_ref().unwrap().depth_per_layer, vec![10, 10, 10]);
        assert_eq!(p.up[0].attention.as_ref().unwrap().heads, 20);
        assert_eq!(p.up[1].attention.as_ref().unwrap().depth_per_layer, vec![2, 2, 2]);
        assert!(p.up[2].attention.is_none());
        assert_eq!((p.up[2].prev_output_channels, p.up[2].in_channels, p.up[2].out_channels), (640, 320, 320));
    }

    #[test]
    fn per_layer_depths_and_reverse_list() {
        let mut cfg = parse(SDXL);
        cfg.transformer_layers_per_block = serde_json::from_str("[1, [2, 3], [4, 5]]").unwrap();
        // Nested lists need an explicit reverse list, as in diffusers.
        cfg.reverse_transformer_layers_per_block = Some(serde_json::from_str("[[6, 7, 8], [9, 9, 9], 1]").unwrap());
        let p = cfg.plan().unwrap();
        assert_eq!(p.down[1].attention.as_ref().unwrap().depth_per_layer, vec![2, 3]);
        assert_eq!(p.mid.as_ref().unwrap().attention.as_ref().unwrap().depth_per_layer, vec![4]);
        assert_eq!(p.up[0].attention.as_ref().unwrap().depth_per_layer, vec![6, 7, 8]);
    }

    #[test]
    fn defaults_are_diffusers_defaults() {
        let cfg: UNetConfig = serde_json::from_str("{}").unwrap();
        let p = cfg.plan().unwrap();
        assert_eq!(p.down.len(), 4);
        assert_eq!(p.down[0].attention.as_ref().unwrap().context_dim, 1280);
        assert!(cfg.flip_sin_to_cos);
        assert_eq!(cfg.resnet_time_scale_shift, TimeEmbeddingNorm::Default);
    }

    #[test]
    fn refuses_unsupported_features_by_name() {
        let mut cfg = parse(SD15);
        cfg.time_cond_proj_dim = Some(256);
        assert!(cfg.plan().unwrap_err().to_string().contains("time_cond_proj_dim"));

        let mut cfg = parse(SD15);
        cfg.attention_head_dim = PerBlock::Each(vec![8, 8]);
        assert!(cfg.plan().unwrap_err().to_string().contains("attention_head_dim"));

        let mut cfg = parse(SDXL);
        cfg.projection_class_embeddings_input_dim = None;
        assert!(cfg.plan().unwrap_err().to_string().contains("projection_class_embeddings_input_dim"));

        let err = serde_json::from_str::<UNetConfig>(r#"{"down_block_types": ["SimpleCrossAttnDownBlock2D"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SimpleCrossAttnDownBlock2D"), "{err}");
    }
}
