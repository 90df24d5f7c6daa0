//! DDPM (Ho et al. 2020): ancestral sampling with the posterior variance, as diffusers'
//! `DDPMScheduler`.

use super::{clip_sample, noise_to_alpha, pred_original, refuse_unsupported, NoiseSource, Sampler, StepOutput};
use crate::schedule::{spaced_timesteps, DiscreteSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
}

pub struct Ddpm {
    schedule: DiscreteSchedule,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    variance: VarianceType,
    clip: bool,
    clip_range: f32,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        refuse_unsupported(config)?;
        let schedule = DiscreteSchedule::from_config(config)?;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let timesteps = spaced_timesteps(spacing, schedule.len(), steps, config.offset())?;
        let variance = match config.variance_type.as_deref().unwrap_or("fixed_small") {
            "fixed_small" => VarianceType::FixedSmall,
            "fixed_small_log" => VarianceType::FixedSmallLog,
            "fixed_large" => VarianceType::FixedLarge,
            other => return Err(Error::Unsupported(format!("DDPM variance_type `{other}` is not supported"))),
        };
        Ok(Ddpm {
            schedule,
            timesteps,
            prediction: config.prediction(),
            variance,
            clip: config.clip_sample.unwrap_or(true),
            clip_range: config.clip_sample_range.unwrap_or(1.0) as f32,
        })
    }

    /// The timestep after `step` (-1 past the last one), as DDPM walks its own list.
    fn prev_timestep(&self, step: usize) -> i64 {
        self.timesteps.get(step + 1).map(|&t| t as i64).unwrap_or(-1)
    }
}

impl Sampler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn integer_timesteps(&self) -> bool {
        true
    }

    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<StepOutput> {
        let t = self.timesteps[step] as i64;
        let prev_t = self.prev_timestep(step);
        let alpha_prod_t = self.schedule.alpha_at(t, 1.0);
        let alpha_prod_t_prev = self.schedule.alpha_at(prev_t, 1.0);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        let mut x0 = pred_original(self.prediction, model_output, sample, alpha_prod_t)?;
        clip_sample(&mut x0, self.clip, self.clip_range);

        let x0_coeff = (alpha_prod_t_prev.sqrt() * current_beta_t) / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mut prev: Vec<f32> = x0.iter().zip(sample).map(|(&p, &x)| x0_coeff * p + sample_coeff * x).collect();

        if t > 0 {
            let z = noise.draw(step, sample.len())?;
            // The posterior variance, clamped away from zero as diffusers does.
            let var = ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
            let scale = match self.variance {
                VarianceType::FixedSmall => var.sqrt(),
                VarianceType::FixedSmallLog => (0.5 * var.ln()).exp(),
                VarianceType::FixedLarge => current_beta_t.sqrt(),
            };
            for (p, n) in prev.iter_mut().zip(&z) {
                *p += scale * n;
            }
        }
        Ok(StepOutput { prev_sample: prev, pred_x0: Some(x0) })
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        noise_to_alpha(original, noise, self.schedule.alpha_at(self.timesteps[step] as i64, 1.0))
    }
}
