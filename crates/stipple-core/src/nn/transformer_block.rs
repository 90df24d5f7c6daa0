//! diffusers `BasicTransformerBlock` as the UNet uses it (`norm_type="layer_norm"`, GEGLU
//! feed-forward, no attention biases on q/k/v): pre-norm self-attention, cross-attention over the
//! text context, and feed-forward, each added to the residual stream.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::{Attention, AttentionConfig};
use super::feed_forward::GegluFeedForward;
use super::layer_norm::LayerNorm;
use crate::Result;

/// diffusers' `norm_eps` default for the transformer's LayerNorms (the UNet never overrides it).
const LAYER_NORM_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl BasicTransformerBlock {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize, context_dim: usize) -> Result<Self> {
        let self_attn = AttentionConfig { query_dim: dim, context_dim: None, heads, head_dim, qkv_bias: false };
        let cross_attn = AttentionConfig { context_dim: Some(context_dim), ..self_attn };
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: Attention::new(vb.pp("attn1"), self_attn)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: Attention::new(vb.pp("attn2"), cross_attn)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim, LAYER_NORM_EPS)?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim, 4 * dim)?,
        })
    }

    /// `x` `[B, S, dim]`, `context` `[B, S_ctx, context_dim]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(context))? + x)?;
        Ok((self.ff.forward(&self.norm3.forward(&x)?)? + x)?)
    }
}
