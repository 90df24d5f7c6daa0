//! `UpBlock2D` / `CrossAttnUpBlock2D`: each ResNet layer first concatenates the latest skip
//! connection on the channel axis; then an optional nearest-2x upsampler.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::UpBlockPlan;
use super::BlockSettings;
use crate::nn::resample::Upsample2D;
use crate::nn::resnet::ResnetBlock2D;
use crate::nn::spatial_transformer::SpatialTransformer;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    pub fn new(vb: VarBuilder, plan: &UpBlockPlan, settings: &BlockSettings) -> Result<Self> {
        let out = plan.out_channels;
        let mut resnets = Vec::with_capacity(plan.num_layers);
        let mut attentions = Vec::new();
        for i in 0..plan.num_layers {
            let skip = if i + 1 == plan.num_layers { plan.in_channels } else { out };
            let below = if i == 0 { plan.prev_output_channels } else { out };
            resnets.push(ResnetBlock2D::new(vb.pp(format!("resnets.{i}")), settings.resnet(below + skip, out))?);
            if let Some(attn) = &plan.attention {
                let cfg = settings.transformer(out, attn, attn.depth_per_layer[i]);
                attentions.push(SpatialTransformer::new(vb.pp(format!("attentions.{i}")), cfg)?);
            }
        }
        let upsampler = if plan.upsample { Some(Upsample2D::new(vb.pp("upsamplers.0"), out, out)?) } else { None };
        Ok(Self { resnets, attentions, upsampler })
    }

    /// Consumes one skip connection per layer from the end of `skips`. The upsampler targets the
    /// spatial size of the next skip left on the stack, so inputs whose size is not a multiple of
    /// the total downsampling factor come back to their own size (diffusers' `upsample_size`).
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| {
                Error::Unsupported("UNet up path ran out of skip connections (inconsistent config)".into())
            })?;
            h = resnet.forward(&Tensor::cat(&[&h, &skip], 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, context)?;
            }
        }
        if let Some(up) = &self.upsampler {
            let size = match skips.last() {
                Some(s) => Some((s.dim(2)?, s.dim(3)?)),
                None => None,
            };
            h = up.forward(&h, size)?;
        }
        Ok(h)
    }
}
