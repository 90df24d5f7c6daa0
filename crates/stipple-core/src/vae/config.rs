//! `AutoencoderKL`'s `config.json` with diffusers' defaults for absent keys.

use serde::Deserialize;

use crate::nn::activation::Activation;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum EncoderBlockType {
    DownEncoderBlock2D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DecoderBlockType {
    UpDecoderBlock2D,
}

/// diffusers' `AutoencoderKL` config (SD 1.x/2.x/XL: 4 latent channels with quant convs;
/// SD3 / FLUX: 16 channels, `shift_factor`, no quant convs). Unused keys (`sample_size`,
/// `force_upcast`, `latents_mean`, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<EncoderBlockType>,
    pub up_block_types: Vec<DecoderBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: Activation,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub mid_block_add_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
}

impl Default for VaeConfig {
    /// diffusers' constructor defaults.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![EncoderBlockType::DownEncoderBlock2D],
            up_block_types: vec![DecoderBlockType::UpDecoderBlock2D],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: Activation::Silu,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            mid_block_add_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
        }
    }
}

impl VaeConfig {
    /// Check the block lists agree.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::Unsupported(format!(
                "VAE config: down_block_types ({}), up_block_types ({}) and block_out_channels ({n}) must have the same, non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if self.scaling_factor == 0.0 || !self.scaling_factor.is_finite() {
            return Err(Error::Unsupported(format!("VAE config: scaling_factor {} is unusable", self.scaling_factor)));
        }
        Ok(())
    }

    /// Spatial size ratio between images and latents.
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// stabilityai/sd-vae-ft-mse (the SD 1.x VAE) `config.json`.
    pub(crate) const SD_VAE: &str = r#"{
      "_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "act_fn": "silu",
      "block_out_channels": [128, 256, 512, 512],
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
      "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
      "sample_size": 256, "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    }"#;

    /// black-forest-labs/FLUX.1-schnell `vae/config.json`.
    pub(crate) const FLUX_VAE: &str = r#"{
      "_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0", "act_fn": "silu",
      "block_out_channels": [128, 256, 512, 512],
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
      "force_upcast": true, "in_channels": 3, "latent_channels": 16, "latents_mean": null, "latents_std": null,
      "layers_per_block": 2, "mid_block_add_attention": true, "norm_num_groups": 32, "out_channels": 3,
      "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
      "use_post_quant_conv": false, "use_quant_conv": false
    }"#;

    #[test]
    fn parses_sd_and_flux_configs() {
        let sd: VaeConfig = serde_json::from_str(SD_VAE).unwrap();
        sd.validate().unwrap();
        assert_eq!((sd.latent_channels, sd.scaling_factor, sd.shift_factor), (4, 0.18215, None));
        assert!(sd.use_quant_conv && sd.use_post_quant_conv && sd.mid_block_add_attention);
        assert_eq!(sd.downsample_factor(), 8);
        let flux: VaeConfig = serde_json::from_str(FLUX_VAE).unwrap();
        flux.validate().unwrap();
        assert_eq!((flux.latent_channels, flux.shift_factor), (16, Some(0.1159)));
        assert!(!flux.use_quant_conv && !flux.use_post_quant_conv);
    }

    #[test]
    fn rejects_mismatched_blocks() {
        let mut cfg: VaeConfig = serde_json::from_str(SD_VAE).unwrap();
        cfg.block_out_channels.pop();
        assert!(cfg.validate().unwrap_err().to_string().contains("block_out_channels"));
        assert!(serde_json::from_str::<VaeConfig>(r#"{"up_block_types": ["AttnUpDecoderBlock2D"]}"#).is_err());
    }
}
