//! The default model's autoencoder: a small KL-regularised convolutional VAE like SD's, sized for
//! a CPU. Pixels are first folded into channels (`pixel_block`x`pixel_block` blocks), so every
//! convolution runs at reduced resolution; each further level halves it again. 128x128 RGB ↔
//! 16x16x4 with the shipped settings (blocks of 4, two levels: 32², 16²).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::model::Autoencoder;
use crate::nn::trainable::{conv2d, pixel_shuffle, pixel_unshuffle, silu, zero_conv2d, Conv, GroupNorm};
use crate::{Error, Result};

/// diffusers clamps the log-variance to this range when it builds the latent distribution.
const LOGVAR_RANGE: (f32, f32) = (-30.0, 20.0);

/// `vae/config.json` of the default model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StippleVaeConfig {
    pub in_channels: usize,
    pub latent_channels: usize,
    /// Side of the pixel blocks folded into channels before the first convolution.
    pub pixel_block: usize,
    /// Channels per level; each level after the first halves the resolution.
    pub channels: Vec<usize>,
    /// Residual blocks per level in the encoder and in the decoder.
    pub encoder_blocks: usize,
    pub decoder_blocks: usize,
    pub norm_groups: usize,
    /// Diffusion latents are `(z - shift_factor) * scaling_factor` (unit variance, zero mean on
    /// the training data; measured after the autoencoder is trained).
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl StippleVaeConfig {
    pub fn downsample_factor(&self) -> usize {
        self.pixel_block << self.channels.len().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Unsupported(format!("stipple VAE config: {what}")));
        if self.channels.is_empty() || self.channels.iter().any(|&c| c == 0 || c % self.norm_groups.max(1) != 0) {
            return bad("channels must be a non-empty list of positive multiples of norm_groups");
        }
        if self.in_channels == 0 || self.latent_channels == 0 || self.pixel_block == 0 || self.norm_groups == 0 {
            return bad("in_channels, latent_channels, pixel_block and norm_groups must be positive");
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0 && self.shift_factor.is_finite()) {
            return bad("scaling_factor must be positive and shift_factor finite");
        }
        Ok(())
    }
}

/// `x + conv(silu(norm(conv(silu(norm(x))))))`.
#[derive(Debug, Clone)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
}

impl ResBlock {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, channels, vb.pp("norm1"))?,
            conv1: conv2d(channels, channels, 3, 1, vb.pp("conv1"))?,
            norm2: GroupNorm::new(groups, channels, vb.pp("norm2"))?,
            conv2: zero_conv2d(channels, channels, 3, vb.pp("conv2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        let h = self.conv2.forward(&silu(&self.norm2.forward(&h)?)?)?;
        Ok((x + h)?)
    }
}

fn res_blocks(n: usize, channels: usize, groups: usize, vb: VarBuilder) -> Result<Vec<ResBlock>> {
    (0..n).map(|j| ResBlock::new(channels, groups, vb.pp(format!("blocks.{j}")))).collect()
}

/// One resolution of the encoder or decoder: residual blocks, then a change of resolution
/// (a stride-2 convolution down, or nearest-neighbour doubling and a convolution up).
#[derive(Debug, Clone)]
struct Level {
    blocks: Vec<ResBlock>,
    resample: Option<Conv>,
    upsample: bool,
}

impl Level {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        if let Some(conv) = &self.resample {
            if self.upsample {
                let (_, _, hh, ww) = h.dims4()?;
                h = h.upsample_nearest2d(hh * 2, ww * 2)?;
            }
            h = conv.forward(&h)?;
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
struct Half {
    conv_in: Conv,
    levels: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Half {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.levels {
            h = level.forward(&h)?;
        }
        Ok(self.conv_out.forward(&silu(&self.norm_out.forward(&h)?)?)?)
    }
}

/// The default model's autoencoder.
#[derive(Debug, Clone)]
pub struct StippleAutoencoder {
    config: StippleVaeConfig,
    encoder: Half,
    decoder: Half,
}

impl StippleAutoencoder {
    pub fn new(config: &StippleVaeConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (ch, g, pb) = (&config.channels, config.norm_groups, config.pixel_block);
        let folded = config.in_channels * pb * pb;
        let last = ch.len() - 1;

        let enc = vb.pp("encoder");
        let levels = (0..ch.len())
            .map(|i| {
                let lvb = enc.pp(format!("levels.{i}"));
                Ok(Level {
                    blocks: res_blocks(config.encoder_blocks, ch[i], g, lvb.clone())?,
                    resample: if i < last { Some(conv2d(ch[i], ch[i + 1], 3, 2, lvb.pp("downsample"))?) } else { None },
                    upsample: false,
                })
            })
            .collect::<Result<_>>()?;
        let encoder = Half {
            conv_in: conv2d(folded, ch[0], 3, 1, enc.pp("conv_in"))?,
            levels,
            norm_out: GroupNorm::new(g, ch[last], enc.pp("norm_out"))?,
            conv_out: conv2d(ch[last], 2 * config.latent_channels, 3, 1, enc.pp("conv_out"))?,
        };

        let dec = vb.pp("decoder");
        let levels = (0..ch.len())
            .rev()
            .map(|i| {
                let lvb = dec.pp(format!("levels.{i}"));
                Ok(Level {
                    blocks: res_blocks(config.decoder_blocks, ch[i], g, lvb.clone())?,
                    resample: if i > 0 { Some(conv2d(ch[i], ch[i - 1], 3, 1, lvb.pp("upsample"))?) } else { None },
                    upsample: true,
                })
            })
            .collect::<Result<_>>()?;
        let decoder = Half {
            conv_in: conv2d(config.latent_channels, ch[last], 3, 1, dec.pp("conv_in"))?,
            levels,
            norm_out: GroupNorm::new(g, ch[0], dec.pp("norm_out"))?,
            conv_out: conv2d(ch[0], folded, 3, 1, dec.pp("conv_out"))?,
        };
        Ok(Self { config: config.clone(), encoder, decoder })
    }

    pub fn config(&self) -> &StippleVaeConfig {
        &self.config
    }

    fn check(&self, t: &Tensor, channels: usize, multiple: usize, what: &'static str) -> Result<()> {
        let ok = t.rank() == 4 && t.dim(1)? == channels && t.dim(2)? % multiple == 0 && t.dim(3)? % multiple == 0;
        if !ok {
            return Err(Error::param(
                what,
                format!("shape {:?}, expected [B, {channels}, H, W] with H and W multiples of {multiple}", t.dims()),
            ));
        }
        Ok(())
    }
}

impl Autoencoder for StippleAutoencoder {
    fn encode_moments(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check(image, self.config.in_channels, self.config.downsample_factor(), "image")?;
        let dtype = image.dtype();
        let x = pixel_unshuffle(&image.to_dtype(DType::F32)?, self.config.pixel_block)?;
        let moments = self.encoder.forward(&x)?;
        let lc = self.config.latent_channels;
        let mean = moments.narrow(1, 0, lc)?.to_dtype(dtype)?;
        let logvar = moments.narrow(1, lc, lc)?.clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1)?.to_dtype(dtype)?;
        Ok((mean, logvar))
    }

    fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        self.check(latents, self.config.latent_channels, 1, "latents")?;
        let h = self.decoder.forward(&latents.to_dtype(DType::F32)?)?;
        Ok(pixel_shuffle(&h, self.config.pixel_block)?.to_dtype(latents.dtype())?)
    }

    fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    fn shift_factor(&self) -> Option<f64> {
        Some(self.config.shift_factor)
    }

    fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    fn downsample_factor(&self) -> usize {
        self.config.downsample_factor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn config() -> StippleVaeConfig {
        StippleVaeConfig {
            in_channels: 3,
            latent_channels: 4,
            pixel_block: 4,
            channels: vec![8, 16],
            encoder_blocks: 1,
            decoder_blocks: 1,
            norm_groups: 4,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }

    #[test]
    fn shapes_and_gradients() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vae = StippleAutoencoder::new(&config(), VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        assert_eq!(vae.downsample_factor(), 8);
        let img = Tensor::randn(0f32, 0.5, (2, 3, 32, 32), &dev).unwrap();
        let (mean, logvar) = vae.encode_moments(&img).unwrap();
        assert_eq!((mean.dims(), logvar.dims()), (&[2usize, 4, 4, 4][..], &[2usize, 4, 4, 4][..]));
        let out = vae.decode_raw(&mean).unwrap();
        assert_eq!(out.dims(), img.dims());
        let loss = (out - &img).unwrap().abs().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            assert!(grads.get(var.as_tensor()).is_some(), "no gradient for {name}");
        }
    }

    #[test]
    fn sizes_that_do_not_fold_are_refused() {
        let dev = Device::Cpu;
        let vae = StippleAutoencoder::new(&config(), VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev)).unwrap();
        let img = Tensor::zeros((1, 3, 20, 32), DType::F32, &dev).unwrap();
        let err = vae.encode_moments(&img).unwrap_err().to_string();
        assert!(err.contains("multiples of 8"), "{err}");
        let mut c = config();
        c.channels = vec![8, 10];
        assert!(c.validate().is_err());
    }
}
