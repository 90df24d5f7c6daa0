//! Where stochastic samplers get their noise: a seeded generator for real runs, or stored
//! tensors to replay a reference trajectory exactly.

use crate::{Error, Result};

/// A supply of standard-normal noise, drawn one sample-sized tensor at a time.
pub trait NoiseSource {
    /// Draw `len` standard-normal values for sampler step `step`.
    fn draw(&mut self, step: usize, len: usize) -> Result<Vec<f32>>;
}

/// Replays stored draws: during step `i` the draw is `noise[j]` for the `j` with
/// `steps[j] == i` (the reference vectors' `noise` / `noise_steps`).
#[derive(Debug, Clone, Default)]
pub struct ReplayNoise {
    draws: Vec<(usize, Vec<f32>)>,
}

impl ReplayNoise {
    pub fn new(draws: Vec<(usize, Vec<f32>)>) -> Self {
        ReplayNoise { draws }
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
}
