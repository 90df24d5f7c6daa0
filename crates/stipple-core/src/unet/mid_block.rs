//! `UNetMidBlock2DCrossAttn` (ResNet, then a spatial transformer and a ResNet) and its
//! attention-free variant `UNetMidBlock2D` (one ResNet) at the lowest resolution.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::MidBlockPlan;
use super::BlockSettings;
use crate::nn::resnet::ResnetBlock2D;
use crate::nn::spatial_transformer::SpatialTransformer;
use crate::Result;

#[derive(Debug, Clone)]
pub struct MidBlock {
    first: ResnetBlock2D,
    /// (transformer, ResNet) pairs; empty for `UNetMidBlock2D`.
    layers: Vec<(SpatialTransformer, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, plan: &MidBlockPlan, settings: &BlockSettings) -> Result<Self> {
        let c = plan.channels;
        let resnet_cfg = settings.mid_resnet(c);
        let first = ResnetBlock2D::new(vb.pp("resnets.0"), resnet_cfg)?;
        let mut layers = Vec::new();
        if let Some(attn) = &plan.attention {
            for (i, &depth) in attn.depth_per_layer.iter().enumerate() {
                let transformer =
                    SpatialTransformer::new(vb.pp(format!("attentions.{i}")), settings.transformer(c, attn, depth))?;
                let resnet = ResnetBlock2D::new(vb.pp(format!("resnets.{}", i + 1)), resnet_cfg)?;
                layers.push((transformer, resnet));
            }
        }
        Ok(Self { first, layers })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, Some(temb))?;
        for (transformer, resnet) in &self.layers {
            h = transformer.forward(&h, context)?;
            h = resnet.forward(&h, Some(temb))?;
        }
        Ok(h)
    }
}
