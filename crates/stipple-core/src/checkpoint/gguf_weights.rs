//! A diffusion transformer's weights from a GGUF file, under diffusers' names: a `VarBuilder`
//! backend (any tensor, dequantized on request) and a [`LinearSource`] that keeps block-quantized
//! linear weights quantized (multiplied by candle's q8_0 / q4_0 ... kernels) and bf16 / f16 ones
//! in their stored dtype.
//!
//! Layouts are recognised by `transformer_file.rs`: diffusers' own (what `stipple quantize`
//! writes) and Black Forest Labs' original FLUX layout (the community's FLUX GGUF files).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::flux_layout::RowSelect;
use super::gguf::{float_dtype, GgufFile};
use super::transformer_file::{TransformerArchitecture, TransformerLayout};
use crate::layers::{LinearSource, LinearWeight, ModelWeights};
use crate::{Error, Result};

/// A transformer's weights in a GGUF file.
#[derive(Clone)]
pub struct GgufWeights {
    file: Arc<GgufFile>,
    /// diffusers name → stored name and rows.
    entries: BTreeMap<String, (String, RowSelect)>,
    architecture: TransformerArchitecture,
    original_layout: bool,
}

impl GgufWeights {
    /// Open a GGUF transformer file and map its names.
    pub fn open(path: &Path) -> Result<GgufWeights> {
        let file = Arc::new(GgufFile::open(path)?);
        let layout =
            TransformerLayout::recognise(path, file.tensors().keys().map(String::as_str), &|name| file.rows_of(name))?;
        Ok(GgufWeights {
            file,
            entries: layout.entries,
            architecture: layout.architecture,
            original_layout: layout.original,
        })
    }

    pub fn architecture(&self) -> TransformerArchitecture {
        self.architecture
    }

    /// Whether the names were mapped from FLUX's original layout.
    pub fn original_layout(&self) -> bool {
        self.original_layout
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The number of stored tensors of each ggml type (for reports).
    pub fn type_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for t in self.file.tensors().values() {
            *counts.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
        }
        counts
    }

    /// Every tensor through a VarBuilder in `dtype`, linear weights kept quantized / narrow.
    pub fn model_weights(&self, dtype: DType, device: &Device) -> ModelWeights {
        let vb = VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone());
        ModelWeights::new(vb, Arc::new(self.clone()))
    }

    /// The stored tensor, its row ranges, and the shape the model gets.
    fn resolve(&self, name: &str) -> Result<(&str, Vec<std::ops::Range<usize>>, Vec<usize>)> {
        let (stored, rows) = self.entries.get(name).ok_or_else(|| {
            Error::Unsupported(format!(
                "tensor `{name}` is not in {} ({} tensors): the GGUF file does not match the model's config \
                 (check that both come from the same model)",
                self.file.path().display(),
                self.entries.len()
            ))
        })?;
        let t = self.file.tensor(stored).expect("mapped names exist");
        let mut shape = t.shape.clone();
        let first = shape.first().copied().unwrap_or(1);
        if let Some(s) = shape.first_mut() {
            *s = rows.len(first);
        }
        Ok((stored.as_str(), rows.ranges(first)?, shape))
    }

    fn check_shape(&self, name: &str, shape: &[usize], expected: &[usize]) -> Result<()> {
        if shape == expected {
            return Ok(());
        }
        Err(Error::invalid_file(
            self.file.path(),
            format!(
                "tensor `{name}` has shape {shape:?} but the model's config expects {expected:?}: the GGUF file does not \
                 belong to this config (check that the transformer file and the model folder are the same model)"
            ),
        ))
    }
}

fn to_candle(e: Error) -> candle_core::Error {
    match e {
        Error::Tensor(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

impl SimpleBackend for GgufWeights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (stored, rows, shape) = self.resolve(name).map_err(to_candle)?;
        self.check_shape(name, &shape, s.dims()).map_err(to_candle)?;
        self.file.dense(stored, &rows, dev).map_err(to_candle)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (stored, rows, _) = self.resolve(name).map_err(to_candle)?;
        self.file.dense(stored, &rows, dev).map_err(to_candle)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

impl LinearSource for GgufWeights {
    fn linear_weight(
        &self,
        path: &str,
        out_dim: usize,
        in_dim: usize,
        compute: DType,
        device: &Device,
    ) -> Result<Option<LinearWeight>> {
        let name = format!("{path}.weight");
        if !self.entries.contains_key(&name) {
            // The VarBuilder reports the missing tensor.
            return Ok(None);
        }
        let (stored, rows, shape) = self.resolve(&name)?;
        self.check_shape(&name, &shape, &[out_dim, in_dim])?;
        let dtype = self.file.tensor(stored).expect("mapped names exist").dtype;
        Ok(match float_dtype(dtype) {
            None => Some(LinearWeight::Quantized(QMatMul::from_arc(Arc::new(self.file.qtensor(stored, &rows, device)?))?)),
            Some(stored_dtype) if stored_dtype.size_in_bytes() < compute.size_in_bytes() => {
                Some(LinearWeight::Stored(self.file.dense(stored, &rows, device)?))
            }
            Some(_) => None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::gguf::{write_gguf, TensorSpec};
    use crate::checkpoint::quantize::tests::{denoise, flux, relative_error, transformer_dir};
    use crate::checkpoint::{quantize_transformer, QuantType};
    use candle_core::quantized::{GgmlDType, QTensor};
    use std::collections::HashMap;

    /// The tiny FLUX-dev transformer's diffusers tensors rearranged into BFL's original layout,
    /// following diffusers' `convert_flux_transformer_checkpoint_to_diffusers` backwards.
    pub(crate) fn to_original_layout(w: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let get = |n: &str| w.get(n).unwrap_or_else(|| panic!("no {n}")).clone();
        let cat = |names: &[String]| Tensor::cat(&names.iter().map(|n| get(n)).collect::<Vec<_>>(), 0).unwrap();
        for part in ["weight", "bias"] {
            let mut pair = |bfl: &str, diffusers: &str| out.push((format!("{bfl}.{part}"), get(&format!("{diffusers}.{part}"))));
            pair("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1");
            pair("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2");
            pair("vector_in.in_layer", "time_text_embed.text_embedder.linear_1");
            pair("vector_in.out_layer", "time_text_embed.text_embedder.linear_2");
            pair("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1");
            pair("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2");
            pair("txt_in", "context_embedder");
            pair("img_in", "x_embedder");
            pair("final_layer.linear", "proj_out");
            let b = "transformer_blocks.0";
            pair("double_blocks.0.img_mod.lin", &format!("{b}.norm1.linear"));
            pair("double_blocks.0.txt_mod.lin", &format!("{b}.norm1_context.linear"));
            pair("double_blocks.0.img_mlp.0", &format!("{b}.ff.net.0.proj"));
            pair("double_blocks.0.img_mlp.2", &format!("{b}.ff.net.2"));
            pair("double_blocks.0.txt_mlp.0", &format!("{b}.ff_context.net.0.proj"));
            pair("double_blocks.0.txt_mlp.2", &format!("{b}.ff_context.net.2"));
            pair("double_blocks.0.img_attn.proj", &format!("{b}.attn.to_out.0"));
            pair("double_blocks.0.txt_attn.proj", &format!("{b}.attn.to_add_out"));
            let qkv = |names: [&str; 3]| names.map(|n| format!("{b}.attn.{n}.{part}"));
            out.push((format!("double_blocks.0.img_attn.qkv.{part}"), cat(&qkv(["to_q", "to_k", "to_v"]))));
            out.push((format!("double_blocks.0.txt_attn.qkv.{part}"), cat(&qkv(["add_q_proj", "add_k_proj", "add_v_proj"]))));
            for i in 0..2 {
                let s = format!("single_transformer_blocks.{i}");
                out.push((format!("single_blocks.{i}.modulation.lin.{part}"), get(&format!("{s}.norm.linear.{part}"))));
                out.push((format!("single_blocks.{i}.linear2.{part}"), get(&format!("{s}.proj_out.{part}"))));
                let fused = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"].map(|n| format!("{s}.{n}.{part}"));
                out.push((format!("single_blocks.{i}.linear1.{part}"), cat(&fused)));
            }
            // BFL's final modulation is (shift, scale); diffusers' (scale, shift).
            let m = get(&format!("norm_out.linear.{part}"));
            let half = m.dim(0).unwrap() / 2;
            out.push((
                format!("final_layer.adaLN_modulation.1.{part}"),
                Tensor::cat(&[m.narrow(0, half, half).unwrap(), m.narrow(0, 0, half).unwrap()], 0).unwrap(),
            ));
        }
        for (bfl, key) in [("img_attn.norm.query_norm", "norm_q"), ("img_attn.norm.key_norm", "norm_k"),
            ("txt_attn.norm.query_norm", "norm_added_q"), ("txt_attn.norm.key_norm", "norm_added_k")]
        {
            out.push((format!("double_blocks.0.{bfl}.scale"), get(&format!("transformer_blocks.0.attn.{key}.weight"))));
        }
        for i in 0..2 {
            for (norm, key) in [("query_norm", "norm_q"), ("key_norm", "norm_k")] {
                let name = format!("single_transformer_blocks.{i}.attn.{key}.weight");
                out.push((format!("single_blocks.{i}.norm.{norm}.scale"), get(&name)));
            }
        }
        // Fusing merges 6 + 6 double-block and 2 × 8 single-block tensors into 2 + 2 and 2 × 2.
        assert_eq!(out.len(), w.len() - 20, "every diffusers tensor has its place");
        out
    }

    /// Write `tensors` under stable-diffusion.cpp's prefix, 2-D weights in `linear_type`.
    fn write_original(path: &Path, tensors: &[(String, Tensor)], linear_type: GgmlDType) {
        let specs: Vec<TensorSpec> = tensors
            .iter()
            .map(|(n, t)| TensorSpec {
                name: format!("model.diffusion_model.{n}"),
                shape: t.dims().to_vec(),
                dtype: if t.rank() == 2 && n.ends_with(".weight") { linear_type } else { GgmlDType::F32 },
            })
            .collect();
        write_gguf(path, &[], &specs, |i| Ok(QTensor::quantize(&tensors[i].1, specs[i].dtype)?)).unwrap();
    }

    #[test]
    fn flux_in_the_original_layout_reads_like_the_diffusers_layout() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let source = transformer_dir("flux_dev_tiny");
        let diffusers = candle_core::safetensors::load(source.join("diffusion_pytorch_model.safetensors"), &dev).unwrap();
        let original = to_original_layout(&diffusers);

        // Float GGUF: exactly the diffusers model.
        let f32_file = dir.path().join("bfl_f32.gguf");
        write_original(&f32_file, &original, GgmlDType::F32);
        let weights = GgufWeights::open(&f32_file).unwrap();
        assert!(weights.original_layout() && weights.architecture() == TransformerArchitecture::Flux);
        let reference = denoise(&flux(candle_nn::VarBuilder::from_tensors(diffusers, DType::F32, &dev)), 96, 32, 3);
        let from_original = denoise(&flux(weights.model_weights(DType::F32, &dev)), 96, 32, 3);
        assert!(relative_error(&from_original, &reference) < 1e-6);

        // q8_0: row blocks are quantized independently, so splitting the fused tensors gives the
        // blocks `stipple quantize` makes from the separate diffusers tensors — the same model.
        let q_original = dir.path().join("bfl_q8.gguf");
        write_original(&q_original, &original, GgmlDType::Q8_0);
        let q_diffusers = dir.path().join("diffusers_q8.gguf");
        quantize_transformer(&source, &q_diffusers, QuantType::Q8_0).unwrap();
        let a = denoise(&flux(GgufWeights::open(&q_original).unwrap().model_weights(DType::F32, &dev)), 96, 32, 3);
        let b = denoise(&flux(GgufWeights::open(&q_diffusers).unwrap().model_weights(DType::F32, &dev)), 96, 32, 3);
        assert_eq!(relative_error(&a, &b), 0.0);
    }

    #[test]
    fn foreign_gguf_files_are_named_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llm.gguf");
        let t = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap();
        let tensors = [("blk.0.attn_q.weight".to_string(), t)];
        write_original(&path, &tensors, GgmlDType::Q8_0);
        let err = GgufWeights::open(&path).err().unwrap().to_string();
        assert!(err.contains("not a FLUX or SD3 transformer") && err.contains("blk.0.attn_q.weight"), "{err}");

        let sd3 = dir.path().join("sd3.gguf");
        let tensors = [("joint_blocks.0.x_block.attn.qkv.weight".to_string(), Tensor::zeros((6, 32), DType::F32, &Device::Cpu).unwrap())];
        write_original(&sd3, &tensors, GgmlDType::F32);
        // Stability's SD3 layout is read (sd3_layout.rs); a file with only a fragment of it is
        // refused with what it lacks.
        let err = GgufWeights::open(&sd3).err().unwrap().to_string();
        assert!(err.contains("original-layout SD3 transformer lacks") && err.contains("pos_embed"), "{err}");
    }
}
