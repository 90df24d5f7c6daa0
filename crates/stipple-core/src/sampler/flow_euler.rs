//! Euler integration of a flow-matching (rectified flow) model, which predicts the velocity
//! `noise - data`; diffusers' `FlowMatchEulerDiscreteScheduler` as FLUX and SD3 use it.

use super::{refuse_unsupported, NoiseSource, Sampler, StepOutput};
use crate::schedule::{flux_mu, np_linspace, SchedulerConfig};
use crate::{Error, Result};

/// How the sigma schedule is bent towards high noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlowShift {
    /// `s·σ / (1 + (s - 1)·σ)` (SD3: s = 3).
    Static(f64),
    /// FLUX: `e^mu / (e^mu + (1/σ - 1))`, `mu` from the image token count.
    Dynamic { mu: f64 },
}

pub struct FlowEuler {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    pub shift: FlowShift,
}

impl FlowEuler {
    /// `sigmas`: explicit sigmas as FluxPipeline passes them (`linspace(1, 1/n, n)`), or `None`
    /// for the scheduler's own spacing. `image_seq_len` is needed when the config turns on
    /// dynamic shifting.
    pub fn new(config: &SchedulerConfig, steps: usize, sigmas: Option<Vec<f64>>, image_seq_len: Option<usize>) -> Result<Self> {
        let mu = match (config.use_dynamic_shifting.unwrap_or(false), image_seq_len) {
            (false, _) => None,
            (true, Some(seq)) => Some(flux_mu(
                seq,
                config.base_image_seq_len.unwrap_or(256),
                config.max_image_seq_len.unwrap_or(4096),
                config.base_shift.unwrap_or(0.5),
                config.max_shift.unwrap_or(1.15),
            )),
            (true, None) => {
                return Err(Error::Unsupported(
                    "this model's scheduler uses dynamic shifting; the image token count is needed".into(),
                ))
            }
        };
        Self::with_mu(config, steps, sigmas, mu)
    }

    /// As [`FlowEuler::new`], with FLUX's shift exponent `mu` given directly.
    pub fn with_mu(config: &SchedulerConfig, steps: usize, sigmas: Option<Vec<f64>>, mu: Option<f64>) -> Result<Self> {
        refuse_unsupported(config)?;
        if config.use_karras_sigmas.unwrap_or(false)
            || config.use_exponential_sigmas.unwrap_or(false)
            || config.use_beta_sigmas.unwrap_or(false)
            || config.shift_terminal.is_some()
            || config.invert_sigmas.unwrap_or(false)
            || config.stochastic_sampling.unwrap_or(false)
        {
            return Err(Error::Unsupported(
                "flow matching with karras/exponential/beta sigmas, shift_terminal, invert_sigmas or stochastic sampling is not supported".into(),
            ));
        }
        if config.time_shift_type.as_deref().is_some_and(|t| t != "exponential") {
            return Err(Error::Unsupported("only the exponential time shift is supported".into()));
        }
        let train = config.train_steps() as f64;
        let shift = match (config.use_dynamic_shifting.unwrap_or(false), mu) {
            (true, Some(mu)) => FlowShift::Dynamic { mu },
            (true, None) => return Err(Error::Unsupported("dynamic shifting needs `mu`".into())),
            (false, _) => FlowShift::Static(config.shift.unwrap_or(1.0)),
        };

        let shifted: Vec<f32> = match sigmas {
            // Given sigmas are cast to float32 and shifted in float32 (numpy keeps float32 when
            // combined with Python floats).
            Some(s) => {
                if s.len() != steps {
                    return Err(Error::param("steps", format!("{} sigmas given for {steps} steps", s.len())));
                }
                s.iter().map(|&x| apply_shift_f32(shift, x as f32)).collect()
            }
            // The scheduler's own spacing runs in float64: linspace between the (already
            // statically shifted) training extremes, then the shift again.
            None => {
                let (sigma_max, sigma_min) = match shift {
                    FlowShift::Static(s) => {
                        let sh = |x: f32| (s as f32 * x) / (1.0 + (s - 1.0) as f32 * x);
                        (sh(1.0) as f64, sh((1.0 / train) as f32) as f64)
                    }
                    FlowShift::Dynamic { .. } => (1.0, (1.0 / train) as f32 as f64),
                };
                np_linspace(sigma_max * train, sigma_min * train, steps)
                    .into_iter()
                    .map(|t| apply_shift_f64(shift, t / train) as f32)
                    .collect()
            }
        };
        let timesteps = shifted.iter().map(|&s| (s * train as f32) as f64).collect();
        let mut sigmas = shifted;
        sigmas.push(0.0);
        Ok(FlowEuler { timesteps, sigmas, shift })
    }
}

fn apply_shift_f32(shift: FlowShift, s: f32) -> f32 {
    match shift {
        // Python computes `shift - 1` in float64 before numpy casts it to float32.
        FlowShift::Static(k) => (k as f32 * s) / (1.0 + (k - 1.0) as f32 * s),
        FlowShift::Dynamic { mu } => {
            let e = mu.exp() as f32;
            e / (e + (1.0 / s - 1.0))
        }
    }
}

fn apply_shift_f64(shift: FlowShift, s: f64) -> f64 {
    match shift {
        FlowShift::Static(k) => k * s / (1.0 + (k - 1.0) * s),
        FlowShift::Dynamic { mu } => mu.exp() / (mu.exp() + (1.0 / s - 1.0)),
    }
}

impl Sampler for FlowEuler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput> {
        let dt = self.sigmas[step + 1] - self.sigmas[step];
        let prev = sample.iter().zip(model_output).map(|(&x, &v)| x + dt * v).collect();
        Ok(StepOutput { prev_sample: prev, pred_x0: None })
    }

    /// Flow matching interpolates linearly: `σ·noise + (1 - σ)·x`.
    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        let s = self.sigmas[step];
        original.iter().zip(noise).map(|(&x, &n)| s * n + (1.0 - s) * x).collect()
    }
}
