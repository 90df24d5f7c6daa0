//! diffusers' `AutoencoderKL`: the SD 1.x/2.x/XL VAE (4 latent channels, `quant_conv` and
//! `post_quant_conv`) and the SD3 / FLUX VAE (16 channels, `shift_factor`, no quant convs).

pub mod config;
mod decoder;
mod encoder;
mod mid_block;
pub mod stipple_vae;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::VaeConfig;
use decoder::Decoder;
use encoder::Encoder;

use crate::model::Autoencoder;
use crate::nn::conv2d::Conv2d;
use crate::nn::loading::{diffusers_weight_files, open_safetensors, read_json_config};
use crate::{Error, Result};

/// diffusers clamps the log-variance to this range when it builds the latent distribution.
const LOGVAR_RANGE: (f32, f32) = (-30.0, 20.0);

#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    config: VaeConfig,
    dtype: DType,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    /// Build from weights under `vb` (diffusers key names, no prefix) and a parsed config.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate()?;
        let lc = config.latent_channels;
        let pointwise = |c: usize, name: &str| Conv2d::new(vb.pp(name), c, c, 1, 1, 0);
        Ok(Self {
            config: config.clone(),
            dtype: vb.dtype(),
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            quant_conv: if config.use_quant_conv { Some(pointwise(2 * lc, "quant_conv")?) } else { None },
            post_quant_conv: if config.use_post_quant_conv { Some(pointwise(lc, "post_quant_conv")?) } else { None },
        })
    }

    /// Load a diffusers `vae/` folder: `config.json` and its safetensors weights.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: VaeConfig = read_json_config(&config_path)?;
        let files = diffusers_weight_files(dir)?;
        let vb = open_safetensors(&files, dtype, device)?;
        Self::new(vb, &config).map_err(|e| match e {
            Error::Tensor(t) => {
                Error::invalid_file(&files[0], format!("weights do not match {}: {t}", config_path.display()))
            }
            Error::Unsupported(msg) => Error::Unsupported(format!("{}: {msg}", config_path.display())),
            other => other,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    fn check_input(&self, t: &Tensor, channels: usize, what: &'static str) -> Result<()> {
        if t.rank() != 4 || t.dim(1)? != channels {
            return Err(Error::param(what, format!("shape {:?}, expected [B, {channels}, H, W]", t.dims())));
        }
        Ok(())
    }
}

impl Autoencoder for AutoencoderKL {
    /// Mean and log-variance, the latter clamped to [-30, 20] as diffusers' `latent_dist` holds it.
    fn encode_moments(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_input(image, self.config.in_channels, "image")?;
        let h = self.encoder.forward(&image.to_dtype(self.dtype)?)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&h)?,
            None => h,
        };
        let lc = self.config.latent_channels;
        let dtype = image.dtype();
        let mean = moments.narrow(1, 0, lc)?.contiguous()?.to_dtype(dtype)?;
        let logvar = moments.narrow(1, lc, lc)?.clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1)?.to_dtype(dtype)?;
        Ok((mean, logvar))
    }

    fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        self.check_input(latents, self.config.latent_channels, "latents")?;
        let z = latents.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(&z)?,
            None => z,
        };
        Ok(self.decoder.forward(&z)?.to_dtype(latents.dtype())?)
    }

    fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    fn shift_factor(&self) -> Option<f64> {
        self.config.shift_factor
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
    use super::config::tests::{FLUX_VAE, SD_VAE};
    use super::*;
    use crate::test_support::ShapeOnlyBackend;

    fn param_count(config_json: &str) -> usize {
        let config: VaeConfig = serde_json::from_str(config_json).unwrap();
        let (vb, backend) = ShapeOnlyBackend::var_builder();
        AutoencoderKL::new(vb, &config).unwrap();
        backend.total_elements()
    }

    #[test]
    fn published_parameter_counts() {
        assert_eq!(param_count(SD_VAE), 83_653_863);
        // FLUX: 16-channel latents, no quant convs.
        assert_eq!(param_count(FLUX_VAE), 83_819_683);
    }

    /// The tiny SD VAE of the reference vectors through the trait's `encode`/`decode`, with the
    /// f32 CPU kernels and (in f64) the generic paths other devices use.
    #[test]
    fn tiny_reference_model_in_f32_and_f64() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors");
        let load = |p: &str| candle_core::safetensors::load(root.join(p), &Device::Cpu).unwrap();
        let enc = load("cases/vae_encode/vae_sd_tiny_encode.safetensors");
        let dec = load("cases/vae_decode/vae_sd_tiny_decode.safetensors");
        let check = |got: &Tensor, want: &Tensor, rel: f64, what: &str| {
            let max_ref = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
            let err = crate::test_support::max_abs_diff(got, want);
            assert!(err <= 1e-6 + rel * max_ref, "{what}: {err}");
        };
        for dtype in [DType::F32, DType::F64] {
            let vae = AutoencoderKL::load(&root.join("models/sd_tiny/vae"), dtype, &Device::Cpu).unwrap();
            let (mean, logvar) = vae.encode_moments(&enc["image"]).unwrap();
            check(&mean, &enc["mean"], 1.4e-5, "mean");
            check(&logvar, &enc["logvar"], 1.4e-5, "logvar");
            check(&vae.encode(&enc["image"], &enc["noise"]).unwrap(), &enc["latents"], 1.4e-5, "latents");
            check(&vae.decode(&dec["latents"]).unwrap(), &dec["decoded"], 1e-5, "decoded");
        }
    }

    #[test]
    fn rejects_wrong_channel_counts() {
        let config: VaeConfig = serde_json::from_str(FLUX_VAE).unwrap();
        let (vb, _) = ShapeOnlyBackend::var_builder();
        let vae = AutoencoderKL::new(vb, &config).unwrap();
        let four = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let err = vae.decode_raw(&four).unwrap_err().to_string();
        assert!(err.contains("16"), "{err}");
        assert!(vae.encode_moments(&four).is_err());
        assert_eq!((vae.latent_channels(), vae.downsample_factor()), (16, 8));
    }
}
