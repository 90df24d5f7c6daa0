//! diffusers `Transformer2DModel` on continuous input (the UNet's attention stage):
//! GroupNorm, `proj_in`, a stack of [`BasicTransformerBlock`]s over the `H·W` pixel tokens,
//! `proj_out`, plus the input as residual.
//!
//! `proj_in`/`proj_out` are Linear layers with `use_linear_projection` and 1x1 convolutions
//! otherwise. A 1x1 convolution is the same per-pixel linear map, so both are applied as a
//! [`Linear`] on the token layout (the conv weight `[out, in, 1, 1]` is viewed as `[out, in]`).

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use super::group_norm::GroupNorm;
use super::transformer_block::BasicTransformerBlock;
use crate::Result;

/// diffusers hard-codes this GroupNorm's eps (the config's `norm_eps` is for the ResNets).
const GROUP_NORM_EPS: f64 = 1e-6;

#[derive(Debug, Clone, Copy)]
pub struct SpatialTransformerConfig {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub context_dim: usize,
    pub norm_groups: usize,
    pub use_linear_projection: bool,
}

#[derive(Debug, Clone)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl SpatialTransformer {
    pub fn new(vb: VarBuilder, cfg: SpatialTransformerConfig) -> Result<Self> {
        let c = cfg.channels;
        if cfg.heads == 0 || !c.is_multiple_of(cfg.heads) {
            return Err(crate::Error::Unsupported(format!(
                "transformer at `{}`: {c} channels cannot be split into {} attention heads \
                 (check attention_head_dim / num_attention_heads in config.json)",
                vb.prefix(),
                cfg.heads
            )));
        }
        let head_dim = c / cfg.heads;
        let blocks = (0..cfg.depth)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    c,
                    cfg.heads,
                    head_dim,
                    cfg.context_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), cfg.norm_groups, c, GROUP_NORM_EPS)?,
            proj_in: pointwise_projection(vb.pp("proj_in"), c, c, cfg.use_linear_projection)?,
            blocks,
            proj_out: pointwise_projection(vb.pp("proj_out"), c, c, cfg.use_linear_projection)?,
        })
    }

    /// `x` `[B, C, H, W]`, `context` `[B, S_ctx, context_dim]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self.norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let mut t = self.proj_in.forward(&tokens)?;
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        let t = self.proj_out.forward(&t)?;
        let spatial = t.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))?;
        Ok((spatial + x)?)
    }
}

/// A per-pixel projection stored either as a Linear (`[out, in]`) or as a 1x1 conv (`[out, in, 1, 1]`).
fn pointwise_projection(vb: VarBuilder, in_dim: usize, out_dim: usize, linear: bool) -> Result<Linear> {
    if linear {
        return Ok(candle_nn::linear(in_dim, out_dim, vb)?);
    }
    let weight = vb.get((out_dim, in_dim, 1, 1), "weight")?.reshape((out_dim, in_dim))?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
    use candle_core::{DType, Device};

    #[test]
    fn conv_projection_equals_conv2d() {
        let dev = Device::Cpu;
        let w = seeded(&[5, 3, 1, 1], 1, &dev);
        let b = seeded(&[5], 2, &dev);
        let vb = VarBuilder::from_tensors(
            [("weight".to_string(), w.clone()), ("bias".to_string(), b.clone())].into_iter().collect(),
            DType::F32,
            &dev,
        );
        let proj = pointwise_projection(vb, 3, 5, false).unwrap();
        let x = seeded(&[2, 3, 4, 4], 3, &dev);
        let conv = x.conv2d(&w, 0, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap()).unwrap();
        let tokens = x.reshape((2, 3, 16)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let via_linear = proj.forward(&tokens).unwrap().transpose(1, 2).unwrap().reshape((2, 5, 4, 4)).unwrap();
        assert!(max_abs_diff(&conv, &via_linear) < 1e-6);
    }
}
