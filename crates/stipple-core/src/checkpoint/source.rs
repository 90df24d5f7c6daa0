//! What a model source resolves to: per component, a config and the weights (or, for
//! schedulers and tokenizers, their files), whatever the source's format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::original_layout::Family;
use super::store::WeightStore;
use crate::{Error, Result};

/// The config and weights of one model (UNet, VAE, text encoder, transformer ...).
#[derive(Debug, Clone)]
pub struct ComponentWeights {
    /// Component name in the pipeline (`unet`, `text_encoder_2` ...), or the folder name for a
    /// bare component folder.
    pub name: String,
    /// Class name (`UNet2DConditionModel`, `CLIPTextModelWithProjection` ...) from
    /// `model_index.json`, else the config's `_class_name` / `architectures`.
    pub class_name: Option<String>,
    /// The diffusers / transformers `config.json`.
    pub config: Value,
    /// The weights under diffusers / transformers names.
    pub store: WeightStore,
}

impl ComponentWeights {
    /// A VarBuilder over the weights, converting to `dtype` on `device` as tensors are requested.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.store.var_builder(dtype, device)
    }

    /// The weights for compute in `dtype`, linear-layer weights kept in their stored dtype where
    /// that is narrower (a bf16 checkpoint stays bf16 in memory).
    pub fn model_weights(&self, dtype: DType, device: &Device) -> crate::layers::ModelWeights {
        crate::layers::ModelWeights::new(self.var_builder(dtype, device), std::sync::Arc::new(self.store.clone()))
    }
}

/// The class name a config declares (`_class_name` for diffusers, `architectures[0]` for transformers).
pub(crate) fn class_from_config(config: &Value) -> Option<String> {
    config
        .get("_class_name")
        .and_then(Value::as_str)
        .or_else(|| config.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str))
        .map(str::to_string)
}

/// A scheduler's class and config (`scheduler_config.json`).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub class_name: String,
    /// Non-finite numbers appear as the strings `"Infinity"`, `"-Infinity"`, `"NaN"`; read
    /// numbers with [`super::config_json::number`].
    pub config: Value,
}

/// Where a tokenizer's files are.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// A tokenizer folder (`tokenizer.json`, `vocab.json`, `merges.txt`, `tokenizer_config.json` ...).
    Folder(PathBuf),
    /// Files embedded in a single-file checkpoint's metadata, by file name.
    Embedded { checkpoint: PathBuf, files: BTreeMap<String, String> },
}

impl TokenizerSource {
    /// The text of one tokenizer file (`tokenizer.json`, `vocab.json` ...).
    pub fn read_file(&self, name: &str) -> Result<String> {
        match self {
            TokenizerSource::Folder(dir) => {
                let path = dir.join(name);
                std::fs::read_to_string(&path).map_err(|e| folder_read_error(dir, name, e))
            }
            TokenizerSource::Embedded { checkpoint, files } => {
                files.get(name).cloned().ok_or_else(|| not_embedded(checkpoint, files, name))
            }
        }
    }

    /// The bytes of one tokenizer file, for binary files (SentencePiece's `spiece.model`).
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        match self {
            TokenizerSource::Folder(dir) => std::fs::read(dir.join(name)).map_err(|e| folder_read_error(dir, name, e)),
            TokenizerSource::Embedded { checkpoint, files } => {
                files.get(name).map(|text| text.as_bytes().to_vec()).ok_or_else(|| not_embedded(checkpoint, files, name))
            }
        }
    }

    pub fn has_file(&self, name: &str) -> bool {
        match self {
            TokenizerSource::Folder(dir) => dir.join(name).is_file(),
            TokenizerSource::Embedded { files, .. } => files.contains_key(name),
        }
    }
}

fn folder_read_error(dir: &Path, name: &str, e: std::io::Error) -> Error {
    let path = dir.join(name);
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::missing_file(&path, format!("the tokenizer folder {} has no {name}", dir.display()))
        }
        _ => Error::io(format!("reading {}", path.display()), e),
    }
}

fn not_embedded(checkpoint: &Path, files: &BTreeMap<String, String>, name: &str) -> Error {
    Error::invalid_file(
        checkpoint,
        format!(
            "the tokenizer embedded in this checkpoint has no {name} (it has: {})",
            files.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// The kind of source a pipeline came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A diffusers pipeline folder (`model_index.json` + component subfolders).
    DiffusersFolder,
    /// A single `.safetensors` checkpoint in the original layout of `family`.
    SingleFile { family: Family },
}

/// A whole pipeline's components, resolved from a diffusers folder or a single file.
#[derive(Debug, Clone)]
pub struct PipelineSource {
    /// The folder or file it came from.
    pub origin: PathBuf,
    pub format: SourceFormat,
    /// The diffusers pipeline class (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, `FluxPipeline` ...).
    pub pipeline_class: String,
    /// `model_index.json` (embedded or default for single files).
    pub model_index: Value,
    pub(crate) models: BTreeMap<String, ComponentWeights>,
    pub(crate) scheduler: Option<SchedulerConfig>,
    pub(crate) tokenizers: BTreeMap<String, TokenizerSource>,
}

impl PipelineSource {
    /// The names of the model components present (`text_encoder`, `unet`, `vae` ...).
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The names of the tokenizers present (`tokenizer`, `tokenizer_2` ...).
    pub fn tokenizer_names(&self) -> impl Iterator<Item = &str> {
        self.tokenizers.keys().map(String::as_str)
    }

    /// One model component's config and weights.
    pub fn model(&self, name: &str) -> Result<&ComponentWeights> {
        self.models.get(name).ok_or_else(|| {
            let present = self.models.keys().cloned().collect::<Vec<_>>().join(", ");
            match self.format {
                SourceFormat::DiffusersFolder => Error::missing_file(
                    self.origin.join(name),
                    format!("the pipeline has no `{name}` component (it has: {present}); check model_index.json"),
                ),
                SourceFormat::SingleFile { family } => Error::invalid_file(
                    &self.origin,
                    format!(
                        "this {} checkpoint holds no `{name}` weights (it has: {present}); use a full checkpoint or the \
                         diffusers folder",
                        family.name()
                    ),
                ),
            }
        })
    }

    /// The scheduler's class and config.
    pub fn scheduler(&self) -> Result<&SchedulerConfig> {
        self.scheduler.as_ref().ok_or_else(|| match self.format {
            SourceFormat::DiffusersFolder => Error::missing_file(
                self.origin.join("scheduler").join("scheduler_config.json"),
                "model_index.json lists no scheduler",
            ),
            SourceFormat::SingleFile { family } => Error::invalid_file(
                &self.origin,
                format!(
                    "this {} checkpoint has no scheduler config (metadata `stipple.scheduler_config`) and Stipple has no \
                     default for it; use the model's diffusers folder",
                    family.name()
                ),
            ),
        })
    }

    /// A tokenizer (`tokenizer`, `tokenizer_2` ...).
    pub fn tokenizer(&self, name: &str) -> Result<&TokenizerSource> {
        self.tokenizers.get(name).ok_or_else(|| match self.format {
            SourceFormat::DiffusersFolder => Error::missing_file(
                self.origin.join(name),
                format!("model_index.json lists no `{name}` (a diffusers folder keeps each tokenizer in its own subfolder)"),
            ),
            SourceFormat::SingleFile { family } => {
                let beside = self.origin.parent().unwrap_or(Path::new(".")).join(name);
                let repository = super::default_configs::DefaultConfigs::of(family)
                    .map_or_else(|| "its diffusers repository".into(), |d| format!("the diffusers repository {}", d.source));
                Error::missing_file(
                    &beside,
                    format!(
                        "the single-file checkpoint {} carries no tokenizer `{name}` (single files hold weights only). \
                         Put the `{name}/` folder of {repository} next to the checkpoint, at {}, or convert the \
                         diffusers folder with `stipple convert`, which embeds the tokenizers",
                        self.origin.display(),
                        beside.display()
                    ),
                )
            }
        })
    }
}
