//! A diffusion transformer's weights in one file of its own (`stipple generate --transformer`):
//! GGUF or safetensors, in diffusers' layout or in the original ones (FLUX: Black Forest Labs'
//! single files, the community's GGUF files; SD3 / SD3.5: Stability's `joint_blocks` files), with
//! or without stable-diffusion.cpp's
//! `model.diffusion_model.` prefix — recognised by the tensor names, not the file name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use super::flux_layout::{self, RowSelect};
use super::sd3_layout;
use super::gguf::GgufFile;
use super::gguf_weights::GgufWeights;
use super::safetensors_file::SafetensorsFile;
use super::store::{StoredTensor, WeightStore};
use crate::layers::ModelWeights;
use crate::{Error, Result};

/// Prefixes some writers put before the transformer's names.
const PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// The transformer architecture a file holds, by its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformerArchitecture {
    Flux,
    Sd3,
}

impl TransformerArchitecture {
    pub fn name(self) -> &'static str {
        match self {
            TransformerArchitecture::Flux => "FLUX.1",
            TransformerArchitecture::Sd3 => "SD3",
        }
    }
}

/// How a file's tensors map to diffusers' names.
#[derive(Debug, Clone)]
pub(crate) struct TransformerLayout {
    pub architecture: TransformerArchitecture,
    /// Mapped from the original (BFL / Stability) layout.
    pub original: bool,
    /// diffusers name → stored name and rows.
    pub entries: BTreeMap<String, (String, RowSelect)>,
}

impl TransformerLayout {
    /// Recognise the layout of a file whose tensors are `names`; `rows_of(stored name)` gives a
    /// tensor's first dimension.
    pub fn recognise<'a>(
        path: &Path,
        names: impl Iterator<Item = &'a str> + Clone,
        rows_of: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<TransformerLayout> {
        let prefix = PREFIXES.into_iter().find(|p| names.clone().any(|k| k.starts_with(p))).unwrap_or("");
        let unprefixed = |name: &str| rows_of(&format!("{prefix}{name}"));
        let mut entries = BTreeMap::new();
        if unprefixed(flux_layout::MARKER).is_some() {
            for m in flux_layout::flux_original(&unprefixed)? {
                entries.insert(m.model, (format!("{prefix}{}", m.stored), m.rows));
            }
            return Ok(TransformerLayout { architecture: TransformerArchitecture::Flux, original: true, entries });
        }
        if unprefixed("transformer_blocks.0.attn.to_q.weight").is_some() {
            for name in names {
                if let Some(model) = name.strip_prefix(prefix) {
                    entries.insert(model.to_string(), (name.to_string(), RowSelect::All));
                }
            }
            let flux = unprefixed("x_embedder.weight").is_some();
            let architecture = if flux { TransformerArchitecture::Flux } else { TransformerArchitecture::Sd3 };
            return Ok(TransformerLayout { architecture, original: false, entries });
        }
        if unprefixed(sd3_layout::MARKER).is_some() {
            for m in sd3_layout::sd3_original(&unprefixed)? {
                entries.insert(m.model, (format!("{prefix}{}", m.stored), m.rows));
            }
            return Ok(TransformerLayout { architecture: TransformerArchitecture::Sd3, original: true, entries });
        }
        let sample: Vec<&str> = names.take(4).collect();
        Err(Error::invalid_file(
            path,
            format!(
                "not a FLUX or SD3 transformer (tensors like {}); Stipple reads transformers in diffusers' layout or \
                 the original ones (FLUX: `double_blocks.*`, SD3: `joint_blocks.*`)",
                sample.join(", ")
            ),
        ))
    }
}

/// The weights of a transformer file.
#[derive(Clone)]
enum Weights {
    Gguf(GgufWeights),
    Safetensors(WeightStore),
}

/// A transformer file, opened and its names mapped.
#[derive(Clone)]
pub struct TransformerFile {
    path: PathBuf,
    architecture: TransformerArchitecture,
    original: bool,
    weights: Weights,
}

impl TransformerFile {
    /// Open a GGUF or safetensors transformer file.
    pub fn open(path: &Path) -> Result<TransformerFile> {
        if GgufFile::is_gguf(path) {
            let weights = GgufWeights::open(path)?;
            return Ok(TransformerFile {
                path: path.to_path_buf(),
                architecture: weights.architecture(),
                original: weights.original_layout(),
                weights: Weights::Gguf(weights),
            });
        }
        let file = Arc::new(SafetensorsFile::open(path)?);
        let rows_of = |name: &str| file.info(name).map(|i| i.shape.first().copied().unwrap_or(1));
        let layout = TransformerLayout::recognise(path, file.tensors().keys().map(String::as_str), &rows_of)?;
        let mut store = WeightStore::new(format!("transformer weights in {}", path.display()));
        let index = store.add_file(file.clone());
        for (model, (stored, rows)) in &layout.entries {
            store.insert(model, StoredTensor { file: index, name: stored.clone(), transform: rows.transform() })?;
        }
        Ok(TransformerFile {
            path: path.to_path_buf(),
            architecture: layout.architecture,
            original: layout.original,
            weights: Weights::Safetensors(store),
        })
    }

    pub fn architecture(&self) -> TransformerArchitecture {
        self.architecture
    }

    /// For messages: "a FLUX.1 transformer in GGUF (44 F32, 36 Q8_0, original BFL layout)".
    pub fn description(&self) -> String {
        let (format, types) = match &self.weights {
            Weights::Gguf(g) => {
                let types: Vec<String> = g.type_counts().into_iter().map(|(t, n)| format!("{n} {t}")).collect();
                ("GGUF", types.join(", "))
            }
            Weights::Safetensors(s) => ("safetensors", format!("{} tensors", s.len())),
        };
        let layout = match (self.original, self.architecture) {
            (false, _) => "",
            (true, TransformerArchitecture::Flux) => ", original BFL layout",
            (true, TransformerArchitecture::Sd3) => ", Stability's original layout",
        };
        format!("a {} transformer in {format} ({types}{layout})", self.architecture.name())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor for compute in `dtype`, linear weights kept quantized or in their narrower
    /// stored float type.
    pub fn model_weights(&self, dtype: DType, device: &Device) -> ModelWeights {
        match &self.weights {
            Weights::Gguf(g) => g.model_weights(dtype, device),
            Weights::Safetensors(s) => ModelWeights::new(s.var_builder(dtype, device), Arc::new(s.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::gguf_weights::tests::to_original_layout;
    use crate::checkpoint::quantize::tests::{denoise, flux, relative_error, transformer_dir};
    use candle_core::Tensor;
    use std::collections::HashMap;

    /// BFL's release layout as bf16 safetensors (under sd.cpp's prefix) runs exactly like the
    /// diffusers model of the same rounded weights.
    #[test]
    fn original_layout_safetensors_read_like_diffusers() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let source = transformer_dir("flux_dev_tiny");
        let diffusers = candle_core::safetensors::load(source.join("diffusion_pytorch_model.safetensors"), &dev).unwrap();
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let original: HashMap<String, Tensor> =
            to_original_layout(&diffusers).iter().map(|(n, t)| (format!("model.diffusion_model.{n}"), bf16(t))).collect();
        let path = dir.path().join("flux1-dev.safetensors");
        candle_core::safetensors::save(&original, &path).unwrap();

        let file = TransformerFile::open(&path).unwrap();
        assert_eq!(file.architecture(), TransformerArchitecture::Flux);
        assert!(file.description().contains("original BFL layout"), "{}", file.description());
        let rounded: HashMap<String, Tensor> =
            diffusers.iter().map(|(n, t)| (n.clone(), bf16(t).to_dtype(DType::F32).unwrap())).collect();
        let reference = denoise(&flux(candle_nn::VarBuilder::from_tensors(rounded, DType::F32, &dev)), 96, 32, 5);
        let from_file = denoise(&flux(file.model_weights(DType::F32, &dev)), 96, 32, 5);
        assert_eq!(relative_error(&from_file, &reference), 0.0);
    }

    #[test]
    fn checkpoints_that_are_no_transformer_are_refused() {
        let te = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/pipelines/models/flux_dev_tiny/text_encoder/model.safetensors");
        let err = TransformerFile::open(&te).err().unwrap().to_string();
        assert!(err.contains("not a FLUX or SD3 transformer") && err.contains("model.safetensors"), "{err}");
    }
}
