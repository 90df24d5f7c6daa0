//! From a path the user gives to a ready [`Pipeline`]: recognises the model family by what the
//! folder or file contains (not by its name) and builds the matching networks.

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;

use crate::checkpoint::{self, ComponentWeights, PipelineSource};
use crate::pipeline::{ModelDefaults, Pipeline};
use crate::sampler::SamplerKind;
use crate::schedule::SchedulerConfig;
use crate::text::clip::{ClipTextConfig, ClipTextModel};
use crate::text::clip_conditioner::{ClipConditioner, SdxlConditioner};
use crate::text::clip_tokenizer::ClipTokenizer;
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::{Error, Result};

pub use crate::default_model::STIPPLE_PIPELINE;

/// A loaded model and the name to show for it.
pub struct LoadedModel {
    pub pipeline: Pipeline,
    /// The folder or file name, without extension.
    pub name: String,
    /// The diffusers pipeline class it was loaded as.
    pub pipeline_class: String,
}

/// Load a diffusers pipeline folder or a single-file checkpoint.
pub fn load_pipeline(path: &Path, device: &Device) -> Result<LoadedModel> {
    let source = checkpoint::open_pipeline(path)?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let dtype = DType::F32;
    let class = source.pipeline_class.clone();
    if class == STIPPLE_PIPELINE {
        return crate::default_model::load(&source, name, device);
    }
    let text_encoder: Box<dyn crate::model::TextEncoder> = match class.as_str() {
        "StableDiffusionPipeline" | "StableDiffusionImg2ImgPipeline" | "StableDiffusionInpaintPipeline" => {
            Box::new(ClipConditioner::new(tokenizer(&source, "tokenizer")?, clip(&source, "text_encoder", dtype, device)?)?)
        }
        "StableDiffusionXLPipeline" | "StableDiffusionXLImg2ImgPipeline" | "StableDiffusionXLInpaintPipeline" => {
            Box::new(SdxlConditioner::new(
                tokenizer(&source, "tokenizer")?,
                clip(&source, "text_encoder", dtype, device)?,
                tokenizer(&source, "tokenizer_2")?,
                clip(&source, "text_encoder_2", dtype, device)?,
            )?)
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{} is a `{other}`; Stipple loads Stable Diffusion 1.x/2.x and SDXL pipelines so far",
                path.display()
            )))
        }
    };

    let unet_weights = source.model("unet")?;
    let unet_config: UNetConfig = from_config(unet_weights)?;
    let unet = UNet2DConditionModel::new(unet_weights.var_builder(dtype, device), &unet_config)?;
    let vae_weights = source.model("vae")?;
    let vae_config: VaeConfig = from_config(vae_weights)?;
    let vae = AutoencoderKL::new(vae_weights.var_builder(dtype, device), &vae_config)?;

    let scheduler_source = source.scheduler()?;
    let scheduler: SchedulerConfig = serde_json::from_value(scheduler_source.config.clone())
        .map_err(|e| Error::invalid_file(path.join("scheduler/scheduler_config.json"), e.to_string()))?;
    let vae_scale = 1usize << vae_config.block_out_channels.len().saturating_sub(1);
    let sample_size = unet_weights.config.get("sample_size").and_then(Value::as_u64).unwrap_or(64) as usize;
    let defaults = ModelDefaults {
        width: sample_size * vae_scale,
        height: sample_size * vae_scale,
        steps: 25,
        cfg_scale: 7.0,
        sampler: default_sampler(&scheduler_source.class_name, &scheduler),
    };
    Ok(LoadedModel {
        pipeline: Pipeline {
            text_encoder,
            denoiser: Box::new(unet),
            autoencoder: Box::new(vae),
            scheduler,
            device: device.clone(),
            defaults,
        },
        name,
        pipeline_class: class,
    })
}

/// The sampler matching the scheduler a model ships with, so defaults reproduce diffusers'
/// pipeline; DPM++ 2M for schedulers Stipple does not implement (PNDM, ...).
pub(crate) fn default_sampler(class_name: &str, config: &SchedulerConfig) -> SamplerKind {
    match class_name {
        "DDPMScheduler" => SamplerKind::Ddpm,
        "DDIMScheduler" => SamplerKind::Ddim,
        "EulerDiscreteScheduler" => SamplerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
        "LCMScheduler" => SamplerKind::Lcm,
        "FlowMatchEulerDiscreteScheduler" => SamplerKind::FlowEuler,
        "DPMSolverMultistepScheduler" if config.use_karras_sigmas == Some(true) => SamplerKind::Dpmpp2mKarras,
        _ => SamplerKind::Dpmpp2m,
    }
}

fn from_config<T: serde::de::DeserializeOwned>(weights: &ComponentWeights) -> Result<T> {
    serde_json::from_value(weights.config.clone()).map_err(|e| {
        Error::Unsupported(format!("the {} config.json cannot be read: {e}", weights.name))
    })
}

fn tokenizer(source: &PipelineSource, name: &str) -> Result<ClipTokenizer> {
    ClipTokenizer::from_source(source.tokenizer(name)?, None)
}

fn clip(source: &PipelineSource, name: &str, dtype: DType, device: &Device) -> Result<ClipTextModel> {
    let weights = source.model(name)?;
    let origin = source.origin.join(name).join("config.json");
    let config = ClipTextConfig::from_json(&weights.config.to_string(), &origin)?;
    ClipTextModel::new(config, weights.var_builder(dtype, device))
}
