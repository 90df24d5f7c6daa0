//! Text-to-image, image-to-image and inpainting on the engine's traits: encode the prompt, draw
//! seeded noise, run the sampler loop with batched classifier-free guidance, decode.
//!
//! The loop follows diffusers' Stable Diffusion pipelines step for step (same order of random
//! draws from one seeded generator, same float32 arithmetic), so a seed gives the same image.

use candle_core::{DType, Device, Tensor};

use crate::guidance::Guidance;
use crate::image_io::RgbImage;
use crate::model::{Autoencoder, Denoiser, GuidanceMode, ImageInfo, TextEncoder};
use crate::sampler::{build, NoiseSource, Sampler, SamplerKind, SamplerOptions};
use crate::schedule::SchedulerConfig;
use crate::{Error, Result};

/// Largest accepted image side, in pixels: bounds memory for any request.
pub const MAX_SIDE: usize = 4096;
/// Most sampler steps accepted.
pub const MAX_STEPS: usize = 1000;

/// The networks and schedule of one model, ready to generate.
pub struct Pipeline {
    pub text_encoder: Box<dyn TextEncoder>,
    pub denoiser: Box<dyn Denoiser>,
    pub autoencoder: Box<dyn Autoencoder>,
    /// The model's training noise schedule (diffusers `scheduler/scheduler_config.json`).
    pub scheduler: SchedulerConfig,
    pub device: Device,
    /// Settings the model works best with, used where a request leaves them out.
    pub defaults: ModelDefaults,
}

/// A model's preferred settings, and the conventions of the diffusers pipeline it ships with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelDefaults {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// Classifier-free guidance scale, or for guidance-distilled models (FLUX.1-dev) the scale
    /// the network embeds; ignored by unguided ones (FLUX.1-schnell).
    pub cfg_scale: f32,
    pub sampler: SamplerKind,
    /// Flow-matching samplers step through FluxPipeline's `sigmas = linspace(1, 1/n, n)` rather
    /// than the scheduler's own spacing (FLUX models: true; SD3: false).
    pub flux_sigmas: bool,
}

/// An image to start from (img2img), optionally with a mask of the region to repaint (inpainting).
#[derive(Debug, Clone)]
pub struct InitImage {
    /// `[1, 3, H, W]` in [-1, 1].
    pub image: Tensor,
    /// How much of the schedule to run over the image: 1 repaints fully, 0 keeps it.
    pub strength: f32,
    /// `[1, 1, H, W]`, 1 where the image is repainted and 0 where it is kept.
    pub mask: Option<Tensor>,
}

/// One generation.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub cfg_scale: f32,
    pub sampler: SamplerKind,
    /// DDIM's eta (0 = deterministic).
    pub eta: f32,
    pub init: Option<InitImage>,
}

/// What the progress callback sees after each step.
pub struct StepEvent<'a> {
    /// 0-based index of the step just taken among the steps this run takes.
    pub step: usize,
    /// Number of steps this run takes (fewer than requested for img2img).
    pub total: usize,
    /// The denoiser's timestep at this step.
    pub timestep: f64,
    /// The batch the denoiser saw (`[uncond, cond]` rows under guidance) and what it returned.
    pub denoiser_input: &'a Tensor,
    pub denoiser_output: &'a Tensor,
    /// The guided prediction handed to the sampler.
    pub guided: &'a [f32],
    /// Latents after the step, `[1, C, h, w]` row-major.
    pub latents: &'a [f32],
    /// The sampler's estimate of the final latents, where it has one (for previews).
    pub pred_x0: Option<&'a [f32]>,
    pub latent_shape: [usize; 4],
}

/// The result of a generation.
pub struct Output {
    /// `[1, 3, H, W]`, the decoder's output before clamping.
    pub decoded: Tensor,
    pub image: RgbImage,
    /// Final latents, `[1, C, h, w]` row-major.
    pub latents: Vec<f32>,
}

/// The result of the callback: go on, or stop the run with [`Error::Cancelled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

impl Pipeline {
    /// Check a request against the model and the engine's bounds. Errors name the parameter.
    pub fn validate(&self, req: &Request) -> Result<()> {
        let f = self.autoencoder.downsample_factor() * self.denoiser.latent_multiple();
        for (param, v) in [("width", req.width), ("height", req.height)] {
            if v == 0 || v > MAX_SIDE {
                return Err(Error::param(param, format!("must be between {f} and {MAX_SIDE} pixels, got {v}")));
            }
            if v % f != 0 {
                return Err(Error::param(param, format!("must be a multiple of {f} for this model, got {v}")));
            }
        }
        if req.steps == 0 || req.steps > MAX_STEPS {
            return Err(Error::param("steps", format!("must be between 1 and {MAX_STEPS}, got {}", req.steps)));
        }
        Guidance::new(req.cfg_scale)?;
        if !req.eta.is_finite() || req.eta < 0.0 {
            return Err(Error::param("eta", format!("must be a finite number >= 0, got {}", req.eta)));
        }
        if let Some(init) = &req.init {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return Err(Error::param("strength", format!("must be in (0, 1], got {}", init.strength)));
            }
            let (_, c, h, w) = init.image.dims4()?;
            if c != 3 || (h, w) != (req.height, req.width) {
                return Err(Error::param("init-image", format!("must be {}x{} RGB, got {w}x{h} with {c} channels", req.width, req.height)));
            }
            if let Some(m) = &init.mask {
                let (_, mc, mh, mw) = m.dims4()?;
                if mc != 1 || (mh, mw) != (req.height, req.width) {
                    return Err(Error::param("mask", format!("must be {}x{} single-channel, got {mw}x{mh}", req.width, req.height)));
                }
            }
        }
        Ok(())
    }

    /// Generate one image. `noise` supplies every random draw (a seeded
    /// [`crate::rng::TorchRng`] in real runs); `progress` is called after each step and may cancel.
    pub fn generate(
        &self,
        req: &Request,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(&StepEvent) -> Flow,
    ) -> Result<Output> {
        self.validate(req)?;
        let mode = self.denoiser.guidance_mode();
        // Only classifier-free guidance needs the unconditional pass; distilled and unguided
        // networks see the prompt alone.
        let guidance = match mode {
            GuidanceMode::ClassifierFree => Guidance::new(req.cfg_scale)?,
            GuidanceMode::Distilled | GuidanceMode::Unguided => Guidance::new(1.0)?,
        };
        let latent_c = self.autoencoder.latent_channels();
        let factor = self.autoencoder.downsample_factor();
        let (lh, lw) = (req.height / factor, req.width / factor);
        let shape = [1, latent_c, lh, lw];
        let numel = latent_c * lh * lw;

        // Prompt embeddings: [negative, prompt] in one batch under guidance.
        let cond = if guidance.needs_unconditional() {
            self.text_encoder.encode_for_guidance(&req.negative_prompt, &req.prompt)?
        } else {
            self.text_encoder.encode(&[&req.prompt])?
        };

        let mut sampler = self.sampler(req)?;
        let n = sampler.num_steps();

        // Starting latents: pure noise, or the init image noised to the first step's level.
        let (start, mut latents, inpaint) = match &req.init {
            None => {
                let z = noise.draw_initial(numel)?;
                let s = sampler.init_noise_sigma();
                (0, z.iter().map(|&v| v * s).collect::<Vec<f32>>(), None)
            }
            Some(init) => {
                // As diffusers' img2img: run the last floor(n * strength) steps.
                let init_steps = ((n as f64 * init.strength as f64) as usize).min(n);
                if init_steps == 0 {
                    return Err(Error::param(
                        "strength",
                        format!("{} with {n} steps runs no step at all; raise --strength or --steps", init.strength),
                    ));
                }
                let start = n - init_steps;
                let image = init.image.to_device(&self.device)?;
                let full_inpaint = init.mask.is_some() && init.strength >= 1.0;
                let mask_aware = self.denoiser.in_channels() == 2 * latent_c + 1;
                // The random draws follow diffusers' order: the image's posterior sample (skipped
                // when a mask-aware UNet repaints from pure noise), the noise, then the masked image's
                // posterior sample (drawn for every inpainting run, used by mask-aware UNets only).
                let image_latents: Vec<f32> = if full_inpaint && mask_aware {
                    Vec::new()
                } else {
                    let posterior = self.latent_tensor(noise.draw_initial(numel)?, shape)?;
                    self.autoencoder.encode(&image, &posterior)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?
                };
                let z = noise.draw_initial(numel)?;
                let latents = if full_inpaint {
                    // Full-strength inpainting starts from pure noise.
                    z.iter().map(|&v| v * sampler.init_noise_sigma()).collect()
                } else {
                    sampler.add_noise(&image_latents, &z, start)
                };
                let inpaint = match &init.mask {
                    Some(mask) => Some(self.prepare_inpaint(init, mask, image_latents, z, noise, shape, mask_aware)?),
                    None => None,
                };
                (start, latents, inpaint)
            }
        };

        let info = ImageInfo {
            original_size: (req.height, req.width),
            crop_top_left: (0, 0),
            target_size: (req.height, req.width),
            guidance: (mode == GuidanceMode::Distilled).then_some(req.cfg_scale),
        };
        let rows = guidance.batch_factor();
        let timesteps = sampler.timesteps().to_vec();
        for (k, i) in (start..n).enumerate() {
            let t = timesteps[i];
            let model_in = sampler.scale_model_input(&latents, i);
            let x = self.latent_tensor(model_in, shape)?;
            let x = if let Some(ip) = &inpaint { ip.extend_input(&x)? } else { x };
            let x = if rows > 1 { Tensor::cat(&vec![&x; rows], 0)? } else { x };
            let t_batch = Tensor::from_vec(vec![t as f32; rows], rows, &self.device)?;
            let out = self.denoiser.forward(&x, &t_batch, &cond, &info)?.to_dtype(DType::F32)?;
            let guided = if rows > 1 {
                let u: Vec<f32> = out.get(0)?.flatten_all()?.to_vec1()?;
                let c: Vec<f32> = out.get(1)?.flatten_all()?.to_vec1()?;
                guidance.combine(&u, &c)
            } else {
                out.flatten_all()?.to_vec1()?
            };
            let step = sampler.step(&guided, i, &latents, noise)?;
            latents = step.prev_sample;
            if let Some(ip) = &inpaint {
                ip.blend(&mut latents, sampler.as_ref(), i, n);
            }
            let ev = StepEvent {
                step: k,
                total: n - start,
                timestep: t,
                denoiser_input: &x,
                denoiser_output: &out,
                guided: &guided,
                latents: &latents,
                pred_x0: step.pred_x0.as_deref(),
                latent_shape: shape,
            };
            if progress(&ev) == Flow::Cancel {
                return Err(Error::Cancelled);
            }
        }

        let decoded = self.autoencoder.decode(&self.latent_tensor(latents.clone(), shape)?)?.to_dtype(DType::F32)?;
        let image = RgbImage::from_decoded(&decoded)?;
        Ok(Output { decoded, image, latents })
    }

    /// The sampler a request runs with, set up the way the model's diffusers pipeline sets up its
    /// scheduler.
    pub fn sampler(&self, req: &Request) -> Result<Box<dyn Sampler>> {
        let factor = self.autoencoder.downsample_factor();
        let patch = self.denoiser.latent_multiple().max(1);
        let options = SamplerOptions {
            eta: req.eta,
            // Dynamic shifting depends on the transformer's image token count.
            image_seq_len: Some((req.height / factor / patch).max(1) * (req.width / factor / patch).max(1)),
            flux_sigmas: req.sampler.is_flow() && self.defaults.flux_sigmas,
        };
        build(req.sampler, &self.scheduler, req.steps, options)
    }

    fn latent_tensor(&self, data: Vec<f32>, shape: [usize; 4]) -> Result<Tensor> {
        Ok(Tensor::from_vec(data, shape.to_vec(), &self.device)?)
    }

    /// Inpainting inputs: the latent-resolution mask and, for mask-aware (9-channel) UNets, the
    /// mask and masked-image latents they take as extra input channels.
    #[allow(clippy::too_many_arguments)]
    fn prepare_inpaint(
        &self,
        init: &InitImage,
        mask: &Tensor,
        image_latents: Vec<f32>,
        noise_drawn: Vec<f32>,
        noise: &mut dyn NoiseSource,
        shape: [usize; 4],
        mask_aware: bool,
    ) -> Result<Inpaint> {
        let [_, c, lh, lw] = shape;
        let mask = mask.to_device(&self.device)?.to_dtype(DType::F32)?;
        // Nearest-neighbour downsampling to the latent grid, as torch's default `interpolate`.
        let latent_mask = mask.upsample_nearest2d(lh, lw)?;
        let mask_values: Vec<f32> = latent_mask.flatten_all()?.to_vec1()?;
        let per_channel: Vec<f32> = (0..c).flat_map(|_| mask_values.iter().copied()).collect();
        let posterior = self.latent_tensor(noise.draw_initial(c * lh * lw)?, shape)?;
        let extra = if mask_aware {
            let keep = mask.lt(0.5f32)?.to_dtype(DType::F32)?;
            let masked_image = init.image.to_device(&self.device)?.broadcast_mul(&keep)?;
            let masked_latents = self.autoencoder.encode(&masked_image, &posterior)?.to_dtype(DType::F32)?;
            Some(Tensor::cat(&[&latent_mask, &masked_latents], 1)?)
        } else {
            None
        };
        Ok(Inpaint { mask: per_channel, image_latents, noise: noise_drawn, extra })
    }
}

/// Per-step state of an inpainting run.
struct Inpaint {
    /// Latent-resolution mask repeated over channels (1 = repaint).
    mask: Vec<f32>,
    image_latents: Vec<f32>,
    noise: Vec<f32>,
    /// Mask and masked-image latents appended to the input of 9-channel UNets.
    extra: Option<Tensor>,
}

impl Inpaint {
    fn extend_input(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.extra {
            Some(e) => Tensor::cat(&[x, e], 1)?,
            None => x.clone(),
        })
    }

    /// For UNets that know nothing of masks: after each step, reset the kept region to the
    /// original latents noised to the next step's level (diffusers' legacy inpainting).
    fn blend(&self, latents: &mut [f32], sampler: &dyn crate::sampler::Sampler, step: usize, n: usize) {
        if self.extra.is_some() {
            return;
        }
        let proper = if step + 1 < n { sampler.add_noise(&self.image_latents, &self.noise, step + 1) } else { self.image_latents.clone() };
        for ((l, &m), &p) in latents.iter_mut().zip(&self.mask).zip(&proper) {
            *l = (1.0 - m) * p + m * *l;
        }
    }
}
