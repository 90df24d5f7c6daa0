//! Weights from the files users have, as `candle_nn` VarBuilders with diffusers /
//! transformers names.
//!
//! Sources:
//! * a diffusers pipeline folder (`model_index.json` + component subfolders) — [`open_pipeline`];
//! * a bare component folder (`config.json` + weights) — [`open_component`];
//! * a single `.safetensors` checkpoint in the original layout: SD 1.x / 2.x / SDXL (CompVis /
//!   Stability), all-in-one FLUX.1 (BFL's transformer with CLIP-L, T5 and VAE, as ComfyUI ships
//!   them), SD3 / SD3.5 (Stability's MMDiT, alone or with its text encoders and VAE) —
//!   [`open_pipeline`]; see [`single_file`] for how families, configs and tokenizers are found;
//!   [`to_single_file`] writes an SD-family one from a diffusers folder.
//!
//! Every safetensors header is validated before use ([`SafetensorsFile`]); tensors are read
//! lazily from memory-mapped files when a model asks for them, converted to the requested dtype,
//! with their shape checked against the model's config. Pickle checkpoints (`.ckpt`, `.pt`,
//! `.bin` ...) are refused by extension and by content.
//!
//! ```no_run
//! # fn main() -> stipple_core::Result<()> {
//! use candle_core::{DType, Device};
//! let source = stipple_core::checkpoint::open_pipeline("models/sd15.safetensors".as_ref())?;
//! let unet = source.model("unet")?;
//! let vb = unet.var_builder(DType::F16, &Device::Cpu); // diffusers names: vb.pp("conv_in") ...
//! let scheduler = source.scheduler()?;                // class name + scheduler_config.json
//! let tokenizer = source.tokenizer("tokenizer")?;      // folder or embedded files
//! # let _ = (vb, scheduler, tokenizer); Ok(()) }
//! ```

pub mod config_json;
mod convert;
mod default_configs;
pub(crate) mod diffusers;
pub mod flux_layout;
pub mod sd3_layout;
pub mod gguf;
mod gguf_weights;
mod quantize;
mod transformer_file;
mod key_rules;
mod original_layout;
mod pickle;
mod random;
mod safetensors_file;
mod safetensors_writer;
pub mod single_file;
mod source;
mod store;

use std::path::Path;

pub use config_json::{number as config_number, parse_config, read_config};
pub use gguf::{GgufFile, TensorSpec};
pub use gguf_weights::GgufWeights;
pub use transformer_file::{TransformerArchitecture, TransformerFile};
pub use quantize::{quantize_transformer, QuantType, QuantizeReport};
pub use convert::to_single_file;
pub use random::{ParameterCount, RandomWeights};
pub use original_layout::Family;
pub use safetensors_file::{SafetensorsFile, TensorInfo, MAX_HEADER_BYTES};
pub use safetensors_writer::{write_safetensors, PlannedTensor};
pub use source::{ComponentWeights, PipelineSource, SchedulerConfig, SourceFormat, TokenizerSource};
pub use store::{StoredTensor, Transform, WeightStore};

use crate::{Error, Result};

/// The published `config.json` of a component of Stable Diffusion 1.5 or SDXL base, as
/// embedded for single-file checkpoints (e.g. `published_config(Family::Sd1, "unet")`).
pub fn published_config(family: Family, component: &str) -> Option<&'static str> {
    default_configs::DefaultConfigs::of(family).and_then(|c| c.component(component))
}

/// Open a bare component folder: its `config.json` and weights (single, fp16 variant or sharded).
pub fn open_component(dir: &Path) -> Result<ComponentWeights> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("component");
    diffusers::open_component_folder(dir, name, None)
}

/// Open a pipeline from a diffusers folder or a single-file checkpoint.
pub fn open_pipeline(path: &Path) -> Result<PipelineSource> {
    if path.is_dir() {
        diffusers::open_pipeline_folder(path)
    } else if path.is_file() {
        single_file::open_single_file(path)
    } else {
        // Refuse pickles by name even when the path is wrong, so the advice comes first.
        pickle::refuse_by_extension(path)?;
        Err(Error::missing_file(
            path,
            "give a diffusers pipeline folder (with model_index.json) or a single .safetensors checkpoint",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_pipeline_explains_wrong_paths() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_pipeline(&dir.path().join("nothing")).unwrap_err().to_string();
        assert!(err.contains("nothing") && err.contains("model_index.json"), "{err}");
        let err = open_pipeline(&dir.path().join("v1-5-pruned.ckpt")).unwrap_err().to_string();
        assert!(err.contains("arbitrary code"), "{err}");
        let err = open_pipeline(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model_index.json"), "{err}");
    }

    #[test]
    fn open_component_reads_a_bare_folder() {
        let dir = diffusers::tests::sd_tiny().join("text_encoder");
        let c = open_component(&dir).unwrap();
        assert_eq!(c.name, "text_encoder");
        assert_eq!(c.class_name.as_deref(), Some("CLIPTextModel"));
        assert_eq!(c.store.shape("text_model.embeddings.token_embedding.weight"), Some(&[1000usize, 32][..]));
    }
}
