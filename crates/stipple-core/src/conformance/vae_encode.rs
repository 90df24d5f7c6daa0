//! Conformance kind `vae_encode`: posterior moments and sampled diffusion latents of
//! `AutoencoderKL.encode` (README section 5.6).

use candle_core::{DType, Device};

use super::{Case, Outputs};
use crate::model::Autoencoder;
use crate::vae::AutoencoderKL;
use crate::Result;

pub fn run(case: &Case) -> Result<Outputs> {
    let vae = AutoencoderKL::load(case.model_dir()?, DType::F32, &Device::Cpu)?;
    let image = case.tensor("image")?;
    let (mean, logvar) = vae.encode_moments(image)?;
    let std = (&logvar * 0.5)?.exp()?;
    // The trait's sampling path, as the pipeline uses it (it re-runs the encoder).
    let latents = vae.encode(image, case.tensor("noise")?)?;
    Ok(Outputs::from([
        ("mean".to_string(), mean),
        ("logvar".to_string(), logvar),
        ("std".to_string(), std),
        ("latents".to_string(), latents),
    ]))
}
