//! Stipple's shipped default model, from nothing: procedural training data ([`scene`],
//! [`caption`], [`dataset`]), the [`checker`] that reads scenes back from images, and
//! [`train`]ing (AdamW, EMA, resumable checkpoints) that writes the model folder.

pub mod caption;
pub mod checker;
pub mod config;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod init;
pub mod latent_pool;
pub mod optim;
pub mod plot;
pub mod report;
pub mod rng;
pub mod scene;
pub mod state;
pub mod train;
