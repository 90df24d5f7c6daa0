//! The default model's text side: a word-level tokenizer (a `tokenizer.json` the `tokenizers`
//! crate reads; words outside the vocabulary become `[UNK]`, so any prompt encodes) and a small
//! transformer encoder trained jointly with the denoiser.
//!
//! Prompts are lower-cased, split into words and punctuation, cut or padded with `[PAD]` to
//! `max_length`. The encoder returns every position's embedding (the cross-attention context)
//! and their mean (the pooled embedding for adaLN).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::model::{Conditioning, TextEncoder};
use crate::nn::trainable::{Attention, LayerNorm, Mlp};
use crate::{Error, Result};

pub const PAD_TOKEN: &str = "[PAD]";
pub const UNK_TOKEN: &str = "[UNK]";

/// A word-level `tokenizer.json` over `words` (ids 0 and 1 are `[PAD]` and `[UNK]`, then the
/// words in order).
pub fn word_level_tokenizer_json(words: &[&str]) -> String {
    let mut vocab = serde_json::Map::new();
    for (id, w) in [PAD_TOKEN, UNK_TOKEN].iter().chain(words).enumerate() {
        vocab.entry(w.to_string()).or_insert(id.into());
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true})
    };
    serde_json::to_string_pretty(&serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, PAD_TOKEN), special(1, UNK_TOKEN)],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK_TOKEN},
    }))
    .expect("JSON values serialise")
}

/// Prompt → fixed-length token ids.
#[derive(Clone)]
pub struct WordTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    max_length: usize,
}

impl WordTokenizer {
    /// From the text of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_json(text: &str, max_length: usize, origin: &std::path::Path) -> Result<Self> {
        let tokenizer: Tokenizer = text.parse().map_err(|e| Error::invalid_file(origin, format!("not a tokenizer.json: {e}")))?;
        let pad_id = tokenizer.token_to_id(PAD_TOKEN).ok_or_else(|| {
            Error::invalid_file(origin, format!("the vocabulary has no {PAD_TOKEN} token (the default model pads with it)"))
        })?;
        if tokenizer.token_to_id(UNK_TOKEN).is_none() {
            return Err(Error::invalid_file(origin, format!("the vocabulary has no {UNK_TOKEN} token for unknown words")));
        }
        if max_length == 0 {
            return Err(Error::Unsupported("the text encoder's max_length must be positive".into()));
        }
        Ok(Self { tokenizer, pad_id, max_length })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Ids of one prompt, cut or padded to `max_length`.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| Error::param("prompt", format!("cannot be tokenized: {e}")))?;
        let mut ids: Vec<u32> = enc.get_ids().iter().copied().take(self.max_length).collect();
        ids.resize(self.max_length, self.pad_id);
        Ok(ids)
    }

    /// `[B, max_length]` u32 ids.
    pub fn encode_batch(&self, prompts: &[&str], device: &Device) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(prompts.len() * self.max_length);
        for p in prompts {
            ids.extend(self.encode(p)?);
        }
        Ok(Tensor::from_vec(ids, (prompts.len(), self.max_length), device)?)
    }
}

/// `text_encoder/config.json` of the default model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StippleTextConfig {
    pub vocab_size: usize,
    pub max_length: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub mlp_ratio: usize,
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

/// The transformer encoder over token ids.
#[derive(Debug, Clone)]
pub struct StippleTextModel {
    config: StippleTextConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
}

impl StippleTextModel {
    pub fn new(config: &StippleTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = config.hidden_size;
        if config.vocab_size == 0 || config.max_length == 0 || config.num_heads == 0 || d % config.num_heads != 0 {
            return Err(Error::Unsupported(format!(
                "stipple text encoder config: vocab_size and max_length must be positive and hidden_size ({d}) a multiple of \
                 num_heads ({})",
                config.num_heads
            )));
        }
        let small = Init::Randn { mean: 0.0, stdev: 0.02 };
        let token_embedding = Embedding::new(vb.get_with_hints((config.vocab_size, d), "token_embedding.weight", small)?, d);
        let position_embedding = vb.get_with_hints((config.max_length, d), "position_embedding", small)?;
        let layers = (0..config.num_layers)
            .map(|i| {
                let lvb = vb.pp(format!("layers.{i}"));
                Ok(EncoderLayer {
                    norm1: LayerNorm::new(d, lvb.pp("norm1"))?,
                    attn: Attention::new(d, d, config.num_heads, false, lvb.pp("attn"))?,
                    norm2: LayerNorm::new(d, lvb.pp("norm2"))?,
                    mlp: Mlp::new(d, d * config.mlp_ratio, false, lvb.pp("mlp"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { config: config.clone(), token_embedding, position_embedding, layers, final_norm: LayerNorm::new(d, vb.pp("final_norm"))? })
    }

    pub fn config(&self) -> &StippleTextConfig {
        &self.config
    }

    /// Token embeddings `[B, L, D]` and their mean `[B, D]` for ids `[B, L]`.
    pub fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        use candle_nn::Module;
        let (_, len) = ids.dims2()?;
        if len > self.config.max_length {
            return Err(Error::param("prompt", format!("{len} tokens, the text encoder takes {}", self.config.max_length)));
        }
        let mut x = self.token_embedding.forward(ids)?.broadcast_add(&self.position_embedding.narrow(0, 0, len)?)?;
        for layer in &self.layers {
            x = (&x + layer.attn.forward(&layer.norm1.forward(&x)?, None)?)?;
            x = (&x + layer.mlp.forward(&layer.norm2.forward(&x)?)?)?;
        }
        let x = self.final_norm.forward(&x)?;
        let pooled = x.mean(1)?;
        Ok((x, pooled))
    }
}

/// Tokenizer plus encoder: the default model's [`TextEncoder`].
pub struct StippleTextEncoder {
    tokenizer: WordTokenizer,
    model: StippleTextModel,
}

impl StippleTextEncoder {
    pub fn new(tokenizer: WordTokenizer, model: StippleTextModel) -> Result<Self> {
        if tokenizer.vocab_size() > model.config.vocab_size || tokenizer.max_length() != model.config.max_length {
            return Err(Error::Unsupported(format!(
                "the tokenizer ({} words, {} positions) does not fit the text encoder ({} words, {} positions)",
                tokenizer.vocab_size(),
                tokenizer.max_length(),
                model.config.vocab_size,
                model.config.max_length
            )));
        }
        Ok(Self { tokenizer, model })
    }

    pub fn tokenizer(&self) -> &WordTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &StippleTextModel {
        &self.model
    }
}

impl TextEncoder for StippleTextEncoder {
    fn encode(&self, prompts: &[&str]) -> Result<Conditioning> {
        let device = self.model.position_embedding.device().clone();
        let ids = self.tokenizer.encode_batch(prompts, &device)?;
        let (context, pooled) = self.model.forward(&ids)?;
        Ok(Conditioning { context: context.to_dtype(DType::F32)?, pooled: Some(pooled.to_dtype(DType::F32)?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use std::path::Path;

    fn tokenizer() -> WordTokenizer {
        let json = word_level_tokenizer_json(&["a", "red", "circle", ",", "left"]);
        WordTokenizer::from_json(&json, 6, Path::new("tokenizer.json")).unwrap()
    }

    #[test]
    fn words_punctuation_case_unknowns_and_padding() {
        let t = tokenizer();
        assert_eq!(t.vocab_size(), 7);
        assert_eq!(t.encode("A RED circle, left").unwrap(), vec![2, 3, 4, 5, 6, 0]);
        assert_eq!(t.encode("a crimson circle").unwrap(), vec![2, 1, 4, 0, 0, 0]);
        assert_eq!(t.encode("").unwrap(), vec![0; 6]);
        assert_eq!(t.encode("a a a a a a a a").unwrap().len(), 6);
    }

    #[test]
    fn bad_tokenizer_files_are_named() {
        let err = WordTokenizer::from_json("{}", 6, Path::new("x/tokenizer.json")).err().unwrap().to_string();
        assert!(err.contains("x/tokenizer.json"), "{err}");
    }

    #[test]
    fn encoder_shapes_and_mismatch() {
        let dev = Device::Cpu;
        let config = StippleTextConfig { vocab_size: 7, max_length: 6, hidden_size: 16, num_layers: 2, num_heads: 2, mlp_ratio: 2 };
        let model = StippleTextModel::new(&config, VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev)).unwrap();
        let enc = StippleTextEncoder::new(tokenizer(), model.clone()).unwrap();
        let cond = enc.encode(&["a red circle", "zebra"]).unwrap();
        assert_eq!(cond.context.dims(), &[2, 6, 16]);
        assert_eq!(cond.pooled.unwrap().dims(), &[2, 16]);
        let short = WordTokenizer::from_json(&word_level_tokenizer_json(&["a"]), 4, Path::new("t.json")).unwrap();
        assert!(StippleTextEncoder::new(short, model).is_err());
    }
}
