//! DDIM (Song et al. 2021): a non-Markovian sampler that is deterministic at eta 0 and
//! reaches DDPM's quality in far fewer steps; diffusers' `DDIMScheduler`.

use super::{clip_sample, noise_to_alpha, pred_original, refuse_unsupported, NoiseSource, Sampler, StepOutput};
use crate::schedule::{spaced_timesteps, DiscreteSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::{Error, Result};

pub struct Ddim {
    schedule: DiscreteSchedule,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    /// `ᾱ` used past the last step: 1 with `set_alpha_to_one`, else `ᾱ[0]`.
    final_alpha: f32,
    /// diffusers steps back by `num_train_timesteps // n` whatever the spacing.
    stride: i64,
    eta: f32,
    clip: bool,
    clip_range: f32,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize, eta: f32) -> Result<Self> {
        refuse_unsupported(config)?;
        if !eta.is_finite() || eta < 0.0 {
            return Err(Error::param("eta", format!("must be a finite number >= 0, got {eta}")));
        }
        let schedule = DiscreteSchedule::from_config(config)?;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let timesteps = spaced_timesteps(spacing, schedule.len(), steps, config.offset())?;
        let final_alpha = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { schedule.alphas_cumprod[0] };
        Ok(Ddim {
            stride: (schedule.len() / steps) as i64,
            schedule,
            timesteps,
            prediction: config.prediction(),
            final_alpha,
            eta,
            clip: config.clip_sample.unwrap_or(true),
            clip_range: config.clip_sample_range.unwrap_or(1.0) as f32,
        })
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn integer_timesteps(&self) -> bool {
        true
    }

    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<StepOutput> {
        let t = self.timesteps[step] as i64;
        let prev_t = t - self.stride;
        let alpha_prod_t = self.schedule.alpha_at(t, self.final_alpha);
        let alpha_prod_t_prev = self.schedule.alpha_at(prev_t, self.final_alpha);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;

        let mut x0 = pred_original(self.prediction, model_output, sample, alpha_prod_t)?;
        let (sa, sb) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        let eps: Vec<f32> = match self.prediction {
            PredictionType::Epsilon => model_output.to_vec(),
            PredictionType::Sample => sample.iter().zip(&x0).map(|(&x, &p)| (x - sa * p) / sb).collect(),
            PredictionType::VPrediction => model_output.iter().zip(sample).map(|(&v, &x)| sa * v + sb * x).collect(),
            PredictionType::FlowPrediction => unreachable!("pred_original refuses flow_prediction"),
        };
        clip_sample(&mut x0, self.clip, self.clip_range);

        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let dir_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let x0_coeff = alpha_prod_t_prev.sqrt();
        let mut prev: Vec<f32> = x0.iter().zip(&eps).map(|(&p, &e)| x0_coeff * p + dir_coeff * e).collect();
        if self.eta > 0.0 {
            let z = noise.draw(step, sample.len())?;
            for (p, n) in prev.iter_mut().zip(&z) {
                *p += std_dev_t * n;
            }
        }
        Ok(StepOutput { prev_sample: prev, pred_x0: Some(x0) })
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        noise_to_alpha(original, noise, self.schedule.alpha_at(self.timesteps[step] as i64, self.final_alpha))
    }
}
