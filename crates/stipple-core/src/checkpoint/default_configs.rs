//! The published diffusers configs of the reference models, used for single-file checkpoints
//! that carry no configs of their own: `stable-diffusion-v1-5/stable-diffusion-v1-5` (SD 1.x),
//! `stabilityai/stable-diffusion-xl-base-1.0` (SDXL), `black-forest-labs/FLUX.1-dev` and
//! `black-forest-labs/FLUX.1-schnell`, `stabilityai/stable-diffusion-3-medium-diffusers`,
//! `stabilityai/stable-diffusion-3.5-medium` and `stabilityai/stable-diffusion-3.5-large` — the
//! repositories diffusers' `infer_diffusers_model_type` picks for such files. The texts are the
//! repositories' `model_index.json`, `*/config.json` and `scheduler/scheduler_config.json` (for
//! FLUX / SD3 without bookkeeping keys such as `_diffusers_version` / `_name_or_path`): keys they
//! omit take diffusers' defaults (for instance the SD 1.5 VAE's `scaling_factor`, 0.18215).
//!
//! An SD3 transformer's dimensions are then set from the weights (`sd3_layout::infer_config`),
//! so the three SD3 defaults differ only in where their tokenizers are to be copied from.
//!
//! SD 2.x has none here on purpose: its 512-pixel base model predicts noise and its 768-pixel
//! model predicts velocity, and nothing in the weights tells them apart.

use super::original_layout::Family;

/// The config text of each component of a family's reference pipeline.
pub struct DefaultConfigs {
    /// The model the configs come from (for messages).
    pub source: &'static str,
    pub model_index: &'static str,
    /// `(component, config.json / scheduler_config.json text)`.
    pub components: &'static [(&'static str, &'static str)],
}

impl DefaultConfigs {
    pub fn of(family: Family) -> Option<&'static DefaultConfigs> {
        match family {
            Family::Sd1 => Some(&SD15),
            Family::Sdxl => Some(&SDXL_BASE),
            Family::Sd2 => None,
            Family::FluxDev => Some(&FLUX_DEV),
            Family::FluxSchnell => Some(&FLUX_SCHNELL),
            Family::Sd3 => Some(&SD3_MEDIUM),
            Family::Sd35Medium => Some(&SD35_MEDIUM),
            Family::Sd35Large => Some(&SD35_LARGE),
        }
    }

    pub fn component(&self, name: &str) -> Option<&'static str> {
        self.components.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
    }
}

static SD15: DefaultConfigs = DefaultConfigs {
    source: "stable-diffusion-v1-5/stable-diffusion-v1-5",
    model_index: r#"{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.6.0",
  "feature_extractor": ["transformers", "CLIPImageProcessor"],
  "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
  "scheduler": ["diffusers", "PNDMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}"#,
    components: &[
        (
            "unet",
            r#"{
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#,
        ),
        (
            "vae",
            r#"{
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#,
        ),
        (
            "text_encoder",
            r#"{
  "_name_or_path": "openai/clip-vit-large-patch14",
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "torch_dtype": "float32",
  "transformers_version": "4.22.0.dev0",
  "vocab_size": 49408
}"#,
        ),
        (
            "scheduler",
            r#"{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
}"#,
        ),
    ],
};

static SDXL_BASE: DefaultConfigs = DefaultConfigs {
    source: "stabilityai/stable-diffusion-xl-base-1.0",
    model_index: r#"{
  "_class_name": "StableDiffusionXLPipeline",
  "_diffusers_version": "0.19.0.dev0",
  "force_zeros_for_empty_prompt": true,
  "add_watermarker": null,
  "scheduler": ["diffusers", "EulerDiscreteScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "tokenizer_2": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}"#,
    components: &[
        (
            "unet",
            r#"{
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.19.0.dev0",
  "act_fn": "silu",
  "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 256,
  "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280],
  "center_input_sample": false,
  "class_embed_type": null,
  "class_embeddings_concat": false,
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "cross_attention_dim": 2048,
  "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1,
  "dual_cross_attention": false,
  "encoder_hid_dim": null,
  "encoder_hid_dim_type": null,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_only_cross_attention": null,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_attention_heads": null,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "projection_class_embeddings_input_dim": 2816,
  "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false,
  "resnet_time_scale_shift": "default",
  "sample_size": 128,
  "time_cond_proj_dim": null,
  "time_embedding_act_fn": null,
  "time_embedding_dim": null,
  "time_embedding_type": "positional",
  "timestep_post_act": null,
  "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": null,
  "use_linear_projection": true
}"#,
        ),
        (
            "vae",
            r#"{
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.20.0.dev0",
  "_name_or_path": "../sdxl-vae/",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true,
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 1024,
  "scaling_factor": 0.13025,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#,
        ),
        (
            "text_encoder",
            r#"{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "torch_dtype": "float16",
  "transformers_version": "4.32.0.dev0",
  "vocab_size": 49408
}"#,
        ),
        ("text_encoder_2", OPENCLIP_BIGG),
        (
            "scheduler",
            r#"{
  "_class_name": "EulerDiscreteScheduler",
  "_diffusers_version": "0.19.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "interpolation_type": "linear",
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "sample_max_value": 1.0,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "leading",
  "trained_betas": null,
  "use_karras_sigmas": false
}"#,
        ),
    ],
};

/// laion/CLIP-ViT-bigG-14 (OpenCLIP ViT-bigG/14) as SDXL's and SD3's `text_encoder_2`.
const OPENCLIP_BIGG: &str = r#"{
  "architectures": ["CLIPTextModelWithProjection"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "gelu",
  "hidden_size": 1280,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 5120,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 20,
  "num_hidden_layers": 32,
  "pad_token_id": 1,
  "projection_dim": 1280,
  "torch_dtype": "float16",
  "transformers_version": "4.32.0.dev0",
  "vocab_size": 49408
}"#;

/// openai/clip-vit-large-patch14 as FLUX.1's `text_encoder` (SD3 ships it with a projection).
const CLIP_L: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "torch_dtype": "bfloat16",
  "vocab_size": 49408
}"#;

/// google/t5-v1_1-xxl's encoder: FLUX.1's `text_encoder_2`, SD3's `text_encoder_3`.
const T5_XXL: &str = r#"{
  "architectures": ["T5EncoderModel"],
  "classifier_dropout": 0.0,
  "d_ff": 10240,
  "d_kv": 64,
  "d_model": 4096,
  "decoder_start_token_id": 0,
  "dense_act_fn": "gelu_new",
  "dropout_rate": 0.1,
  "eos_token_id": 1,
  "feed_forward_proj": "gated-gelu",
  "initializer_factor": 1.0,
  "is_encoder_decoder": true,
  "is_gated_act": true,
  "layer_norm_epsilon": 1e-06,
  "model_type": "t5",
  "num_decoder_layers": 24,
  "num_heads": 64,
  "num_layers": 24,
  "output_past": true,
  "pad_token_id": 0,
  "relative_attention_max_distance": 128,
  "relative_attention_num_buckets": 32,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 32128
}"#;

const FLUX_MODEL_INDEX: &str = r#"{
  "_class_name": "FluxPipeline",
  "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "text_encoder_2": ["transformers", "T5EncoderModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "tokenizer_2": ["transformers", "T5TokenizerFast"],
  "transformer": ["diffusers", "FluxTransformer2DModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}"#;

const FLUX_VAE: &str = r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true,
  "in_channels": 3,
  "latent_channels": 16,
  "latents_mean": null,
  "latents_std": null,
  "layers_per_block": 2,
  "mid_block_add_attention": true,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 1024,
  "scaling_factor": 0.3611,
  "shift_factor": 0.1159,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "use_post_quant_conv": false,
  "use_quant_conv": false
}"#;

static FLUX_DEV: DefaultConfigs = DefaultConfigs {
    source: "black-forest-labs/FLUX.1-dev",
    model_index: FLUX_MODEL_INDEX,
    components: &[
        ("transformer", crate::dit::FLUX_DEV_CONFIG),
        ("vae", FLUX_VAE),
        ("text_encoder", CLIP_L),
        ("text_encoder_2", T5_XXL),
        (
            "scheduler",
            r#"{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "base_image_seq_len": 256,
  "base_shift": 0.5,
  "max_image_seq_len": 4096,
  "max_shift": 1.15,
  "num_train_timesteps": 1000,
  "shift": 3.0,
  "use_dynamic_shifting": true
}"#,
        ),
    ],
};

static FLUX_SCHNELL: DefaultConfigs = DefaultConfigs {
    source: "black-forest-labs/FLUX.1-schnell",
    model_index: FLUX_MODEL_INDEX,
    components: &[
        ("transformer", crate::dit::FLUX_SCHNELL_CONFIG),
        ("vae", FLUX_VAE),
        ("text_encoder", CLIP_L),
        ("text_encoder_2", T5_XXL),
        (
            "scheduler",
            r#"{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "base_image_seq_len": 256,
  "base_shift": 0.5,
  "max_image_seq_len": 4096,
  "max_shift": 1.15,
  "num_train_timesteps": 1000,
  "shift": 1.0,
  "use_dynamic_shifting": false
}"#,
        ),
    ],
};

const SD3_MODEL_INDEX: &str = r#"{
  "_class_name": "StableDiffusion3Pipeline",
  "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
  "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
  "text_encoder_3": ["transformers", "T5EncoderModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "tokenizer_2": ["transformers", "CLIPTokenizer"],
  "tokenizer_3": ["transformers", "T5TokenizerFast"],
  "transformer": ["diffusers", "SD3Transformer2DModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}"#;

/// The components every SD3 / SD3.5 release shares (the transformer's dimensions come from the weights).
const SD3_COMPONENTS: &[(&str, &str)] = &[
    ("transformer", crate::dit::SD3_MEDIUM_CONFIG),
    (
        "vae",
        r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true,
  "in_channels": 3,
  "latent_channels": 16,
  "latents_mean": null,
  "latents_std": null,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 1024,
  "scaling_factor": 1.5305,
  "shift_factor": 0.0609,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "use_post_quant_conv": false,
  "use_quant_conv": false
}"#,
    ),
    (
        "text_encoder",
        r#"{
  "architectures": ["CLIPTextModelWithProjection"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "torch_dtype": "float16",
  "vocab_size": 49408
}"#,
    ),
    ("text_encoder_2", OPENCLIP_BIGG),
    ("text_encoder_3", T5_XXL),
    (
        "scheduler",
        r#"{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "num_train_timesteps": 1000,
  "shift": 3.0
}"#,
    ),
];

static SD3_MEDIUM: DefaultConfigs = DefaultConfigs {
    source: "stabilityai/stable-diffusion-3-medium-diffusers",
    model_index: SD3_MODEL_INDEX,
    components: SD3_COMPONENTS,
};

static SD35_MEDIUM: DefaultConfigs = DefaultConfigs {
    source: "stabilityai/stable-diffusion-3.5-medium",
    model_index: SD3_MODEL_INDEX,
    components: SD3_COMPONENTS,
};

static SD35_LARGE: DefaultConfigs = DefaultConfigs {
    source: "stabilityai/stable-diffusion-3.5-large",
    model_index: SD3_MODEL_INDEX,
    components: SD3_COMPONENTS,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_config_parses_and_covers_the_family() {
        use Family::*;
        for family in [Sd1, Sdxl, FluxDev, FluxSchnell, Sd3, Sd35Medium, Sd35Large] {
            let defaults = DefaultConfigs::of(family).unwrap();
            let index: serde_json::Value = serde_json::from_str(defaults.model_index).unwrap();
            assert_eq!(index["_class_name"], family.pipeline_class());
            for layout in family.components() {
                let text = defaults.component(layout.component).unwrap();
                serde_json::from_str::<serde_json::Value>(text).unwrap();
                assert!(index.get(layout.component).is_some(), "{}", layout.component);
            }
            serde_json::from_str::<serde_json::Value>(defaults.component("scheduler").unwrap()).unwrap();
        }
        assert!(DefaultConfigs::of(Family::Sd2).is_none());
    }

    /// The FLUX / SD3 defaults parse as the configs Stipple builds the models from.
    #[test]
    fn dit_defaults_read_as_model_configs() {
        use crate::dit::{FluxConfig, Sd3Config};
        use crate::text::clip::ClipTextConfig;
        use crate::text::T5Config;
        use std::path::Path;
        let p = Path::new("config.json");
        for family in [Family::FluxDev, Family::FluxSchnell, Family::Sd3] {
            let d = DefaultConfigs::of(family).unwrap();
            let c = |name| d.component(name).unwrap();
            ClipTextConfig::from_json(c("text_encoder"), p).unwrap();
            let t5 = if family == Family::Sd3 { "text_encoder_3" } else { "text_encoder_2" };
            assert_eq!(T5Config::from_json(c(t5), p).unwrap().d_model, 4096);
            let vae: crate::vae::VaeConfig = serde_json::from_str(c("vae")).unwrap();
            assert_eq!(vae.latent_channels, 16);
            if family == Family::Sd3 {
                ClipTextConfig::from_json(c("text_encoder_2"), p).unwrap();
                assert_eq!(Sd3Config::from_json(c("transformer"), p).unwrap().num_layers, 24);
            } else {
                let dev = FluxConfig::from_json(c("transformer"), p).unwrap().guidance_embeds;
                assert_eq!(dev, family == Family::FluxDev);
            }
        }
    }
}
