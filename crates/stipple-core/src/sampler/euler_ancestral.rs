//! Euler ancestral: an Euler step down to `sigma_down`, then fresh noise up to the next sigma;
//! diffusers' `EulerAncestralDiscreteScheduler`.

use super::euler::{sigma_pred_original, SigmaLadder};
use super::{refuse_unsupported, NoiseSource, Sampler, StepOutput};
use crate::schedule::{DiscreteSchedule, PredictionType, SchedulerConfig};
use crate::{Error, Result};

pub struct EulerAncestral {
    ladder: SigmaLadder,
    prediction: PredictionType,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        refuse_unsupported(config)?;
        if config.prediction() == PredictionType::Sample {
            // diffusers raises here too.
            return Err(Error::Unsupported("Euler ancestral does not support prediction_type `sample`".into()));
        }
        let schedule = DiscreteSchedule::from_config(config)?;
        // Euler ancestral always ends at sigma 0 and never uses Karras sigmas.
        let cfg = SchedulerConfig { final_sigmas_type: None, use_karras_sigmas: None, interpolation_type: None, ..config.clone() };
        Ok(EulerAncestral { ladder: SigmaLadder::new(&cfg, &schedule, steps, false)?, prediction: config.prediction() })
    }
}

impl Sampler for EulerAncestral {
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

    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<StepOutput> {
        let sigma_from = self.ladder.sigmas[step];
        let sigma_to = self.ladder.sigmas[step + 1];
        let x0 = sigma_pred_original(self.prediction, model_output, sample, sigma_from)?;
        let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma_from;
        let z = noise.draw(step, sample.len())?;
        let prev = sample
            .iter()
            .zip(&x0)
            .zip(&z)
            .map(|((&x, &p), &n)| {
                let derivative = (x - p) / sigma_from;
                (x + derivative * dt) + n * sigma_up
            })
            .collect();
        Ok(StepOutput { prev_sample: prev, pred_x0: Some(x0) })
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        self.ladder.add_noise(original, noise, step)
    }
}
