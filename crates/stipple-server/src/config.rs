//! The service's settings: one typed struct, filled from defaults, then a TOML file, then
//! `STIPPLE_*` environment variables (each field's name in upper case: `STIPPLE_ADDR`,
//! `STIPPLE_RETENTION_SECS`, ...), then command-line flags. The defaults run on a laptop.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StartError;

/// Where the shipped default model lives in a checkout.
pub const DEFAULT_MODEL_DIR: &str = "models/stipple-default";
/// The random test pipeline in the repository: the fallback while no real model is configured.
pub const TEST_MODEL_DIR: &str = "testdata/vectors/models/sd_tiny";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub addr: String,
    /// Folder for the SQLite database, the images and the signing key.
    pub data_dir: PathBuf,
    /// SQL database; default `sqlite://<data_dir>/stipple.db`.
    pub database_url: Option<String>,
    /// Public base URL (`https://example.com`), used for share links and OpenAI `url` results;
    /// default: taken from the request's Host header.
    pub public_url: Option<String>,
    /// Key that signs cookies and image URLs; default: generated once into `<data_dir>/secret.key`.
    pub secret: Option<String>,
    /// The shipped default model's folder, served first when it exists (`""` turns it off).
    pub default_model_dir: PathBuf,
    /// More model folders to serve beside the default model.
    pub models: Vec<ModelConfig>,
    /// Name of the model used when a request names none; default: the first in `models`.
    pub default_model: Option<String>,
    /// In-process workers running the engine (0: only serve the API; run `stipple worker`).
    pub workers: usize,
    /// How long a worker's claim on a job lasts without a heartbeat.
    pub lease_secs: u64,
    /// Tries per job before it fails (a job is tried again when its worker died).
    pub max_attempts: i64,
    /// How long unsaved results (image and prompt) are kept.
    pub retention_secs: u64,
    /// How often expired results are purged.
    pub purge_interval_secs: u64,
    pub anonymous_daily_tokens: i64,
    pub account_daily_tokens: i64,
    /// Tokens credited per purchased pack.
    pub tokens_per_pack: i64,
    /// Payment page for a token pack (a Stripe Payment Link); the page's buy button opens it
    /// with `client_reference_id=<account id>`.
    pub checkout_url: Option<String>,
    /// Signing secret of the billing webhook (Stripe's `whsec_...`); the webhook is off without it.
    pub webhook_secret: Option<String>,
    /// Oldest webhook signature timestamp accepted, in seconds.
    pub webhook_tolerance_secs: u64,
    /// Accounts one client address may create per UTC day (each gets its own allowance).
    pub max_signups_per_address_per_day: i64,
    /// Per-address request rate limit on the API: sustained requests per minute, and burst.
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    /// Largest image side in pixels.
    pub max_side: usize,
    pub max_steps: usize,
    pub max_prompt_chars: usize,
    /// Most images one OpenAI-style request may ask for.
    pub max_images_per_request: usize,
    /// Send a preview with every this many progress events.
    pub preview_every: usize,
    /// Mark cookies `Secure`; default: when `public_url` is https.
    pub secure_cookies: Option<bool>,
    /// Take the client address from the last `X-Forwarded-For` hop (behind a reverse proxy).
    pub trust_forwarded_for: bool,
    /// Longest a synchronous (OpenAI-style) request waits for its images.
    pub sync_timeout_secs: u64,
}

/// One served model: a path, optionally with a display name and a price factor.
/// In TOML either `models = ["path", ...]` or `[[models]] path = ".." name = ".." cost_factor = 2.0`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ModelConfig {
    Path(PathBuf),
    Detailed {
        path: PathBuf,
        #[serde(default)]
        name: Option<String>,
        /// Multiplies the cost table for this model (bigger models cost more per pixel-step).
        #[serde(default)]
        cost_factor: Option<f64>,
    },
}

impl ModelConfig {
    pub fn path(&self) -> &Path {
        match self {
            ModelConfig::Path(p) | ModelConfig::Detailed { path: p, .. } => p,
        }
    }
    pub fn name(&self) -> Option<&str> {
        match self {
            ModelConfig::Path(_) => None,
            ModelConfig::Detailed { name, .. } => name.as_deref(),
        }
    }
    pub fn cost_factor(&self) -> f64 {
        match self {
            ModelConfig::Path(_) => 1.0,
            ModelConfig::Detailed { cost_factor, .. } => cost_factor.unwrap_or(1.0),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("stipple-data"),
            database_url: None,
            public_url: None,
            secret: None,
            default_model_dir: PathBuf::from(DEFAULT_MODEL_DIR),
            models: Vec::new(),
            default_model: None,
            workers: 1,
            lease_secs: 30,
            max_attempts: 3,
            retention_secs: 3600,
            purge_interval_secs: 60,
            anonymous_daily_tokens: 2_500,
            account_daily_tokens: 5_000,
            tokens_per_pack: 200_000,
            checkout_url: None,
            webhook_secret: None,
            webhook_tolerance_secs: 300,
            max_signups_per_address_per_day: 3,
            rate_limit_per_minute: 120,
            rate_limit_burst: 60,
            max_side: 1024,
            max_steps: 100,
            max_prompt_chars: 2000,
            max_images_per_request: 4,
            preview_every: 3,
            secure_cookies: None,
            trust_forwarded_for: false,
            sync_timeout_secs: 600,
        }
    }
}

impl Config {
    /// Defaults, overlaid by `file` (if given) and then by `STIPPLE_*` variables from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, StartError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| StartError::Config(format!("cannot read config file {}: {e}", path.display())))?;
                text.parse::<toml::Table>()
                    .map_err(|e| StartError::Config(format!("config file {} is not valid TOML: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let fields = Self::field_names();
        for (var, value) in env {
            let Some(key) = var.strip_prefix("STIPPLE_").map(str::to_ascii_lowercase) else { continue };
            if !fields.contains(&key) {
                continue; // STIPPLE_LOG, STIPPLE_CONFIG and the like belong to others
            }
            table.insert(key, env_value(&value));
        }
        let origin = file.map(|p| p.display().to_string()).unwrap_or_else(|| "the environment".into());
        table
            .try_into::<Config>()
            .map_err(|e| StartError::Config(format!("invalid setting in {origin} or STIPPLE_* variables: {e}")))
    }

    fn field_names() -> Vec<String> {
        // Every field, including the optional ones that serialise to nothing.
        const OPTIONAL: [&str; 7] =
            ["database_url", "public_url", "secret", "default_model", "checkout_url", "webhook_secret", "secure_cookies"];
        let mut names: Vec<String> = toml::Table::try_from(Config::default())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(OPTIONAL.iter().map(|s| s.to_string()));
        names
    }

    /// The models to serve: the default model when present, then the configured ones; with
    /// neither, the test pipeline (with a warning, as it draws noise).
    pub fn resolved_models(&self) -> Vec<ModelConfig> {
        let mut models = Vec::new();
        let dir = &self.default_model_dir;
        if !dir.as_os_str().is_empty() && dir.join("model_index.json").exists() && !self.models.iter().any(|m| m.path() == dir) {
            models.push(ModelConfig::Path(dir.clone()));
        }
        models.extend(self.models.iter().cloned());
        if models.is_empty() {
            tracing::warn!("{} not found; serving the test pipeline {TEST_MODEL_DIR}, which draws noise", dir.display());
            models.push(ModelConfig::Path(TEST_MODEL_DIR.into()));
        }
        models
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("stipple.db").display()))
    }

    pub fn cookies_secure(&self) -> bool {
        self.secure_cookies.unwrap_or_else(|| self.public_url.as_deref().is_some_and(|u| u.starts_with("https://")))
    }

    /// Check ranges once at start, naming the setting.
    pub fn validate(&self) -> Result<(), StartError> {
        let positive = [
            ("lease_secs", self.lease_secs as i64),
            ("max_attempts", self.max_attempts),
            ("retention_secs", self.retention_secs as i64),
            ("purge_interval_secs", self.purge_interval_secs as i64),
            ("tokens_per_pack", self.tokens_per_pack),
            ("max_signups_per_address_per_day", self.max_signups_per_address_per_day),
            ("rate_limit_per_minute", self.rate_limit_per_minute as i64),
            ("rate_limit_burst", self.rate_limit_burst as i64),
            ("max_side", self.max_side as i64),
            ("max_steps", self.max_steps as i64),
            ("max_prompt_chars", self.max_prompt_chars as i64),
            ("max_images_per_request", self.max_images_per_request as i64),
            ("preview_every", self.preview_every as i64),
            ("sync_timeout_secs", self.sync_timeout_secs as i64),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(StartError::Config(format!("setting `{name}` must be at least 1, got {v}")));
            }
        }
        for (name, v) in [("anonymous_daily_tokens", self.anonymous_daily_tokens), ("account_daily_tokens", self.account_daily_tokens)] {
            if v < 0 {
                return Err(StartError::Config(format!("setting `{name}` must be >= 0, got {v}")));
            }
        }
        if self.max_side > stipple_core::pipeline::MAX_SIDE || self.max_steps > stipple_core::pipeline::MAX_STEPS {
            return Err(StartError::Config(format!(
                "settings `max_side` and `max_steps` must be at most {} and {}",
                stipple_core::pipeline::MAX_SIDE,
                stipple_core::pipeline::MAX_STEPS
            )));
        }
        Ok(())
    }
}

/// An environment value as TOML when it parses as a TOML value (numbers, booleans, arrays),
/// else as a plain string (paths, URLs).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stipple.toml");
        std::fs::write(&file, "addr = \"0.0.0.0:9000\"\nretention_secs = 60\n[[models]]\npath = \"m/a\"\ncost_factor = 2.0\n").unwrap();
        let c = Config::load(
            Some(&file),
            env(&[("STIPPLE_RETENTION_SECS", "120"), ("STIPPLE_DATA_DIR", "/tmp/x y"), ("STIPPLE_LOG", "debug"), ("HOME", "/")]),
        )
        .unwrap();
        assert_eq!(c.addr, "0.0.0.0:9000");
        assert_eq!(c.retention_secs, 120);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x y"));
        assert_eq!(c.models[0].cost_factor(), 2.0);
        assert_eq!(c.account_daily_tokens, 5000);
    }

    #[test]
    fn environment_sets_optional_fields_and_lists() {
        let c = Config::load(None, env(&[("STIPPLE_WEBHOOK_SECRET", "whsec_1"), ("STIPPLE_MODELS", "[\"a\", \"b\"]")])).unwrap();
        assert_eq!(c.webhook_secret.as_deref(), Some("whsec_1"));
        assert_eq!(c.models, vec![ModelConfig::Path("a".into()), ModelConfig::Path("b".into())]);
    }

    #[test]
    fn the_default_model_comes_first_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("stipple-default");
        std::fs::create_dir(&default).unwrap();
        std::fs::write(default.join("model_index.json"), "{}").unwrap();
        let c = Config { default_model_dir: default.clone(), models: vec![ModelConfig::Path("extra".into())], ..Config::default() };
        assert_eq!(c.resolved_models(), vec![ModelConfig::Path(default), ModelConfig::Path("extra".into())]);
        let c = Config { default_model_dir: "".into(), models: vec![ModelConfig::Path("extra".into())], ..Config::default() };
        assert_eq!(c.resolved_models(), vec![ModelConfig::Path("extra".into())]);
        let c = Config { default_model_dir: dir.path().join("absent"), ..Config::default() };
        assert_eq!(c.resolved_models(), vec![ModelConfig::Path(TEST_MODEL_DIR.into())]);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::load(None, env(&[("STIPPLE_WORKERS", "many")])).unwrap_err().to_string();
        assert!(err.contains("workers"), "{err}");
        let c = Config { max_steps: 0, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("max_steps"));
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "adress = \"x\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("adress"), "{err}");
    }
}
