//! `manifest.json` and the files of one case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub cases: Vec<CaseSpec>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CaseSpec {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub description: String,
    pub model: Option<String>,
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub inputs: Vec<String>,
    pub compare: Vec<String>,
    pub tolerance: Tolerance,
}

impl Manifest {
    /// Read `dir/manifest.json`, refusing other format versions.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::missing_file(&path, "give the folder that holds the reference vectors' manifest.json")
            }
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| Error::invalid_file(&path, e.to_string()))?;
        if manifest.format_version != 1 {
            return Err(Error::invalid_file(
                &path,
                format!("format_version {} is not supported (this runner reads format 1)", manifest.format_version),
            ));
        }
        Ok(manifest)
    }
}

/// A case with its tensors loaded (on the CPU, as stored).
pub struct Case {
    pub spec: CaseSpec,
    /// Absolute path of the case's model folder, if it has one.
    pub model_dir: Option<PathBuf>,
    pub tensors: BTreeMap<String, Tensor>,
    pub strings: Option<serde_json::Value>,
}

impl Case {
    pub fn load(root: &Path, spec: &CaseSpec) -> Result<Case> {
        let tensor_file = spec
            .files
            .get("tensors")
            .ok_or_else(|| Error::invalid_file(root.join("manifest.json"), format!("case {} has no tensors file", spec.id)))?;
        let tensor_path = root.join(tensor_file);
        if !tensor_path.exists() {
            return Err(Error::missing_file(&tensor_path, format!("listed by case {} in manifest.json", spec.id)));
        }
        let tensors: BTreeMap<String, Tensor> = candle_core::safetensors::load(&tensor_path, &Device::Cpu)
            .map_err(|e| Error::invalid_file(&tensor_path, e.to_string()))?
            .into_iter()
            .collect();
        let strings = match spec.files.get("strings") {
            Some(rel) => {
                let p = root.join(rel);
                let text = std::fs::read_to_string(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                Some(serde_json::from_str(&text).map_err(|e| Error::invalid_file(&p, e.to_string()))?)
            }
            None => None,
        };
        let model_dir = spec.model.as_ref().map(|m| root.join(m));
        Ok(Case { spec: spec.clone(), model_dir, tensors, strings })
    }

    /// A stored tensor by name.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::Unsupported(format!("case {} has no tensor `{name}`", self.spec.id))
        })
    }

    /// A parameter by key (`params[key]`).
    pub fn param(&self, key: &str) -> Result<&serde_json::Value> {
        self.spec
            .params
            .get(key)
            .ok_or_else(|| Error::Unsupported(format!("case {} has no param `{key}`", self.spec.id)))
    }

    /// The model folder; an error for cases without one.
    pub fn model_dir(&self) -> Result<&Path> {
        self.model_dir
            .as_deref()
            .ok_or_else(|| Error::Unsupported(format!("case {} has no model folder", self.spec.id)))
    }
}
