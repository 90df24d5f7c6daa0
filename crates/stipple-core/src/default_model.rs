//! Loading Stipple's own default model (a `StipplePipeline` folder, see models/stipple-default):
//! the word tokenizer and text encoder, the DiT and the small autoencoder.

use candle_core::{DType, Device};
use serde_json::Value;

use crate::checkpoint::{ComponentWeights, PipelineSource};
use crate::dit::stipple_dit::{StippleDit, StippleDitConfig};
use crate::loader::{default_sampler, LoadedModel};
use crate::pipeline::{ModelDefaults, Pipeline};
use crate::schedule::SchedulerConfig;
use crate::text::stipple_text::{StippleTextConfig, StippleTextEncoder, StippleTextModel, WordTokenizer};
use crate::vae::stipple_vae::{StippleAutoencoder, StippleVaeConfig};
use crate::{Error, Result};

/// The `_class_name` of the default model's `model_index.json`.
pub const STIPPLE_PIPELINE: &str = "StipplePipeline";

/// Settings used where `model_index.json` has no `stipple_defaults`.
const FALLBACK_STEPS: usize = 20;
const FALLBACK_CFG: f32 = 4.0;

/// Build the default model's pipeline from an opened folder.
pub fn load(source: &PipelineSource, name: String, device: &Device) -> Result<LoadedModel> {
    let origin = &source.origin;
    let text_weights = source.model("text_encoder")?;
    let text_config: StippleTextConfig = component_config(text_weights, source)?;
    let tokenizer_json = source.tokenizer("tokenizer")?.read_file("tokenizer.json")?;
    let tokenizer = WordTokenizer::from_json(&tokenizer_json, text_config.max_length, &origin.join("tokenizer/tokenizer.json"))?;
    let text_model = StippleTextModel::new(&text_config, text_weights.var_builder(DType::F32, device)).map_err(|e| weights_error(source, "text_encoder", e))?;
    let text_encoder = StippleTextEncoder::new(tokenizer, text_model)?;

    let dit_weights = source.model("transformer")?;
    let dit_config: StippleDitConfig = component_config(dit_weights, source)?;
    let dit = StippleDit::new(&dit_config, dit_weights.var_builder(DType::F32, device)).map_err(|e| weights_error(source, "transformer", e))?;

    let vae_weights = source.model("vae")?;
    let vae_config: StippleVaeConfig = component_config(vae_weights, source)?;
    let vae = StippleAutoencoder::new(&vae_config, vae_weights.var_builder(DType::F32, device)).map_err(|e| weights_error(source, "vae", e))?;

    let scheduler_source = source.scheduler()?;
    let scheduler: SchedulerConfig = serde_json::from_value(scheduler_source.config.clone())
        .map_err(|e| Error::invalid_file(origin.join("scheduler/scheduler_config.json"), e.to_string()))?;
    let side = dit_config.sample_size * vae_config.downsample_factor();
    let preferred = source.model_index.get("stipple_defaults");
    let number = |key: &str| preferred.and_then(|d| d.get(key)).and_then(Value::as_f64);
    let defaults = ModelDefaults {
        width: side,
        height: side,
        steps: number("steps").map(|s| s as usize).unwrap_or(FALLBACK_STEPS),
        cfg_scale: number("cfg_scale").map(|s| s as f32).unwrap_or(FALLBACK_CFG),
        sampler: default_sampler(&scheduler_source.class_name, &scheduler),
        flux_sigmas: false,
    };
    Ok(LoadedModel {
        pipeline: Pipeline {
            text_encoder: Box::new(text_encoder),
            denoiser: Box::new(dit),
            autoencoder: Box::new(vae),
            scheduler,
            device: device.clone(),
            defaults,
        },
        name,
        pipeline_class: STIPPLE_PIPELINE.to_string(),
        family: crate::loader::ModelFamily::StippleDefault,
    })
}

fn component_config<T: serde::de::DeserializeOwned>(weights: &ComponentWeights, source: &PipelineSource) -> Result<T> {
    serde_json::from_value(weights.config.clone())
        .map_err(|e| Error::invalid_file(source.origin.join(&weights.name).join("config.json"), e.to_string()))
}

/// A network that cannot be built from its folder: name the folder, keep candle's detail.
fn weights_error(source: &PipelineSource, component: &str, e: Error) -> Error {
    match e {
        Error::Tensor(t) => Error::invalid_file(
            source.origin.join(component),
            format!("the weights do not match config.json ({t}); retrain or restore the model folder"),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_components_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_index.json"), format!(r#"{{"_class_name": "{STIPPLE_PIPELINE}"}}"#)).unwrap();
        let err = crate::loader::load_pipeline(dir.path(), &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("text_encoder"), "{err}");
    }
}
