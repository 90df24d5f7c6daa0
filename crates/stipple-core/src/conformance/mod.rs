//! Conformance against reference vectors produced by HuggingFace diffusers.
//!
//! Reads a `manifest.json` in the format of `testdata/vectors/README.md` (format 1), recomputes
//! every case with Stipple and judges it with the manifest's rule:
//! `max|a - b| <= abs + rel * max|b|`, per compared tensor, differences in f64.

mod clip_text_encoder;
mod dit_pipeline;
mod flux_transformer;
mod manifest;
mod scheduler_trajectory;
mod sd_pipeline;
mod sd3_transformer;
mod t5_encoder;
mod tokenizer;
mod unet;
mod vae_decode;
mod vae_encode;

pub use manifest::{Case, CaseSpec, Manifest, Tolerance};

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::Result;

/// Tensors computed for a case, by the names the manifest's `compare` list uses.
pub type Outputs = BTreeMap<String, Tensor>;

/// How one compared tensor fared.
#[derive(Debug, Clone)]
pub struct TensorVerdict {
    pub name: String,
    /// `max|a - b|`, or `None` when the tensor is missing or has the wrong shape.
    pub max_abs_err: Option<f64>,
    /// `abs + rel * max|b|`.
    pub allowance: f64,
    pub note: Option<String>,
}

impl TensorVerdict {
    pub fn passed(&self) -> bool {
        matches!(self.max_abs_err, Some(e) if e <= self.allowance)
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub id: String,
    pub kind: String,
    /// Set when the case could not be run at all (unsupported kind, load error, ...).
    pub error: Option<String>,
    pub tensors: Vec<TensorVerdict>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.tensors.is_empty() && self.tensors.iter().all(|t| t.passed())
    }
    /// The compared tensor with the largest error relative to its allowance.
    pub fn worst(&self) -> Option<&TensorVerdict> {
        self.tensors.iter().max_by(|a, b| {
            let ra = a.max_abs_err.map(|e| e / a.allowance).unwrap_or(f64::INFINITY);
            let rb = b.max_abs_err.map(|e| e / b.allowance).unwrap_or(f64::INFINITY);
            ra.total_cmp(&rb)
        })
    }
}

/// Compute one case's outputs with the engine.
pub fn compute(case: &Case) -> Result<Outputs> {
    match case.spec.kind.as_str() {
        "scheduler_trajectory" => scheduler_trajectory::run(case),
        "sd_pipeline" => sd_pipeline::run(case),
        "tokenizer" => tokenizer::run(case),
        "clip_text_encoder" => clip_text_encoder::run(case),
        "unet" => unet::run(case),
        "vae_encode" => vae_encode::run(case),
        "vae_decode" => vae_decode::run(case),
        "t5_encoder" => t5_encoder::run(case),
        "flux_transformer" => flux_transformer::run(case),
        "sd3_transformer" => sd3_transformer::run(case),
        "flux_pipeline" | "sd3_pipeline" => dit_pipeline::run(case),
        other => Err(crate::Error::Unsupported(format!("case kind `{other}` is not implemented yet"))),
    }
}

/// Judge computed outputs against the stored references.
pub fn judge(case: &Case, outputs: &Outputs) -> Result<Vec<TensorVerdict>> {
    let mut verdicts = Vec::new();
    for name in &case.spec.compare {
        let reference = case.tensor(name)?;
        let reference = reference.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let max_ref = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
        let allowance = case.spec.tolerance.abs + case.spec.tolerance.rel * max_ref;
        let expected_shape = case.tensor(name)?.dims().to_vec();
        let verdict = match outputs.get(name) {
            None => TensorVerdict { name: name.clone(), max_abs_err: None, allowance, note: Some("not computed".into()) },
            Some(t) if t.dims() != expected_shape.as_slice() => TensorVerdict {
                name: name.clone(),
                max_abs_err: None,
                allowance,
                note: Some(format!("shape {:?}, expected {:?}", t.dims(), expected_shape)),
            },
            Some(t) => {
                let got = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                let err = got
                    .iter()
                    .zip(&reference)
                    .fold(0f64, |m, (a, b)| if (a - b).is_nan() { f64::INFINITY } else { m.max((a - b).abs()) });
                TensorVerdict { name: name.clone(), max_abs_err: Some(err), allowance, note: None }
            }
        };
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// Load, compute and judge one case. Never fails: errors become part of the report.
pub fn run_case(root: &Path, spec: &CaseSpec) -> CaseReport {
    let mut report = CaseReport { id: spec.id.clone(), kind: spec.kind.clone(), error: None, tensors: Vec::new() };
    let result = Case::load(root, spec).and_then(|case| {
        let outputs = compute(&case)?;
        judge(&case, &outputs)
    });
    match result {
        Ok(t) => report.tensors = t,
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}
