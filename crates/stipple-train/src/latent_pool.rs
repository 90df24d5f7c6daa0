//! The denoiser stage's data when it reuses encoded scenes: `n` scenes of the data stream are
//! rendered and put through the (frozen) autoencoder once, and every step draws its batch from
//! them at random, with a fresh caption and fresh posterior noise each time.
//!
//! Why: at 4x4 patches, rendering and encoding a batch of 32 scenes cost about as much as the
//! DiT's forward and backward passes together, so a step with a fresh batch spent half its time
//! re-deriving latents of a fixed function. The scene space (3024 attribute combinations, with
//! jitter) is small enough that each pooled scene seen a dozen times, captioned differently, does
//! not narrow what the model learns.

use candle_core::{Device, Tensor};
use stipple_core::model::Autoencoder;
use stipple_core::vae::stipple_vae::StippleAutoencoder;
use stipple_core::Result;

use crate::caption::{caption, CaptionStyle};
use crate::dataset::batch_with_scenes;
use crate::rng::SplitMix64;
use crate::scene::Scene;

/// Scenes encoded per autoencoder call while building the pool.
const ENCODE_CHUNK: usize = 64;

/// Encoded scenes: their posterior means and log-variances `[n, C, h, w]`.
pub struct LatentPool {
    scenes: Vec<Scene>,
    mean: Tensor,
    logvar: Tensor,
}

/// One step's draw from the pool.
pub struct PoolBatch {
    /// Which pooled scenes, in batch order.
    pub picks: Vec<usize>,
    pub mean: Tensor,
    pub logvar: Tensor,
    pub captions: Vec<String>,
}

impl LatentPool {
    /// Items `0..n` of the data stream `data_seed`, encoded by `vae`; `progress(done, n)` is
    /// called after each chunk.
    pub fn build(
        vae: &StippleAutoencoder,
        data_seed: u64,
        n: usize,
        style: CaptionStyle,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<LatentPool> {
        let (mut means, mut logvars, mut scenes) = (Vec::new(), Vec::new(), Vec::with_capacity(n));
        let mut start = 0;
        while start < n {
            let len = ENCODE_CHUNK.min(n - start);
            let (images, _, chunk_scenes) = batch_with_scenes(data_seed, start as u64, len, style)?;
            let (mean, logvar) = vae.encode_moments(&images)?;
            means.push(mean);
            logvars.push(logvar);
            scenes.extend(chunk_scenes);
            start += len;
            progress(start, n);
        }
        // Contiguous: a single chunk's moments are views of one convolution output.
        Ok(LatentPool { scenes, mean: Tensor::cat(&means, 0)?.contiguous()?, logvar: Tensor::cat(&logvars, 0)?.contiguous()? })
    }

    pub fn scene(&self, i: usize) -> &Scene {
        &self.scenes[i]
    }

    pub fn len(&self) -> usize {
        self.scenes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scenes.is_empty()
    }

    /// The batch of `step`: `size` scenes drawn uniformly with the generator of item `step` of
    /// `draw_seed`, captioned with the generator of item `step · size + i` of `caption_seed`.
    pub fn draw(&self, draw_seed: u64, caption_seed: u64, step: usize, size: usize, style: CaptionStyle) -> Result<PoolBatch> {
        let mut rng = SplitMix64::for_item(draw_seed, step as u64);
        let picks: Vec<u32> = (0..size).map(|_| rng.below(self.len()) as u32).collect();
        let captions = picks
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                caption(&self.scenes[p as usize], style, &mut SplitMix64::for_item(caption_seed, (step * size + i) as u64))
            })
            .collect();
        let index = Tensor::from_vec(picks.clone(), size, &Device::Cpu)?;
        Ok(PoolBatch {
            picks: picks.into_iter().map(|p| p as usize).collect(),
            mean: self.mean.index_select(&index, 0)?,
            logvar: self.logvar.index_select(&index, 0)?,
            captions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::named_attributes;
    use crate::checker::read;
    use crate::dataset::{batch, sample};
    use crate::init::seeded_var_builder;
    use candle_nn::VarMap;
    use stipple_core::vae::stipple_vae::StippleVaeConfig;

    fn tiny_vae() -> StippleAutoencoder {
        let config = StippleVaeConfig {
            in_channels: 3,
            latent_channels: 4,
            pixel_block: 4,
            channels: vec![8, 16],
            encoder_blocks: 1,
            decoder_blocks: 1,
            norm_groups: 4,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        };
        StippleAutoencoder::new(&config, seeded_var_builder(&VarMap::new(), 5)).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn pool_holds_the_streams_encodings_and_draws_reproducibly() {
        let (vae, style) = (tiny_vae(), CaptionStyle::default());
        let mut reported = Vec::new();
        let pool = LatentPool::build(&vae, 3, 70, style, &mut |done, total| reported.push((done, total))).unwrap();
        assert_eq!(pool.len(), 70);
        assert_eq!(reported, vec![(64, 70), (70, 70)]);
        // Row i is item i of the data stream, whichever chunk encoded it.
        let (images, _) = batch(3, 60, 10, style).unwrap();
        let direct = values(&vae.encode_moments(&images).unwrap().0);
        let pooled = values(&pool.mean.narrow(0, 60, 10).unwrap());
        assert!(direct.iter().zip(&pooled).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(pool.scene(61), &sample(3, 61, style).scene);

        let (a, b) = (pool.draw(1, 2, 5, 6, style).unwrap(), pool.draw(1, 2, 5, 6, style).unwrap());
        assert_eq!((&a.picks, &a.captions), (&b.picks, &b.captions));
        assert_eq!(values(&a.mean), values(&b.mean));
        assert_eq!(a.mean.dims(), &[6, 4, 16, 16]);
        let row = |t: &Tensor, i: usize| values(&t.narrow(0, i, 1).unwrap());
        assert_eq!(row(&a.logvar, 2), row(&pool.logvar, a.picks[2]));
        let other = pool.draw(1, 2, 6, 6, style).unwrap();
        assert_ne!(a.picks, other.picks);
    }

    #[test]
    fn each_drawn_caption_describes_its_scene() {
        let (vae, style) = (tiny_vae(), CaptionStyle::default());
        let pool = LatentPool::build(&vae, 9, 20, style, &mut |_, _| {}).unwrap();
        let (mut named, mut distinct) = (0, std::collections::HashSet::new());
        for step in 0..10 {
            let drawn = pool.draw(4, 8, step, 16, style).unwrap();
            for (&p, caption) in drawn.picks.iter().zip(&drawn.captions) {
                let (ok, asked) = named_attributes(caption).score(&read(&pool.scene(p).render()));
                assert_eq!(ok, asked, "{caption} for {:?}", pool.scene(p));
                named += asked;
                distinct.insert((p, caption.clone()));
            }
        }
        assert!(named > 400, "{named}");
        // 160 draws of 20 scenes: each scene comes back with other captions.
        assert!(distinct.len() > 60, "{}", distinct.len());
    }
}
