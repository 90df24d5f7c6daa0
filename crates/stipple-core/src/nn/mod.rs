//! Building blocks shared by the convolutional diffusion networks (UNet, VAE), each a port of
//! the diffusers module of the same role with diffusers' weight names.
//!
//! Every constructor takes a [`candle_nn::VarBuilder`] positioned at the module's prefix and asks
//! it for each tensor with its full shape, so any backend works: memory-mapped safetensors, a
//! converted single-file checkpoint, or random weights for benchmarks.

pub mod activation;
pub mod attention;
pub mod conv2d;
mod fast_math;
pub mod feed_forward;
pub mod fused;
pub mod group_norm;
pub mod layer_norm;
pub mod loading;
mod moments;
pub mod resample;
pub mod resnet;
pub mod spatial_transformer;
pub mod timestep_embedding;
pub mod trainable;
pub mod transformer_block;

