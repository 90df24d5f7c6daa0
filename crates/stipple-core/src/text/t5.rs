//! T5's encoder (transformers `T5EncoderModel`), run the way the SD3 and FLUX pipelines run it:
//! no attention mask, so padding positions are attended (README §5.4).
//!
//! What sets T5 apart from other transformers: attention scores are not scaled by `1/sqrt(d)`; a
//! learned relative-position bias (bidirectional buckets) is computed once, in block 0, and added
//! in every block; the norms are RMS-only; the attention inner width is `num_heads * d_kv`.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Embedding;
use serde::Deserialize;

use crate::layers::{linear_no_bias, merge_heads, scaled_dot_product_attention, split_heads, Linear, ModelWeights, RmsNorm};
use crate::{Error, Result};

/// The activation of the feed-forward block (`dense_act_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Activation {
    Relu,
    /// Exact erf GELU (`gelu`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`); `gated-gelu` means this one.
    GeluTanh,
    /// `silu` / `swish`.
    Silu,
}

impl T5Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            T5Activation::Relu => x.relu(),
            T5Activation::Gelu => x.gelu_erf(),
            T5Activation::GeluTanh => x.gelu(),
            T5Activation::Silu => x.silu(),
        }
    }
}

/// The fields of a transformers `T5Config` the encoder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one attention head; the attention inner width is `num_heads * d_kv`.
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// `wo(act(wi_0 x) * wi_1 x)` when true (T5 v1.1, FLAN, the SD3/FLUX encoders), else `wo(act(wi x))`.
    pub gated: bool,
    pub activation: T5Activation,
}

/// `config.json` as written, with transformers' `T5Config` defaults for absent keys.
#[derive(Deserialize)]
#[serde(default)]
struct RawT5Config {
    vocab_size: usize,
    d_model: usize,
    d_kv: usize,
    d_ff: usize,
    num_layers: usize,
    num_heads: usize,
    relative_attention_num_buckets: usize,
    relative_attention_max_distance: usize,
    layer_norm_epsilon: f64,
    feed_forward_proj: String,
}

impl Default for RawT5Config {
    fn default() -> Self {
        RawT5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

impl T5Config {
    /// Parse a transformers T5 `config.json`; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<T5Config> {
        let raw: RawT5Config = serde_json::from_str(text).map_err(|e| Error::invalid_file(path, e.to_string()))?;
        let (gated, activation) = parse_feed_forward_proj(&raw.feed_forward_proj).ok_or_else(|| {
            Error::invalid_file(
                path,
                format!(
                    "feed_forward_proj `{}` is not supported (use `relu`, `gelu`, `silu` or their `gated-` forms)",
                    raw.feed_forward_proj
                ),
            )
        })?;
        if raw.num_heads == 0 || raw.d_kv == 0 || raw.num_layers == 0 {
            return Err(Error::invalid_file(path, "num_heads, d_kv and num_layers must be positive"));
        }
        // The bucket formula needs at least two exact buckets per direction and a max distance
        // beyond them.
        if raw.relative_attention_num_buckets < 4
            || raw.relative_attention_max_distance <= raw.relative_attention_num_buckets / 4
        {
            return Err(Error::invalid_file(
                path,
                format!(
                    "relative_attention_num_buckets {} / relative_attention_max_distance {} do not form a bucket scheme",
                    raw.relative_attention_num_buckets, raw.relative_attention_max_distance
                ),
            ));
        }
        Ok(T5Config {
            vocab_size: raw.vocab_size,
            d_model: raw.d_model,
            d_kv: raw.d_kv,
            d_ff: raw.d_ff,
            num_layers: raw.num_layers,
            num_heads: raw.num_heads,
            relative_attention_num_buckets: raw.relative_attention_num_buckets,
            relative_attention_max_distance: raw.relative_attention_max_distance,
            layer_norm_epsilon: raw.layer_norm_epsilon,
            gated,
            activation,
        })
    }

    fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// transformers' reading of `feed_forward_proj`: `"{act}"` or `"gated-{act}"`, where
/// `gated-gelu` is the tanh GELU for historical reasons.
fn parse_feed_forward_proj(value: &str) -> Option<(bool, T5Activation)> {
    let (gated, act) = match value.split_once('-') {
        Some(("gated", act)) => (true, act),
        Some(_) => return None,
        None => (false, value),
    };
    let activation = match act {
        "relu" => T5Activation::Relu,
        "gelu" if gated => T5Activation::GeluTanh,
        "gelu" => T5Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" => T5Activation::GeluTanh,
        "silu" | "swish" => T5Activation::Silu,
        _ => return None,
    };
    Some((gated, activation))
}

/// The bucket of each (query, key) pair, `[S, S]` row-major, as transformers'
/// `T5Attention._relative_position_bucket(bidirectional=True)` computes it. The logarithm is taken
/// in f32 as PyTorch does, so positions on a bucket boundary land where they land there.
fn relative_position_buckets(seq_len: usize, num_buckets: usize, max_distance: usize) -> Vec<u32> {
    // Half the buckets for keys after the query, half for keys before it.
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let mut buckets = Vec::with_capacity(seq_len * seq_len);
    for query in 0..seq_len {
        for key in 0..seq_len {
            let relative = key as i64 - query as i64;
            let direction = if relative > 0 { half } else { 0 };
            let distance = relative.unsigned_abs() as usize;
            let within = if distance < max_exact {
                distance
            } else {
                let scaled = ((distance as f32) / (max_exact as f32)).ln() / log_ratio * ((half - max_exact) as f32);
                // `.to(torch.long)` truncates towards zero.
                (max_exact + scaled as usize).min(half - 1)
            };
            buckets.push((direction + within) as u32);
        }
    }
    buckets
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    num_heads: usize,
}

impl SelfAttention {
    fn load(c: &T5Config, vb: ModelWeights) -> candle_core::Result<SelfAttention> {
        let inner = c.inner_dim();
        Ok(SelfAttention {
            q: linear_no_bias(c.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(c.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(c.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, c.d_model, vb.pp("o"))?,
            num_heads: c.num_heads,
        })
    }

    /// `x` `[B, S, d_model]`; `position_bias` `[1, H, S, S]`. No score scaling: T5 folds it into
    /// the initialisation of `q`.
    fn forward(&self, x: &Tensor, position_bias: &Tensor) -> candle_core::Result<Tensor> {
        let q = split_heads(&self.q.forward(x)?, self.num_heads)?;
        let k = split_heads(&self.k.forward(x)?, self.num_heads)?;
        let v = split_heads(&self.v.forward(x)?, self.num_heads)?;
        let out = scaled_dot_product_attention(&q, &k, &v, 1.0, Some(position_bias))?;
        self.o.forward(&merge_heads(&out)?)
    }
}

enum FeedForward {
    Plain { wi: Linear, wo: Linear },
    Gated { wi_0: Linear, wi_1: Linear, wo: Linear },
}

impl FeedForward {
    fn load(c: &T5Config, vb: ModelWeights) -> candle_core::Result<FeedForward> {
        let wo = linear_no_bias(c.d_ff, c.d_model, vb.pp("wo"))?;
        Ok(if c.gated {
            FeedForward::Gated {
                wi_0: linear_no_bias(c.d_model, c.d_ff, vb.pp("wi_0"))?,
                wi_1: linear_no_bias(c.d_model, c.d_ff, vb.pp("wi_1"))?,
                wo,
            }
        } else {
            FeedForward::Plain { wi: linear_no_bias(c.d_model, c.d_ff, vb.pp("wi"))?, wo }
        })
    }

    fn forward(&self, x: &Tensor, activation: T5Activation) -> candle_core::Result<Tensor> {
        match self {
            FeedForward::Plain { wi, wo } => wo.forward(&activation.apply(&wi.forward(x)?)?),
            FeedForward::Gated { wi_0, wi_1, wo } => {
                let gate = activation.apply(&wi_0.forward(x)?)?;
                wo.forward(&(gate * wi_1.forward(x)?)?)
            }
        }
    }
}

struct Block {
    attention_norm: RmsNorm,
    attention: SelfAttention,
    feed_forward_norm: RmsNorm,
    feed_forward: FeedForward,
}

impl Block {
    fn load(c: &T5Config, vb: ModelWeights) -> candle_core::Result<Block> {
        let eps = c.layer_norm_epsilon;
        Ok(Block {
            attention_norm: RmsNorm::load(c.d_model, eps, vb.pp("layer.0.layer_norm").vb().clone())?,
            attention: SelfAttention::load(c, vb.pp("layer.0.SelfAttention"))?,
            feed_forward_norm: RmsNorm::load(c.d_model, eps, vb.pp("layer.1.layer_norm").vb().clone())?,
            feed_forward: FeedForward::load(c, vb.pp("layer.1.DenseReluDense"))?,
        })
    }

    fn forward(&self, x: &Tensor, position_bias: &Tensor, activation: T5Activation) -> candle_core::Result<Tensor> {
        let x = (x + self.attention.forward(&self.attention_norm.forward(x)?, position_bias)?)?;
        let ff = self.feed_forward.forward(&self.feed_forward_norm.forward(&x)?, activation)?;
        x + ff
    }
}

/// Everything one forward pass produces.
#[derive(Debug, Clone)]
pub struct T5EncoderOutput {
    /// `L + 1` tensors `[B, S, d_model]`: `[0]` the token embeddings, `[k]` the output of block
    /// `k - 1` for `1 <= k < L`, and `[L]` = `last_hidden_state` (transformers' `hidden_states`;
    /// the last block's raw output is not among them).
    pub hidden_states: Vec<Tensor>,
    /// `[B, S, d_model]`: the final RMS norm of the last block's output.
    pub last_hidden_state: Tensor,
}

/// A T5 encoder with its weights.
pub struct T5EncoderModel {
    config: T5Config,
    embed_tokens: Embedding,
    /// `[num_buckets, num_heads]`, owned by block 0's attention and shared by every block.
    relative_attention_bias: Tensor,
    blocks: Vec<Block>,
    final_layer_norm: RmsNorm,
}

impl T5EncoderModel {
    /// Load a transformers T5 encoder folder (diffusers `text_encoder_2/` of FLUX,
    /// `text_encoder_3/` of SD3): `config.json` + `model.safetensors` (or its sharded index).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<T5EncoderModel> {
        let component = crate::checkpoint::open_component(dir)?;
        let config = T5Config::from_json(&component.config.to_string(), &dir.join("config.json"))?;
        T5EncoderModel::new(config, component.var_builder(dtype, device))
    }

    /// Build from a config and weights under transformers' key names: `encoder.*` plus the token
    /// embedding as `encoder.embed_tokens.weight` or, tied, `shared.weight`.
    pub fn new(config: T5Config, weights: impl Into<ModelWeights>) -> Result<T5EncoderModel> {
        let vb: ModelWeights = weights.into();
        let c = &config;
        let embedding_key = ["encoder.embed_tokens.weight", "shared.weight"]
            .into_iter()
            .find(|k| vb.contains_tensor(k))
            .ok_or_else(|| {
                Error::Unsupported(
                    "no T5 token embedding: neither `encoder.embed_tokens.weight` nor `shared.weight` is present"
                        .into(),
                )
            })?;
        let embed_tokens = Embedding::new(vb.get((c.vocab_size, c.d_model), embedding_key)?, c.d_model);
        let encoder = vb.pp("encoder");
        let relative_attention_bias = encoder.get(
            (c.relative_attention_num_buckets, c.num_heads),
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )?;
        let blocks = (0..c.num_layers)
            .map(|i| Block::load(c, encoder.pp(format!("block.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = RmsNorm::load(c.d_model, c.layer_norm_epsilon, encoder.pp("final_layer_norm").vb().clone())?;
        Ok(T5EncoderModel { config, embed_tokens, relative_attention_bias, blocks, final_layer_norm })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// `text_encoder(input_ids, output_hidden_states=True)` with no attention mask. `input_ids`
    /// `[B, S]`, any integer dtype.
    pub fn forward(&self, input_ids: &Tensor) -> Result<T5EncoderOutput> {
        let (batch, seq_len) = input_ids.dims2()?;
        let rows = input_ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = rows.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::param(
                "input_ids",
                format!(
                    "token id {bad} is outside the T5 vocabulary of {vocab}; is the tokenizer from the same model?"
                ),
            ));
        }
        let device = self.relative_attention_bias.device();
        // In range after the check above.
        let flat: Vec<u32> = rows.iter().flatten().map(|&id| id as u32).collect();
        let ids = Tensor::from_vec(flat, (batch, seq_len), device)?;

        let mut x = self.embed_tokens.forward(&ids)?;
        let position_bias = self.position_bias(seq_len)?.to_dtype(x.dtype())?;
        let mut hidden_states = Vec::with_capacity(self.blocks.len() + 1);
        for block in &self.blocks {
            let next = block.forward(&x, &position_bias, self.config.activation)?;
            hidden_states.push(x);
            x = next;
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        hidden_states.push(last_hidden_state.clone());
        Ok(T5EncoderOutput { hidden_states, last_hidden_state })
    }

    /// `[1, H, S, S]`: the learned bias of each (query, key) pair's bucket, per head.
    fn position_bias(&self, seq_len: usize) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let buckets =
            relative_position_buckets(seq_len, c.relative_attention_num_buckets, c.relative_attention_max_distance);
        let buckets = Tensor::from_vec(buckets, seq_len * seq_len, self.relative_attention_bias.device())?;
        self.relative_attention_bias
            .index_select(&buckets, 0)?
            .reshape((seq_len, seq_len, c.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{load_tensors, max_diff, testdata, token_ids as ids};
    use std::collections::HashMap;

    fn tiny_dir() -> std::path::PathBuf {
        testdata("vectors/models/t5_tiny")
    }

    fn tiny_config() -> T5Config {
        let path = tiny_dir().join("config.json");
        T5Config::from_json(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
    }

    fn tiny_weights() -> HashMap<String, Tensor> {
        load_tensors(&tiny_dir().join("model.safetensors"))
    }



    #[test]
    fn buckets_match_transformers_for_short_and_long_distances() {
        // Values of transformers' `_relative_position_bucket(bidirectional=True, num_buckets=32,
        // max_distance=128)` for query 0 and keys at these distances (keys after the query use
        // buckets 16..31).
        let row = relative_position_buckets(200, 32, 128);
        let expect = [
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (11, 24),
            (12, 25),
            (16, 26),
            (32, 28),
            (45, 28),
            (46, 29),
            (90, 30),
            (91, 31),
            (199, 31),
        ];
        for (key, bucket) in expect {
            assert_eq!(row[key], bucket, "key {key}");
        }
        // Keys before the query: query 199 looking back.
        let back = &row[199 * 200..];
        assert_eq!((back[199], back[198], back[199 - 16], back[0]), (0, 1, 10, 15));
    }

    #[test]
    fn config_reads_published_t5_xxl_and_feed_forward_variants() {
        // google/t5-v1_1-xxl as shipped in FLUX.1 `text_encoder_2/config.json`.
        let xxl = r#"{"architectures": ["T5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096,
            "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu", "is_gated_act": true,
            "layer_norm_epsilon": 1e-06, "num_heads": 64, "num_layers": 24, "relative_attention_max_distance": 128,
            "relative_attention_num_buckets": 32, "vocab_size": 32128}"#;
        let c = T5Config::from_json(xxl, Path::new("config.json")).unwrap();
        assert_eq!((c.d_model, c.inner_dim(), c.d_ff, c.num_layers), (4096, 4096, 10240, 24));
        assert_eq!((c.gated, c.activation), (true, T5Activation::GeluTanh));

        let p = Path::new("config.json");
        let relu = T5Config::from_json("{}", p).unwrap();
        assert_eq!((relu.gated, relu.activation, relu.d_model), (false, T5Activation::Relu, 512));
        let silu = T5Config::from_json(r#"{"feed_forward_proj": "gated-silu"}"#, p).unwrap();
        assert_eq!((silu.gated, silu.activation), (true, T5Activation::Silu));
        let gelu = T5Config::from_json(r#"{"feed_forward_proj": "gelu"}"#, p).unwrap();
        assert_eq!((gelu.gated, gelu.activation), (false, T5Activation::Gelu));
        for bad in ["gated-tanh", "fancy-gelu", "gated-gelu-x"] {
            let err = T5Config::from_json(&format!(r#"{{"feed_forward_proj": "{bad}"}}"#), p).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn relu_feed_forward_uses_wi_and_wo() {
        let mut c = tiny_config();
        c.gated = false;
        c.activation = T5Activation::Relu;
        let mut w = tiny_weights();
        for i in 0..c.num_layers {
            let wi_0 = w.remove(&format!("encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight")).unwrap();
            w.insert(format!("encoder.block.{i}.layer.1.DenseReluDense.wi.weight"), wi_0);
        }
        let model = T5EncoderModel::new(c, candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
        let out = model.forward(&ids(&[&[5, 6, 7, 1]])).unwrap();
        assert_eq!(out.hidden_states.len(), 3);
        // With the gated weights' keys present only, the plain variant refuses to load.
        let err = T5EncoderModel::new(
            T5Config { gated: false, ..tiny_config() },
            candle_nn::VarBuilder::from_tensors(tiny_weights(), DType::F32, &Device::Cpu),
        );
        assert!(err.is_err());
    }

    #[test]
    fn embed_tokens_key_wins_over_shared() {
        let mut w = tiny_weights();
        let shared = w["shared.weight"].clone();
        w.insert("encoder.embed_tokens.weight".into(), (&shared * 2.0).unwrap());
        let both = T5EncoderModel::new(tiny_config(), candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
        let x = ids(&[&[5, 6, 1]]);
        let emb = both.forward(&x).unwrap().hidden_states[0].clone();
        let expect = shared.index_select(&Tensor::new(&[5u32, 6, 1], &Device::Cpu).unwrap(), 0).unwrap();
        assert_eq!(max_diff(&emb.squeeze(0).unwrap(), &(expect * 2.0).unwrap()), 0.0);

        let mut none = tiny_weights();
        none.remove("shared.weight");
        let err = T5EncoderModel::new(tiny_config(), candle_nn::VarBuilder::from_tensors(none, DType::F32, &Device::Cpu));
        assert!(err.err().unwrap().to_string().contains("shared.weight"));
    }

    #[test]
    fn padding_is_attended_and_ids_are_checked() {
        let model = T5EncoderModel::load(&tiny_dir(), DType::F32, &Device::Cpu).unwrap();
        // No attention mask: changing a trailing pad changes every position's output.
        let a = model.forward(&ids(&[&[5, 6, 1, 0]])).unwrap();
        let b = model.forward(&ids(&[&[5, 6, 1, 9]])).unwrap();
        let first = |t: &Tensor| t.narrow(1, 0, 1).unwrap();
        assert!(max_diff(&first(&a.last_hidden_state), &first(&b.last_hidden_state)) > 1e-4);
        let err = model.forward(&ids(&[&[5, 1000]])).unwrap_err();
        assert!(err.to_string().contains("1000"), "{err}");
    }

    #[test]
    fn missing_folder_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = T5EncoderModel::load(dir.path(), DType::F32, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("config.json"), "{err}");
        std::fs::copy(tiny_dir().join("config.json"), dir.path().join("config.json")).unwrap();
        let err = T5EncoderModel::load(dir.path(), DType::F32, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
