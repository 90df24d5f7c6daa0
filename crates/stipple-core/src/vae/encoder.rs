//! The autoencoder's `Encoder`: `conv_in`, `DownEncoderBlock2D`s (ResNets, then a stride-2
//! convolution with diffusers' bottom/right padding except in the last block), the mid block,
//! GroupNorm, activation and `conv_out` to `2 × latent_channels` moments (mean, log-variance).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::VaeConfig;
use super::mid_block::{vae_resnet, VaeMidBlock, VAE_NORM_EPS};
use crate::nn::activation::Activation;
use crate::nn::conv2d::Conv2d;
use crate::nn::group_norm::GroupNorm;
use crate::nn::resample::Downsample2D;
use crate::nn::resnet::ResnetBlock2D;
use crate::Result;

#[derive(Debug, Clone)]
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: VaeMidBlock,
    conv_norm_out: GroupNorm,
    act: Activation,
    conv_out: Conv2d,
}

impl Encoder {
    pub(crate) fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let conv_in = Conv2d::new(vb.pp("conv_in"), cfg.in_channels, channels[0], 3, 1, 1)?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        for (i, &out) in channels.iter().enumerate() {
            let vb_block = vb.pp(format!("down_blocks.{i}"));
            let block_in = if i == 0 { channels[0] } else { channels[i - 1] };
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let cin = if j == 0 { block_in } else { out };
                    ResnetBlock2D::new(vb_block.pp(format!("resnets.{j}")), vae_resnet(cin, out, groups, cfg.act_fn))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if i + 1 < channels.len() {
                Some(Downsample2D::new(vb_block.pp("downsamplers.0"), out, out, 0)?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock { resnets, downsampler });
        }
        let top = channels[channels.len() - 1];
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: VaeMidBlock::new(vb.pp("mid_block"), top, groups, cfg.act_fn, cfg.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, top, VAE_NORM_EPS)?,
            act: cfg.act_fn,
            conv_out: Conv2d::new(vb.pp("conv_out"), top, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    /// Image `[B, in_channels, H, W]` → moments `[B, 2 × latent_channels, H/f, W/f]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(&h)?;
            }
        }
        let h = self.mid_block.forward(&h)?;
        let h = self.conv_norm_out.forward_activated(&h, self.act)?;
        self.conv_out.forward(&h)
    }
}
