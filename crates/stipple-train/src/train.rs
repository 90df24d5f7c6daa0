//! The two training stages and the loop they share.
//!
//! 1. Autoencoder: L1 reconstruction plus a small KL term on generated images; then the scale
//!    and shift that give its latents zero mean and unit variance are measured.
//! 2. Denoiser and text encoder, jointly: ε- or v-prediction MSE (optionally Min-SNR-γ weighted) on
//!    noised latents of generated images at uniform timesteps of the scheduler's 1000-step
//!    schedule; the data's empty captions (10%) train the unconditional branch classifier-free
//!    guidance uses.
//!
//! Each stage checkpoints every `checkpoint_every` steps and resumes from its checkpoint; the
//! data, the noise and the initial weights are functions of the seed and the step, so a resumed
//! run continues exactly where it stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;
use stipple_core::dit::patches::{unpatchify, TokenLayout};
use stipple_core::dit::stipple_dit::StippleDit;
use stipple_core::nn::trainable::{linear, Dense};
use stipple_core::model::Autoencoder;
use stipple_core::schedule::{DiscreteSchedule, PredictionType, SchedulerConfig};
use stipple_core::text::stipple_text::{word_level_tokenizer_json, StippleTextConfig, StippleTextModel, WordTokenizer};
use stipple_core::vae::stipple_vae::{StippleAutoencoder, StippleVaeConfig};
use stipple_core::{Error, Result};

use crate::caption::VOCABULARY;
use crate::config::{AutoencoderShape, Optimisation, TrainConfig};
use crate::dataset::{batch, batch_with_scenes, stream_seed};
use crate::export::{self, NamedWeights};
use crate::init::seeded_var_builder;
use crate::latent_pool::LatentPool;
use crate::optim::{learning_rate, AdamW, Ema, Params};
use crate::rng::SplitMix64;
use crate::scene::Scene;
use crate::state::{self, History};

/// Losses shown while training are averaged over this many steps.
const DISPLAY_WINDOW: usize = 20;
/// The final loss reported for a stage is the mean over this many last steps (over the last
/// fifth of shorter runs).
const FINAL_WINDOW: usize = 100;
/// The initial loss reported for a stage is the mean over this many first steps.
pub const INITIAL_WINDOW: usize = 10;

/// What the training loop reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage begins (`done` steps already taken by earlier sessions).
    Stage { name: &'static str, steps: usize, done: usize, params: usize },
    Step { name: &'static str, step: usize, steps: usize, loss: f32, lr: f64, items_per_sec: f64 },
    /// Work before a stage's first step (encoding the latent pool): `done` of `total` items.
    Preparing { name: &'static str, done: usize, total: usize },
    Note(String),
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Ignore existing checkpoints and start both stages over.
    pub restart: bool,
}

/// The record of one stage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageSummary {
    pub name: &'static str,
    pub params: usize,
    pub steps: usize,
    pub batch_size: usize,
    /// Wall time over all sessions.
    pub seconds: f64,
    /// Mean loss of the first [`INITIAL_WINDOW`] steps.
    pub initial_loss: f32,
    pub final_loss: f32,
    pub items_per_sec: f64,
    /// `(step, mean loss of the 50 steps ending there)`.
    pub loss_curve: Vec<(usize, f32)>,
}

/// Run both stages and write the model folder; returns what happened.
pub fn train(config: &TrainConfig, options: &Options, events: &mut dyn FnMut(Event)) -> Result<Vec<StageSummary>> {
    // Checked before any work: a config edited after loading must not fail after the first stage.
    config.validate().map_err(|reason| Error::Unsupported(format!("the training config: {reason}")))?;
    export::write_pipeline_files(&config.output_dir, &config.scheduler, config.defaults)?;
    let autoencoder = train_autoencoder(config, options, events)?;
    let denoiser = train_denoiser(config, options, events)?;
    let summaries = vec![autoencoder, denoiser];
    export::write_json(
        &config.output_dir.join("training_log.json"),
        &json!({"seed": config.seed, "stages": summaries}),
    )?;
    Ok(summaries)
}

/// One stage's loop: `loss_at(step)` builds the loss of a step's batch.
struct Stage<'a> {
    name: &'static str,
    optim: &'a Optimisation,
    checkpoint: PathBuf,
}

impl Stage<'_> {
    fn run(
        &self,
        params: &Params,
        options: &Options,
        events: &mut dyn FnMut(Event),
        mut loss_at: impl FnMut(usize) -> Result<Tensor>,
    ) -> Result<(Ema, StageSummary)> {
        let o = self.optim;
        let mut adam = AdamW::new(params);
        let mut ema = Ema::new(params)?;
        let mut history = History::default();
        if !options.restart && self.checkpoint.is_file() {
            history = state::load(&self.checkpoint, params, &mut adam, &mut ema)?;
        }
        if history.step() > o.steps {
            return Err(Error::invalid_file(
                &self.checkpoint,
                format!("it is at step {} but the config asks for {}; delete it or raise the steps", history.step(), o.steps),
            ));
        }
        events(Event::Stage { name: self.name, steps: o.steps, done: history.step(), params: params.count() });
        let session = Instant::now();
        let session_first = history.step();
        for step in history.step()..o.steps {
            let started = Instant::now();
            let loss = loss_at(step)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(Error::Unsupported(format!(
                    "the {} loss became {value} at step {step}; lower the learning rate in the training config",
                    self.name
                )));
            }
            let grads = loss.backward()?;
            let lr = learning_rate(o, step);
            adam.step(params, &grads, o, lr)?;
            ema.update(params, o.ema_decay, step)?;
            history.losses.push(value);
            history.seconds += started.elapsed().as_secs_f64();
            let done_here = step + 1 - session_first;
            events(Event::Step {
                name: self.name,
                step: step + 1,
                steps: o.steps,
                loss: mean_tail(&history.losses, DISPLAY_WINDOW),
                lr,
                items_per_sec: (done_here * o.batch_size) as f64 / session.elapsed().as_secs_f64().max(1e-9),
            });
            if (step + 1) % o.checkpoint_every == 0 || step + 1 == o.steps {
                state::save(&self.checkpoint, params, &adam, &ema, &history)?;
            }
        }
        let summary = StageSummary {
            name: self.name,
            params: params.count(),
            steps: o.steps,
            batch_size: o.batch_size,
            seconds: history.seconds,
            initial_loss: mean_tail(&history.losses[..history.step().min(INITIAL_WINDOW)], INITIAL_WINDOW),
            final_loss: mean_tail(&history.losses, FINAL_WINDOW.min(history.step() / 5).max(1)),
            items_per_sec: (history.step() * o.batch_size) as f64 / history.seconds.max(1e-9),
            loss_curve: history.losses.chunks(50).enumerate().map(|(i, c)| (i * 50 + c.len(), mean_tail(c, c.len()))).collect(),
        };
        Ok((ema, summary))
    }
}

/// The per-timestep weight of the denoiser's MSE at signal-to-noise ratio `snr`.
///
/// ε-prediction: Min-SNR-γ (Hang et al. 2023), `min(SNR, γ) / SNR`, so the many nearly clean
/// timesteps do not dominate the gradient. In x₀ terms that is `min(SNR, γ)`: an error in the
/// predicted image at high noise, where the layout is decided, costs almost nothing.
///
/// v-prediction: the plain v MSE is an x₀ error weighted by `SNR + 1`, so high-noise steps, where
/// the network must say what image the prompt means, carry full weight. γ caps only the nearly
/// clean end: `(min(SNR, γ) + 1) / (SNR + 1)` (x₀ weight `min(SNR, γ) + 1`). (Measured on the
/// default model: this alone does not teach it position words; see its model card.)
fn loss_weight(prediction: PredictionType, snr: f32, gamma: Option<f32>) -> f32 {
    match (prediction, gamma) {
        (_, None) => 1.0,
        (PredictionType::VPrediction, Some(g)) => ((snr.min(g) + 1.0) / (snr + 1.0)).min(1.0),
        (_, Some(g)) => (snr.min(g) / snr).min(1.0),
    }
}

/// The coverage head's target from a scene's [`Scene::coverage_map`] (one value per latent
/// pixel): `3·coverage − 1`, so the mostly empty blocks sit at −1 and full ones at 2.
pub fn coverage_target(coverage: &[f32]) -> Vec<f32> {
    coverage.iter().map(|c| 3.0 * c - 1.0).collect()
}

/// The colour head's target for `scene` with coverage map `coverage`: the mean sRGB colour of
/// each latent pixel's block, scaled to [-1, 1], channel-major.
pub fn colour_target(scene: &Scene, coverage: &[f32]) -> Vec<f32> {
    scene.colour_map(coverage).into_iter().map(|c| c / 127.5 - 1.0).collect()
}

fn mean_tail(values: &[f32], n: usize) -> f32 {
    let tail = &values[values.len().saturating_sub(n)..];
    tail.iter().sum::<f32>() / tail.len().max(1) as f32
}

/// A `[shape]` tensor of standard normal noise drawn for `step` of the stream `seed`.
fn normal(seed: u64, step: usize, shape: &[usize]) -> Result<Tensor> {
    let mut rng = SplitMix64::for_item(seed, step as u64);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn vae_config(shape: &AutoencoderShape, scaling_factor: f64, shift_factor: f64) -> StippleVaeConfig {
    StippleVaeConfig {
        in_channels: 3,
        latent_channels: shape.latent_channels,
        pixel_block: shape.pixel_block,
        channels: shape.channels.clone(),
        encoder_blocks: shape.encoder_blocks,
        decoder_blocks: shape.decoder_blocks,
        norm_groups: shape.norm_groups,
        scaling_factor,
        shift_factor,
    }
}

/// The EMA weights as named tensors.
fn ema_weights(params: &Params, ema: &Ema) -> NamedWeights {
    NamedWeights {
        names: params.names.clone(),
        shapes: params.vars.iter().map(|v| v.dims().to_vec()).collect(),
        values: ema.shadow.clone(),
    }
}

fn var_builder_of(weights: &NamedWeights) -> Result<VarBuilder<'static>> {
    let mut map = HashMap::new();
    for ((n, s), v) in weights.names.iter().zip(&weights.shapes).zip(&weights.values) {
        map.insert(n.clone(), Tensor::from_slice(v, s.as_slice(), &Device::Cpu)?);
    }
    Ok(VarBuilder::from_tensors(map, DType::F32, &Device::Cpu))
}

/// Mean absolute difference between neighbouring pixels of the reconstruction error, across and
/// down: the L1 error of the image gradients. Edges are a few percent of the pixels, so plain
/// L1 barely sees a blurred outline — and shape is read from the outline.
fn edge_error(error: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = error.dims4()?;
    let across = (error.narrow(3, 1, w - 1)? - error.narrow(3, 0, w - 1)?)?.abs()?.mean_all()?;
    let down = (error.narrow(2, 1, h - 1)? - error.narrow(2, 0, h - 1)?)?.abs()?.mean_all()?;
    Ok((across + down)?)
}

/// `0.5 · mean(μ² + σ² − 1 − log σ²)`: the KL divergence of the posterior from N(0, 1) per element.
fn kl_divergence(mean: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    let terms = ((mean.sqr()? + logvar.exp()?)? - logvar)?;
    Ok(((terms - 1.0)?.mean_all()? * 0.5)?)
}

fn train_autoencoder(config: &TrainConfig, options: &Options, events: &mut dyn FnMut(Event)) -> Result<StageSummary> {
    let ae = &config.autoencoder;
    let shape = &ae.model;
    let varmap = VarMap::new();
    let untrained = vae_config(shape, 1.0, 0.0);
    let vae = StippleAutoencoder::new(&untrained, seeded_var_builder(&varmap, stream_seed(config.seed, "autoencoder-init")))?;
    let params = Params::of(&varmap);
    let style = config.data.style();
    let (data_seed, noise_seed) = (stream_seed(config.seed, "autoencoder-data"), stream_seed(config.seed, "autoencoder-noise"));
    let bs = ae.optim.batch_size;
    let stage = Stage { name: "autoencoder", optim: &ae.optim, checkpoint: config.checkpoint_dir.join("autoencoder.safetensors") };
    let (ema, summary) = stage.run(&params, options, events, |step| {
        let (images, _) = batch(data_seed, (step * bs) as u64, bs, style)?;
        let (mean, logvar) = vae.encode_moments(&images)?;
        let noise = normal(noise_seed, step, mean.dims())?;
        let z = (&mean + (&logvar * 0.5)?.exp()?.mul(&noise)?)?;
        let error = (vae.decode_raw(&z)? - &images)?;
        let reconstruction = (error.abs()?.mean_all()? + (edge_error(&error)? * ae.edge_weight)?)?;
        Ok((reconstruction + (kl_divergence(&mean, &logvar)? * ae.kl_weight)?)?)
    })?;

    let weights = ema_weights(&params, &ema);
    let trained = StippleAutoencoder::new(&untrained, var_builder_of(&weights)?)?;
    let (shift, scale) = latent_statistics(&trained, stream_seed(config.seed, "latent-stats"), ae.latent_stats_images, style)?;
    events(Event::Note(format!("autoencoder latents: shift {shift:.4}, scaling factor {scale:.4}")));
    let final_config = vae_config(shape, scale, shift);
    let config_json = serde_json::to_value(&final_config).map_err(|e| Error::Unsupported(e.to_string()))?;
    export::write_component(
        &config.output_dir.join("vae"),
        "StippleAutoencoderKL",
        &config_json,
        "diffusion_pytorch_model.safetensors",
        &weights,
    )?;
    Ok(summary)
}

/// Mean and `1 / std` of the posterior means over `n` images.
fn latent_statistics(vae: &StippleAutoencoder, seed: u64, n: usize, style: crate::caption::CaptionStyle) -> Result<(f64, f64)> {
    let (mut sum, mut sum_sq, mut count) = (0f64, 0f64, 0usize);
    let mut start = 0;
    while start < n {
        let len = 32.min(n - start);
        let (images, _) = batch(seed, start as u64, len, style)?;
        let (mean, _) = vae.encode_moments(&images)?;
        for v in mean.flatten_all()?.to_vec1::<f32>()? {
            sum += v as f64;
            sum_sq += (v as f64) * (v as f64);
            count += 1;
        }
        start += len;
    }
    let mean = sum / count as f64;
    let std = (sum_sq / count as f64 - mean * mean).max(1e-12).sqrt();
    Ok((mean, 1.0 / std))
}

fn train_denoiser(config: &TrainConfig, options: &Options, events: &mut dyn FnMut(Event)) -> Result<StageSummary> {
    let dn = &config.denoiser;
    let out = &config.output_dir;
    let vae_weights = stipple_core::checkpoint::open_component(&out.join("vae"))?;
    let vae_config: StippleVaeConfig = serde_json::from_value(vae_weights.config.clone())
        .map_err(|e| Error::invalid_file(out.join("vae/config.json"), e.to_string()))?;
    let vae = StippleAutoencoder::new(&vae_config, vae_weights.var_builder(DType::F32, &Device::Cpu))?;

    let text_config = StippleTextConfig {
        vocab_size: export::vocab_size(),
        max_length: dn.text_encoder.max_length,
        hidden_size: dn.text_encoder.hidden_size,
        num_layers: dn.text_encoder.num_layers,
        num_heads: dn.text_encoder.num_heads,
        mlp_ratio: dn.text_encoder.mlp_ratio,
    };
    let tokenizer = WordTokenizer::from_json(&word_level_tokenizer_json(VOCABULARY), text_config.max_length, Path::new("tokenizer.json"))?;
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, stream_seed(config.seed, "denoiser-init"));
    let text = StippleTextModel::new(&text_config, vb.pp("text_encoder"))?;
    let dit = StippleDit::new(&dn.model, vb.pp("transformer"))?;
    // The auxiliary heads (`channels` per latent pixel): created after the networks, so their
    // initial weights do not depend on whether the heads exist; not exported.
    let p = dn.model.patch_size;
    let head = |weight: Option<f64>, channels: usize, name: &str| -> Result<Option<(Dense, f64)>> {
        weight.map(|w| Ok((linear(dn.model.hidden_size, channels * p * p, vb.pp(name))?, w))).transpose()
    };
    let coverage_head = head(dn.coverage_loss_weight, 1, "coverage_head")?;
    let colour_head = head(dn.colour_loss_weight, 3, "colour_head")?;
    let params = Params::of(&varmap);

    let scheduler = SchedulerConfig::from_json_str(&config.scheduler.to_string())
        .map_err(|e| Error::Unsupported(format!("the training config's scheduler: {e}")))?;
    // ε or v: `TrainConfig::validate` refuses the others.
    let prediction = scheduler.prediction();
    let schedule = DiscreteSchedule::from_config(&scheduler)?;
    let signal: Vec<f32> = schedule.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let noise_level: Vec<f32> = schedule.alphas_cumprod.iter().map(|a| (1.0 - a).sqrt()).collect();
    let loss_weight: Vec<f32> = schedule
        .alphas_cumprod
        .iter()
        .map(|&a| loss_weight(prediction, a / (1.0 - a), dn.min_snr_gamma.map(|g| g as f32)))
        .collect();

    let style = config.data.style();
    let data_seed = stream_seed(config.seed, "denoiser-data");
    let noise_seed = stream_seed(config.seed, "denoiser-noise");
    let bs = dn.optim.batch_size;
    let (scale, shift) = (vae.scaling_factor(), vae.shift_factor().unwrap_or(0.0));
    let pool = match dn.latent_pool {
        Some(n) => {
            let started = Instant::now();
            let pool = LatentPool::build(&vae, data_seed, n, style, &mut |done, total| {
                events(Event::Preparing { name: "latent pool", done, total })
            })?;
            events(Event::Note(format!("latent pool: {n} scenes encoded in {:.0} s", started.elapsed().as_secs_f64())));
            Some(pool)
        }
        None => None,
    };
    let (draw_seed, caption_seed) = (stream_seed(config.seed, "denoiser-pool-draw"), stream_seed(config.seed, "denoiser-captions"));
    let stage = Stage { name: "denoiser", optim: &dn.optim, checkpoint: config.checkpoint_dir.join("denoiser.safetensors") };
    let (ema, summary) = stage.run(&params, options, events, |step| {
        let (mean, logvar, captions, scenes) = match &pool {
            Some(pool) => {
                let drawn = pool.draw(draw_seed, caption_seed, step, bs, style)?;
                let scenes = drawn.picks.iter().map(|&p| *pool.scene(p)).collect::<Vec<_>>();
                (drawn.mean, drawn.logvar, drawn.captions, scenes)
            }
            None => {
                let (images, captions, scenes) = batch_with_scenes(data_seed, (step * bs) as u64, bs, style)?;
                let (mean, logvar) = vae.encode_moments(&images)?;
                (mean, logvar, captions, scenes)
            }
        };
        let shape = mean.dims().to_vec();
        let mut rng = SplitMix64::for_item(noise_seed, step as u64);
        let timesteps: Vec<usize> = (0..bs).map(|_| rng.below(schedule.len())).collect();
        let posterior = normal(noise_seed ^ 1, step, &shape)?;
        let eps = normal(noise_seed ^ 2, step, &shape)?;
        let z = (&mean + (&logvar * 0.5)?.exp()?.mul(&posterior)?)?;
        let latents = ((z - shift)? * scale)?;
        let per_sample = |v: &[f32]| Tensor::from_vec(timesteps.iter().map(|&t| v[t]).collect::<Vec<_>>(), (bs, 1, 1, 1), &Device::Cpu);
        let (signal_t, noise_t) = (per_sample(&signal)?, per_sample(&noise_level)?);
        let noisy = (latents.broadcast_mul(&signal_t)? + eps.broadcast_mul(&noise_t)?)?;
        let caption_refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let ids = tokenizer.encode_batch(&caption_refs, &Device::Cpu)?;
        let (context, pooled) = text.forward(&ids)?;
        let t = Tensor::from_vec(timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), bs, &Device::Cpu)?;
        let (predicted, tokens) = dit.forward_with_tokens(&noisy, &t, &context, &pooled)?;
        let target = match prediction {
            // v = √ᾱ·ε − √(1−ᾱ)·x₀
            PredictionType::VPrediction => {
                (eps.broadcast_mul(&signal_t)? - latents.broadcast_mul(&noise_t)?)?
            }
            _ => eps,
        };
        let mut loss = (predicted - target)?.sqr()?.broadcast_mul(&per_sample(&loss_weight)?)?.mean_all()?;
        let (h, w) = (shape[2], shape[3]);
        // Each auxiliary head: a linear map of the last tokens onto a per-latent-pixel target.
        let auxiliary = |head: &Dense, weight: f64, channels: usize, target: Vec<f32>| -> Result<Tensor> {
            let target = Tensor::from_vec(target, (bs, channels, h, w), &Device::Cpu)?;
            let guess = unpatchify(&head.forward(&tokens)?, h / p, w / p, p, TokenLayout::ChannelMajor)?;
            Ok(((guess - target)?.sqr()?.mean_all()? * weight)?)
        };
        // Both heads' targets derive from the scenes' coverage maps: computed once per step.
        let coverage: Vec<Vec<f32>> = if coverage_head.is_some() || colour_head.is_some() {
            scenes.iter().map(|s| s.coverage_map(vae_config.downsample_factor())).collect()
        } else {
            Vec::new()
        };
        if let Some((head, weight)) = &coverage_head {
            let maps = coverage.iter().flat_map(|c| coverage_target(c)).collect();
            loss = (loss + auxiliary(head, *weight, 1, maps)?)?;
        }
        if let Some((head, weight)) = &colour_head {
            let maps = scenes.iter().zip(&coverage).flat_map(|(s, c)| colour_target(s, c)).collect();
            loss = (loss + auxiliary(head, *weight, 3, maps)?)?;
        }
        Ok(loss)
    })?;

    let weights = ema_weights(&params, &ema);
    let text_json = serde_json::to_value(&text_config).map_err(|e| Error::Unsupported(e.to_string()))?;
    export::write_component(&out.join("text_encoder"), "StippleTextEncoder", &text_json, "model.safetensors", &weights.with_prefix("text_encoder"))?;
    let dit_json = serde_json::to_value(&dn.model).map_err(|e| Error::Unsupported(e.to_string()))?;
    export::write_component(
        &out.join("transformer"),
        "StippleDiT",
        &dit_json,
        "diffusion_pytorch_model.safetensors",
        &weights.with_prefix("transformer"),
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_weights_cap_only_the_nearly_clean_end() {
        let (eps, v) = (PredictionType::Epsilon, PredictionType::VPrediction);
        for snr in [1e-4f32, 0.01, 1.0, 5.0] {
            assert_eq!(loss_weight(eps, snr, Some(5.0)), 1.0, "ε at SNR {snr}");
            assert_eq!(loss_weight(v, snr, Some(5.0)), 1.0, "v at SNR {snr}");
        }
        assert!((loss_weight(eps, 50.0, Some(5.0)) - 0.1).abs() < 1e-6);
        assert!((loss_weight(v, 50.0, Some(5.0)) - 6.0 / 51.0).abs() < 1e-6);
        assert_eq!(loss_weight(v, 50.0, None), 1.0);
    }

    /// What the weights mean for an error in the predicted image x₀ (the layout): a v-prediction
    /// error is an x₀ error times √(1+SNR), an ε-prediction error is one times √SNR, so at
    /// SNR 0.01 the v objective charges a wrong layout 101 times what the ε objective does.
    #[test]
    fn v_prediction_charges_image_errors_at_high_noise() {
        let x0_weight = |p: PredictionType, snr: f32| {
            let per_x0 = if p == PredictionType::VPrediction { 1.0 + snr } else { snr };
            loss_weight(p, snr, Some(5.0)) * per_x0
        };
        let ratio = x0_weight(PredictionType::VPrediction, 0.01) / x0_weight(PredictionType::Epsilon, 0.01);
        assert!((ratio - 101.0).abs() < 1e-3, "{ratio}");
        // At the clean end both weigh x₀ errors alike up to the +1.
        assert!((x0_weight(PredictionType::VPrediction, 100.0) - 6.0).abs() < 1e-4);
        assert!((x0_weight(PredictionType::Epsilon, 100.0) - 5.0).abs() < 1e-4);
    }
}
