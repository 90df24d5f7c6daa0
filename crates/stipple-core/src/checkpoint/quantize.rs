//! `stipple quantize`: a diffusion transformer's safetensors weights to a GGUF file whose linear
//! weights are block-quantized (q8_0: 8-bit values, one f16 scale per 32; q4_0: 4-bit values, one
//! f16 scale per 32 — ggml's layouts), everything else kept in its stored float type.
//!
//! Names stay diffusers' (`stipple.layout = diffusers`); `stipple.config` carries the transformer's
//! `config.json` when the input is a folder. Tensors are converted one at a time, so the whole
//! model never sits in memory in f32.

use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::gguf::{write_gguf, TensorSpec};
use super::safetensors_file::SafetensorsFile;
use super::store::WeightStore;
use crate::{Error, Result};

/// The block quantizations `stipple quantize` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Q8_0,
    Q4_0,
}

impl QuantType {
    pub fn ggml(self) -> GgmlDType {
        match self {
            QuantType::Q8_0 => GgmlDType::Q8_0,
            QuantType::Q4_0 => GgmlDType::Q4_0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
        }
    }
}

impl FromStr for QuantType {
    type Err = Error;
    fn from_str(s: &str) -> Result<QuantType> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(QuantType::Q8_0),
            "q4_0" | "q4" => Ok(QuantType::Q4_0),
            _ => Err(Error::param("type", format!("unknown quantization `{s}`; choose q8_0 or q4_0"))),
        }
    }
}

/// What a quantization did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// `flux` or `sd3`.
    pub architecture: &'static str,
    pub quantized: usize,
    pub kept: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Whether a tensor becomes block-quantized: linear weights (2-D `*.weight`) whose rows are whole
/// blocks. Convolutions, norms, biases and position tables keep their float type.
fn quantizes(name: &str, shape: &[usize], to: GgmlDType) -> bool {
    name.ends_with(".weight") && shape.len() == 2 && shape[1] % to.block_size() == 0
}

/// The GGUF float type a stored dtype is kept in.
fn kept_type(dtype: DType) -> GgmlDType {
    match dtype {
        DType::F16 => GgmlDType::F16,
        DType::BF16 => GgmlDType::BF16,
        _ => GgmlDType::F32,
    }
}

/// Quantize a diffusers transformer — a component folder (`config.json` + weights, whole or
/// sharded) or one `.safetensors` file — into the GGUF file `output`.
pub fn quantize_transformer(input: &Path, output: &Path, to: QuantType) -> Result<QuantizeReport> {
    let (store, config) = if input.is_dir() {
        let component = super::open_component(input)?;
        (component.store, Some(component.config.to_string()))
    } else {
        let file = std::sync::Arc::new(SafetensorsFile::open(input)?);
        (WeightStore::whole_file(file, format!("weights in {}", input.display()))?, None)
    };
    let architecture = if store.contains("single_transformer_blocks.0.proj_mlp.weight") || store.contains("x_embedder.weight") {
        "flux"
    } else if store.contains("transformer_blocks.0.attn.to_q.weight") && store.contains("pos_embed.proj.weight") {
        "sd3"
    } else {
        return Err(Error::invalid_file(
            input,
            "not a diffusers FLUX or SD3 transformer (no `transformer_blocks.0.attn.to_q.weight` with `x_embedder` or \
             `pos_embed`); give the model's `transformer/` folder or its diffusion_pytorch_model.safetensors",
        ));
    };

    let ggml = to.ggml();
    let mut specs = Vec::new();
    let mut bytes_in = 0u64;
    for name in store.names() {
        let shape = store.shape(name).expect("listed").to_vec();
        let stored = store.stored_dtype(name).expect("listed");
        bytes_in += (shape.iter().product::<usize>() * stored.size_in_bytes()) as u64;
        let dtype = if quantizes(name, &shape, ggml) { ggml } else { kept_type(stored) };
        specs.push(TensorSpec { name: name.to_string(), shape, dtype });
    }
    let mut metadata = vec![
        ("general.architecture", architecture.to_string()),
        ("stipple.layout", "diffusers".to_string()),
        ("stipple.quantization", to.name().to_string()),
    ];
    if let Some(config) = config {
        metadata.push(("stipple.config", config));
    }
    write_gguf(output, &metadata, &specs, |i| {
        let spec = &specs[i];
        let tensor = store.load(&spec.name, DType::F32, &Device::Cpu)?;
        Ok(QTensor::quantize(&tensor, spec.dtype)?)
    })?;
    let quantized = specs.iter().filter(|s| s.dtype == ggml).count();
    let bytes_out =
        std::fs::metadata(output).map_err(|e| Error::io(format!("reading the size of {}", output.display()), e))?.len();
    Ok(QuantizeReport { architecture, quantized, kept: specs.len() - quantized, bytes_in, bytes_out })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::GgufWeights;
    use crate::dit::{FluxConfig, FluxTransformer, Sd3Config, Sd3Transformer};
    use crate::model::{Conditioning, Denoiser, ImageInfo};
    use crate::rng::TorchRng;
    use candle_core::Tensor;
    use std::path::PathBuf;

    pub(crate) fn transformer_dir(model: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/pipelines/models").join(model).join("transformer")
    }

    fn randn(rng: &mut TorchRng, shape: &[usize]) -> Tensor {
        rng.randn_tensor(shape, &Device::Cpu).unwrap()
    }

    /// One denoiser evaluation on seeded inputs: latents `[2, 16, 12, 8]`, 20 text tokens.
    pub(crate) fn denoise(model: &dyn Denoiser, context_width: usize, pooled_width: usize, seed: u64) -> Tensor {
        let mut rng = TorchRng::new(seed);
        let x = randn(&mut rng, &[2, 16, 12, 8]);
        let cond = Conditioning {
            context: randn(&mut rng, &[2, 20, context_width]),
            pooled: Some(randn(&mut rng, &[2, pooled_width])),
        };
        let t = Tensor::new(&[700f32, 300.0], &Device::Cpu).unwrap();
        model.forward(&x, &t, &cond, &ImageInfo { guidance: Some(4.0), ..Default::default() }).unwrap()
    }

    pub(crate) fn flux(weights: impl Into<crate::layers::ModelWeights>) -> FluxTransformer {
        let path = transformer_dir("flux_dev_tiny").join("config.json");
        FluxTransformer::new(FluxConfig::from_json(&std::fs::read_to_string(&path).unwrap(), &path).unwrap(), weights).unwrap()
    }

    fn sd3(weights: impl Into<crate::layers::ModelWeights>) -> Sd3Transformer {
        let path = transformer_dir("sd3_tiny").join("config.json");
        Sd3Transformer::new(Sd3Config::from_json(&std::fs::read_to_string(&path).unwrap(), &path).unwrap(), weights).unwrap()
    }

    /// `max|a - b| / max|b|`.
    pub(crate) fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
    }

    /// The error bounds Stipple states for quantized transformers, relative to the largest output
    /// of the f32 model (`max|q - f| <= bound * max|f|`, one denoiser evaluation). q8_0 rounds
    /// weights to 1/254 of each block's largest value, q4_0 to 1/16 (products over many tokens
    /// widen the blocks to f32; the few-row embedding products use candle's kernels, which also
    /// round the activations to q8 blocks). Measured on the tiny FLUX and SD3 transformers below
    /// (seeds 1, 2): q8_0 0.35-0.63 %, q4_0 5.8-11.8 %; the bounds leave 3x and 1.7x room.
    pub const Q8_0_BOUND: f32 = 0.02;
    pub const Q4_0_BOUND: f32 = 0.20;

    #[test]
    fn quantized_transformers_stay_within_the_stated_bound_of_f32() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        for (model, quant, bound) in [
            ("flux_dev_tiny", QuantType::Q8_0, Q8_0_BOUND),
            ("flux_dev_tiny", QuantType::Q4_0, Q4_0_BOUND),
            ("sd3_tiny", QuantType::Q8_0, Q8_0_BOUND),
            ("sd3_tiny", QuantType::Q4_0, Q4_0_BOUND),
        ] {
            let out = dir.path().join(format!("{model}_{}.gguf", quant.name()));
            let report = quantize_transformer(&transformer_dir(model), &out, quant).unwrap();
            assert!(report.quantized > 10 && report.bytes_out < report.bytes_in, "{report:?}");
            let f32_weights = crate::checkpoint::open_component(&transformer_dir(model)).unwrap();
            let q = GgufWeights::open(&out).unwrap();
            assert_eq!(q.type_counts()[&format!("{:?}", quant.ggml())], report.quantized);
            for seed in [1, 2] {
                let (a, b) = if model.starts_with("flux") {
                    let reference = flux(f32_weights.var_builder(DType::F32, &dev));
                    let quantized = flux(q.model_weights(DType::F32, &dev));
                    (denoise(&quantized, 96, 32, seed), denoise(&reference, 96, 32, seed))
                } else {
                    let reference = sd3(f32_weights.var_builder(DType::F32, &dev));
                    let quantized = sd3(q.model_weights(DType::F32, &dev));
                    (denoise(&quantized, 96, 80, seed), denoise(&reference, 96, 80, seed))
                };
                let err = relative_error(&a, &b);
                // Quantization must change something, and no more than the bound.
                assert!(err > 1e-6 && err <= bound, "{model} {}: relative error {err} (bound {bound})", quant.name());
            }
        }
    }

    #[test]
    fn folders_without_a_transformer_and_unknown_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let te = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/pipelines/models/flux_dev_tiny/text_encoder");
        let err = quantize_transformer(&te, &dir.path().join("x.gguf"), QuantType::Q8_0).unwrap_err().to_string();
        assert!(err.contains("not a diffusers FLUX or SD3 transformer"), "{err}");
        let err = "q3_k".parse::<QuantType>().unwrap_err().to_string();
        assert!(err.contains("q8_0 or q4_0"), "{err}");
    }
}
