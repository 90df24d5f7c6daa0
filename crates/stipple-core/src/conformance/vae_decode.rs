//! Conformance kind `vae_decode`: `AutoencoderKL.decode(latents / scaling_factor + shift_factor)`
//! (README section 5.7).

use candle_core::{DType, Device};

use super::{Case, Outputs};
use crate::model::Autoencoder;
use crate::vae::AutoencoderKL;
use crate::Result;

pub fn run(case: &Case) -> Result<Outputs> {
    let vae = AutoencoderKL::load(case.model_dir()?, DType::F32, &Device::Cpu)?;
    let decoded = vae.decode(case.tensor("latents")?)?;
    Ok(Outputs::from([("decoded".to_string(), decoded)]))
}
