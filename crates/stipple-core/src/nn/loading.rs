//! Reading a diffusers model folder (`config.json` + `diffusion_pytorch_model*.safetensors`).
//!
//! Opening the weights is isolated in [`open_safetensors`] so the checkpoint loader can provide
//! its own [`VarBuilder`] instead; the model constructors only ever see a `VarBuilder`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Parse a JSON config file into `T` (serde defaults fill absent keys).
pub fn read_json_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::missing_file(path, "a diffusers model folder needs its config.json next to the weights")
        }
        _ => Error::io(format!("reading {}", path.display()), e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::invalid_file(path, e.to_string()))
}

/// The weight files of a diffusers model folder: `diffusion_pytorch_model.safetensors`, the
/// shards listed by `diffusion_pytorch_model.safetensors.index.json`, or the `.fp16` variant
/// (converted to the requested dtype on load).
pub fn diffusers_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    const STEM: &str = "diffusion_pytorch_model";
    for variant in ["", ".fp16"] {
        let single = dir.join(format!("{STEM}{variant}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{STEM}{variant}.safetensors.index.json"));
        if index.is_file() {
            return shard_files(&index);
        }
    }
    Err(Error::missing_file(
        dir.join(format!("{STEM}.safetensors")),
        "the model folder has no safetensors weights (PyTorch .bin pickles are not read; convert them to safetensors)",
    ))
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let parsed: Index = read_json_config(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<&String> = parsed.weight_map.values().collect();
    let files: Vec<PathBuf> = names.into_iter().map(|n| dir.join(n)).collect();
    if files.is_empty() {
        return Err(Error::invalid_file(index, "weight_map lists no shard files"));
    }
    for f in &files {
        if !f.is_file() {
            return Err(Error::missing_file(f, format!("listed as a weight shard in {}", index.display())));
        }
    }
    Ok(files)
}

/// A [`VarBuilder`] over memory-mapped safetensors files, converting to `dtype` on access.
pub fn open_safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the files are mapped read-only; like every mmap user we rely on nobody truncating
    // them while the model is loading.
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|e| {
        let path = files.first().cloned().unwrap_or_default();
        Error::invalid_file(path, format!("cannot read safetensors weights: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_single_file_then_shards_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = diffusers_weight_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");

        std::fs::write(
            dir.path().join("diffusion_pytorch_model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors", "c": "s-1.safetensors"}}"#,
        )
        .unwrap();
        let err = diffusers_weight_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("s-1.safetensors"), "{err}");
        std::fs::write(dir.path().join("s-1.safetensors"), b"").unwrap();
        std::fs::write(dir.path().join("s-2.safetensors"), b"").unwrap();
        let files = diffusers_weight_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);

        std::fs::write(dir.path().join("diffusion_pytorch_model.safetensors"), b"").unwrap();
        let files = diffusers_weight_files(dir.path()).unwrap();
        assert_eq!(files, vec![dir.path().join("diffusion_pytorch_model.safetensors")]);
    }

    #[test]
    fn config_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let err = read_json_config::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::write(&p, "{not json").unwrap();
        let err = read_json_config::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(err.contains("invalid file") && err.contains("config.json"), "{err}");
    }
}
