//! The training data: item `i` of the stream `seed` is a scene, its rendering and a caption,
//! the same on every run and computable alone.

use candle_core::{Device, Tensor};
use stipple_core::image_io::RgbImage;

use crate::caption::{caption, CaptionStyle};
use crate::rng::SplitMix64;
use crate::scene::{Scene, IMAGE_SIZE};

#[derive(Debug, Clone)]
pub struct Sample {
    pub scene: Scene,
    pub caption: String,
    pub image: RgbImage,
}

/// Item `index` of the data stream `seed`.
pub fn sample(seed: u64, index: u64, style: CaptionStyle) -> Sample {
    let mut rng = SplitMix64::for_item(seed, index);
    let scene = Scene::random(&mut rng);
    let caption = caption(&scene, style, &mut rng);
    Sample { image: scene.render(), scene, caption }
}

/// Items `start..start + n` of the stream `seed`: images `[n, 3, 128, 128]` in [-1, 1] and
/// their captions.
pub fn batch(seed: u64, start: u64, n: usize, style: CaptionStyle) -> stipple_core::Result<(Tensor, Vec<String>)> {
    let (images, captions, _) = batch_with_scenes(seed, start, n, style)?;
    Ok((images, captions))
}

/// [`batch`], also returning the scenes.
pub fn batch_with_scenes(seed: u64, start: u64, n: usize, style: CaptionStyle) -> stipple_core::Result<(Tensor, Vec<String>, Vec<Scene>)> {
    let mut pixels = Vec::with_capacity(n * 3 * IMAGE_SIZE * IMAGE_SIZE);
    let (mut captions, mut scenes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n as u64 {
        let s = sample(seed, start + i, style);
        pixels.extend(to_signed_chw(&s.image));
        captions.push(s.caption);
        scenes.push(s.scene);
    }
    Ok((Tensor::from_vec(pixels, (n, 3, IMAGE_SIZE, IMAGE_SIZE), &Device::Cpu)?, captions, scenes))
}

/// The seed of the named stream of a run (data, noise, initial weights ... of each stage), so
/// streams never share random numbers.
pub fn stream_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the run's seed.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    SplitMix64::new(seed ^ hash).next_u64()
}

/// `image` as `[3, H, W]` channel-major floats in [-1, 1] (the autoencoder's input range).
pub fn to_signed_chw(image: &RgbImage) -> Vec<f32> {
    let plane = image.width * image.height;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in image.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{read, Attributes};

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let style = CaptionStyle::default();
        for i in [0, 1, 977] {
            let (a, b) = (sample(42, i, style), sample(42, i, style));
            assert_eq!((a.scene, &a.caption, &a.image), (b.scene, &b.caption, &b.image));
        }
        let differing = (0..20).filter(|&i| sample(42, i, style).image != sample(43, i, style).image).count();
        assert!(differing >= 18, "{differing}");
    }

    #[test]
    fn captions_match_pixels() {
        // Whatever a caption names, the checker reads from the image.
        let (mut ok, mut asked) = (0, 0);
        for i in 0..300 {
            let s = sample(7, i, CaptionStyle::default());
            let named = crate::caption::named_attributes(&s.caption);
            let (o, a) = named.score(&read(&s.image));
            ok += o;
            asked += a;
            assert_eq!(Attributes::from(&s.scene).score(&read(&s.image)), (5, 5), "{}", s.caption);
        }
        assert_eq!(ok, asked);
        assert!(asked > 1000);
    }

    #[test]
    fn signed_layout() {
        let img = RgbImage { width: 2, height: 1, pixels: vec![0, 255, 0, 255, 0, 255] };
        assert_eq!(to_signed_chw(&img), vec![-1.0, 1.0, 1.0, -1.0, -1.0, 1.0]);
    }
}
