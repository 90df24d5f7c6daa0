//! The models the server offers: loaded once at start, shared by the workers, listed by the API.

use std::sync::Arc;

use candle_core::Device;
use serde::Serialize;
use stipple_core::loader::{load_pipeline, LoadedModel};
use stipple_core::pipeline::ModelDefaults;

use crate::config::ModelConfig;
use crate::error::StartError;

/// One servable model.
pub struct ModelEntry {
    pub name: String,
    pub loaded: Arc<LoadedModel>,
    pub defaults: ModelDefaults,
    /// Image sides must be multiples of this (autoencoder factor × denoiser patch).
    pub size_multiple: usize,
    /// Multiplies the cost table.
    pub cost_factor: f64,
}

/// What the page and `/api/models` show of a model.
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub default: bool,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub cfg_scale: f32,
    pub sampler: String,
    pub size_multiple: usize,
    pub cost_factor: f64,
}

pub struct ModelRegistry {
    entries: Vec<ModelEntry>,
    default_index: usize,
}

impl ModelRegistry {
    /// Load every configured model (on the calling thread: this reads weights).
    pub fn load(configs: &[ModelConfig], default_name: Option<&str>) -> Result<ModelRegistry, StartError> {
        let device = Device::Cpu;
        let mut entries: Vec<ModelEntry> = Vec::new();
        for cfg in configs {
            let path = cfg.path();
            let loaded = load_pipeline(path, &device)
                .map_err(|source| StartError::Model { path: path.display().to_string(), source })?;
            let name = cfg.name().map(str::to_string).unwrap_or_else(|| loaded.name.clone());
            if entries.iter().any(|e| e.name == name) {
                return Err(StartError::Config(format!(
                    "two models are named `{name}`; give one a `name` in the config's [[models]] entry"
                )));
            }
            let factor = cfg.cost_factor();
            if !(factor.is_finite() && factor > 0.0) {
                return Err(StartError::Config(format!("model `{name}`: cost_factor must be a positive number, got {factor}")));
            }
            let pipe = &loaded.pipeline;
            let size_multiple = pipe.autoencoder.downsample_factor() * pipe.denoiser.latent_multiple();
            entries.push(ModelEntry { name, defaults: pipe.defaults, size_multiple, cost_factor: factor, loaded: Arc::new(loaded) });
        }
        if entries.is_empty() {
            return Err(StartError::Config("no model configured: set `models` in the config file or STIPPLE_MODELS".into()));
        }
        let default_index = match default_name {
            Some(n) => entries.iter().position(|e| e.name == n).ok_or_else(|| {
                StartError::Config(format!("default_model `{n}` is not among the models: {}", names(&entries)))
            })?,
            None => 0,
        };
        Ok(ModelRegistry { entries, default_index })
    }

    pub fn default_model(&self) -> &ModelEntry {
        &self.entries[self.default_index]
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn names(&self) -> String {
        names(&self.entries)
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    pub fn infos(&self) -> Vec<ModelInfo> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| ModelInfo {
                name: e.name.clone(),
                default: i == self.default_index,
                width: e.defaults.width,
                height: e.defaults.height,
                steps: e.defaults.steps,
                cfg_scale: e.defaults.cfg_scale,
                sampler: e.defaults.sampler.name().to_string(),
                size_multiple: e.size_multiple,
                cost_factor: e.cost_factor,
            })
            .collect()
    }
}

fn names(entries: &[ModelEntry]) -> String {
    entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
}
