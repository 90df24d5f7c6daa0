//! AdamW with global-norm gradient clipping, the learning-rate schedule, and an exponential
//! moving average of the weights. State lives in plain `f32` vectors, one per parameter in name
//! order, so it can be checkpointed and restored exactly.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use stipple_core::{Error, Result};

use crate::config::Optimisation;

/// The trainable parameters of one stage, in name order.
pub struct Params {
    pub names: Vec<String>,
    pub vars: Vec<Var>,
}

impl Params {
    pub fn of(varmap: &VarMap) -> Params {
        let data = varmap.data().lock().expect("varmap lock");
        let mut entries: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, vars) = entries.into_iter().unzip();
        Params { names, vars }
    }

    /// Every parameter's values, flattened.
    pub fn values(&self) -> Result<Vec<Vec<f32>>> {
        self.vars.iter().map(|v| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?)).collect()
    }

    pub fn set_values(&self, values: &[Vec<f32>]) -> Result<()> {
        for (var, data) in self.vars.iter().zip(values) {
            var.set(&Tensor::from_slice(data, var.shape(), var.device())?)?;
        }
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }
}

/// `lr` at `step` (0-based): linear warm-up, then cosine decay to `final_lr_fraction · lr`.
pub fn learning_rate(o: &Optimisation, step: usize) -> f64 {
    if step < o.warmup_steps {
        return o.learning_rate * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let span = o.steps.saturating_sub(o.warmup_steps).max(1) as f64;
    let progress = ((step - o.warmup_steps) as f64 / span).min(1.0);
    let floor = o.final_lr_fraction;
    o.learning_rate * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// AdamW state.
pub struct AdamW {
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Updates taken so far.
    pub t: usize,
    decays: Vec<bool>,
}

impl AdamW {
    pub fn new(params: &Params) -> AdamW {
        let zeros = || params.vars.iter().map(|v| vec![0f32; v.elem_count()]).collect::<Vec<_>>();
        // Decay weight matrices and kernels only, as is usual for transformers.
        let decays = params.vars.iter().zip(&params.names).map(|(v, n)| v.rank() >= 2 && !n.contains("embedding")).collect();
        AdamW { m: zeros(), v: zeros(), t: 0, decays }
    }

    /// One update from `grads`; returns the gradient norm before clipping. Parameters without a
    /// gradient (unused this step) are left alone.
    pub fn step(&mut self, params: &Params, grads: &GradStore, o: &Optimisation, lr: f64) -> Result<f64> {
        let grads: Vec<Option<Vec<f32>>> = params
            .vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose())
            .collect::<candle_core::Result<_>>()?;
        let norm = grads.iter().flatten().flat_map(|g| g.iter()).map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        if !norm.is_finite() {
            return Err(Error::Unsupported(format!(
                "the gradient became {norm} at update {}; lower the learning rate in the training config",
                self.t + 1
            )));
        }
        let clip = if norm > o.max_grad_norm { (o.max_grad_norm / norm) as f32 } else { 1.0 };
        self.t += 1;
        let (b1, b2) = (o.beta1 as f32, o.beta2 as f32);
        let bias1 = 1.0 - o.beta1.powi(self.t as i32);
        let bias2 = 1.0 - o.beta2.powi(self.t as i32);
        let step_size = (lr / bias1) as f32;
        let bias2_sqrt = bias2.sqrt() as f32;
        for (i, (var, g)) in params.vars.iter().zip(&grads).enumerate() {
            let Some(g) = g else { continue };
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let decay = if self.decays[i] { 1.0 - (lr * o.weight_decay) as f32 } else { 1.0 };
            for (((p, m), v), &g) in p.iter_mut().zip(&mut self.m[i]).zip(&mut self.v[i]).zip(g) {
                let g = g * clip;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p = *p * decay - step_size * *m / ((*v).sqrt() / bias2_sqrt + 1e-8);
            }
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(norm)
    }
}

/// Exponential moving average of the weights, with the usual warm-up
/// `decay_t = min(decay, (1 + t) / (10 + t))` so early averages are not dominated by the init.
pub struct Ema {
    pub shadow: Vec<Vec<f32>>,
}

impl Ema {
    pub fn new(params: &Params) -> Result<Ema> {
        Ok(Ema { shadow: params.values()? })
    }

    pub fn update(&mut self, params: &Params, decay: f64, t: usize) -> Result<()> {
        let d = decay.min((1.0 + t as f64) / (10.0 + t as f64)) as f32;
        for (shadow, var) in self.shadow.iter_mut().zip(&params.vars) {
            let p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            shadow.iter_mut().zip(&p).for_each(|(s, &p)| *s = d * *s + (1.0 - d) * p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn optim() -> Optimisation {
        Optimisation {
            steps: 100,
            batch_size: 1,
            learning_rate: 0.1,
            final_lr_fraction: 0.1,
            warmup_steps: 10,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            max_grad_norm: 1e9,
            ema_decay: 0.9,
            checkpoint_every: 10,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let o = optim();
        assert!((learning_rate(&o, 0) - 0.01).abs() < 1e-12);
        assert!((learning_rate(&o, 9) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&o, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&o, 100) - 0.01).abs() < 1e-9);
        assert!(learning_rate(&o, 50) < learning_rate(&o, 30));
    }

    #[test]
    fn minimises_a_quadratic_and_first_step_has_adam_size() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let w = vb.get_with_hints((2, 2), "w", candle_nn::Init::Const(3.0)).unwrap();
        let params = Params::of(&varmap);
        let mut adam = AdamW::new(&params);
        let mut o = optim();
        o.warmup_steps = 0;
        let loss = |w: &Tensor| w.sqr().unwrap().sum_all().unwrap();
        let grads = loss(&w).backward().unwrap();
        adam.step(&params, &grads, &o, 0.1).unwrap();
        // Adam's first step moves every coordinate by lr regardless of the gradient's size.
        let after: Vec<f32> = params.values().unwrap()[0].clone();
        assert!(after.iter().all(|&x| (x - 2.9).abs() < 1e-5), "{after:?}");
        for step in 1..300 {
            let w = params.vars[0].as_tensor();
            let grads = loss(w).backward().unwrap();
            adam.step(&params, &grads, &o, learning_rate(&o, step)).unwrap();
        }
        let final_loss: f32 = loss(params.vars[0].as_tensor()).to_scalar().unwrap();
        assert!(final_loss < 1e-2, "{final_loss}");
    }

    #[test]
    fn clipping_and_ema() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let w = vb.get_with_hints(4, "b", candle_nn::Init::Const(1.0)).unwrap();
        let params = Params::of(&varmap);
        let mut ema = Ema::new(&params).unwrap();
        let mut adam = AdamW::new(&params);
        let mut o = optim();
        o.max_grad_norm = 0.5;
        let grads = (w.sum_all().unwrap() * 100.0).unwrap().backward().unwrap();
        let norm = adam.step(&params, &grads, &o, 0.1).unwrap();
        assert!((norm - 200.0).abs() < 1e-3);
        // The first EMA update uses decay 1/10.
        ema.update(&params, 0.99, 0).unwrap();
        let p = params.values().unwrap()[0][0];
        assert!((ema.shadow[0][0] - (0.1 * 1.0 + 0.9 * p)).abs() < 1e-6);
    }
}
