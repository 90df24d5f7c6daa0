//! The text conditioning of the diffusion-transformer pipelines, reproducing diffusers'
//! `encode_prompt` of FluxPipeline (CLIP-L pooled + T5 tokens) and StableDiffusion3Pipeline
//! (CLIP-L and OpenCLIP-G penultimate states + pooled, T5 tokens or zeros).

use candle_core::{Device, Tensor, D};

use super::clip_conditioner::{check_pair, hidden_state_from_end, run_encoder};
use super::{ClipTextModel, ClipTokenizer, T5EncoderModel, T5Tokenizer};
use crate::model::{Conditioning, TextEncoder};
use crate::{Error, Result};

/// FluxPipeline's and StableDiffusion3Pipeline's T5 length cap (`max_sequence_length <= 512`).
const MAX_T5_TOKENS: usize = 512;
/// FluxPipeline's default `max_sequence_length`.
pub const FLUX_T5_TOKENS: usize = 512;
/// StableDiffusion3Pipeline's default `max_sequence_length`.
pub const SD3_T5_TOKENS: usize = 256;

/// A T5 tokenizer and encoder called as the pipelines call them: padded to a fixed length, no
/// attention mask, `last_hidden_state`.
pub struct T5Prompts {
    tokenizer: T5Tokenizer,
    model: T5EncoderModel,
    max_length: usize,
}

impl T5Prompts {
    pub fn new(tokenizer: T5Tokenizer, model: T5EncoderModel, max_length: usize) -> Result<T5Prompts> {
        if max_length == 0 || max_length > MAX_T5_TOKENS {
            return Err(Error::param(
                "max_sequence_length",
                format!("must be between 1 and {MAX_T5_TOKENS}, got {max_length}"),
            ));
        }
        Ok(T5Prompts { tokenizer, model, max_length })
    }

    /// The padded token count (diffusers' `max_sequence_length`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The width of the embeddings (`d_model`).
    pub fn width(&self) -> usize {
        self.model.config().d_model
    }

    /// `[B, max_length, d_model]`.
    pub fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        let (ids, _mask) = self.tokenizer.encode_batch(prompts, self.max_length)?;
        let flat: Vec<u32> = ids.into_iter().flatten().collect();
        let ids = Tensor::from_vec(flat, (prompts.len(), self.max_length), &Device::Cpu)?;
        Ok(self.model.forward(&ids)?.last_hidden_state)
    }
}

/// FLUX.1 conditioning: `context` = T5 `last_hidden_state` `[B, max_sequence_length, 4096]`,
/// `pooled` = CLIP-L `pooler_output` `[B, 768]` (the EOS state, not projected).
pub struct FluxConditioner {
    clip_tokenizer: ClipTokenizer,
    clip: ClipTextModel,
    t5: T5Prompts,
}

impl FluxConditioner {
    pub fn new(clip_tokenizer: ClipTokenizer, clip: ClipTextModel, t5: T5Prompts) -> Result<FluxConditioner> {
        check_pair(&clip_tokenizer, &clip, "text_encoder")?;
        Ok(FluxConditioner { clip_tokenizer, clip, t5 })
    }
}

impl TextEncoder for FluxConditioner {
    fn encode(&self, prompts: &[&str]) -> Result<Conditioning> {
        let pooled = run_encoder(&self.clip_tokenizer, &self.clip, prompts)?.pooled;
        let context = self.t5.encode(prompts)?;
        Ok(Conditioning { pooled: Some(pooled.to_device(context.device())?), context })
    }
}

/// SD3 / SD3.5 conditioning (diffusers' `encode_prompt` with `clip_skip = None`):
/// * `context` `[B, 77 + max_sequence_length, W]`: the penultimate hidden states of CLIP-L and
///   OpenCLIP-G side by side, zero-padded to T5's width `W`, followed by T5's tokens — or by zeros
///   of width `joint_attention_dim` when the pipeline has no T5 (`text_encoder_3` left out);
/// * `pooled` `[B, 768 + 1280]`: both encoders' projected `text_embeds`, concatenated.
pub struct Sd3Conditioner {
    tokenizer_1: ClipTokenizer,
    encoder_1: ClipTextModel,
    tokenizer_2: ClipTokenizer,
    encoder_2: ClipTextModel,
    t5: Sd3T5,
}

/// The T5 part of SD3's conditioning.
pub enum Sd3T5 {
    Encoder(T5Prompts),
    /// No T5: zeros `[B, tokens, width]`, as diffusers substitutes.
    Zeros { tokens: usize, width: usize },
}

impl Sd3T5 {
    fn width(&self) -> usize {
        match self {
            Sd3T5::Encoder(t5) => t5.width(),
            Sd3T5::Zeros { width, .. } => *width,
        }
    }
}

impl Sd3Conditioner {
    pub fn new(
        tokenizer_1: ClipTokenizer,
        encoder_1: ClipTextModel,
        tokenizer_2: ClipTokenizer,
        encoder_2: ClipTextModel,
        t5: Sd3T5,
    ) -> Result<Sd3Conditioner> {
        check_pair(&tokenizer_1, &encoder_1, "text_encoder")?;
        check_pair(&tokenizer_2, &encoder_2, "text_encoder_2")?;
        // The pipeline tokenizes for both encoders with the first tokenizer's length.
        if tokenizer_1.max_length() != tokenizer_2.max_length() {
            return Err(Error::Unsupported(format!(
                "tokenizer and tokenizer_2 disagree on model_max_length ({} vs {}); SD3 concatenates their features token by token",
                tokenizer_1.max_length(),
                tokenizer_2.max_length()
            )));
        }
        for (encoder, name) in [(&encoder_1, "text_encoder"), (&encoder_2, "text_encoder_2")] {
            if !encoder.has_projection() {
                return Err(Error::Unsupported(format!(
                    "{name} has no text_projection.weight; SD3's CLIP encoders must be CLIPTextModelWithProjection \
                     (their text_embeds are the pooled conditioning)"
                )));
            }
        }
        let clip_width = encoder_1.config().hidden_size + encoder_2.config().hidden_size;
        if clip_width > t5.width() {
            return Err(Error::Unsupported(format!(
                "the CLIP features ({clip_width} wide) are wider than the T5 features ({}); SD3 pads CLIP to T5's width",
                t5.width()
            )));
        }
        Ok(Sd3Conditioner { tokenizer_1, encoder_1, tokenizer_2, encoder_2, t5 })
    }
}

impl TextEncoder for Sd3Conditioner {
    fn encode(&self, prompts: &[&str]) -> Result<Conditioning> {
        let out_1 = run_encoder(&self.tokenizer_1, &self.encoder_1, prompts)?;
        let out_2 = run_encoder(&self.tokenizer_2, &self.encoder_2, prompts)?;
        let h1 = hidden_state_from_end(&out_1, 1)?.clone();
        let device = h1.device().clone();
        let device = &device;
        let h2 = hidden_state_from_end(&out_2, 1)?.to_device(device)?;
        let clip = Tensor::cat(&[&h1, &h2], D::Minus1)?;
        let t5 = match &self.t5 {
            Sd3T5::Encoder(t5) => t5.encode(prompts)?.to_device(device)?.to_dtype(clip.dtype())?,
            Sd3T5::Zeros { tokens, width } => Tensor::zeros((prompts.len(), *tokens, *width), clip.dtype(), device)?,
        };
        let clip = clip.pad_with_zeros(D::Minus1, 0, self.t5.width() - clip.dim(D::Minus1)?)?;
        let context = Tensor::cat(&[&clip, &t5], 1)?;
        let missing = || Error::Unsupported("a CLIP encoder produced no text_embeds".into());
        let pooled_1 = out_1.text_embeds.ok_or_else(missing)?;
        let pooled_2 = out_2.text_embeds.ok_or_else(missing)?.to_device(device)?;
        let pooled = Tensor::cat(&[&pooled_1, &pooled_2], D::Minus1)?;
        Ok(Conditioning { context, pooled: Some(pooled) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::DType;
    use std::path::{Path, PathBuf};

    fn model_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/pipelines/models").join(name)
    }

    fn clip(dir: &Path, sub: &str) -> (ClipTokenizer, ClipTextModel) {
        let tokenizer = ClipTokenizer::from_folder(&dir.join(sub.replace("text_encoder", "tokenizer")), None).unwrap();
        (tokenizer, ClipTextModel::load(&dir.join(sub), &Device::Cpu, DType::F32).unwrap())
    }

    fn t5(dir: &Path, sub: &str, tokens: usize) -> T5Prompts {
        let tokenizer = T5Tokenizer::from_folder(&dir.join(sub.replace("text_encoder", "tokenizer"))).unwrap();
        T5Prompts::new(tokenizer, T5EncoderModel::load(&dir.join(sub), DType::F32, &Device::Cpu).unwrap(), tokens).unwrap()
    }


    const PROMPTS: [&str; 2] = ["a painting of a squirrel", ""];

    #[test]
    fn flux_pools_clip_and_takes_t5_tokens() {
        let dir = model_dir("flux_schnell_tiny");
        let (tok, model) = clip(&dir, "text_encoder");
        let direct = run_encoder(&tok, &model, &PROMPTS).unwrap().pooled;
        let t5_direct = t5(&dir, "text_encoder_2", 20).encode(&PROMPTS).unwrap();
        let cond = FluxConditioner::new(tok, model, t5(&dir, "text_encoder_2", 20)).unwrap().encode(&PROMPTS).unwrap();
        assert_eq!(cond.context.dims(), &[2, 20, 96]);
        assert_eq!(max_diff(&cond.context, &t5_direct), 0.0);
        assert_eq!(max_diff(cond.pooled.as_ref().unwrap(), &direct), 0.0);
    }

    #[test]
    fn sd3_pads_clip_to_t5_width_and_substitutes_zeros_without_t5() {
        let dir = model_dir("sd3_tiny");
        let make = |t5_part: Sd3T5| {
            let (tok_1, enc_1) = clip(&dir, "text_encoder");
            let (tok_2, enc_2) = clip(&dir, "text_encoder_2");
            Sd3Conditioner::new(tok_1, enc_1, tok_2, enc_2, t5_part).unwrap()
        };
        let with_t5 = make(Sd3T5::Encoder(t5(&dir, "text_encoder_3", 8))).encode(&PROMPTS).unwrap();
        let zeros = make(Sd3T5::Zeros { tokens: 8, width: 96 }).encode(&PROMPTS).unwrap();
        assert_eq!(with_t5.context.dims(), &[2, 77 + 8, 96]);
        assert_eq!(with_t5.pooled.as_ref().unwrap().dims(), &[2, 32 + 48]);
        // CLIP-L (32) and CLIP-G (48) side by side, zeros up to T5's 96.
        let clip_part = |c: &Conditioning| c.context.narrow(1, 0, 77).unwrap();
        assert_eq!(max_diff(&clip_part(&with_t5), &clip_part(&zeros)), 0.0);
        let padding = clip_part(&with_t5).narrow(2, 80, 16).unwrap();
        assert_eq!(padding.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let (tok, enc) = clip(&dir, "text_encoder");
        let penultimate = run_encoder(&tok, &enc, &PROMPTS).unwrap().hidden_states[1].clone();
        assert_eq!(max_diff(&clip_part(&with_t5).narrow(2, 0, 32).unwrap(), &penultimate), 0.0);
        // The T5 rows: the encoder's tokens, or zeros.
        let t5_rows = |c: &Conditioning| c.context.narrow(1, 77, 8).unwrap();
        assert!(t5_rows(&with_t5).abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        assert_eq!(t5_rows(&zeros).abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn sd3_refuses_unprojected_clip_and_clip_wider_than_t5() {
        let dir = model_dir("sd3_tiny");
        let (tok_1, enc_1) = clip(&dir, "text_encoder");
        let (tok_2, enc_2) = clip(&dir, "text_encoder_2");
        let err = Sd3Conditioner::new(tok_1, enc_1, tok_2, enc_2, Sd3T5::Zeros { tokens: 4, width: 64 }).err().unwrap();
        assert!(err.to_string().contains("80 wide"), "{err}");
        let flux = model_dir("flux_schnell_tiny");
        let (tok_1, enc_1) = clip(&flux, "text_encoder");
        let (tok_2, enc_2) = clip(&dir, "text_encoder_2");
        let err = Sd3Conditioner::new(tok_1, enc_1, tok_2, enc_2, Sd3T5::Zeros { tokens: 4, width: 96 }).err().unwrap();
        assert!(err.to_string().contains("text_projection"), "{err}");
    }

    #[test]
    fn t5_length_is_bounded_like_the_pipelines() {
        let dir = model_dir("flux_schnell_tiny");
        for bad in [0, 513] {
            let tokenizer = T5Tokenizer::from_folder(&dir.join("tokenizer_2")).unwrap();
            let model = T5EncoderModel::load(&dir.join("text_encoder_2"), DType::F32, &Device::Cpu).unwrap();
            let err = T5Prompts::new(tokenizer, model, bad).err().unwrap();
            assert!(err.to_string().contains("max_sequence_length"), "{err}");
        }
    }
}
