//! Scoring a model: generate an image per prompt (and seed), read it back with the
//! [`crate::checker`], and count the attributes each prompt names that the image shows.

use std::time::Instant;

use stipple_core::image_io::RgbImage;
use stipple_core::model::Autoencoder;
use stipple_core::pipeline::{Flow, Pipeline, Request};
use stipple_core::rng::TorchRng;
use stipple_core::sampler::SamplerKind;
use stipple_core::Result;

use crate::caption::{named_attributes, CaptionStyle};
use crate::checker::{read, Attributes, Reading};
use crate::dataset::batch;
use crate::rng::SplitMix64;
use crate::scene::Scene;

/// Seed of `stipple eval`'s built-in prompt set.
pub const PROMPT_SEED: u64 = 2024;

/// `n` prompts naming all five attributes (the canonical caption of random scenes).
pub fn full_prompts(seed: u64, n: usize) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| Scene::random(&mut rng).to_string()).collect()
}

/// How images are generated for scoring.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub steps: usize,
    pub cfg_scale: f32,
    pub sampler: SamplerKind,
    /// Images per prompt; prompt `i` uses seeds `first_seed + i·seeds ..` so every image has
    /// its own noise.
    pub seeds: u64,
    pub first_seed: u64,
}

/// Counts per attribute: background, colour, shape, size, position.
pub const ATTRIBUTES: [&str; 5] = ["background", "colour", "shape", "size", "position"];

/// One scored image.
#[derive(Debug, Clone)]
pub struct Scored {
    pub prompt: String,
    pub seed: u64,
    pub image: RgbImage,
    pub reading: Reading,
    /// Per attribute: `None` when the prompt does not name it.
    pub correct: [Option<bool>; 5],
    pub seconds: f64,
}

/// The totals of an evaluation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// `(correct, asked)` per attribute, in [`ATTRIBUTES`] order.
    pub per_attribute: [(usize, usize); 5],
    pub images: usize,
    pub mean_seconds: f64,
}

impl Report {
    pub fn accuracy(&self) -> f64 {
        let (c, a) = self.per_attribute.iter().fold((0, 0), |(c, a), &(ci, ai)| (c + ci, a + ai));
        c as f64 / a.max(1) as f64
    }

    fn add(&mut self, s: &Scored) {
        for (slot, ok) in self.per_attribute.iter_mut().zip(s.correct) {
            if let Some(ok) = ok {
                slot.0 += ok as usize;
                slot.1 += 1;
            }
        }
        self.mean_seconds = (self.mean_seconds * self.images as f64 + s.seconds) / (self.images + 1) as f64;
        self.images += 1;
    }
}

/// Generate and score every prompt × seed; `each` sees every scored image as it is made.
pub fn evaluate(pipeline: &Pipeline, prompts: &[String], settings: Settings, each: &mut dyn FnMut(&Scored)) -> Result<Report> {
    let mut report = Report::default();
    let d = pipeline.defaults;
    for (i, prompt) in prompts.iter().enumerate() {
        let asked = named_attributes(prompt);
        let first = settings.first_seed + i as u64 * settings.seeds;
        for seed in first..first + settings.seeds {
            let req = Request {
                prompt: prompt.clone(),
                negative_prompt: String::new(),
                width: d.width,
                height: d.height,
                steps: settings.steps,
                cfg_scale: settings.cfg_scale,
                sampler: settings.sampler,
                eta: 0.0,
                init: None,
            };
            let started = Instant::now();
            let out = pipeline.generate(&req, &mut TorchRng::new(seed), &mut |_| Flow::Continue)?;
            let seconds = started.elapsed().as_secs_f64();
            let reading = read(&out.image);
            let scored = Scored { prompt: prompt.clone(), seed, correct: asked.judge(&reading), reading, image: out.image, seconds };
            report.add(&scored);
            each(&scored);
        }
    }
    Ok(report)
}

/// Encode and decode `n` generated images (stream `seed`) through `vae` and score the
/// reconstructions against their scenes: what the autoencoder lets through. Also returns the
/// mean absolute pixel error (images in [-1, 1]).
pub fn autoencoder_roundtrip(vae: &dyn Autoencoder, seed: u64, n: usize) -> Result<(Report, f64)> {
    let mut report = Report::default();
    let (mut error_sum, mut batches) = (0f64, 0usize);
    let mut start = 0usize;
    while start < n {
        let len = 16.min(n - start);
        let started = Instant::now();
        let (images, _) = batch(seed, start as u64, len, CaptionStyle::FULL)?;
        let (mean, _) = vae.encode_moments(&images)?;
        let decoded = vae.decode_raw(&mean)?;
        error_sum += (&decoded - &images)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
        batches += 1;
        let seconds = started.elapsed().as_secs_f64() / len as f64;
        for i in 0..len {
            let sample = crate::dataset::sample(seed, (start + i) as u64, CaptionStyle::FULL);
            let image = RgbImage::from_decoded(&decoded.get(i)?)?;
            let reading = read(&image);
            let correct = Attributes::from(&sample.scene).judge(&reading);
            report.add(&Scored { prompt: sample.caption, seed, image, reading, correct, seconds });
        }
        start += len;
    }
    Ok((report, error_sum / batches.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Attributes;

    #[test]
    fn full_prompts_name_everything_and_repeat() {
        let p = full_prompts(3, 50);
        assert_eq!(p, full_prompts(3, 50));
        for prompt in &p {
            let a = named_attributes(prompt);
            assert!(a.background.is_some() && a.colour.is_some() && a.shape.is_some() && a.size.is_some() && a.cell.is_some());
        }
    }

    #[test]
    fn report_counts_only_asked_attributes() {
        let mut rng = SplitMix64::new(4);
        let scene = Scene::random(&mut rng);
        let reading = read(&scene.render());
        let asked = Attributes { shape: Some(scene.shape), background: Some(scene.background), ..Default::default() };
        let scored = Scored {
            prompt: String::new(),
            seed: 0,
            image: scene.render(),
            reading,
            correct: asked.judge(&reading),
            seconds: 1.0,
        };
        let mut r = Report::default();
        r.add(&scored);
        assert_eq!(r.per_attribute, [(1, 1), (0, 0), (1, 1), (0, 0), (0, 0)]);
        assert_eq!(r.accuracy(), 1.0);
    }
}
