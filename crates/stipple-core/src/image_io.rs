//! Images in and out of the engine: decoded tensors to 8-bit RGB, PNG files that carry their
//! generation parameters, and init images / masks read back as tensors.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// An 8-bit RGB image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// From a decoded image `[3, H, W]` (or `[1, 3, H, W]`) in about [-1, 1]: `clamp(x/2 + 0.5, 0, 1)`
    /// then `round(255 x)`, as diffusers' `numpy_to_pil`.
    pub fn from_decoded(decoded: &Tensor) -> Result<RgbImage> {
        let t = if decoded.rank() == 4 { decoded.get(0)? } else { decoded.clone() };
        let (c, h, w) = t.dims3()?;
        if c != 3 {
            return Err(Error::Unsupported(format!("expected 3 image channels, got {c}")));
        }
        let unit = to_unit_range(&t)?;
        let data: Vec<f32> = unit.permute((1, 2, 0))?.contiguous()?.flatten_all()?.to_vec1()?;
        let pixels = data.iter().map(|&v| (v * 255.0).round() as u8).collect();
        Ok(RgbImage { width: w, height: h, pixels })
    }

    /// Encode as PNG with optional text chunks (key, value).
    pub fn to_png(&self, text: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            for (k, v) in text {
                // iTXt keeps non-Latin-1 prompts intact; A1111 readers accept both.
                enc.add_itxt_chunk(k.to_string(), v.to_string()).map_err(png_err)?;
            }
            let mut writer = enc.write_header().map_err(png_err)?;
            writer.write_image_data(&self.pixels).map_err(png_err)?;
        }
        Ok(out)
    }

    /// Write a PNG file (to a temporary name first, so a failure leaves no half-written file).
    pub fn save_png(&self, path: &Path, text: &[(&str, &str)]) -> Result<()> {
        let bytes = self.to_png(text)?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{}.partial", path.file_name().and_then(|n| n.to_str()).unwrap_or("image.png")));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing {}", path.display()), e)
        })
    }

    /// Read an image file (PNG, or any format the `image` crate's enabled decoders read) as RGB.
    pub fn load(path: &Path) -> Result<RgbImage> {
        let img = open_image(path, "image")?.to_rgb8();
        Ok(RgbImage { width: img.width() as usize, height: img.height() as usize, pixels: img.into_raw() })
    }
}

fn png_err(e: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("PNG encoding failed: {e}"))
}

/// `clamp(x / 2 + 0.5, 0, 1)` in float32.
pub fn to_unit_range(decoded: &Tensor) -> Result<Tensor> {
    Ok(((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
}

/// Read an image file as `[1, 3, H, W]` in [-1, 1] (an img2img init image), checking its size.
pub fn load_init_image(path: &Path, width: usize, height: usize, device: &Device) -> Result<Tensor> {
    let img = open_image(path, "init-image")?.to_rgb8();
    check_size(path, "init-image", img.width() as usize, img.height() as usize, width, height)?;
    // diffusers' image processor: `x / 255`, then `2x - 1`, in float32.
    let data: Vec<f32> = img.as_raw().iter().map(|&v| 2.0 * (v as f32 / 255.0) - 1.0).collect();
    let t = Tensor::from_vec(data, (height, width, 3), device)?;
    Ok(t.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
}

/// Read a mask as `[1, 1, H, W]` with 1 where the image is to be repainted (white) and 0 where
/// it is kept (black), binarised at 0.5 as diffusers' mask processor does.
pub fn load_mask(path: &Path, width: usize, height: usize, device: &Device) -> Result<Tensor> {
    let img = open_image(path, "mask")?.to_luma8();
    check_size(path, "mask", img.width() as usize, img.height() as usize, width, height)?;
    let data: Vec<f32> = img.as_raw().iter().map(|&v| if v as f32 / 255.0 < 0.5 { 0.0 } else { 1.0 }).collect();
    Ok(Tensor::from_vec(data, (1, 1, height, width), device)?)
}

fn open_image(path: &Path, param: &'static str) -> Result<image::DynamicImage> {
    if !path.exists() {
        return Err(Error::param(param, format!("{} does not exist", path.display())));
    }
    image::open(path).map_err(|e| Error::param(param, format!("cannot read {} as an image: {e}", path.display())))
}

fn check_size(path: &Path, param: &'static str, w: usize, h: usize, width: usize, height: usize) -> Result<()> {
    if (w, h) != (width, height) {
        return Err(Error::param(
            param,
            format!("{} is {w}x{h} but the output size is {width}x{height}; resize it or pass -W {w} -H {h}", path.display()),
        ));
    }
    Ok(())
}

/// Generation parameters in AUTOMATIC1111's `parameters` text format, which image viewers and
/// other UIs read back:
/// `prompt\nNegative prompt: ...\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: name`.
#[derive(Debug, Clone)]
pub struct GenerationParameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub sampler: String,
    pub cfg_scale: f32,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
    pub denoising_strength: Option<f32>,
}

impl GenerationParameters {
    pub fn to_a1111(&self) -> String {
        let mut s = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            s.push_str("\nNegative prompt: ");
            s.push_str(&self.negative_prompt);
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps, self.sampler, self.cfg_scale, self.seed, self.width, self.height, self.model
        ));
        if let Some(d) = self.denoising_strength {
            s.push_str(&format!(", Denoising strength: {d}"));
        }
        s.push_str(&format!(", Version: Stipple {}", env!("CARGO_PKG_VERSION")));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_parameters_format() {
        let p = GenerationParameters {
            prompt: "a red circle".into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            sampler: "Euler a".into(),
            cfg_scale: 7.0,
            seed: 42,
            width: 512,
            height: 512,
            model: "sd_tiny".into(),
            denoising_strength: None,
        };
        let s = p.to_a1111();
        assert!(s.starts_with("a red circle\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: sd_tiny"), "{s}");
    }

    #[test]
    fn png_round_trip_keeps_pixels_and_parameters() {
        let img = RgbImage { width: 2, height: 1, pixels: vec![255, 0, 0, 0, 0, 255] };
        let bytes = img.to_png(&[("parameters", "a prompt ✓\nSteps: 1")]).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(&bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..6], &img.pixels[..]);
        let info = reader.info();
        let text = info.utf8_text.iter().find(|c| c.keyword == "parameters").unwrap();
        assert_eq!(text.get_text().unwrap(), "a prompt ✓\nSteps: 1");
    }

    #[test]
    fn decoded_tensor_maps_to_bytes_like_diffusers() {
        let t = Tensor::from_vec(vec![-1f32, 0.0, 1.0, 2.0, -3.0, 0.5], (3, 1, 2), &Device::Cpu).unwrap();
        let img = RgbImage::from_decoded(&t).unwrap();
        // pixel 0 = channels (-1, 1, -3) → (0, 255, 0); pixel 1 = (0, 2, 0.5) → (128, 255, 191)
        assert_eq!(img.pixels, vec![0, 255, 0, 128, 255, 191]);
    }

    #[test]
    fn init_image_of_wrong_size_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        std::fs::write(&p, RgbImage { width: 2, height: 2, pixels: vec![0; 12] }.to_png(&[]).unwrap()).unwrap();
        let e = load_init_image(&p, 8, 8, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("init-image") && e.contains("2x2"), "{e}");
        let e = load_mask(&dir.path().join("missing.png"), 8, 8, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("mask") && e.contains("does not exist"), "{e}");
    }
}
