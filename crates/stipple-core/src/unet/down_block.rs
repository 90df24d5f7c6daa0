//! `DownBlock2D` / `CrossAttnDownBlock2D`: ResNet layers (each followed by a spatial
//! transformer in the cross-attention variant), then an optional stride-2 downsampler. Every
//! layer's output and the downsampler's are kept as skip connections for the up path.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::DownBlockPlan;
use super::BlockSettings;
use crate::nn::resample::Downsample2D;
use crate::nn::resnet::ResnetBlock2D;
use crate::nn::spatial_transformer::SpatialTransformer;
use crate::Result;

#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    /// One per ResNet in `CrossAttnDownBlock2D`, empty in `DownBlock2D`.
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(vb: VarBuilder, plan: &DownBlockPlan, settings: &BlockSettings) -> Result<Self> {
        let mut resnets = Vec::with_capacity(plan.num_layers);
        let mut attentions = Vec::new();
        for i in 0..plan.num_layers {
            let cin = if i == 0 { plan.in_channels } else { plan.out_channels };
            resnets.push(ResnetBlock2D::new(vb.pp(format!("resnets.{i}")), settings.resnet(cin, plan.out_channels))?);
            if let Some(attn) = &plan.attention {
                let cfg = settings.transformer(plan.out_channels, attn, attn.depth_per_layer[i]);
                attentions.push(SpatialTransformer::new(vb.pp(format!("attentions.{i}")), cfg)?);
            }
        }
        let downsampler = if plan.downsample {
            let (c, pad) = (plan.out_channels, settings.downsample_padding);
            Some(Downsample2D::new(vb.pp("downsamplers.0"), c, c, pad)?)
        } else {
            None
        };
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Runs the block, pushing its skip connections onto `skips`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, context)?;
            }
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}
