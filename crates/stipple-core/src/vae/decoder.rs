//! The autoencoder's `Decoder`: `conv_in`, the mid block, `UpDecoderBlock2D`s (one more ResNet
//! than the encoder's blocks, then nearest-2x upsampling and a convolution except in the last
//! block), GroupNorm, activation and `conv_out`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::VaeConfig;
use super::mid_block::{vae_resnet, VaeMidBlock, VAE_NORM_EPS};
use crate::nn::activation::Activation;
use crate::nn::conv2d::Conv2d;
use crate::nn::group_norm::GroupNorm;
use crate::nn::resample::Upsample2D;
use crate::nn::resnet::ResnetBlock2D;
use crate::Result;

#[derive(Debug, Clone)]
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    conv_in: Conv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    act: Activation,
    conv_out: Conv2d,
}

impl Decoder {
    pub(crate) fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let groups = cfg.norm_num_groups;
        let top = reversed[0];
        let mut up_blocks = Vec::with_capacity(reversed.len());
        for (i, &out) in reversed.iter().enumerate() {
            let vb_block = vb.pp(format!("up_blocks.{i}"));
            let block_in = if i == 0 { top } else { reversed[i - 1] };
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let cin = if j == 0 { block_in } else { out };
                    ResnetBlock2D::new(vb_block.pp(format!("resnets.{j}")), vae_resnet(cin, out, groups, cfg.act_fn))
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < reversed.len() {
                Some(Upsample2D::new(vb_block.pp("upsamplers.0"), out, out)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
        }
        let bottom = reversed[reversed.len() - 1];
        Ok(Self {
            conv_in: Conv2d::new(vb.pp("conv_in"), cfg.latent_channels, top, 3, 1, 1)?,
            mid_block: VaeMidBlock::new(vb.pp("mid_block"), top, groups, cfg.act_fn, cfg.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, bottom, VAE_NORM_EPS)?,
            act: cfg.act_fn,
            conv_out: Conv2d::new(vb.pp("conv_out"), bottom, cfg.out_channels, 3, 1, 1)?,
        })
    }

    /// Latents `[B, latent_channels, h, w]` → image `[B, out_channels, h·f, w·f]`.
    pub(crate) fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(up) = &block.upsampler {
                h = up.forward(&h, None)?;
            }
        }
        let h = self.conv_norm_out.forward_activated(&h, self.act)?;
        self.conv_out.forward(&h)
    }
}
