//! Latent consistency model sampling (Luo et al. 2023): each step jumps to a consistency-model
//! estimate of the clean sample and re-noises it to the next timestep; diffusers' `LCMScheduler`.

use super::{clip_sample, noise_to_alpha, pred_original, refuse_unsupported, NoiseSource, Sampler, StepOutput};
use crate::schedule::{DiscreteSchedule, PredictionType, SchedulerConfig};
use crate::{Error, Result};

pub struct Lcm {
    schedule: DiscreteSchedule,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    final_alpha: f32,
    timestep_scaling: f32,
    clip: bool,
    clip_range: f32,
}

impl Lcm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        refuse_unsupported(config)?;
        let schedule = DiscreteSchedule::from_config(config)?;
        let train = schedule.len();
        let original_steps = config.original_inference_steps.unwrap_or(50);
        if original_steps == 0 || original_steps > train {
            return Err(Error::Unsupported(format!("original_inference_steps {original_steps} must be in 1..={train}")));
        }
        // The distillation schedule: every k-th training step, k = train // original_steps.
        let k = train / original_steps;
        let origin: Vec<i64> = (1..=original_steps as i64).rev().map(|i| i * k as i64 - 1).collect();
        if steps > origin.len() {
            return Err(Error::param(
                "steps",
                format!("LCM supports at most {} steps for this model (original_inference_steps)", origin.len()),
            ));
        }
        // np.floor(np.linspace(0, len, n, endpoint=False))
        let timesteps = (0..steps)
            .map(|i| {
                let idx = (i as f64 * origin.len() as f64 / steps as f64).floor() as usize;
                origin[idx] as f64
            })
            .collect();
        Ok(Lcm {
            final_alpha: if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { schedule.alphas_cumprod[0] },
            schedule,
            timesteps,
            prediction: config.prediction(),
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
            clip: config.clip_sample.unwrap_or(false),
            clip_range: config.clip_sample_range.unwrap_or(1.0) as f32,
        })
    }
}

impl Sampler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn integer_timesteps(&self) -> bool {
        true
    }

    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<StepOutput> {
        let t = self.timesteps[step] as i64;
        let last = step + 1 == self.timesteps.len();
        let prev_t = if last { t } else { self.timesteps[step + 1] as i64 };
        let alpha_prod_t = self.schedule.alpha_at(t, self.final_alpha);
        let alpha_prod_t_prev = self.schedule.alpha_at(prev_t, self.final_alpha);
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;

        // Boundary-condition scalings c_skip, c_out with sigma_data = 0.5.
        let scaled_t = t as f32 * self.timestep_scaling;
        let c_skip = 0.25 / (scaled_t * scaled_t + 0.25);
        let c_out = scaled_t / (scaled_t * scaled_t + 0.25).sqrt();

        let mut x0 = pred_original(self.prediction, model_output, sample, alpha_prod_t)?;
        clip_sample(&mut x0, self.clip, self.clip_range);
        let denoised: Vec<f32> = x0.iter().zip(sample).map(|(&p, &x)| c_out * p + c_skip * x).collect();
        let prev = if last {
            denoised.clone()
        } else {
            let z = noise.draw(step, sample.len())?;
            let (sa, sb) = (alpha_prod_t_prev.sqrt(), beta_prod_t_prev.sqrt());
            denoised.iter().zip(&z).map(|(&d, &n)| sa * d + sb * n).collect()
        };
        Ok(StepOutput { prev_sample: prev, pred_x0: Some(denoised) })
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        noise_to_alpha(original, noise, self.schedule.alpha_at(self.timesteps[step] as i64, self.final_alpha))
    }
}
