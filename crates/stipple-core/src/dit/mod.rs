//! The diffusion transformers: FLUX.1 ([`FluxTransformer`]) and SD3's MMDiT
//! ([`Sd3Transformer`]), with the pieces they share.

pub mod adaln;
pub mod attention;
pub mod embeddings;
pub mod feed_forward;
pub mod flux;
pub mod patch_embed;
pub mod patches;
pub mod rope;
pub mod sd3;
pub mod stipple_dit;

pub use flux::{FluxConfig, FluxInputs, FluxTransformer, DEFAULT_FLUX_GUIDANCE, FLUX_DEV_CONFIG, FLUX_SCHNELL_CONFIG};
pub use sd3::{Sd3Config, Sd3Transformer, SD3_MEDIUM_CONFIG};

use candle_core::Tensor;

use crate::{Error, Result};

/// `[B]` from a per-sample value given as `[B]` or `[1]` (one value for the whole batch).
pub(crate) fn per_sample(t: &Tensor, batch: usize, name: &'static str) -> Result<Tensor> {
    match t.dims1()? {
        n if n == batch => Ok(t.clone()),
        1 => Ok(t.broadcast_as(batch)?.contiguous()?),
        n => Err(Error::param(name, format!("{n} values for a batch of {batch}"))),
    }
}
