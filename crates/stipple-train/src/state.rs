//! Resumable training checkpoints: the weights, AdamW's moments, the EMA weights and the step,
//! in one safetensors file per stage (written beside, then renamed, so a crash never leaves a
//! half-written checkpoint).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use stipple_core::checkpoint::{write_safetensors, PlannedTensor, SafetensorsFile};
use stipple_core::{Error, Result};

use crate::optim::{AdamW, Ema, Params};

const PARTS: [&str; 4] = ["param", "adam_m", "adam_v", "ema"];

/// A stage's record so far: the loss of every step and the wall time spent, over all sessions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub losses: Vec<f32>,
    pub seconds: f64,
}

impl History {
    pub fn step(&self) -> usize {
        self.losses.len()
    }
}

/// Save a stage's state after `history.step()` completed steps.
pub fn save(path: &Path, params: &Params, adam: &AdamW, ema: &Ema, history: &History) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let values = params.values()?;
    let sources: [&Vec<Vec<f32>>; 4] = [&values, &adam.m, &adam.v, &ema.shadow];
    let mut plan = Vec::new();
    for part in PARTS {
        for (name, var) in params.names.iter().zip(&params.vars) {
            plan.push(PlannedTensor { name: format!("{part}/{name}"), dtype: DType::F32, shape: var.dims().to_vec() });
        }
    }
    let n = params.names.len();
    let metadata = BTreeMap::from([
        ("step".to_string(), history.step().to_string()),
        ("adam_t".to_string(), adam.t.to_string()),
        ("losses".to_string(), serde_json::to_string(&history.losses).unwrap_or_default()),
        ("seconds".to_string(), history.seconds.to_string()),
    ]);
    write_safetensors(path, &metadata, &plan, |i| {
        let data = &sources[i / n][i % n];
        Ok(Tensor::from_slice(data, params.vars[i % n].shape(), &Device::Cpu)?)
    })
}

/// Load a stage's state into `params`, `adam` and `ema`. Errors name the file.
pub fn load(path: &Path, params: &Params, adam: &mut AdamW, ema: &mut Ema) -> Result<History> {
    let file = SafetensorsFile::open(path)?;
    let meta = |key: &str| -> Result<usize> {
        file.metadata()
            .get(key)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::invalid_file(path, format!("not a Stipple training checkpoint (no `{key}`); delete it to start over")))
    };
    let (step, t) = (meta("step")?, meta("adam_t")?);
    let losses: Vec<f32> = file.metadata().get("losses").and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
    if losses.len() != step {
        return Err(Error::invalid_file(path, "its loss history does not match its step; delete it to start over"));
    }
    let seconds = file.metadata().get("seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let mut parts: Vec<Vec<Vec<f32>>> = Vec::new();
    for part in PARTS {
        let mut tensors = Vec::new();
        for (name, var) in params.names.iter().zip(&params.vars) {
            let key = format!("{part}/{name}");
            let t = file.load(&key, &Device::Cpu).map_err(|_| {
                Error::invalid_file(path, format!("has no `{key}`: it was written for another model shape; delete it to start over"))
            })?;
            if t.dims() != var.dims() {
                return Err(Error::invalid_file(
                    path,
                    format!("`{key}` is {:?} but the model has {:?}; delete the checkpoint to start over", t.dims(), var.dims()),
                ));
            }
            tensors.push(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
        parts.push(tensors);
    }
    let mut parts = parts.into_iter();
    params.set_values(&parts.next().unwrap_or_default())?;
    adam.m = parts.next().unwrap_or_default();
    adam.v = parts.next().unwrap_or_default();
    adam.t = t;
    ema.shadow = parts.next().unwrap_or_default();
    Ok(History { losses, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{Init, VarBuilder, VarMap};

    fn params(seed_value: f64) -> (VarMap, Params) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        vb.get_with_hints((2, 3), "a.weight", Init::Const(seed_value)).unwrap();
        vb.get_with_hints(3, "a.bias", Init::Const(-seed_value)).unwrap();
        let p = Params::of(&varmap);
        (varmap, p)
    }

    #[test]
    fn round_trip_and_shape_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage.safetensors");
        let (_m1, p1) = params(1.5);
        let mut adam = AdamW::new(&p1);
        adam.m[0][1] = 7.0;
        adam.v[1][2] = 3.0;
        adam.t = 12;
        let ema = Ema { shadow: vec![vec![0.25; 3], vec![0.5; 6]] };
        let history = History { losses: vec![1.0, 0.5], seconds: 3.5 };
        save(&path, &p1, &adam, &ema, &history).unwrap();

        let (_m2, p2) = params(0.0);
        let mut adam2 = AdamW::new(&p2);
        let mut ema2 = Ema::new(&p2).unwrap();
        let r = load(&path, &p2, &mut adam2, &mut ema2).unwrap();
        assert_eq!((adam2.t, &r), (12, &history));
        assert_eq!(p2.values().unwrap(), p1.values().unwrap());
        assert_eq!((adam2.m[0][1], adam2.v[1][2]), (7.0, 3.0));
        assert_eq!(ema2.shadow, ema.shadow);

        let varmap = VarMap::new();
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).get((4, 3), "a.weight").unwrap();
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).get(3, "a.bias").unwrap();
        let p3 = Params::of(&varmap);
        let mut adam3 = AdamW::new(&p3);
        let mut ema3 = Ema::new(&p3).unwrap();
        let err = load(&path, &p3, &mut adam3, &mut ema3).err().unwrap().to_string();
        assert!(err.contains("stage.safetensors") && err.contains("delete"), "{err}");
    }
}
