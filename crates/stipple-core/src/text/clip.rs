//! CLIP's text transformer (transformers `CLIPTextModel` / `CLIPTextModelWithProjection`), run the
//! way the SD pipelines run it: no attention mask, only the causal one (README §5.3).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::{Error, Result};

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP (SD 1.x).
    QuickGelu,
    /// Exact erf GELU: OpenCLIP models (SD 2.x, SDXL `text_encoder_2`).
    Gelu,
}

/// The fields of a transformers `CLIPTextConfig` the forward pass needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
    /// The token pooled on; the legacy value 2 means "pool at argmax(input_ids)".
    pub eos_token_id: u32,
    /// Width of `text_projection` (used only when the weights have one).
    pub projection_dim: usize,
}

/// `config.json` as written, with transformers' `CLIPTextConfig` defaults for absent keys.
#[derive(Deserialize)]
#[serde(default)]
struct RawTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
    eos_token_id: u32,
    projection_dim: usize,
}

impl Default for RawTextConfig {
    fn default() -> Self {
        RawTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: 512,
        }
    }
}

/// The legacy `eos_token_id` of early CLIP configs (the published SD1.5 text encoder has it).
const LEGACY_EOS_TOKEN_ID: u32 = 2;

impl ClipTextConfig {
    /// Parse a `CLIPTextConfig`, or the `text_config` of a full `CLIPConfig`. `path` names the file
    /// in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<ClipTextConfig> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::invalid_file(path, e.to_string()))?;
        let (text_value, outer_projection_dim) = match value.get("text_config") {
            // In a full CLIPConfig the projection width belongs to the outer config.
            Some(inner) => (inner.clone(), value.get("projection_dim").and_then(|v| v.as_u64())),
            None => (value, None),
        };
        let raw: RawTextConfig =
            serde_json::from_value(text_value).map_err(|e| Error::invalid_file(path, e.to_string()))?;

        let hidden_act = match raw.hidden_act.as_str() {
            "quick_gelu" => ClipActivation::QuickGelu,
            "gelu" => ClipActivation::Gelu,
            other => {
                return Err(Error::invalid_file(
                    path,
                    format!("hidden_act `{other}` is not supported (CLIP text encoders use quick_gelu or gelu)"),
                ))
            }
        };
        if raw.num_attention_heads == 0 || raw.hidden_size % raw.num_attention_heads != 0 {
            return Err(Error::invalid_file(
                path,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    raw.hidden_size, raw.num_attention_heads
                ),
            ));
        }
        Ok(ClipTextConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            max_position_embeddings: raw.max_position_embeddings,
            hidden_act,
            layer_norm_eps: raw.layer_norm_eps,
            eos_token_id: raw.eos_token_id,
            projection_dim: outer_projection_dim.map_or(raw.projection_dim, |d| d as usize),
        })
    }
}

/// LayerNorm with a two-pass variance in at least f32, as PyTorch computes it (candle's fused
/// kernel uses `E[x²] - E[x]²`, which cancels badly on CLIP's large-magnitude channels).
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
        Ok(LayerNorm { weight: vb.get(size, "weight")?, bias: vb.get(size, "bias")?, eps })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let internal = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let x = x.to_dtype(internal)?;
        let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight.to_dtype(internal)?)?
            .broadcast_add(&self.bias.to_dtype(internal)?)?
            .to_dtype(dtype)
    }
}

struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl SelfAttention {
    fn load(c: &ClipTextConfig, vb: VarBuilder) -> candle_core::Result<SelfAttention> {
        let d = c.hidden_size;
        Ok(SelfAttention {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            num_heads: c.num_attention_heads,
            scale: ((d / c.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `x` `[B, S, D]`; `causal_mask` `[S, S]` (0 on and below the diagonal, -inf above).
    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let head_dim = d / self.num_heads;
        let heads = |t: Tensor| t.reshape((b, s, self.num_heads, head_dim))?.transpose(1, 2)?.contiguous();
        let q = heads(self.q_proj.forward(x)?)?;
        let k = heads(self.k_proj.forward(x)?)?;
        let v = heads(self.v_proj.forward(x)?)?;

        let scores = (q.matmul(&k.t()?)? * self.scale)?.broadcast_add(causal_mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, s, d))?;
        self.out_proj.forward(&out)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: ClipActivation,
}

impl EncoderLayer {
    fn load(c: &ClipTextConfig, vb: VarBuilder) -> candle_core::Result<EncoderLayer> {
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::load(c, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::load(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(c.hidden_size, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, c.hidden_size, vb.pp("mlp.fc2"))?,
            activation: c.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?, causal_mask)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = match self.activation {
            ClipActivation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            ClipActivation::Gelu => h.gelu_erf()?,
        };
        x + self.fc2.forward(&h)?
    }
}

/// Everything one forward pass produces.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `L + 1` tensors `[B, S, D]`: `[0]` the embeddings, `[k]` the output of layer `k` (the last
    /// one *before* the final LayerNorm).
    pub hidden_states: Vec<Tensor>,
    /// `[B, S, D]`, after the final LayerNorm.
    pub last_hidden_state: Tensor,
    /// `[B, D]`: `last_hidden_state` at each row's first EOS (transformers' `pooler_output`).
    pub pooled: Tensor,
    /// `[B, projection_dim]`: `pooled` through `text_projection`, when the weights have one.
    pub text_embeds: Option<Tensor>,
}

/// A CLIP text encoder with its weights.
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
}

impl ClipTextModel {
    /// Load a transformers text-encoder folder (diffusers `text_encoder/`, `text_encoder_2/`):
    /// `config.json` + `model.safetensors` (or its fp16 / sharded forms).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<ClipTextModel> {
        let component = crate::checkpoint::open_component(dir)?;
        let config = ClipTextConfig::from_json(&component.config.to_string(), &dir.join("config.json"))?;
        ClipTextModel::new(config, component.var_builder(dtype, device))
    }

    /// Build from a config and weights under transformers' key names, with or without the
    /// `text_model.` prefix (published checkpoints have it; transformers 5 saves without it), plus
    /// `text_projection.weight` at the root for `CLIPTextModelWithProjection`.
    pub fn new(config: ClipTextConfig, vb: VarBuilder) -> Result<ClipTextModel> {
        const TOKEN_EMBEDDING: &str = "embeddings.token_embedding.weight";
        let text_vb = if vb.contains_tensor(&format!("text_model.{TOKEN_EMBEDDING}")) {
            vb.pp("text_model")
        } else if vb.contains_tensor(TOKEN_EMBEDDING) {
            vb.clone()
        } else {
            return Err(Error::Unsupported(format!(
                "no CLIP text encoder weights: neither `text_model.{TOKEN_EMBEDDING}` nor `{TOKEN_EMBEDDING}` is present"
            )));
        };
        let c = &config;
        let embeddings = text_vb.pp("embeddings");
        let token_embedding = candle_nn::embedding(c.vocab_size, c.hidden_size, embeddings.pp("token_embedding"))?;
        let position_embedding =
            embeddings.get((c.max_position_embeddings, c.hidden_size), "position_embedding.weight")?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(c, text_vb.pp(format!("encoder.layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::load(c.hidden_size, c.layer_norm_eps, text_vb.pp("final_layer_norm"))?;
        let text_projection = if vb.contains_tensor("text_projection.weight") {
            Some(candle_nn::linear_no_bias(c.hidden_size, c.projection_dim, vb.pp("text_projection"))?)
        } else {
            None
        };
        Ok(ClipTextModel { config, token_embedding, position_embedding, layers, final_layer_norm, text_projection })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Whether the weights carry `text_projection` (so `forward` returns `text_embeds`).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The final LayerNorm alone (diffusers applies it to an earlier hidden state for `clip_skip`).
    pub fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.final_layer_norm.forward(x)?)
    }

    /// `text_encoder(input_ids, output_hidden_states=True)` with no attention mask. `input_ids`
    /// `[B, S]` (any integer dtype), `S <= max_position_embeddings`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let (batch, seq_len) = input_ids.dims2()?;
        let rows = input_ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        self.check_ids(&rows, seq_len)?;
        let device = self.position_embedding.device();
        // In range after `check_ids`.
        let flat: Vec<u32> = rows.iter().flatten().map(|&id| id as u32).collect();
        let ids = Tensor::from_vec(flat, (batch, seq_len), device)?;

        let positions = self.position_embedding.narrow(0, 0, seq_len)?;
        let mut x = self.token_embedding.forward(&ids)?.broadcast_add(&positions)?;
        let causal_mask = causal_mask(seq_len, x.dtype(), device)?;

        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            let next = layer.forward(&x, &causal_mask)?;
            hidden_states.push(x);
            x = next;
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        hidden_states.push(x);

        let flat_positions: Vec<u32> =
            rows.iter().enumerate().map(|(b, row)| (b * seq_len + self.pooling_position(row)) as u32).collect();
        let flat_positions = Tensor::from_vec(flat_positions, batch, device)?;
        let pooled =
            last_hidden_state.reshape((batch * seq_len, self.config.hidden_size))?.index_select(&flat_positions, 0)?;
        let text_embeds = match &self.text_projection {
            Some(p) => Some(p.forward(&pooled)?),
            None => None,
        };
        Ok(ClipTextOutput { hidden_states, last_hidden_state, pooled, text_embeds })
    }

    fn check_ids(&self, rows: &[Vec<i64>], seq_len: usize) -> Result<()> {
        let max_len = self.config.max_position_embeddings;
        if seq_len > max_len {
            return Err(Error::param(
                "input_ids",
                format!("{seq_len} tokens, but the text encoder takes at most {max_len}"),
            ));
        }
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = rows.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::param(
                "input_ids",
                format!("token id {bad} is outside the text encoder's vocabulary of {vocab}; is the tokenizer from the same model?"),
            ));
        }
        Ok(())
    }

    /// Where a row is pooled: its first EOS, or `argmax(ids)` for the legacy `eos_token_id == 2`
    /// (the first EOS for CLIP vocabularies, where EOS is the largest id). A row without EOS pools
    /// at 0, as transformers' `(ids == eos).argmax()` does.
    fn pooling_position(&self, row: &[i64]) -> usize {
        if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID {
            // The first maximum, as torch.argmax returns.
            let mut best = 0;
            for (i, &id) in row.iter().enumerate() {
                if id > row[best] {
                    best = i;
                }
            }
            best
        } else {
            let eos = i64::from(self.config.eos_token_id);
            row.iter().position(|&id| id == eos).unwrap_or(0)
        }
    }
}

/// `[S, S]`: 0 on and below the diagonal, -inf above (a token sees itself and what precedes it).
fn causal_mask(seq_len: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> =
        (0..seq_len).flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (seq_len, seq_len), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{load_tensors, max_diff, testdata, token_ids as ids};
    use std::collections::HashMap;

    fn tiny_dir() -> std::path::PathBuf {
        testdata("vectors/models/sd_tiny/text_encoder")
    }

    fn tiny_config() -> ClipTextConfig {
        let path = tiny_dir().join("config.json");
        ClipTextConfig::from_json(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
    }

    fn tiny_weights() -> HashMap<String, Tensor> {
        load_tensors(&tiny_dir().join("model.safetensors"))
    }



    #[test]
    fn config_reads_plain_and_nested_text_config() {
        let p = Path::new("config.json");
        let plain = ClipTextConfig::from_json(
            r#"{"hidden_size": 64, "num_attention_heads": 4, "hidden_act": "gelu", "projection_dim": 16}"#,
            p,
        )
        .unwrap();
        assert_eq!(plain.hidden_act, ClipActivation::Gelu);
        assert_eq!((plain.hidden_size, plain.projection_dim, plain.eos_token_id), (64, 16, 49407));
        let nested = ClipTextConfig::from_json(
            r#"{"projection_dim": 24, "text_config": {"hidden_size": 64, "num_attention_heads": 4, "eos_token_id": 2}}"#,
            p,
        )
        .unwrap();
        assert_eq!((nested.hidden_size, nested.projection_dim, nested.eos_token_id), (64, 24, 2));
        assert_eq!(nested.hidden_act, ClipActivation::QuickGelu);
    }

    #[test]
    fn config_refuses_unknown_activation_and_bad_heads() {
        let p = Path::new("te/config.json");
        let err = ClipTextConfig::from_json(r#"{"hidden_act": "relu"}"#, p).unwrap_err().to_string();
        assert!(err.contains("relu") && err.contains("te/config.json"), "{err}");
        let err = ClipTextConfig::from_json(r#"{"hidden_size": 30, "num_attention_heads": 4}"#, p).unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
    }

    #[test]
    fn weights_load_with_and_without_the_text_model_prefix() {
        let prefixed = tiny_weights();
        let bare: HashMap<String, Tensor> =
            prefixed.iter().map(|(k, v)| (k.strip_prefix("text_model.").unwrap().to_string(), v.clone())).collect();
        let a =
            ClipTextModel::new(tiny_config(), VarBuilder::from_tensors(prefixed, DType::F32, &Device::Cpu)).unwrap();
        let b = ClipTextModel::new(tiny_config(), VarBuilder::from_tensors(bare, DType::F32, &Device::Cpu)).unwrap();
        let x = ids(&[&[561, 5, 9, 562, 562]]);
        let (oa, ob) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
        assert_eq!(max_diff(&oa.last_hidden_state, &ob.last_hidden_state), 0.0);
        assert!(oa.text_embeds.is_none() && !a.has_projection());
    }

    #[test]
    fn projection_applies_to_the_first_eos_position() {
        let mut w = tiny_weights();
        let c = tiny_config();
        let proj = Tensor::randn(0f32, 1.0, (c.projection_dim, c.hidden_size), &Device::Cpu).unwrap();
        w.insert("text_projection.weight".into(), proj.clone());
        let model = ClipTextModel::new(c, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
        // EOS (562) first at position 2 in row 0 and 4 in row 1; later EOS tokens are padding.
        let out = model.forward(&ids(&[&[561, 7, 562, 562, 562], &[561, 7, 8, 9, 562]])).unwrap();
        let expect_pooled = Tensor::stack(
            &[
                out.last_hidden_state.get(0).unwrap().get(2).unwrap(),
                out.last_hidden_state.get(1).unwrap().get(4).unwrap(),
            ],
            0,
        )
        .unwrap();
        assert_eq!(max_diff(&out.pooled, &expect_pooled), 0.0);
        let expect_embeds = out.pooled.matmul(&proj.t().unwrap()).unwrap();
        assert!(max_diff(out.text_embeds.as_ref().unwrap(), &expect_embeds) < 1e-5);
    }

    #[test]
    fn legacy_eos_id_pools_at_argmax() {
        let mut c = tiny_config();
        c.eos_token_id = LEGACY_EOS_TOKEN_ID;
        let model = ClipTextModel::new(c, VarBuilder::from_tensors(tiny_weights(), DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(model.pooling_position(&[561, 3, 999, 562, 999]), 2, "first maximum");
        let out = model.forward(&ids(&[&[561, 3, 999, 562, 999]])).unwrap();
        let at_2 = out.last_hidden_state.get(0).unwrap().get(2).unwrap().unsqueeze(0).unwrap();
        assert_eq!(max_diff(&out.pooled, &at_2), 0.0);
    }

    #[test]
    fn causal_mask_hides_later_tokens() {
        let model = ClipTextModel::load(&tiny_dir(), &Device::Cpu, DType::F32).unwrap();
        let a = model.forward(&ids(&[&[561, 5, 9, 562, 562]])).unwrap();
        let b = model.forward(&ids(&[&[561, 5, 9, 100, 200]])).unwrap();
        let prefix = |t: &Tensor| t.narrow(1, 0, 3).unwrap();
        assert_eq!(max_diff(&prefix(&a.last_hidden_state), &prefix(&b.last_hidden_state)), 0.0);
        assert!(max_diff(&a.last_hidden_state, &b.last_hidden_state) > 1e-3);
        assert_eq!(a.hidden_states.len(), 6);
    }

    #[test]
    fn out_of_vocabulary_ids_and_long_inputs_are_refused() {
        let model = ClipTextModel::load(&tiny_dir(), &Device::Cpu, DType::F32).unwrap();
        let err = model.forward(&ids(&[&[561, 1000, 562]])).unwrap_err();
        assert!(err.to_string().contains("1000"), "{err}");
        let long = vec![5u32; 78];
        assert!(model.forward(&ids(&[&long])).is_err());
    }

    #[test]
    fn missing_weights_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(tiny_dir().join("config.json"), dir.path().join("config.json")).unwrap();
        let err = ClipTextModel::load(dir.path(), &Device::Cpu, DType::F32).err().unwrap();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
