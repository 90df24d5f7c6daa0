//! Where stochastic samplers get their noise: a seeded generator for real runs, or stored
//! tensors to replay a reference trajectory exactly.

use crate::{Error, Result};

/// A supply of standard-normal noise, drawn one sample-sized tensor at a time.
pub trait NoiseSource {
    /// Draw `len` standard-normal values for sampler step `step`.
    fn draw(&mut self, step: usize, len: usize) -> Result<Vec<f32>>;
    /// Draw `len` values before sampling starts (initial latents, img2img noise), in the order
    /// the pipeline needs them.
    fn draw_initial(&mut self, len: usize) -> Result<Vec<f32>>;
}

/// The seeded generator: every draw continues one torch-compatible stream, in the order
/// diffusers draws from its `generator` (initial latents first, then per-step noise), so the same
/// seed gives the same image as diffusers.
impl NoiseSource for crate::rng::TorchRng {
    fn draw(&mut self, _step: usize, len: usize) -> Result<Vec<f32>> {
        Ok(self.randn(len))
    }
    fn draw_initial(&mut self, len: usize) -> Result<Vec<f32>> {
        Ok(self.randn(len))
    }
}

/// Replays stored draws: during step `i` the draw is `noise[j]` for the `j` with
/// `steps[j] == i` (the reference vectors' `noise` / `noise_steps`).
#[derive(Debug, Clone, Default)]
pub struct ReplayNoise {
    draws: Vec<(usize, Vec<f32>)>,
    initial: std::collections::VecDeque<Vec<f32>>,
}

impl ReplayNoise {
    pub fn new(draws: Vec<(usize, Vec<f32>)>) -> Self {
        ReplayNoise { draws, initial: Default::default() }
    }
    /// Also replay these draws, in order, before sampling starts.
    pub fn with_initial(mut self, initial: Vec<Vec<f32>>) -> Self {
        self.initial = initial.into();
        self
    }
    /// A source that has nothing to give: for deterministic samplers.
    pub fn none() -> Self {
        ReplayNoise::default()
    }
}

impl NoiseSource for ReplayNoise {
    fn draw(&mut self, step: usize, len: usize) -> Result<Vec<f32>> {
        let draw = self
            .draws
            .iter()
            .find(|(s, _)| *s == step)
            .ok_or_else(|| Error::Unsupported(format!("no stored noise for sampler step {step}")))?;
        if draw.1.len() != len {
            return Err(Error::Unsupported(format!(
                "stored noise for step {step} has {} values, the sample has {len}",
                draw.1.len()
            )));
        }
        Ok(draw.1.clone())
    }

    fn draw_initial(&mut self, len: usize) -> Result<Vec<f32>> {
        let draw = self.initial.pop_front().ok_or_else(|| Error::Unsupported("no stored initial noise left".into()))?;
        if draw.len() != len {
            return Err(Error::Unsupported(format!("stored initial noise has {} values, needed {len}", draw.len())));
        }
        Ok(draw)
    }
}
