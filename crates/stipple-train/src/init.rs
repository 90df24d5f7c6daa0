//! Seeded weight initialisation: a VarBuilder that creates each trainable variable from the
//! layer's initialisation hint with the run's own generator, so a seed fixes the initial weights
//! (candle's CPU generator cannot be seeded).

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::rng::SplitMix64;

/// Creates variables into `varmap`; ones already there are returned as they are (resumed runs
/// overwrite them from the checkpoint anyway).
struct SeededInit {
    varmap: VarMap,
    rng: Mutex<SplitMix64>,
}

/// A VarBuilder creating variables in `varmap` from `seed`.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64) -> VarBuilder<'static> {
    let backend = SeededInit { varmap: varmap.clone(), rng: Mutex::new(SplitMix64::new(seed)) };
    VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu)
}

fn draw(rng: &mut SplitMix64, n: usize, init: Init, shape: &Shape) -> Vec<f32> {
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| rng.uniform(lo, up) as f32).collect(),
        Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * rng.normal()) as f32).collect(),
        Init::Kaiming { dist, fan, non_linearity } => {
            let fan = match fan {
                FanInOut::FanIn | FanInOut::FanOut => fan.for_shape(shape).max(1),
            };
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
                }
            }
        }
    }
}

impl SimpleBackend for SeededInit {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(var) = data.get(name) {
            if var.shape() != &shape {
                candle_core::bail!("variable `{name}` exists with shape {:?}, asked for {:?}", var.shape(), shape);
            }
            return Ok(var.as_tensor().clone());
        }
        let values = draw(&mut self.rng.lock().expect("rng lock"), shape.elem_count(), init, &shape);
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the shape of `{name}` is needed to create it")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("varmap lock").contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64) -> Vec<f32> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed);
        vb.get_with_hints((3, 4), "w", Init::Uniform { lo: -1.0, up: 1.0 }).unwrap();
        vb.get_with_hints(5, "b", Init::Randn { mean: 0.0, stdev: 2.0 }).unwrap();
        vb.get_with_hints(2, "c", Init::Const(0.5)).unwrap();
        let data = varmap.data().lock().unwrap();
        ["w", "b", "c"].iter().flat_map(|k| data[*k].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    #[test]
    fn seed_fixes_weights_and_hints_are_followed() {
        let a = build(1);
        assert_eq!(a, build(1));
        assert_ne!(a, build(2));
        assert!(a[..12].iter().all(|v| v.abs() <= 1.0));
        assert_eq!(&a[17..], &[0.5, 0.5]);
    }
}
