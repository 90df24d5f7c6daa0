//! Writing the trained model as a diffusers-style folder that `stipple_core::loader` opens:
//! `model_index.json`, `scheduler/`, `tokenizer/`, and `text_encoder/`, `transformer/`, `vae/`
//! each with `config.json` and safetensors weights (float16: half the size, no visible change).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use stipple_core::checkpoint::{write_safetensors, PlannedTensor};
use stipple_core::loader::STIPPLE_PIPELINE;
use stipple_core::text::stipple_text::word_level_tokenizer_json;
use stipple_core::{Error, Result};

use crate::caption::VOCABULARY;
use crate::config::GenerationDefaults;

/// The stored dtype of the shipped weights.
pub const WEIGHT_DTYPE: DType = DType::F16;

pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise") + "\n";
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Weights named and shaped, values flattened.
pub struct NamedWeights {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<Vec<f32>>,
}

impl NamedWeights {
    /// The weights whose names start with `prefix.`, renamed without it.
    pub fn with_prefix(&self, prefix: &str) -> NamedWeights {
        let p = format!("{prefix}.");
        let mut out = NamedWeights { names: vec![], shapes: vec![], values: vec![] };
        for ((n, s), v) in self.names.iter().zip(&self.shapes).zip(&self.values) {
            if let Some(rest) = n.strip_prefix(&p) {
                out.names.push(rest.to_string());
                out.shapes.push(s.clone());
                out.values.push(v.clone());
            }
        }
        out
    }
}

/// A component folder: `config.json` (with `_class_name`) and the weights in `file`.
pub fn write_component(dir: &Path, class: &str, config: &Value, file: &str, weights: &NamedWeights) -> Result<()> {
    let mut config = config.clone();
    if let Value::Object(map) = &mut config {
        map.insert("_class_name".into(), json!(class));
    }
    write_json(&dir.join("config.json"), &config)?;
    let plan: Vec<PlannedTensor> = weights
        .names
        .iter()
        .zip(&weights.shapes)
        .map(|(n, s)| PlannedTensor { name: n.clone(), dtype: WEIGHT_DTYPE, shape: s.clone() })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join(file), &metadata, &plan, |i| {
        Ok(Tensor::from_slice(&weights.values[i], weights.shapes[i].as_slice(), &Device::Cpu)?.to_dtype(WEIGHT_DTYPE)?)
    })
}

/// `model_index.json`, `scheduler/scheduler_config.json` and `tokenizer/tokenizer.json`.
pub fn write_pipeline_files(dir: &Path, scheduler: &Value, defaults: GenerationDefaults) -> Result<()> {
    let scheduler_class = scheduler.get("_class_name").and_then(Value::as_str).unwrap_or("DDIMScheduler");
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": STIPPLE_PIPELINE,
            "scheduler": ["diffusers", scheduler_class],
            "text_encoder": ["stipple", "StippleTextEncoder"],
            "tokenizer": ["tokenizers", "WordLevelTokenizer"],
            "transformer": ["stipple", "StippleDiT"],
            "vae": ["stipple", "StippleAutoencoderKL"],
            "stipple_defaults": {"steps": defaults.steps, "cfg_scale": defaults.cfg_scale},
        }),
    )?;
    write_json(&dir.join("scheduler/scheduler_config.json"), scheduler)?;
    let tokenizer_dir = dir.join("tokenizer");
    std::fs::create_dir_all(&tokenizer_dir).map_err(|e| Error::io(format!("creating {}", tokenizer_dir.display()), e))?;
    let path = tokenizer_dir.join("tokenizer.json");
    std::fs::write(&path, word_level_tokenizer_json(VOCABULARY) + "\n").map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Number of tokens the shipped tokenizer knows (the caption vocabulary, `[PAD]` and `[UNK]`).
pub fn vocab_size() -> usize {
    VOCABULARY.len() + 2
}
