//! The seams between the pipeline and the networks: every backbone, text encoder and
//! autoencoder implements one of these traits, so the pipeline never matches on model names.

use candle_core::Tensor;

use crate::Result;

/// What a text encoder hands the denoiser for a batch of prompts.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Per-token embeddings `[B, S, D]` (cross-attention context).
    pub context: Tensor,
    /// Pooled embedding `[B, P]` (SDXL `text_embeds`, FLUX / SD3 pooled projections).
    pub pooled: Option<Tensor>,
}

impl Conditioning {
    /// Stack two conditionings along the batch axis (`[uncond, cond]` for classifier-free guidance).
    pub fn cat(parts: &[&Conditioning]) -> Result<Conditioning> {
        let contexts: Vec<&Tensor> = parts.iter().map(|c| &c.context).collect();
        let context = Tensor::cat(&contexts, 0)?;
        let pooled = if parts.iter().all(|c| c.pooled.is_some()) {
            let p: Vec<&Tensor> = parts.iter().map(|c| c.pooled.as_ref().unwrap()).collect();
            Some(Tensor::cat(&p, 0)?)
        } else {
            None
        };
        Ok(Conditioning { context, pooled })
    }
}

/// Extra per-image inputs some denoisers need besides the text (SDXL's size/crop `time_ids`,
/// the guidance scale of guidance-distilled models).
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    pub original_size: (usize, usize),
    pub crop_top_left: (usize, usize),
    pub target_size: (usize, usize),
    /// The request's guidance scale, for [`GuidanceMode::Distilled`] denoisers (`None`: the
    /// denoiser's own default).
    pub guidance: Option<f32>,
}

/// How a denoiser is steered towards the prompt; decides whether the pipeline runs an
/// unconditional pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidanceMode {
    /// Classifier-free guidance: the pipeline batches `[uncond, cond]` and extrapolates (UNets, SD3).
    ClassifierFree,
    /// The network embeds the guidance scale itself (FLUX.1-dev): one conditional pass; the
    /// request's scale reaches the denoiser as [`ImageInfo::guidance`].
    Distilled,
    /// The network takes no guidance (FLUX.1-schnell): one conditional pass, the scale is ignored.
    Unguided,
}

/// A noise-prediction network: UNet, FLUX, MMDiT or the default DiT.
pub trait Denoiser: Send + Sync {
    /// Predict the model output for latents `x` `[B, C, H, W]` at `timesteps` `[B]` (f32, in the
    /// scheduler's own units) under `cond` (batch `B`).
    fn forward(&self, x: &Tensor, timesteps: &Tensor, cond: &Conditioning, info: &ImageInfo) -> Result<Tensor>;
    /// Latent channels the network expects (9 for SD inpainting UNets: latents, mask, masked image).
    fn in_channels(&self) -> usize;
    /// Latent height and width must be multiples of this (2 for transformers with 2x2 patches).
    fn latent_multiple(&self) -> usize {
        1
    }
    /// How guidance works for this network.
    fn guidance_mode(&self) -> GuidanceMode {
        GuidanceMode::ClassifierFree
    }
}

/// Turns prompts into a [`Conditioning`].
pub trait TextEncoder: Send + Sync {
    fn encode(&self, prompts: &[&str]) -> Result<Conditioning>;

    /// The `[negative, prompt]` batch for classifier-free guidance. Models whose unconditional
    /// input is not simply the encoded negative prompt (SDXL's zeros for an empty negative) override it.
    fn encode_for_guidance(&self, negative: &str, prompt: &str) -> Result<Conditioning> {
        self.encode(&[negative, prompt])
    }
}

/// Maps images `[B, 3, H, W]` in [-1, 1] to diffusion latents and back.
pub trait Autoencoder: Send + Sync {
    /// Latent mean and log-variance `[B, C, H/f, W/f]` (unscaled).
    fn encode_moments(&self, image: &Tensor) -> Result<(Tensor, Tensor)>;
    /// Decode unscaled latents to an image in about [-1, 1].
    fn decode_raw(&self, latents: &Tensor) -> Result<Tensor>;
    fn scaling_factor(&self) -> f64;
    fn shift_factor(&self) -> Option<f64>;
    fn latent_channels(&self) -> usize;
    /// Spatial downsampling factor `f` (8 for SD's VAE).
    fn downsample_factor(&self) -> usize;

    /// Diffusion latents from an image, sampling the posterior with `noise` (same shape as the
    /// latents): `((mean + std * noise) - shift) * scale`.
    fn encode(&self, image: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let (mean, logvar) = self.encode_moments(image)?;
        let std = (logvar.clamp(-30f32, 20f32)? * 0.5)?.exp()?;
        let z = (mean + std.mul(noise)?)?;
        let z = match self.shift_factor() {
            Some(s) => (z - s)?,
            None => z,
        };
        Ok((z * self.scaling_factor())?)
    }

    /// Image from diffusion latents: `decoder(latents / scale + shift)`.
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.scaling_factor())?;
        let z = match self.shift_factor() {
            Some(s) => (z + s)?,
            None => z,
        };
        self.decode_raw(&z)
    }
}
