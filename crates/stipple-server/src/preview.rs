//! Low-resolution previews of a running generation: the latents (or the sampler's estimate of
//! the final latents) projected to RGB at latent resolution, as a PNG data URL. No decoder pass,
//! so a preview costs microseconds.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use stipple_core::image_io::RgbImage;

/// Stable Diffusion's 4-channel latents to approximate RGB (a least-squares fit, as used by
/// several UIs for their live previews).
const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// A PNG data URL of latents `[1, C, h, w]` (row-major).
pub fn latent_preview(latents: &[f32], shape: [usize; 4]) -> Option<String> {
    let [_, c, h, w] = shape;
    if c == 0 || h == 0 || w == 0 || latents.len() < c * h * w {
        return None;
    }
    let plane = h * w;
    let mut pixels = Vec::with_capacity(plane * 3);
    for i in 0..plane {
        let rgb = if c == 4 {
            let mut rgb = [0f32; 3];
            for (ch, factors) in SD_LATENT_RGB.iter().enumerate() {
                let v = latents[ch * plane + i];
                for k in 0..3 {
                    rgb[k] += v * factors[k];
                }
            }
            rgb
        } else {
            // Unknown latent space: show the first channels (or grey) as they are.
            let at = |ch: usize| latents[ch.min(c - 1) * plane + i] * 0.5;
            [at(0), at(1), at(2)]
        };
        pixels.extend(rgb.iter().map(|&v| (((v + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0).round() as u8));
    }
    let png = RgbImage { width: w, height: h, pixels }.to_png(&[]).ok()?;
    Some(format!("data:image/png;base64,{}", STANDARD.encode(png)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_png_data_urls_at_latent_size() {
        let latents: Vec<f32> = (0..4 * 8 * 6).map(|i| (i as f32 / 96.0) - 1.0).collect();
        let url = latent_preview(&latents, [1, 4, 8, 6]).unwrap();
        let png = STANDARD.decode(url.strip_prefix("data:image/png;base64,").unwrap()).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (6, 8));
        assert!(latent_preview(&latents[..10], [1, 4, 8, 6]).is_none());
    }
}
