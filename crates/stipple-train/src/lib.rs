//! Stipple's shipped default model, from nothing: procedural training data ([`scene`],
//! [`caption`]), the [`checker`] that reads scenes back from images, and training.

pub mod caption;
pub mod checker;
pub mod dataset;
pub mod rng;
pub mod scene;
