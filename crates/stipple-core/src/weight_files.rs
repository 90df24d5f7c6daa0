//! The weight files of one model folder, whole (`model.safetensors`) or sharded
//! (`model.safetensors.index.json` + the shards it names), opened as one `VarBuilder`.
//!
//! The transformers' and T5's only access to weight files, so the checkpoint loader can take its place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::{Error, Result};

/// `{stem}.safetensors` in `dir`, else the shards listed by `{stem}.safetensors.index.json`.
/// `what` says in errors which component the folder should hold.
pub(crate) fn safetensors_files(dir: &Path, stem: &str, what: &str) -> Result<Vec<PathBuf>> {
    let whole = dir.join(format!("{stem}.safetensors"));
    if whole.is_file() {
        return Ok(vec![whole]);
    }
    let index_path = dir.join(format!("{stem}.safetensors.index.json"));
    if !index_path.is_file() {
        return Err(Error::missing_file(
            whole,
            format!("{what}: the folder must hold {stem}.safetensors or {stem}.safetensors.index.json with its shards"),
        ));
    }

    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text =
        std::fs::read_to_string(&index_path).map_err(|e| Error::io(format!("reading {}", index_path.display()), e))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| Error::invalid_file(&index_path, e.to_string()))?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    if shards.is_empty() {
        return Err(Error::invalid_file(&index_path, "weight_map lists no shard files"));
    }
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        // Shards live next to the index; a name that climbs out of the folder is not a shard.
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(Error::invalid_file(&index_path, format!("shard name `{shard}` is not a file name")));
        }
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(Error::missing_file(path, format!("listed in {}", index_path.display())));
        }
        files.push(path);
    }
    Ok(files)
}

/// The weights of `files`, converted to `dtype` on `device` as they are read.
pub(crate) fn var_builder(files: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the files are memory-mapped; they must not be modified while the model is loaded,
    // the same contract every safetensors loader has.
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|e| {
        let path = files.first().cloned().unwrap_or_default();
        Error::invalid_file(path, e.to_string())
    })
}

/// `config.json` of a model folder as text; `what` says in errors which component it should be.
pub(crate) fn read_config(dir: &Path, what: &str) -> Result<(String, PathBuf)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::missing_file(&path, format!("{what}: the folder must hold config.json and its weights"))
        }
        _ => Error::io(format!("reading {}", path.display()), e),
    })?;
    Ok((text, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_file_wins_and_shards_come_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("m.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#,
        )
        .unwrap();
        let err = safetensors_files(d, "m", "test").unwrap_err();
        assert!(matches!(err, Error::MissingFile { .. }) && err.to_string().contains("m-1.safetensors"), "{err}");

        std::fs::write(d.join("m-1.safetensors"), b"").unwrap();
        std::fs::write(d.join("m-2.safetensors"), b"").unwrap();
        let files = safetensors_files(d, "m", "test").unwrap();
        assert_eq!(files, vec![d.join("m-1.safetensors"), d.join("m-2.safetensors")]);

        std::fs::write(d.join("m.safetensors"), b"").unwrap();
        assert_eq!(safetensors_files(d, "m", "test").unwrap(), vec![d.join("m.safetensors")]);
    }

    #[test]
    fn missing_weights_and_escaping_shards_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = safetensors_files(dir.path(), "model", "the T5 encoder").unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("T5"), "{err}");

        std::fs::write(dir.path().join("model.safetensors.index.json"), r#"{"weight_map": {"a": "../x.safetensors"}}"#)
            .unwrap();
        let err = safetensors_files(dir.path(), "model", "t").unwrap_err().to_string();
        assert!(err.contains("../x.safetensors"), "{err}");
    }
}
