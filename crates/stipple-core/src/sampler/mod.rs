//! Samplers: the update rules that turn a model prediction at one noise level into a sample at
//! the next. One file per sampler, all behind [`Sampler`], so the pipeline never matches on names.
//!
//! Samplers work on flat `f32` slices in the latent's row-major order. The update is elementwise
//! and cheap next to a network evaluation, and doing it on the host in plain `f32` keeps the
//! arithmetic in the same order and precision as diffusers' torch code (the reference vectors pin
//! trajectories to a float32 ulp or two).

mod ddim;
mod ddpm;
mod dpmpp_2m;
mod euler;
mod euler_ancestral;
mod flow_euler;
mod lcm;
mod noise;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpmpp_2m::DpmPp2m;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use flow_euler::{FlowEuler, FlowShift};
pub use lcm::Lcm;
pub use noise::{NoiseSource, ReplayNoise};

use std::fmt;
use std::str::FromStr;

use crate::schedule::{PredictionType, SchedulerConfig};
use crate::{Error, Result};

/// The result of one sampler step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The sample at the next (lower) noise level.
    pub prev_sample: Vec<f32>,
    /// The sampler's estimate of the clean sample, where it forms one.
    pub pred_x0: Option<Vec<f32>>,
}

/// One sampling algorithm, set up for a fixed number of steps.
pub trait Sampler: Send {
    /// The timestep handed to the denoiser at each step, in the scheduler's units
    /// (0..num_train_timesteps; `1000 * sigma` for flow matching).
    fn timesteps(&self) -> &[f64];
    /// Whether the timesteps are integers (DDPM-family discrete schedules).
    fn integer_timesteps(&self) -> bool {
        false
    }
    /// The noise levels per step plus the final one, for sigma-parameterised samplers.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
    /// The standard deviation of the initial noise (`latents = noise * init_noise_sigma`).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// Scale the sample before it enters the denoiser at `step` (Euler divides by
    /// `sqrt(sigma² + 1)`; most samplers leave it alone).
    fn scale_model_input(&self, sample: &[f32], _step: usize) -> Vec<f32> {
        sample.to_vec()
    }
    /// Advance from `sample` at `step` to the next step's sample. Steps are taken in order; a
    /// run may start past step 0 (img2img), never skip steps in between.
    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<StepOutput>;
    /// Noise a clean sample to the level the sampler expects at `step` (img2img and inpainting).
    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32>;
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }
}

/// The samplers Stipple offers, by the names the CLI and API use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    Ddpm,
    Ddim,
    Euler,
    EulerAncestral,
    Dpmpp2m,
    Dpmpp2mKarras,
    Lcm,
    FlowEuler,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 8] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Dpmpp2m,
        SamplerKind::Dpmpp2mKarras,
        SamplerKind::Lcm,
        SamplerKind::FlowEuler,
    ];

    /// The name used on the command line and in the API.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_a",
            SamplerKind::Dpmpp2m => "dpmpp_2m",
            SamplerKind::Dpmpp2mKarras => "dpmpp_2m_karras",
            SamplerKind::Lcm => "lcm",
            SamplerKind::FlowEuler => "flow_euler",
        }
    }

    /// The name AUTOMATIC1111's web UI writes in a PNG's `parameters` chunk.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "DDPM",
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerAncestral => "Euler a",
            SamplerKind::Dpmpp2m => "DPM++ 2M",
            SamplerKind::Dpmpp2mKarras => "DPM++ 2M Karras",
            SamplerKind::Lcm => "LCM",
            SamplerKind::FlowEuler => "Euler (flow matching)",
        }
    }

    /// Whether the sampler integrates a flow-matching (rectified flow) model rather than a
    /// DDPM-family one.
    pub fn is_flow(self) -> bool {
        matches!(self, SamplerKind::FlowEuler)
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace(['-', ' '], "_").replace("++", "pp");
        let kind = match norm.as_str() {
            "ddpm" => SamplerKind::Ddpm,
            "ddim" => SamplerKind::Ddim,
            "euler" => SamplerKind::Euler,
            "euler_a" | "euler_ancestral" => SamplerKind::EulerAncestral,
            "dpmpp_2m" | "dpm_solver" | "dpmsolver" => SamplerKind::Dpmpp2m,
            "dpmpp_2m_karras" => SamplerKind::Dpmpp2mKarras,
            "lcm" => SamplerKind::Lcm,
            "flow_euler" | "flow_match_euler" | "flow" => SamplerKind::FlowEuler,
            _ => {
                let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
                return Err(Error::param("sampler", format!("unknown sampler `{s}`; choose one of {}", names.join(", "))));
            }
        };
        Ok(kind)
    }
}

/// Options a sampler takes beyond the model's scheduler config.
#[derive(Debug, Clone, Copy, Default)]
pub struct SamplerOptions {
    /// DDIM's eta: 0 is deterministic DDIM, 1 matches DDPM's variance.
    pub eta: f32,
    /// Flow matching: the image token count for FLUX's dynamic shift (`mu`), when the
    /// config enables it.
    pub image_seq_len: Option<usize>,
    /// Flow matching: pass FLUX's `sigmas = linspace(1, 1/n, n)` instead of the scheduler's own.
    pub flux_sigmas: bool,
}

/// Build a sampler of `kind` for `steps` steps on a model trained with `config`.
pub fn build(kind: SamplerKind, config: &SchedulerConfig, steps: usize, options: SamplerOptions) -> Result<Box<dyn Sampler>> {
    if steps == 0 {
        return Err(Error::param("steps", "must be at least 1"));
    }
    Ok(match kind {
        SamplerKind::Ddpm => Box::new(Ddpm::new(config, steps)?),
        SamplerKind::Ddim => Box::new(Ddim::new(config, steps, options.eta)?),
        SamplerKind::Euler => Box::new(Euler::new(config, steps, false)?),
        SamplerKind::EulerAncestral => Box::new(EulerAncestral::new(config, steps)?),
        SamplerKind::Dpmpp2m => Box::new(DpmPp2m::new(config, steps, false)?),
        SamplerKind::Dpmpp2mKarras => Box::new(DpmPp2m::new(config, steps, true)?),
        SamplerKind::Lcm => Box::new(Lcm::new(config, steps)?),
        SamplerKind::FlowEuler => {
            let sigmas = options.flux_sigmas.then(|| crate::schedule::np_linspace(1.0, 1.0 / steps as f64, steps));
            Box::new(FlowEuler::new(config, steps, sigmas, options.image_seq_len)?)
        }
    })
}

/// `x0` from a model output under a DDPM-family parameterisation, in diffusers' op order.
pub(crate) fn pred_original(
    prediction: PredictionType,
    model_output: &[f32],
    sample: &[f32],
    alpha_prod_t: f32,
) -> Result<Vec<f32>> {
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sa, sb) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
    Ok(match prediction {
        PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&x, &e)| (x - sb * e) / sa).collect(),
        PredictionType::Sample => model_output.to_vec(),
        PredictionType::VPrediction => sample.iter().zip(model_output).map(|(&x, &v)| sa * x - sb * v).collect(),
        PredictionType::FlowPrediction => {
            return Err(Error::Unsupported("flow_prediction needs a flow-matching sampler (flow_euler)".into()))
        }
    })
}

/// Clamp `x0` to `[-range, range]` when the config asks for it (`clip_sample`).
pub(crate) fn clip_sample(x: &mut [f32], enabled: bool, range: f32) {
    if enabled {
        for v in x.iter_mut() {
            *v = v.clamp(-range, range);
        }
    }
}

/// Refuse config switches Stipple does not implement rather than silently ignoring them.
pub(crate) fn refuse_unsupported(config: &SchedulerConfig) -> Result<()> {
    if config.thresholding.unwrap_or(false) {
        return Err(Error::Unsupported("dynamic thresholding (`thresholding: true`) is not supported".into()));
    }
    Ok(())
}

/// `sqrt(ᾱ) x0 + sqrt(1 - ᾱ) noise`: forward diffusion to the level `ᾱ`.
pub(crate) fn noise_to_alpha(original: &[f32], noise: &[f32], alpha_prod: f32) -> Vec<f32> {
    let (sa, sb) = (alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt());
    original.iter().zip(noise).map(|(&x, &n)| sa * x + sb * n).collect()
}

#[cfg(test)]
mod tests;
