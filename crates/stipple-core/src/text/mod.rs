//! Prompt → conditioning: tokenizers, text encoders, and the [`crate::model::TextEncoder`]s that
//! combine them the way each diffusers pipeline does.

pub mod clip;
pub mod clip_conditioner;
pub mod clip_tokenizer;
pub mod dit_conditioner;
pub mod sentencepiece_model;
pub mod stipple_text;
pub mod t5;
pub mod t5_tokenizer;

pub use clip::{ClipActivation, ClipTextConfig, ClipTextModel, ClipTextOutput};
pub use clip_conditioner::{ClipConditioner, SdxlConditioner};
pub use clip_tokenizer::{ClipTokenizer, TokenRows};
pub use dit_conditioner::{FluxConditioner, Sd3Conditioner, Sd3T5, T5Prompts};
pub use t5::{T5Activation, T5Config, T5EncoderModel, T5EncoderOutput};
pub use t5_tokenizer::T5Tokenizer;
