//! From a path the user gives to a ready [`Pipeline`]: recognises the model family by what the
//! folder or file contains (the denoiser's class and config, not file or pipeline names), checks
//! that every component the family needs is there, and builds the matching networks.
//!
//! Defaults per family (what `stipple generate` uses where a flag is left out):
//!
//! | family | size | steps | guidance | sampler |
//! |---|---|---|---|---|
//! | SD 1.x / 2.x / SDXL | UNet `sample_size` × VAE factor | 25 | CFG 7 | the folder's scheduler |
//! | FLUX.1-schnell (no `guidance_embeds`) | 1024² (FluxPipeline's 128 × 8) | 4 | none: one pass, scale ignored | flow Euler, FluxPipeline sigmas |
//! | FLUX.1-dev (`guidance_embeds`) | 1024² | 28 | 3.5, embedded: one pass, no unconditional | flow Euler, FluxPipeline sigmas |
//! | SD3 / SD3.5 | transformer `sample_size` × VAE factor | 28 | CFG 7 (StableDiffusion3Pipeline's default) | flow Euler, scheduler's own shift |
//!
//! T5 prompts are padded to FluxPipeline's 512 and StableDiffusion3Pipeline's 256 tokens; an SD3
//! folder without `text_encoder_3` gets diffusers' zero T5 features.
//!
//! Single files (SD, and all-in-one FLUX / SD3 in the original layouts) load like folders; a file
//! holding only a transformer is pointed to [`LoadOptions::transformer`], and a file lacking other
//! parts is refused with what it has, what it lacks, and which folders to copy from which
//! diffusers repository.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::Value;

use crate::checkpoint::{
    self, ComponentWeights, GgufFile, PipelineSource, SourceFormat, TransformerArchitecture, TransformerFile,
};
use crate::dit::{FluxConfig, FluxTransformer, Sd3Config, Sd3Transformer};
use crate::layers::ModelWeights;
use crate::model::{Denoiser, TextEncoder};
use crate::pipeline::{ModelDefaults, Pipeline};
use crate::sampler::SamplerKind;
use crate::schedule::SchedulerConfig;
use crate::text::clip::{ClipTextConfig, ClipTextModel};
use crate::text::clip_conditioner::{ClipConditioner, SdxlConditioner};
use crate::text::clip_tokenizer::ClipTokenizer;
use crate::text::dit_conditioner::{FluxConditioner, Sd3Conditioner, Sd3T5, T5Prompts, FLUX_T5_TOKENS, SD3_T5_TOKENS};
use crate::text::{T5Config, T5EncoderModel, T5Tokenizer};
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
    pub family: ModelFamily,
}

/// The model families Stipple runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// SD 1.x / 2.x: one CLIP encoder, UNet.
    StableDiffusion,
    /// SDXL: two CLIP encoders, UNet with size conditioning.
    StableDiffusionXl,
    /// FLUX.1 (schnell or dev): CLIP-L + T5, FLUX transformer.
    Flux,
    /// SD3 / SD3.5: CLIP-L + OpenCLIP-G (+ T5), MMDiT.
    Sd3,
    /// Stipple's own small default model: word-level text encoder, latent DiT.
    StippleDefault,
}

impl ModelFamily {
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::StableDiffusion => "Stable Diffusion 1.x/2.x",
            ModelFamily::StableDiffusionXl => "SDXL",
            ModelFamily::Flux => "FLUX.1",
            ModelFamily::Sd3 => "Stable Diffusion 3",
            ModelFamily::StippleDefault => "Stipple default model",
        }
    }

    /// The tokenizer component that is T5's (FLUX's `tokenizer_2`, SD3's optional `tokenizer_3`).
    fn t5_tokenizer(self) -> Option<&'static str> {
        match self {
            ModelFamily::Flux => Some("tokenizer_2"),
            ModelFamily::Sd3 => Some("tokenizer_3"),
            _ => None,
        }
    }

    /// The components the family cannot run without, with what each one is.
    fn required(self) -> &'static [(&'static str, &'static str)] {
        const SD: &[(&str, &str)] = &[
            ("unet", "UNet2DConditionModel"),
            ("vae", "AutoencoderKL"),
            ("text_encoder", "CLIP text encoder"),
            ("tokenizer", "CLIP tokenizer"),
            ("scheduler", "scheduler config"),
        ];
        const SDXL: &[(&str, &str)] = &[
            ("unet", "UNet2DConditionModel"),
            ("vae", "AutoencoderKL"),
            ("text_encoder", "CLIP-L text encoder"),
            ("tokenizer", "CLIP-L tokenizer"),
            ("text_encoder_2", "OpenCLIP-G text encoder with projection"),
            ("tokenizer_2", "OpenCLIP-G tokenizer"),
            ("scheduler", "scheduler config"),
        ];
        const FLUX: &[(&str, &str)] = &[
            ("transformer", "FluxTransformer2DModel"),
            ("vae", "AutoencoderKL"),
            ("text_encoder", "CLIP-L text encoder"),
            ("tokenizer", "CLIP-L tokenizer"),
            ("text_encoder_2", "T5 encoder"),
            ("tokenizer_2", "T5 tokenizer: tokenizer.json or spiece.model"),
            ("scheduler", "scheduler config"),
        ];
        const SD3: &[(&str, &str)] = &[
            ("transformer", "SD3Transformer2DModel"),
            ("vae", "AutoencoderKL"),
            ("text_encoder", "CLIP-L text encoder with projection"),
            ("tokenizer", "CLIP-L tokenizer"),
            ("text_encoder_2", "OpenCLIP-G text encoder with projection"),
            ("tokenizer_2", "OpenCLIP-G tokenizer"),
            ("scheduler", "scheduler config"),
        ];
        const STIPPLE: &[(&str, &str)] = &[
            ("transformer", "Stipple DiT"),
            ("vae", "Stipple autoencoder"),
            ("text_encoder", "Stipple text encoder"),
            ("tokenizer", "Stipple word tokenizer"),
            ("scheduler", "scheduler config"),
        ];
        match self {
            ModelFamily::StableDiffusion => SD,
            ModelFamily::StableDiffusionXl => SDXL,
            ModelFamily::Flux => FLUX,
            ModelFamily::Sd3 => SD3,
            ModelFamily::StippleDefault => STIPPLE,
        }
    }
}

/// The names of the components a source holds (models, tokenizers, `scheduler`), sorted.
fn found_components(source: &PipelineSource) -> Vec<String> {
    let mut found: Vec<String> = source.model_names().map(str::to_string).collect();
    found.extend(source.tokenizer_names().map(str::to_string));
    if source.scheduler().is_ok() {
        found.push("scheduler".into());
    }
    found.sort();
    found
}

/// Which family the denoiser's class and config say this is.
pub fn recognise(source: &PipelineSource) -> Result<ModelFamily> {
    let has_key = |c: &ComponentWeights, key: &str| c.config.get(key).is_some();
    if source.pipeline_class == STIPPLE_PIPELINE {
        return Ok(ModelFamily::StippleDefault);
    }
    if let Ok(unet) = source.model("unet") {
        let text_time = unet.config.get("addition_embed_type").and_then(Value::as_str) == Some("text_time");
        return Ok(if text_time { ModelFamily::StableDiffusionXl } else { ModelFamily::StableDiffusion });
    }
    if let Ok(transformer) = source.model("transformer") {
        match transformer.class_name.as_deref() {
            Some("FluxTransformer2DModel") => return Ok(ModelFamily::Flux),
            Some("SD3Transformer2DModel") => return Ok(ModelFamily::Sd3),
            _ => {}
        }
        // Configs without a class name: the keys only one of the two architectures has.
        if has_key(transformer, "axes_dims_rope") || has_key(transformer, "guidance_embeds") {
            return Ok(ModelFamily::Flux);
        }
        if has_key(transformer, "pos_embed_max_size") || has_key(transformer, "caption_projection_dim") {
            return Ok(ModelFamily::Sd3);
        }
        return Err(Error::Unsupported(format!(
            "{}: the transformer is a `{}`; Stipple runs FluxTransformer2DModel (FLUX.1) and SD3Transformer2DModel \
             (SD3 / SD3.5) transformers",
            source.origin.display(),
            transformer.class_name.as_deref().unwrap_or("transformer of unknown class")
        )));
    }
    Err(Error::Unsupported(format!(
        "{} (a `{}`) has neither a `unet` nor a `transformer` component, so it is no text-to-image model Stipple \
         knows; found: {}. Stipple loads Stable Diffusion 1.x/2.x, SDXL, FLUX.1 and SD3 pipelines",
        source.origin.display(),
        source.pipeline_class,
        found_components(source).join(", ")
    )))
}

/// Refuse a source that lacks part of what its family needs, listing what it has and what not.
fn check_complete(source: &PipelineSource, family: ModelFamily) -> Result<()> {
    let mut found = found_components(source);
    // A T5 tokenizer folder with neither file it can be read from counts as missing.
    if let Some(name) = family.t5_tokenizer() {
        if source.tokenizer(name).is_ok_and(|t| !T5Tokenizer::source_has_files(t)) {
            found.retain(|f| f != name);
        }
    }
    let missing: Vec<String> = family
        .required()
        .iter()
        .filter(|(name, _)| !found.iter().any(|f| f == name))
        .map(|(name, what)| format!("{name} ({what})"))
        .collect();
    let mut problems = missing;
    if family == ModelFamily::Sd3 {
        // T5 is optional in SD3, but only as a pair.
        let has = |n: &str| found.iter().any(|f| f == n);
        match (has("text_encoder_3"), has("tokenizer_3")) {
            (true, false) => problems
                .push("tokenizer_3 (T5 tokenizer: tokenizer.json or spiece.model, needed with text_encoder_3)".into()),
            (false, true) => problems.push("text_encoder_3 (T5 encoder, needed with tokenizer_3)".into()),
            _ => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let advice = match source.format {
        SourceFormat::DiffusersFolder => "A diffusers folder lists its components in model_index.json and keeps each \
             in its own subfolder; download the missing ones from the model's repository"
            .to_string(),
        SourceFormat::SingleFile { family } => {
            // The component names alone ("tokenizer_3"), without what each one is.
            let names: Vec<&str> = problems.iter().map(|p| p.split(' ').next().unwrap_or(p)).collect();
            format!("To complete it: {}", checkpoint::single_file::missing_advice(&source.origin, family, &names))
        }
    };
    Err(Error::missing_file(
        &source.origin,
        format!(
            "this {} pipeline is incomplete: missing {}; found {}. {advice}",
            family.name(),
            problems.join(", "),
            found.join(", ")
        ),
    ))
}

/// Choices about how a model is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Transformer weights to use instead of the folder's (FLUX and SD3): a GGUF or `.safetensors`
    /// file in diffusers' layout (as `stipple quantize` writes it) or the original ones (Black
    /// Forest Labs' FLUX release files, the community's GGUF files, Stability's SD3 / SD3.5 files);
    /// quantized or float. The folder
    /// still gives the config and the other parts.
    pub transformer: Option<PathBuf>,
}

/// Load a diffusers pipeline folder or a single-file checkpoint.
pub fn load_pipeline(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_pipeline_with(path, &LoadOptions::default(), device)
}

/// [`load_pipeline`] with options.
pub fn load_pipeline_with(path: &Path, options: &LoadOptions, device: &Device) -> Result<LoadedModel> {
    if path.is_file() {
        // A lone transformer (GGUF, or a transformer-only safetensors in diffusers', BFL's or
        // Stability's layout) is not a pipeline; a file that also holds other models (an
        // all-in-one FLUX / SD3 checkpoint) goes on to the single-file checkpoint reader.
        if GgufFile::is_gguf(path) {
            return Err(refuse_transformer_as_model(&TransformerFile::open(path)?));
        }
        if let Ok(file) = TransformerFile::open(path) {
            let holds_more = checkpoint::open_pipeline(path).is_ok_and(|s| s.model_names().any(|n| n != "transformer"));
            if !holds_more {
                return Err(refuse_transformer_as_model(&file));
            }
        }
    }
    let source = checkpoint::open_pipeline(path)?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let family = recognise(&source)?;
    check_complete(&source, family)?;
    if options.transformer.is_some() && !matches!(family, ModelFamily::Flux | ModelFamily::Sd3) {
        return Err(Error::param(
            "transformer",
            format!("replaces the transformer of FLUX and SD3 models; {} is a {} model", path.display(), family.name()),
        ));
    }
    let dtype = DType::F32;
    if family == ModelFamily::StippleDefault {
        return crate::default_model::load(&source, name, device);
    }

    let vae_weights = source.model("vae")?;
    let vae_config: VaeConfig = from_config(vae_weights)?;
    let vae = AutoencoderKL::new(vae_weights.var_builder(dtype, device), &vae_config)?;
    let vae_scale = 1usize << vae_config.block_out_channels.len().saturating_sub(1);
    let scheduler_source = source.scheduler()?;
    let scheduler: SchedulerConfig = serde_json::from_value(scheduler_source.config.clone())
        .map_err(|e| Error::invalid_file(path.join("scheduler/scheduler_config.json"), e.to_string()))?;
    let sampler = default_sampler(&scheduler_source.class_name, &scheduler);

    let (text_encoder, denoiser, defaults): (Box<dyn TextEncoder>, Box<dyn Denoiser>, ModelDefaults) = match family {
        ModelFamily::StableDiffusion | ModelFamily::StableDiffusionXl => {
            let text_encoder: Box<dyn TextEncoder> = if family == ModelFamily::StableDiffusion {
                Box::new(ClipConditioner::new(tokenizer(&source, "tokenizer")?, clip(&source, "text_encoder", dtype, device)?)?)
            } else {
                let zeros =
                    source.model_index.get("force_zeros_for_empty_prompt").and_then(Value::as_bool).unwrap_or(true);
                Box::new(
                    SdxlConditioner::new(
                        tokenizer(&source, "tokenizer")?,
                        clip(&source, "text_encoder", dtype, device)?,
                        tokenizer(&source, "tokenizer_2")?,
                        clip(&source, "text_encoder_2", dtype, device)?,
                    )?
                    .with_zeros_for_empty_negative(zeros),
                )
            };
            let unet_weights = source.model("unet")?;
            let unet_config: UNetConfig = from_config(unet_weights)?;
            let unet = UNet2DConditionModel::new(unet_weights.var_builder(dtype, device), &unet_config)?;
            let sample_size = unet_weights.config.get("sample_size").and_then(Value::as_u64).unwrap_or(64) as usize;
            let side = sample_size * vae_scale;
            let defaults =
                ModelDefaults { width: side, height: side, steps: 25, cfg_scale: 7.0, sampler, flux_sigmas: false };
            (text_encoder, Box::new(unet), defaults)
        }
        ModelFamily::Flux => {
            let weights = source.model("transformer")?;
            let config = FluxConfig::from_json(&weights.config.to_string(), &config_path(&source, "transformer"))?;
            let transformer = FluxTransformer::new(config, transformer_weights(&source, options, family, dtype, device)?)?;
            let t5 = T5Prompts::new(t5_tokenizer(&source, "tokenizer_2")?, t5(&source, "text_encoder_2", dtype, device)?, FLUX_T5_TOKENS)?;
            let text_encoder =
                FluxConditioner::new(tokenizer(&source, "tokenizer")?, clip(&source, "text_encoder", dtype, device)?, t5)?;
            // FluxPipeline's default_sample_size is 128 latents whatever the transformer.
            let side = 128 * vae_scale;
            let dev = transformer.config().guidance_embeds;
            let defaults = ModelDefaults {
                width: side,
                height: side,
                steps: if dev { 28 } else { 4 },
                cfg_scale: if dev { crate::dit::DEFAULT_FLUX_GUIDANCE } else { 1.0 },
                sampler,
                flux_sigmas: true,
            };
            (Box::new(text_encoder), Box::new(transformer), defaults)
        }
        ModelFamily::StippleDefault => unreachable!("returned above"),
        ModelFamily::Sd3 => {
            let weights = source.model("transformer")?;
            let config = Sd3Config::from_json(&weights.config.to_string(), &config_path(&source, "transformer"))?;
            let transformer = Sd3Transformer::new(config, transformer_weights(&source, options, family, dtype, device)?)?;
            let text_encoder = sd3_conditioner(&source, source.model("text_encoder_3").is_ok(), device)?;
            let side = transformer.config().sample_size * vae_scale;
            let defaults =
                ModelDefaults { width: side, height: side, steps: 28, cfg_scale: 7.0, sampler, flux_sigmas: false };
            (Box::new(text_encoder), Box::new(transformer), defaults)
        }
    };
    Ok(LoadedModel {
        pipeline: Pipeline {
            text_encoder,
            denoiser,
            autoencoder: Box::new(vae),
            scheduler,
            device: device.clone(),
            defaults,
        },
        name,
        pipeline_class: source.pipeline_class.clone(),
        family,
    })
}

/// The transformer's weights: the folder's (linear weights kept in their stored dtype) or the
/// file of [`LoadOptions::transformer`].
fn transformer_weights(
    source: &PipelineSource,
    options: &LoadOptions,
    family: ModelFamily,
    dtype: DType,
    device: &Device,
) -> Result<ModelWeights> {
    let Some(path) = &options.transformer else {
        return Ok(source.model("transformer")?.model_weights(dtype, device));
    };
    let file = TransformerFile::open(path)?;
    let holds = match file.architecture() {
        TransformerArchitecture::Flux => ModelFamily::Flux,
        TransformerArchitecture::Sd3 => ModelFamily::Sd3,
    };
    if holds != family {
        return Err(Error::invalid_file(
            path,
            format!("holds a {} transformer, but {} is a {} pipeline", holds.name(), source.origin.display(), family.name()),
        ));
    }
    Ok(file.model_weights(dtype, device))
}

/// A lone transformer file given as the model: recognised, and pointed to `--transformer`.
fn refuse_transformer_as_model(file: &TransformerFile) -> Error {
    let path = file.path().display();
    Error::Unsupported(format!(
        "{path} is {}: it holds only the transformer. Give the model's diffusers folder (for its config, text \
         encoders, VAE and scheduler) as the model and this file as the transformer \
         (`stipple generate --model FOLDER --transformer {path}`)",
        file.description()
    ))
}

/// SD3's text conditioning from a pipeline source, with its T5 encoder or (`use_t5` false, as
/// when the folder has none) with diffusers' zero T5 features.
pub fn sd3_conditioner(source: &PipelineSource, use_t5: bool, device: &Device) -> Result<Sd3Conditioner> {
    let dtype = DType::F32;
    let t5 = if use_t5 {
        Sd3T5::Encoder(T5Prompts::new(
            t5_tokenizer(source, "tokenizer_3")?,
            t5(source, "text_encoder_3", dtype, device)?,
            SD3_T5_TOKENS,
        )?)
    } else {
        let transformer = source.model("transformer")?;
        let config = Sd3Config::from_json(&transformer.config.to_string(), &config_path(source, "transformer"))?;
        Sd3T5::Zeros { tokens: SD3_T5_TOKENS, width: config.joint_attention_dim }
    };
    Sd3Conditioner::new(
        tokenizer(source, "tokenizer")?,
        clip(source, "text_encoder", dtype, device)?,
        tokenizer(source, "tokenizer_2")?,
        clip(source, "text_encoder_2", dtype, device)?,
        t5,
    )
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

/// Where a component's config is, for error messages.
fn config_path(source: &PipelineSource, name: &str) -> std::path::PathBuf {
    source.origin.join(name).join("config.json")
}

fn tokenizer(source: &PipelineSource, name: &str) -> Result<ClipTokenizer> {
    ClipTokenizer::from_source(source.tokenizer(name)?, None)
}

fn clip(source: &PipelineSource, name: &str, dtype: DType, device: &Device) -> Result<ClipTextModel> {
    let weights = source.model(name)?;
    let config = ClipTextConfig::from_json(&weights.config.to_string(), &config_path(source, name))?;
    ClipTextModel::new(config, weights.var_builder(dtype, device))
}

fn t5_tokenizer(source: &PipelineSource, name: &str) -> Result<T5Tokenizer> {
    T5Tokenizer::from_source(source.tokenizer(name)?)
}

fn t5(source: &PipelineSource, name: &str, dtype: DType, device: &Device) -> Result<T5EncoderModel> {
    let weights = source.model(name)?;
    let config = T5Config::from_json(&weights.config.to_string(), &config_path(source, name))?;
    // T5-XXL is 4.7B parameters: its bf16 linear weights stay bf16 (9.5 GB, not 19 GB in f32).
    T5EncoderModel::new(config, weights.model_weights(dtype, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pipelines(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/pipelines/models").join(name)
    }

    #[test]
    fn families_and_defaults_come_from_the_contents() {
        let dev = load_pipeline(&pipelines("flux_dev_tiny"), &Device::Cpu).unwrap();
        assert_eq!(dev.family, ModelFamily::Flux);
        let d = dev.pipeline.defaults;
        assert_eq!((d.steps, d.cfg_scale, d.sampler, d.flux_sigmas), (28, 3.5, SamplerKind::FlowEuler, true));
        // FluxPipeline's 128 latents × the tiny VAE's factor 2.
        assert_eq!((d.width, d.height), (256, 256));
        let schnell = load_pipeline(&pipelines("flux_schnell_tiny"), &Device::Cpu).unwrap().pipeline.defaults;
        assert_eq!((schnell.steps, schnell.cfg_scale), (4, 1.0));
        let sd3 = load_pipeline(&pipelines("sd3_tiny"), &Device::Cpu).unwrap();
        assert_eq!(sd3.family, ModelFamily::Sd3);
        let d = sd3.pipeline.defaults;
        assert_eq!((d.steps, d.cfg_scale, d.flux_sigmas, d.width), (28, 7.0, false, 32 * 2));
    }

    #[test]
    fn the_pipeline_class_name_does_not_decide_the_family() {
        let dir = tempfile::tempdir().unwrap();
        crate::checkpoint::diffusers::tests::copy_dir(&pipelines("sd3_tiny"), dir.path());
        let index = dir.path().join("model_index.json");
        let text = std::fs::read_to_string(&index).unwrap().replace("StableDiffusion3Pipeline", "SomeOtherPipeline");
        std::fs::write(&index, text).unwrap();
        assert_eq!(load_pipeline(dir.path(), &Device::Cpu).unwrap().family, ModelFamily::Sd3);
    }

    #[test]
    fn sd3_t5_comes_as_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        crate::checkpoint::diffusers::tests::copy_dir(&pipelines("sd3_tiny"), dir.path());
        let index = dir.path().join("model_index.json");
        let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        value["tokenizer_3"] = serde_json::json!([null, null]);
        std::fs::write(&index, value.to_string()).unwrap();
        let err = load_pipeline(dir.path(), &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("tokenizer_3 (T5 tokenizer: tokenizer.json or spiece.model, needed with text_encoder_3)"), "{err}");
        // Without either, the pipeline runs on zero T5 features.
        value["text_encoder_3"] = serde_json::json!([null, null]);
        std::fs::write(&index, value.to_string()).unwrap();
        let loaded = load_pipeline(dir.path(), &Device::Cpu).unwrap();
        let cond = loaded.pipeline.text_encoder.encode(&["a cat"]).unwrap();
        assert_eq!(cond.context.dims(), &[1, 77 + SD3_T5_TOKENS, 96]);
    }

    /// A pipeline copy whose T5 tokenizer folder holds only testdata/t5_spiece's `spiece.model`.
    /// Its vocabulary is not the tiny T5 encoders' (256 ids), so this checks loading, not encoding.
    fn with_spiece_only_t5_tokenizer(pipeline: &str, tokenizer: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        crate::checkpoint::diffusers::tests::copy_dir(&pipelines(pipeline), dir.path());
        let folder = dir.path().join(tokenizer);
        std::fs::remove_dir_all(&folder).unwrap();
        std::fs::create_dir(&folder).unwrap();
        let spiece = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/t5_spiece/spiece.model");
        std::fs::copy(spiece, folder.join("spiece.model")).unwrap();
        dir
    }

    #[test]
    fn flux_and_sd3_load_a_t5_tokenizer_folder_with_only_spiece_model() {
        for (pipeline, tokenizer, family) in
            [("flux_schnell_tiny", "tokenizer_2", ModelFamily::Flux), ("sd3_tiny", "tokenizer_3", ModelFamily::Sd3)]
        {
            let dir = with_spiece_only_t5_tokenizer(pipeline, tokenizer);
            assert_eq!(load_pipeline(dir.path(), &Device::Cpu).unwrap().family, family, "{pipeline}");
            // With neither file, the folder is reported missing, naming both files.
            std::fs::remove_file(dir.path().join(tokenizer).join("spiece.model")).unwrap();
            let err = load_pipeline(dir.path(), &Device::Cpu).err().unwrap().to_string();
            assert!(err.contains(&format!("missing {tokenizer} (T5 tokenizer: tokenizer.json or spiece.model")), "{err}");
            assert!(!err.contains(&format!("found {tokenizer}")) && !err.contains(&format!(", {tokenizer},")), "{err}");
        }
    }

    /// testdata/single_file/`name`.safetensors with only the tensors under `prefixes`, metadata kept.
    fn single_file_part(name: &str, prefixes: &[&str], dir: &Path) -> PathBuf {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../testdata/single_file/{name}.safetensors"));
        let bytes = std::fs::read(source).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<(String, safetensors::tensor::TensorView)> =
            tensors.tensors().into_iter().filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p))).collect();
        let path = dir.join(format!("{name}_part.safetensors"));
        safetensors::serialize_to_file(kept, header.metadata().clone(), &path).unwrap();
        path
    }

    #[test]
    fn all_in_one_files_load_as_their_family() {
        let file = |name: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../testdata/single_file/{name}.safetensors"));
        let sd3 = load_pipeline(&file("sd3_tiny"), &Device::Cpu).unwrap();
        assert_eq!((sd3.family, sd3.pipeline_class.as_str()), (ModelFamily::Sd3, "StableDiffusion3Pipeline"));
        let schnell = load_pipeline(&file("flux_schnell_tiny"), &Device::Cpu).unwrap();
        assert_eq!((schnell.family, schnell.pipeline.defaults.steps), (ModelFamily::Flux, 4));
    }

    #[test]
    fn partial_single_files_list_found_and_missing_parts() {
        let dir = tempfile::tempdir().unwrap();
        // FLUX transformer + VAE, no text encoders (tokenizers are in the metadata).
        let path = single_file_part("flux_schnell_tiny", &["model.diffusion_model.", "vae."], dir.path());
        let err = load_pipeline(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("FLUX.1 pipeline is incomplete: missing text_encoder (CLIP-L text encoder), text_encoder_2 (T5 encoder)"), "{err}");
        assert!(err.contains("found scheduler, tokenizer, tokenizer_2, transformer, vae"), "{err}");
        assert!(err.contains("holds no weights for text_encoder, text_encoder_2"), "{err}");
        // SD3 without tokenizers in the metadata or beside the file: which folders from where.
        let path = single_file_part("sd35_medium_tiny", &["model.diffusion_model.", "first_stage_model.", "text_encoders."], dir.path());
        let err = load_pipeline(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("missing tokenizer (CLIP-L tokenizer), tokenizer_2 (OpenCLIP-G tokenizer)"), "{err}");
        assert!(err.contains("copy the folder(s) `tokenizer/`, `tokenizer_2/`, `tokenizer_3/` of the diffusers repository stabilityai/stable-diffusion-3.5-medium"), "{err}");
        // Given the folders, it loads.
        for tokenizer in ["tokenizer", "tokenizer_2", "tokenizer_3"] {
            crate::checkpoint::diffusers::tests::copy_dir(&pipelines("sd35_medium_tiny").join(tokenizer), &dir.path().join(tokenizer));
        }
        assert_eq!(load_pipeline(&path, &Device::Cpu).unwrap().family, ModelFamily::Sd3);
    }

    #[test]
    fn transformer_only_original_files_point_to_transformer_option() {
        let dir = tempfile::tempdir().unwrap();
        for (name, layout) in [("flux_dev_tiny", "FLUX.1 transformer"), ("sd3_tiny", "SD3 transformer")] {
            let path = single_file_part(name, &["model.diffusion_model."], dir.path());
            let err = load_pipeline(&path, &Device::Cpu).err().unwrap().to_string();
            assert!(err.contains(layout) && err.contains("--transformer") && err.contains("original"), "{err}");
            // As --transformer with the diffusers folder, it is the folder's own transformer.
            let options = LoadOptions { transformer: Some(path) };
            assert!(load_pipeline_with(&pipelines(name), &options, &Device::Cpu).is_ok(), "{name}");
        }
    }
}
