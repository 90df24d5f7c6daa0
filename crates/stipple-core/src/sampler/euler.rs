//! Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 2
//! without churn); diffusers' `EulerDiscreteScheduler`.

use super::{refuse_unsupported, NoiseSource, Sampler, StepOutput};
use crate::schedule::{
    interp_index, karras_sigmas, sigma_to_t, spaced_timesteps, DiscreteSchedule, PredictionType, SchedulerConfig,
    TimestepSpacing,
};
use crate::{Error, Result};

/// The sigma ladder shared by the Euler samplers.
pub(crate) struct SigmaLadder {
    pub timesteps: Vec<f64>,
    /// One sigma per step plus the final one (0, or sigma_min).
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

impl SigmaLadder {
    /// diffusers' Euler `set_timesteps`: spaced timesteps (as float32), sigmas interpolated
    /// linearly over the training sigmas in float64, optionally Karras-spaced.
    pub fn new(config: &SchedulerConfig, schedule: &DiscreteSchedule, steps: usize, karras: bool) -> Result<Self> {
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let mut timesteps: Vec<f64> = spaced_timesteps(spacing, schedule.len(), steps, config.offset())?
            .into_iter()
            .map(|t| t as f32 as f64)
            .collect();
        let train_sigmas = schedule.sigmas();
        let mut sigmas: Vec<f64> = match config.interpolation_type.as_deref().unwrap_or("linear") {
            "linear" => timesteps.iter().map(|&t| interp_index(t, &train_sigmas)).collect(),
            other => return Err(Error::Unsupported(format!("Euler interpolation_type `{other}` is not supported"))),
        };
        if karras {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            let sigma_min = config.sigma_min.unwrap_or(*sigmas.last().unwrap_or(&0.0));
            let sigma_max = config.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, steps);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64).collect();
        }
        let last = match config.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => 0.0,
            "sigma_min" => train_sigmas[0] as f64,
            other => return Err(Error::Unsupported(format!("final_sigmas_type `{other}` is not supported"))),
        };
        sigmas.push(last);
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        let max_sigma = sigmas.iter().cloned().fold(f32::MIN, f32::max);
        // diffusers: leading spacing starts from sqrt(sigma_max² + 1) (the noise is scaled as if
        // the sample were unit-variance data plus noise), the other spacings from sigma_max.
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(SigmaLadder { timesteps, sigmas, init_noise_sigma })
    }

    /// `sample / sqrt(sigma² + 1)`.
    pub fn scale_input(&self, sample: &[f32], step: usize) -> Vec<f32> {
        let sigma = self.sigmas[step];
        let denom = (sigma * sigma + 1.0).sqrt();
        sample.iter().map(|&x| x / denom).collect()
    }

    /// `original + sigma * noise`.
    pub fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        let sigma = self.sigmas[step];
        original.iter().zip(noise).map(|(&x, &n)| x + n * sigma).collect()
    }
}

/// `x0` from a model output in sigma parameterisation (diffusers' Euler op order).
pub(crate) fn sigma_pred_original(prediction: PredictionType, model_output: &[f32], sample: &[f32], sigma: f32) -> Result<Vec<f32>> {
    Ok(match prediction {
        PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&x, &e)| x - sigma * e).collect(),
        PredictionType::Sample => model_output.to_vec(),
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let c_skip = sigma * sigma + 1.0;
            model_output.iter().zip(sample).map(|(&v, &x)| v * c_out + x / c_skip).collect()
        }
        PredictionType::FlowPrediction => {
            return Err(Error::Unsupported("flow_prediction needs the flow_euler sampler".into()))
        }
    })
}

pub struct Euler {
    ladder: SigmaLadder,
    prediction: PredictionType,
}

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        refuse_unsupported(config)?;
        let schedule = DiscreteSchedule::from_config(config)?;
        let karras = karras || config.use_karras_sigmas.unwrap_or(false);
        Ok(Euler { ladder: SigmaLadder::new(config, &schedule, steps, karras)?, prediction: config.prediction() })
    }
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.ladder.timesteps
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.ladder.sigmas)
    }
    fn init_noise_sigma(&self) -> f32 {
        self.ladder.init_noise_sigma
    }
    fn scale_model_input(&self, sample: &[f32], step: usize) -> Vec<f32> {
        self.ladder.scale_input(sample, step)
    }

    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput> {
        // No churn (s_churn = 0, diffusers' default): sigma_hat = sigma.
        let sigma = self.ladder.sigmas[step];
        let x0 = sigma_pred_original(self.prediction, model_output, sample, sigma)?;
        let dt = self.ladder.sigmas[step + 1] - sigma;
        let prev = sample
            .iter()
            .zip(&x0)
            .map(|(&x, &p)| {
                let derivative = (x - p) / sigma;
                x + derivative * dt
            })
            .collect();
        Ok(StepOutput { prev_sample: prev, pred_x0: Some(x0) })
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        self.ladder.add_noise(original, noise, step)
    }
}
