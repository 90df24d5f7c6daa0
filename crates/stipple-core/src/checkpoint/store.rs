//! [`WeightStore`]: the tensors of one model, by the names the model asks for, backed by one or
//! more validated safetensors files — a `candle_nn` VarBuilder backend.
//!
//! Each model name points at a stored tensor (file and stored name) and a [`Transform`] that
//! turns the stored tensor into the one the model wants. Files in the diffusers layout map every
//! name to itself; single-file checkpoints in the original layout rename, split (OpenCLIP's fused
//! q/k/v projection), reshape (1x1 convolutions read as linear layers) or transpose.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::safetensors_file::{SafetensorsFile, TensorInfo};
use crate::layers::{LinearSource, LinearWeight};
use crate::{Error, Result};

/// How a model tensor is derived from a stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Identity,
    /// Rows `start..start + len` of the first dimension (one part of a fused projection).
    Rows { start: usize, len: usize },
    /// The same elements in another shape (a `[o, i, 1, 1]` convolution as a `[o, i]` linear).
    Reshape(Vec<usize>),
    /// A 2-D transpose.
    Transpose,
    /// The second half of the rows, then the first (BFL's `shift, scale` modulation read as
    /// diffusers' `scale, shift`).
    SwapHalves,
}

impl Transform {
    /// The shape the transform produces from a stored shape, or why it cannot apply.
    pub fn output_shape(&self, stored: &[usize]) -> std::result::Result<Vec<usize>, String> {
        match self {
            Transform::Identity => Ok(stored.to_vec()),
            Transform::Rows { start, len } => match stored.split_first() {
                Some((&rows, rest)) if start + len <= rows => Ok([&[*len], rest].concat()),
                _ => Err(format!("cannot take rows {start}..{} of a tensor of shape {stored:?}", start + len)),
            },
            Transform::Reshape(shape) => {
                if shape.iter().product::<usize>() == stored.iter().product::<usize>() {
                    Ok(shape.clone())
                } else {
                    Err(format!("cannot reshape a tensor of shape {stored:?} to {shape:?}"))
                }
            }
            Transform::Transpose => match stored {
                [a, b] => Ok(vec![*b, *a]),
                _ => Err(format!("cannot transpose a tensor of shape {stored:?} (not 2-D)")),
            },
            Transform::SwapHalves => match stored.first() {
                Some(rows) if rows % 2 == 0 => Ok(stored.to_vec()),
                _ => Err(format!("cannot swap the halves of a tensor of shape {stored:?}")),
            },
        }
    }
}

/// Where a model tensor comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Index into the store's files.
    pub file: usize,
    /// The tensor's name in that file.
    pub name: String,
    pub transform: Transform,
}

/// The weights of one model (UNet, VAE, a text encoder ...) under the names the model uses.
#[derive(Clone)]
pub struct WeightStore {
    /// What these weights are, for messages ("unet weights in /m/unet").
    description: String,
    files: Vec<Arc<SafetensorsFile>>,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    source: StoredTensor,
    /// Shape after the transform (what the model gets).
    shape: Vec<usize>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("description", &self.description)
            .field("files", &self.files.iter().map(|f| f.path()).collect::<Vec<_>>())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl WeightStore {
    /// An empty store; `description` says what the weights are in error messages.
    pub fn new(description: impl Into<String>) -> WeightStore {
        WeightStore { description: description.into(), files: Vec::new(), entries: BTreeMap::new() }
    }

    /// Every tensor of `file` under its stored name.
    pub fn whole_file(file: Arc<SafetensorsFile>, description: impl Into<String>) -> Result<WeightStore> {
        let mut store = WeightStore::new(description);
        let index = store.add_file(file.clone());
        for name in file.tensors().keys() {
            store.insert(name, StoredTensor { file: index, name: name.clone(), transform: Transform::Identity })?;
        }
        Ok(store)
    }

    /// Add a backing file; returns its index for [`StoredTensor::file`].
    pub fn add_file(&mut self, file: Arc<SafetensorsFile>) -> usize {
        if let Some(i) = self.files.iter().position(|f| Arc::ptr_eq(f, &file)) {
            return i;
        }
        self.files.push(file);
        self.files.len() - 1
    }

    /// Make `model_name` refer to `source`. Fails if the stored tensor is missing, the transform
    /// does not fit its shape, or the name is already taken.
    pub fn insert(&mut self, model_name: &str, source: StoredTensor) -> Result<()> {
        let file = self.files.get(source.file).ok_or_else(|| {
            Error::Unsupported(format!("internal: file index {} out of range in {}", source.file, self.description))
        })?;
        let info = file.info(&source.name).ok_or_else(|| {
            Error::invalid_file(file.path(), format!("has no tensor `{}` (needed for `{model_name}`)", source.name))
        })?;
        let shape = source.transform.output_shape(&info.shape).map_err(|why| {
            Error::invalid_file(file.path(), format!("tensor `{}` cannot provide `{model_name}`: {why}", source.name))
        })?;
        if let Some(existing) = self.entries.get(model_name) {
            return Err(Error::invalid_file(
                file.path(),
                format!(
                    "both `{}` and `{}` provide `{model_name}`: the file holds the same weights twice",
                    existing.source.name, source.name
                ),
            ));
        }
        self.entries.insert(model_name.to_string(), Entry { source, shape });
        Ok(())
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The model names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape the model gets for `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The stored dtype of `name`.
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.entries.get(name).and_then(|e| self.stored_info(&e.source)).map(|(_, info)| info.dtype)
    }

    /// The file and stored tensor behind `name`.
    pub fn source(&self, name: &str) -> Option<(&Path, &StoredTensor)> {
        let entry = self.entries.get(name)?;
        Some((self.files[entry.source.file].path(), &entry.source))
    }

    fn stored_info(&self, source: &StoredTensor) -> Option<(&SafetensorsFile, &TensorInfo)> {
        let file = self.files.get(source.file)?;
        Some((file, file.info(&source.name)?))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| {
            Error::Unsupported(format!(
                "tensor `{name}` is not in the {} ({} tensors): the weights do not match the model's config \
                 (check that config and weights come from the same model)",
                self.description,
                self.entries.len()
            ))
        })
    }

    /// Tensor `name` in `dtype` on `device`, with the model's shape. Candle tensors own their
    /// storage, so this is one copy out of the mapped file (straight to the device's memory);
    /// nothing but this tensor's bytes is read.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let (file, info) = self.stored_info(&entry.source).expect("validated by insert");
        let bytes = file.bytes(info);
        let tensor = match &entry.source.transform {
            Transform::Identity | Transform::Reshape(_) => {
                Tensor::from_raw_buffer(bytes, info.dtype, &entry.shape, device)?
            }
            Transform::Rows { start, len } => {
                // Slice the mapped bytes: the rows of a row-major tensor are contiguous.
                let row_bytes = bytes.len() / info.shape[0].max(1);
                let rows = &bytes[start * row_bytes..(start + len) * row_bytes];
                Tensor::from_raw_buffer(rows, info.dtype, &entry.shape, device)?
            }
            Transform::Transpose => {
                Tensor::from_raw_buffer(bytes, info.dtype, &info.shape, device)?.t()?.contiguous()?
            }
            Transform::SwapHalves => {
                let half = bytes.len() / 2;
                let swapped = [&bytes[half..], &bytes[..half]].concat();
                Tensor::from_raw_buffer(&swapped, info.dtype, &entry.shape, device)?
            }
        };
        Ok(tensor.to_dtype(dtype)?)
    }

    /// Like [`load`](Self::load), first checking the shape the model's config implies.
    pub fn load_with_shape(&self, name: &str, expected: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.entry(name)?;
        if entry.shape != expected {
            let (path, source) = self.source(name).expect("entry exists");
            let stored_as =
                if source.name == name { String::new() } else { format!(" (stored as `{}`)", source.name) };
            return Err(Error::invalid_file(
                path,
                format!(
                    "tensor `{name}`{stored_as} has shape {:?} but the model's config expects {expected:?}: the weights \
                     do not belong to this config (check that config.json and the weights come from the same model)",
                    entry.shape
                ),
            ));
        }
        self.load(name, dtype, device)
    }

    /// A VarBuilder over these weights, converting to `dtype` on `device` as tensors are requested.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

/// Linear weights stored in a narrower float type than the compute dtype (bf16 / f16 checkpoints
/// run in f32) stay in their stored dtype, widened per product: half the memory of converting
/// them up front.
impl LinearSource for WeightStore {
    fn linear_weight(
        &self,
        path: &str,
        out_dim: usize,
        in_dim: usize,
        compute: DType,
        device: &Device,
    ) -> Result<Option<LinearWeight>> {
        let name = format!("{path}.weight");
        match self.stored_dtype(&name) {
            Some(stored) if stored.is_float() && stored.size_in_bytes() < compute.size_in_bytes() => {
                Ok(Some(LinearWeight::Stored(self.load_with_shape(&name, &[out_dim, in_dim], stored, device)?)))
            }
            _ => Ok(None),
        }
    }
}

fn to_candle(e: Error) -> candle_core::Error {
    match e {
        Error::Tensor(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

impl SimpleBackend for WeightStore {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load_with_shape(name, s.dims(), dtype, dev).map_err(to_candle)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev).map_err(to_candle)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::safetensors_file::test_files::write_f32;

    fn store_with(transforms: &[(&str, &str, Transform)]) -> (tempfile::TempDir, WeightStore) {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let path = write_f32(dir.path(), "w.safetensors", &[("fused", &[6, 2], &values), ("conv", &[3, 4, 1, 1], &values)], &[]);
        let file = Arc::new(SafetensorsFile::open(&path).unwrap());
        let mut store = WeightStore::new("test weights");
        let index = store.add_file(file);
        for (model, stored, transform) in transforms {
            store.insert(model, StoredTensor { file: index, name: stored.to_string(), transform: transform.clone() }).unwrap();
        }
        (dir, store)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn transforms_produce_the_right_elements() {
        let (_dir, store) = store_with(&[
            ("k", "fused", Transform::Rows { start: 2, len: 2 }),
            ("lin", "conv", Transform::Reshape(vec![3, 4])),
            ("t", "fused", Transform::Transpose),
            ("same", "fused", Transform::Identity),
            ("swapped", "fused", Transform::SwapHalves),
        ]);
        let k = store.load("k", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(k.dims(), &[2, 2]);
        assert_eq!(values(&k), vec![4., 5., 6., 7.]);
        assert_eq!(store.shape("lin"), Some(&[3usize, 4][..]));
        let t = store.load("t", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 6]);
        assert_eq!(values(&t)[..3], [0., 2., 4.]);
        let h = store.load("same", DType::F16, &Device::Cpu).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        let s = store.load("swapped", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(values(&s), [6., 7., 8., 9., 10., 11., 0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn var_builder_checks_shapes_against_the_config() {
        let (_dir, store) = store_with(&[("lin", "conv", Transform::Reshape(vec![3, 4]))]);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        assert_eq!(vb.get((3, 4), "lin").unwrap().dims(), &[3, 4]);
        let err = vb.get((4, 3), "lin").unwrap_err().to_string();
        assert!(err.contains("`lin`") && err.contains("(stored as `conv`)") && err.contains("[3, 4]") && err.contains("[4, 3]"), "{err}");
        assert!(err.contains("w.safetensors"), "{err}");
        let err = vb.get(3, "absent").unwrap_err().to_string();
        assert!(err.contains("`absent`") && err.contains("test weights"), "{err}");
        assert!(vb.contains_tensor("lin") && !vb.contains_tensor("absent"));
    }

    /// A bf16 checkpoint run in f32 keeps its linear weights in bf16 and computes exactly what the
    /// f32 model of the rounded weights computes.
    #[test]
    fn narrow_linear_weights_stay_narrow_and_compute_in_f32() {
        use crate::checkpoint::quantize::tests::{denoise, flux, relative_error, transformer_dir};
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let source = transformer_dir("flux_dev_tiny");
        let f32_weights = candle_core::safetensors::load(source.join("diffusion_pytorch_model.safetensors"), &dev).unwrap();
        let bf16: std::collections::HashMap<String, Tensor> =
            f32_weights.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap())).collect();
        candle_core::safetensors::save(&bf16, dir.path().join("diffusion_pytorch_model.safetensors")).unwrap();
        std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();

        let component = crate::checkpoint::open_component(dir.path()).unwrap();
        let weights = component.model_weights(DType::F32, &dev);
        let layer = weights.pp("proj_out").linear(32, 64).unwrap();
        assert!(matches!(layer.weight(), LinearWeight::Stored(w) if w.dtype() == DType::BF16));
        let rounded: std::collections::HashMap<String, Tensor> =
            bf16.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap())).collect();
        let reference = denoise(&flux(VarBuilder::from_tensors(rounded, DType::F32, &dev)), 96, 32, 4);
        let narrow = denoise(&flux(weights), 96, 32, 4);
        assert_eq!(relative_error(&narrow, &reference), 0.0);
    }

    #[test]
    fn insert_refuses_transforms_that_do_not_fit() {
        let (_dir, mut store) = store_with(&[]);
        let bad = [
            StoredTensor { file: 0, name: "fused".into(), transform: Transform::Rows { start: 4, len: 4 } },
            StoredTensor { file: 0, name: "conv".into(), transform: Transform::Transpose },
            StoredTensor { file: 0, name: "conv".into(), transform: Transform::Reshape(vec![5]) },
            StoredTensor { file: 0, name: "nothing".into(), transform: Transform::Identity },
        ];
        for source in bad {
            let err = store.insert("x", source).unwrap_err().to_string();
            assert!(err.contains("w.safetensors"), "{err}");
        }
        store.insert("x", StoredTensor { file: 0, name: "conv".into(), transform: Transform::Identity }).unwrap();
        let err = store.insert("x", StoredTensor { file: 0, name: "fused".into(), transform: Transform::Identity }).unwrap_err();
        assert!(err.to_string().contains("both `conv` and `fused`"), "{err}");
    }
}
