//! The training recipe: one JSON file names everything a run depends on (data, networks,
//! optimiser settings per stage, noise schedule, seed), so the file and its seed reproduce the
//! shipped weights.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stipple_core::dit::stipple_dit::StippleDitConfig;
use stipple_core::schedule::{PredictionType, SchedulerConfig};
use stipple_core::{Error, Result};

use crate::caption::CaptionStyle;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seeds the data streams, the initial weights and all training noise.
    pub seed: u64,
    /// The model folder written at the end (relative paths: to the config file's folder).
    pub output_dir: PathBuf,
    /// Where resumable checkpoints go (relative paths: to the config file's folder).
    pub checkpoint_dir: PathBuf,
    pub data: DataConfig,
    pub autoencoder: AutoencoderStage,
    pub denoiser: DenoiserStage,
    /// The diffusers `scheduler_config.json` written with the model; its betas define training.
    pub scheduler: serde_json::Value,
    /// Settings `stipple generate` uses when a request leaves them out.
    pub defaults: GenerationDefaults,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub drop_attribute: f64,
    pub drop_caption: f64,
    pub synonym: f64,
}

impl DataConfig {
    pub fn style(&self) -> CaptionStyle {
        CaptionStyle { drop_attribute: self.drop_attribute, drop_caption: self.drop_caption, synonym: self.synonym }
    }
}

/// AdamW with linear warm-up then cosine decay, an exponential moving average of the weights.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimisation {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// The learning rate at the last step, as a fraction of `learning_rate`.
    pub final_lr_fraction: f64,
    pub warmup_steps: usize,
    /// Applied to weight matrices only (not biases, norms or embeddings).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Gradients are scaled down to this global norm when they exceed it.
    pub max_grad_norm: f64,
    pub ema_decay: f64,
    pub checkpoint_every: usize,
}

/// The autoencoder's shape (the scale and shift of its latents are measured after training).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderShape {
    pub latent_channels: usize,
    pub pixel_block: usize,
    pub channels: Vec<usize>,
    pub encoder_blocks: usize,
    pub decoder_blocks: usize,
    pub norm_groups: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderStage {
    pub model: AutoencoderShape,
    pub optim: Optimisation,
    /// Weight of the KL term (mean over latent elements) against the L1 reconstruction loss
    /// (mean over pixels).
    pub kl_weight: f64,
    /// Weight of the L1 error of the image gradients (sharp outlines) against the L1 error.
    pub edge_weight: f64,
    /// Images whose latents set the scaling and shift factors.
    pub latent_stats_images: usize,
}

/// The text encoder's shape (its vocabulary is the caption vocabulary).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextShape {
    pub max_length: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub mlp_ratio: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiserStage {
    pub model: StippleDitConfig,
    pub text_encoder: TextShape,
    pub optim: Optimisation,
    /// Min-SNR-γ loss weighting (its v-prediction form caps only the nearly clean end; see
    /// `train::loss_weight`); `null` for the plain MSE of the scheduler's prediction type.
    pub min_snr_gamma: Option<f64>,
    /// Scenes encoded once and drawn from at random every step (each draw with a fresh
    /// caption and posterior sample); absent or `null`: a fresh batch of scenes every step.
    #[serde(default)]
    pub latent_pool: Option<usize>,
    /// Weight of an auxiliary loss, training only: a linear head on the DiT's last tokens
    /// predicts how much of each latent pixel the object covers (`3·coverage − 1`, from the
    /// generator's scene), at every timestep. Absent or `null`: no such head.
    #[serde(default)]
    pub coverage_loss_weight: Option<f64>,
    /// Weight of a second auxiliary loss, training only: a linear head on the DiT's last tokens
    /// predicts the mean colour of each latent pixel's block (sRGB scaled to [-1, 1], from the
    /// generator's scene), at every timestep, so the object's colour word gets a gradient at the
    /// high noise levels where the layout is decided. Absent or `null`: no such head.
    #[serde(default)]
    pub colour_loss_weight: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationDefaults {
    pub steps: usize,
    pub cfg_scale: f32,
}

impl TrainConfig {
    /// Read and check a config file; relative paths in it become relative to its folder.
    pub fn load(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::missing_file(path, "give the training config, e.g. models/stipple-default/train.json")
            }
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        let mut config: TrainConfig = serde_json::from_str(&text).map_err(|e| Error::invalid_file(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.output_dir = base.join(&config.output_dir);
        config.checkpoint_dir = base.join(&config.checkpoint_dir);
        config.validate().map_err(|reason| Error::invalid_file(path, reason))?;
        Ok(config)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        for (stage, o) in [("autoencoder", &self.autoencoder.optim), ("denoiser", &self.denoiser.optim)] {
            if o.steps == 0 || o.batch_size == 0 || o.checkpoint_every == 0 {
                return Err(format!("{stage}.optim: steps, batch_size and checkpoint_every must be positive"));
            }
            if !(o.learning_rate > 0.0 && (0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2)) {
                return Err(format!("{stage}.optim: learning_rate must be positive and beta1, beta2 in [0, 1)"));
            }
            if !((0.0..1.0).contains(&o.ema_decay) && (0.0..=1.0).contains(&o.final_lr_fraction)) {
                return Err(format!("{stage}.optim: ema_decay must be in [0, 1) and final_lr_fraction in [0, 1]"));
            }
            if !(o.max_grad_norm > 0.0 && o.weight_decay >= 0.0) {
                return Err(format!("{stage}.optim: max_grad_norm must be positive and weight_decay not negative"));
            }
        }
        for (name, p) in [
            ("drop_attribute", self.data.drop_attribute),
            ("drop_caption", self.data.drop_caption),
            ("synonym", self.data.synonym),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("data.{name} is a probability, got {p}"));
            }
        }
        for (name, weight) in
            [("coverage_loss_weight", self.denoiser.coverage_loss_weight), ("colour_loss_weight", self.denoiser.colour_loss_weight)]
        {
            if weight.is_some_and(|w| !(w > 0.0 && w.is_finite())) {
                return Err(format!("denoiser.{name} must be positive (or null for no such head)"));
            }
        }
        if self.denoiser.latent_pool == Some(0) {
            return Err("denoiser.latent_pool must be positive (or null for fresh scenes every step)".into());
        }
        if self.autoencoder.latent_stats_images == 0 {
            return Err("autoencoder.latent_stats_images must be positive".into());
        }
        if self.denoiser.model.in_channels != self.autoencoder.model.latent_channels {
            return Err("denoiser.model.in_channels must equal autoencoder.model.latent_channels".into());
        }
        if self.denoiser.model.context_dim != self.denoiser.text_encoder.hidden_size
            || self.denoiser.model.pooled_dim != self.denoiser.text_encoder.hidden_size
        {
            return Err("denoiser.model.context_dim and pooled_dim must equal denoiser.text_encoder.hidden_size".into());
        }
        let class = self.scheduler.get("_class_name").and_then(|v| v.as_str());
        if class.is_none() {
            return Err("scheduler needs a `_class_name` (e.g. DDIMScheduler)".into());
        }
        let scheduler = SchedulerConfig::from_json_str(&self.scheduler.to_string()).map_err(|e| format!("scheduler: {e}"))?;
        if !matches!(scheduler.prediction(), PredictionType::Epsilon | PredictionType::VPrediction) {
            return Err(
                "scheduler.prediction_type: the default model is trained for ε- or v-prediction; set \"epsilon\" or \"v_prediction\""
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn shipped_config_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stipple-default/train.json")
    }

    #[test]
    fn the_shipped_config_loads() {
        let c = TrainConfig::load(&shipped_config_path()).unwrap();
        assert!(c.output_dir.ends_with("models/stipple-default/."), "{}", c.output_dir.display());
    }

    #[test]
    fn auxiliary_weights_must_be_positive() {
        let mut c = TrainConfig::load(&shipped_config_path()).unwrap();
        for bad in [0.0, -1.0, f64::NAN] {
            c.denoiser.coverage_loss_weight = Some(bad);
            assert!(c.validate().unwrap_err().contains("coverage_loss_weight"));
        }
        c.denoiser.coverage_loss_weight = Some(0.5);
        assert!(c.validate().is_ok());
        for bad in [0.0, -1.0, f64::INFINITY] {
            c.denoiser.colour_loss_weight = Some(bad);
            assert!(c.validate().unwrap_err().contains("colour_loss_weight"));
        }
        c.denoiser.colour_loss_weight = None;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(shipped_config_path()).unwrap();
        let path = dir.path().join("train.json");
        std::fs::write(&path, text.replace("\"drop_caption\": 0.1", "\"drop_caption\": 1.5")).unwrap();
        let err = TrainConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("train.json") && err.contains("drop_caption"), "{err}");
        std::fs::write(&path, text.replace("\"epsilon\"", "\"sample\"")).unwrap();
        let err = TrainConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("train.json") && err.contains("prediction_type"), "{err}");
        std::fs::write(&path, text.replace("\"latent_pool\": 49152", "\"latent_pool\": 0")).unwrap();
        let err = TrainConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("train.json") && err.contains("latent_pool"), "{err}");
        std::fs::write(&path, text.replace("\"seed\"", "\"sede\"")).unwrap();
        let err = TrainConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("sede"), "{err}");
        let err = TrainConfig::load(&dir.path().join("none.json")).unwrap_err().to_string();
        assert!(err.contains("none.json"), "{err}");
    }
}
