//! Stipple's diffusion engine.
//!
//! The engine reads weight files and nothing else from the outside world; it knows
//! nothing of HTTP, users or tokens. The data flow of one image is
//! prompt → [`text`] encoder → [`model::Conditioning`] → [`pipeline`] loop over a
//! [`sampler::Sampler`] driving a [`model::Denoiser`] → [`vae`] decode → PNG.

pub mod error;
pub mod guidance;
pub mod image_io;
pub mod checkpoint;
pub mod conformance;
pub mod default_model;
pub mod dit;
pub mod loader;
pub mod layers;
pub mod model;
pub mod pipeline;
pub mod sampler;
pub mod schedule;
pub mod text;
pub mod rng;
pub mod nn;
pub mod unet;
pub mod vae;

#[cfg(test)]
pub(crate) mod test_support;

pub use error::{Error, Result};
