//! The CLIP text conditioning of the Stable Diffusion pipelines: SD 1.x / 2.x (one encoder) and
//! SDXL (two encoders), reproducing diffusers' `encode_prompt` for one set of prompts.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use super::{ClipTextModel, ClipTextOutput, ClipTokenizer};
use crate::model::{Conditioning, TextEncoder};
use crate::{Error, Result};

/// Tokenize and encode prompts with one tokenizer/encoder pair.
pub(crate) fn run_encoder(tokenizer: &ClipTokenizer, model: &ClipTextModel, prompts: &[&str]) -> Result<ClipTextOutput> {
    if prompts.is_empty() {
        return Err(Error::param("prompt", "no prompts to encode"));
    }
    let (ids, _mask) = tokenizer.encode_batch(prompts)?;
    let flat: Vec<u32> = ids.into_iter().flatten().collect();
    // The model moves the ids to its own device.
    let ids = Tensor::from_vec(flat, (prompts.len(), tokenizer.max_length()), &Device::Cpu)?;
    model.forward(&ids)
}

/// Refuse a tokenizer that produces more tokens than the encoder has positions for.
pub(crate) fn check_pair(tokenizer: &ClipTokenizer, model: &ClipTextModel, which: &str) -> Result<()> {
    let positions = model.config().max_position_embeddings;
    if tokenizer.max_length() > positions {
        return Err(Error::Unsupported(format!(
            "{which}: the tokenizer's model_max_length {} exceeds the text encoder's {positions} positions",
            tokenizer.max_length()
        )));
    }
    Ok(())
}

/// The hidden state `skip_from_end` places before the last one (0 = the last layer's output).
pub(crate) fn hidden_state_from_end(out: &ClipTextOutput, skip_from_end: usize) -> Result<&Tensor> {
    let n = out.hidden_states.len();
    if skip_from_end >= n {
        return Err(Error::param("clip_skip", format!("the text encoder has only {} layers", n - 1)));
    }
    Ok(&out.hidden_states[n - 1 - skip_from_end])
}

/// SD 1.x / 2.x conditioning: `context = last_hidden_state` of the text encoder, no pooled vector.
/// (SD2's text encoder config already stops one layer short of OpenCLIP's, so its
/// `last_hidden_state` is the penultimate-layer feature SD2 was trained with.)
pub struct ClipConditioner {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
    clip_skip: usize,
}

impl ClipConditioner {
    pub fn new(tokenizer: ClipTokenizer, model: ClipTextModel) -> Result<ClipConditioner> {
        check_pair(&tokenizer, &model, "text_encoder")?;
        Ok(ClipConditioner { tokenizer, model, clip_skip: 0 })
    }

    /// Load a pipeline's `tokenizer/` and `text_encoder/` folders.
    pub fn load(
        tokenizer_dir: &Path,
        text_encoder_dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<ClipConditioner> {
        let tokenizer = ClipTokenizer::from_folder(tokenizer_dir, None)?;
        let model = ClipTextModel::load(text_encoder_dir, device, dtype)?;
        ClipConditioner::new(tokenizer, model)
    }

    /// diffusers' `clip_skip`: use `final_layer_norm(hidden_states[-(clip_skip + 1)])`; 0 is the
    /// default `last_hidden_state`.
    pub fn with_clip_skip(mut self, clip_skip: usize) -> Result<ClipConditioner> {
        let layers = self.model.config().num_hidden_layers;
        if clip_skip > layers {
            return Err(Error::param("clip_skip", format!("{clip_skip} exceeds the text encoder's {layers} layers")));
        }
        self.clip_skip = clip_skip;
        Ok(self)
    }
}

impl TextEncoder for ClipConditioner {
    fn encode(&self, prompts: &[&str]) -> Result<Conditioning> {
        let out = run_encoder(&self.tokenizer, &self.model, prompts)?;
        let context = if self.clip_skip == 0 {
            out.last_hidden_state
        } else {
            self.model.final_layer_norm(hidden_state_from_end(&out, self.clip_skip)?)?
        };
        Ok(Conditioning { context, pooled: None })
    }
}

/// SDXL conditioning: `context = concat(hidden_states[-2] of text_encoder, hidden_states[-2] of
/// text_encoder_2)` on the feature axis (768 + 1280 = 2048 wide), `pooled = text_embeds` of
/// `text_encoder_2`. The same prompt goes to both tokenizers (diffusers' `prompt_2 = prompt`).
pub struct SdxlConditioner {
    tokenizer_1: ClipTokenizer,
    encoder_1: ClipTextModel,
    tokenizer_2: ClipTokenizer,
    encoder_2: ClipTextModel,
    clip_skip: usize,
    /// SDXL's `force_zeros_for_empty_prompt`: an empty negative prompt conditions with zeros.
    zeros_for_empty_negative: bool,
}

impl SdxlConditioner {
    pub fn new(
        tokenizer_1: ClipTokenizer,
        encoder_1: ClipTextModel,
        tokenizer_2: ClipTokenizer,
        encoder_2: ClipTextModel,
    ) -> Result<SdxlConditioner> {
        check_pair(&tokenizer_1, &encoder_1, "text_encoder")?;
        check_pair(&tokenizer_2, &encoder_2, "text_encoder_2")?;
        if tokenizer_1.max_length() != tokenizer_2.max_length() {
            return Err(Error::Unsupported(format!(
                "tokenizer and tokenizer_2 disagree on model_max_length ({} vs {}); SDXL concatenates their features token by token",
                tokenizer_1.max_length(),
                tokenizer_2.max_length()
            )));
        }
        if !encoder_2.has_projection() {
            return Err(Error::Unsupported(
                "text_encoder_2 has no text_projection.weight; SDXL's second text encoder must be a \
                 CLIPTextModelWithProjection (its text_embeds are the pooled conditioning)"
                    .into(),
            ));
        }
        Ok(SdxlConditioner { tokenizer_1, encoder_1, tokenizer_2, encoder_2, clip_skip: 0, zeros_for_empty_negative: true })
    }

    /// diffusers' `force_zeros_for_empty_prompt` (true for SDXL base, from `model_index.json`).
    pub fn with_zeros_for_empty_negative(mut self, on: bool) -> Self {
        self.zeros_for_empty_negative = on;
        self
    }

    /// Load a pipeline's `tokenizer/`, `text_encoder/`, `tokenizer_2/` and `text_encoder_2/` folders.
    pub fn load(
        tokenizer_dir: &Path,
        text_encoder_dir: &Path,
        tokenizer_2_dir: &Path,
        text_encoder_2_dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<SdxlConditioner> {
        SdxlConditioner::new(
            ClipTokenizer::from_folder(tokenizer_dir, None)?,
            ClipTextModel::load(text_encoder_dir, device, dtype)?,
            ClipTokenizer::from_folder(tokenizer_2_dir, None)?,
            ClipTextModel::load(text_encoder_2_dir, device, dtype)?,
        )
    }

    /// diffusers' `clip_skip` for SDXL: `hidden_states[-(clip_skip + 2)]` of both encoders, no
    /// final LayerNorm; 0 is the default penultimate layer.
    pub fn with_clip_skip(mut self, clip_skip: usize) -> Result<SdxlConditioner> {
        let layers = self.encoder_1.config().num_hidden_layers.min(self.encoder_2.config().num_hidden_layers);
        if clip_skip + 1 > layers {
            return Err(Error::param(
                "clip_skip",
                format!("{clip_skip} leaves no layer of the {layers}-layer text encoder"),
            ));
        }
        self.clip_skip = clip_skip;
        Ok(self)
    }
}

impl TextEncoder for SdxlConditioner {
    fn encode(&self, prompts: &[&str]) -> Result<Conditioning> {
        let out_1 = run_encoder(&self.tokenizer_1, &self.encoder_1, prompts)?;
        let out_2 = run_encoder(&self.tokenizer_2, &self.encoder_2, prompts)?;
        let skip = 1 + self.clip_skip;
        let h1 = hidden_state_from_end(&out_1, skip)?;
        let h2 = hidden_state_from_end(&out_2, skip)?.to_device(h1.device())?;
        let context = Tensor::cat(&[h1, &h2], D::Minus1)?;
        let pooled =
            out_2.text_embeds.ok_or_else(|| Error::Unsupported("text_encoder_2 produced no text_embeds".into()))?;
        Ok(Conditioning { context, pooled: Some(pooled) })
    }

    fn encode_for_guidance(&self, negative: &str, prompt: &str) -> Result<Conditioning> {
        if !(self.zeros_for_empty_negative && negative.is_empty()) {
            return self.encode(&[negative, prompt]);
        }
        let cond = self.encode(&[prompt])?;
        let zeros = Conditioning {
            context: cond.context.zeros_like()?,
            pooled: cond.pooled.as_ref().map(|p| p.zeros_like()).transpose()?,
        };
        Conditioning::cat(&[&zeros, &cond])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use std::collections::HashMap;
    use std::path::PathBuf;

    use candle_nn::VarBuilder;

    fn sd_tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/models/sd_tiny")
    }

    fn tokenizer() -> ClipTokenizer {
        ClipTokenizer::from_folder(&sd_tiny().join("tokenizer"), None).unwrap()
    }

    fn model() -> ClipTextModel {
        ClipTextModel::load(&sd_tiny().join("text_encoder"), &Device::Cpu, DType::F32).unwrap()
    }

    /// The tiny encoder with a seeded-random `text_projection` (a stand-in CLIPTextModelWithProjection).
    fn projected_model(projection: &Tensor) -> ClipTextModel {
        let dir = sd_tiny().join("text_encoder");
        let mut weights: HashMap<String, Tensor> =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap().into_iter().collect();
        weights.insert("text_projection.weight".into(), projection.clone());
        let config_path = dir.join("config.json");
        let config =
            super::super::ClipTextConfig::from_json(&std::fs::read_to_string(&config_path).unwrap(), &config_path)
                .unwrap();
        ClipTextModel::new(config, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu)).unwrap()
    }


    const PROMPTS: [&str; 2] = ["a painting of a squirrel eating a burger", ""];

    #[test]
    fn sd_conditioning_is_last_hidden_state() {
        let cond = ClipConditioner::load(
            &sd_tiny().join("tokenizer"),
            &sd_tiny().join("text_encoder"),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
        .encode(&PROMPTS)
        .unwrap();
        assert!(cond.pooled.is_none());
        assert_eq!(cond.context.dims(), &[2, 77, 32]);

        let (ids, _) = tokenizer().encode_batch(&PROMPTS).unwrap();
        let ids = Tensor::new(ids, &Device::Cpu).unwrap();
        let direct = model().forward(&ids).unwrap();
        assert_eq!(max_diff(&cond.context, &direct.last_hidden_state), 0.0);
    }

    #[test]
    fn clip_skip_normalises_an_earlier_layer() {
        let m = model();
        let (ids, _) = tokenizer().encode_batch(&PROMPTS).unwrap();
        let direct = m.forward(&Tensor::new(ids, &Device::Cpu).unwrap()).unwrap();
        let want = m.final_layer_norm(&direct.hidden_states[4]).unwrap();

        let cond = ClipConditioner::new(tokenizer(), m).unwrap().with_clip_skip(1).unwrap().encode(&PROMPTS).unwrap();
        assert_eq!(max_diff(&cond.context, &want), 0.0);
        assert!(ClipConditioner::new(tokenizer(), model()).unwrap().with_clip_skip(6).is_err());
    }

    #[test]
    fn sdxl_concatenates_penultimate_states_and_pools_encoder_2() {
        let projection = Tensor::randn(0f32, 1.0, (32, 32), &Device::Cpu).unwrap();
        let cond = SdxlConditioner::new(tokenizer(), model(), tokenizer(), projected_model(&projection))
            .unwrap()
            .encode(&PROMPTS)
            .unwrap();
        assert_eq!(cond.context.dims(), &[2, 77, 64]);

        let (ids, _) = tokenizer().encode_batch(&PROMPTS).unwrap();
        let direct = projected_model(&projection).forward(&Tensor::new(ids, &Device::Cpu).unwrap()).unwrap();
        let penultimate = &direct.hidden_states[4];
        assert_eq!(max_diff(&cond.context.narrow(2, 0, 32).unwrap(), penultimate), 0.0);
        assert_eq!(max_diff(&cond.context.narrow(2, 32, 32).unwrap(), penultimate), 0.0);
        assert_eq!(max_diff(cond.pooled.as_ref().unwrap(), direct.text_embeds.as_ref().unwrap()), 0.0);
    }

    #[test]
    fn sdxl_requires_a_projection_on_encoder_2() {
        let err = SdxlConditioner::new(tokenizer(), model(), tokenizer(), model()).err().unwrap();
        assert!(err.to_string().contains("text_projection"), "{err}");
    }

    #[test]
    fn empty_prompt_list_is_refused() {
        let enc = ClipConditioner::new(tokenizer(), model()).unwrap();
        assert!(enc.encode(&[]).is_err());
    }
}
