//! Prompt → conditioning: tokenizers, text encoders, and the [`crate::model::TextEncoder`]s that
//! combine them the way each diffusers pipeline does.

pub mod clip;
pub mod clip_conditioner;
pub mod clip_tokenizer;
pub mod stipple_text;
pub mod t5;
pub mod t5_tokenizer;

pub use clip::{ClipActivation, ClipTextConfig, ClipTextModel, ClipTextOutput};
pub use clip_conditioner::{ClipConditioner, SdxlConditioner};
pub use clip_tokenizer::{ClipTokenizer, TokenRows};
pub use t5::{T5Activation, T5Config, T5EncoderModel, T5EncoderOutput};
pub use t5_tokenizer::T5Tokenizer;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// The weights of one safetensors file, converted to `dtype` on `device` as they are read.
/// The text encoders' only access to weight files, so the checkpoint loader can take its place.
pub(crate) fn var_builder(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    if !path.is_file() {
        return Err(Error::missing_file(path, "the text encoder's weights (safetensors) are expected here"));
    }
    // SAFETY: the file is memory-mapped; it must not be modified while the model is loaded, the
    // same contract every safetensors loader has.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }
        .map_err(|e| Error::invalid_file(path, e.to_string()))
}
