//! Noise schedules: betas, cumulative alphas, sigmas and timestep spacing, computed with the
//! precision diffusers uses (numpy float64 where diffusers uses numpy, float32 where it uses
//! torch), so that sampler trajectories agree with diffusers to a float32 ulp or two.

use serde::Deserialize;

use crate::{Error, Result};

/// How betas grow over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// How inference timesteps are picked from the training range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
    FlowPrediction,
}

/// A diffusers `scheduler_config.json`, every key optional: each sampler fills in its own
/// class's defaults, as `SomeScheduler.from_config(other_config)` does in diffusers.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<BetaSchedule>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<PredictionType>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: Option<i64>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub thresholding: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub variance_type: Option<String>,
    pub use_karras_sigmas: Option<bool>,
    pub final_sigmas_type: Option<String>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
    pub shift: Option<f64>,
    pub use_dynamic_shifting: Option<bool>,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: Option<usize>,
    pub max_image_seq_len: Option<usize>,
    pub time_shift_type: Option<String>,
    pub invert_sigmas: Option<bool>,
    pub shift_terminal: Option<f64>,
    pub stochastic_sampling: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    /// A number, or `"-Infinity"` as diffusers writes it.
    pub lambda_min_clipped: Option<serde_json::Value>,
}

impl SchedulerConfig {
    /// Parse a diffusers scheduler config. Accepts the bare `-Infinity` / `Infinity` / `NaN`
    /// tokens diffusers writes for `lambda_min_clipped` (not valid JSON).
    pub fn from_json_str(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(&crate::checkpoint::config_json::quote_non_finite(text))
    }

    /// Read `scheduler_config.json` from a file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::missing_file(path, "a diffusers pipeline keeps its scheduler settings in scheduler/scheduler_config.json"),
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        Self::from_json_str(&text).map_err(|e| Error::invalid_file(path, e.to_string()))
    }

    pub fn train_steps(&self) -> usize {
        self.num_train_timesteps.unwrap_or(1000)
    }
    pub fn prediction(&self) -> PredictionType {
        self.prediction_type.unwrap_or(PredictionType::Epsilon)
    }
    pub fn offset(&self) -> i64 {
        self.steps_offset.unwrap_or(0)
    }
    /// DPM-Solver's clipping of the smallest log-SNR (default: no clipping).
    pub fn lambda_min_clipped(&self) -> f64 {
        match &self.lambda_min_clipped {
            Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NEG_INFINITY),
            Some(serde_json::Value::String(s)) => match s.as_str() {
                "Infinity" => f64::INFINITY,
                "NaN" => f64::NAN,
                _ => f64::NEG_INFINITY,
            },
            _ => f64::NEG_INFINITY,
        }
    }
}

/// The training noise schedule of DDPM-family models.
#[derive(Debug, Clone)]
pub struct DiscreteSchedule {
    pub betas: Vec<f32>,
    /// `cumprod(1 - betas)`, float32 values as diffusers stores them.
    pub alphas_cumprod: Vec<f32>,
}

impl DiscreteSchedule {
    /// Betas and cumulative alphas from a config (diffusers defaults: 1000 steps, linear
    /// 0.0001 → 0.02).
    pub fn from_config(cfg: &SchedulerConfig) -> Result<Self> {
        let n = cfg.train_steps();
        if n == 0 {
            return Err(Error::Unsupported("num_train_timesteps must be at least 1".into()));
        }
        let betas: Vec<f32> = match &cfg.trained_betas {
            Some(b) if !b.is_empty() => {
                if b.len() != n {
                    return Err(Error::Unsupported(format!(
                        "trained_betas has {} entries but num_train_timesteps is {n}",
                        b.len()
                    )));
                }
                b.iter().map(|&x| x as f32).collect()
            }
            _ => {
                let start = cfg.beta_start.unwrap_or(0.0001);
                let end = cfg.beta_end.unwrap_or(0.02);
                match cfg.beta_schedule.unwrap_or(BetaSchedule::Linear) {
                    BetaSchedule::Linear => torch_linspace_f32(start as f32, end as f32, n),
                    BetaSchedule::ScaledLinear => torch_linspace_f32(start.sqrt() as f32, end.sqrt() as f32, n)
                        .into_iter()
                        .map(|b| b * b)
                        .collect(),
                    BetaSchedule::SquaredcosCapV2 => cosine_betas(n, 0.999),
                }
            }
        };
        let mut betas = betas;
        let mut alphas_cumprod = cumprod_one_minus(&betas);
        if cfg.rescale_betas_zero_snr.unwrap_or(false) {
            betas = rescale_zero_terminal_snr(&alphas_cumprod);
            alphas_cumprod = cumprod_one_minus(&betas);
            // As diffusers: avoid an infinite signal-to-noise ratio at the last step.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        Ok(DiscreteSchedule { betas, alphas_cumprod })
    }

    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// `sqrt((1 - ᾱ) / ᾱ)` per training step, float32 as diffusers computes it in torch.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
    }

    /// `ᾱ[t]`, with `final_alpha` for negative `t`.
    pub fn alpha_at(&self, t: i64, final_alpha: f32) -> f32 {
        if t < 0 {
            final_alpha
        } else {
            self.alphas_cumprod[(t as usize).min(self.len() - 1)]
        }
    }
}

/// `cumprod(1 - betas)`: torch accumulates a float32 cumprod in double on the CPU.
fn cumprod_one_minus(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// Betas from the squared-cosine ᾱ(t) of Nichol & Dhariwal, capped at `max_beta` (float64, as
/// diffusers' `betas_for_alpha_bar`).
fn cosine_betas(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// Rescale betas to zero terminal SNR (Lin et al. 2023, Algorithm 1), as diffusers does.
fn rescale_zero_terminal_snr(alphas_cumprod: &[f32]) -> Vec<f32> {
    let mut sqrt_ac: Vec<f32> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let first = sqrt_ac[0];
    let last = *sqrt_ac.last().unwrap_or(&0.0);
    for v in sqrt_ac.iter_mut() {
        *v -= last;
        *v *= first / (first - last);
    }
    let ac: Vec<f32> = sqrt_ac.iter().map(|v| v * v).collect();
    let mut alphas = Vec::with_capacity(ac.len());
    alphas.push(ac[0]);
    for i in 1..ac.len() {
        alphas.push(ac[i] / ac[i - 1]);
    }
    alphas.iter().map(|a| 1.0 - a).collect()
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU: the step is computed in float32
/// and the first half counts up from `start`, the second half down from `end`.
pub fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| if i < half { start + step * i as f32 } else { end - step * (n - i - 1) as f32 })
        .collect()
}

/// `numpy.linspace(start, stop, n)` in float64 (endpoint included).
pub fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// `numpy.interp(x, [0, 1, ..., len-1], ys)` in float64.
pub fn interp_index(x: f64, ys: &[f32]) -> f64 {
    let last = ys.len() - 1;
    if x <= 0.0 {
        return ys[0] as f64;
    }
    if x >= last as f64 {
        return ys[last] as f64;
    }
    let lo = x.floor() as usize;
    let frac = x - lo as f64;
    let (a, b) = (ys[lo] as f64, ys[lo + 1] as f64);
    // numpy's formula: slope * (x - xp[j]) + fp[j]
    (b - a) * frac + a
}

/// Round half to even, as numpy's `round`.
pub fn np_round(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// Integer inference timesteps, descending, for the DDPM family (DDPM, DDIM, Euler, ...):
/// `leading` takes multiples of `train // n` plus `steps_offset`, `trailing` counts down from the
/// end in steps of `train / n`, `linspace` spreads `n` points over `[0, train - 1]`.
pub fn spaced_timesteps(spacing: TimestepSpacing, train: usize, n: usize, steps_offset: i64) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(Error::param("steps", "must be at least 1"));
    }
    if n > train {
        return Err(Error::param(
            "steps",
            format!("{n} is more than the model's {train} training timesteps"),
        ));
    }
    let ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n).into_iter().rev().collect(),
        TimestepSpacing::Leading => {
            let ratio = (train / n) as f64;
            (0..n).rev().map(|i| np_round(i as f64 * ratio) + steps_offset as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            // np.arange(train, 0, -ratio): train - k*ratio while > 0
            let mut v = Vec::new();
            let mut k = 0usize;
            loop {
                let x = train as f64 - k as f64 * ratio;
                if x <= 0.0 {
                    break;
                }
                v.push(np_round(x) - 1.0);
                k += 1;
            }
            v
        }
    };
    Ok(ts)
}

/// Karras et al. (2022) sigmas: `n` points evenly spaced in `sigma^(1/rho)`, rho = 7.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, interpolating in log-sigma
/// (diffusers' `_sigma_to_t`; `log_sigmas` ascending in t, float32 as numpy holds them).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // low_idx = number of log_sigmas <= log_sigma, minus one, clipped to [0, n - 2]
    let count = log_sigmas.iter().filter(|&&ls| log_sigma - ls as f64 >= 0.0).count();
    let low_idx = count.saturating_sub(1).min(n - 2);
    let (low, high) = (log_sigmas[low_idx] as f64, log_sigmas[low_idx + 1] as f64);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// FLUX's dynamic shift `mu`, linear in the image token count between
/// (`base_seq_len`, `base_shift`) and (`max_seq_len`, `max_shift`) (FluxPipeline's `calculate_shift`).
pub fn flux_mu(image_seq_len: usize, base_seq_len: usize, max_seq_len: usize, base_shift: f64, max_shift: f64) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some(BetaSchedule::ScaledLinear),
            ..Default::default()
        }
    }

    #[test]
    fn leading_spacing_with_offset() {
        let t = spaced_timesteps(TimestepSpacing::Leading, 1000, 4, 1).unwrap();
        assert_eq!(t, vec![751.0, 501.0, 251.0, 1.0]);
    }

    #[test]
    fn trailing_spacing_ends_at_last_training_step() {
        let t = spaced_timesteps(TimestepSpacing::Trailing, 1000, 3, 0).unwrap();
        assert_eq!(t, vec![999.0, 666.0, 332.0]);
        // 7 does not divide 1000: ratio 142.857...
        let t = spaced_timesteps(TimestepSpacing::Trailing, 1000, 7, 0).unwrap();
        assert_eq!(t, vec![999.0, 856.0, 713.0, 570.0, 428.0, 285.0, 142.0]);
    }

    #[test]
    fn linspace_spacing_one_step_and_many() {
        assert_eq!(spaced_timesteps(TimestepSpacing::Linspace, 1000, 1, 0).unwrap(), vec![0.0]);
        let t = spaced_timesteps(TimestepSpacing::Linspace, 1000, 3, 0).unwrap();
        assert_eq!(t, vec![999.0, 499.5, 0.0]);
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        assert!(spaced_timesteps(TimestepSpacing::Leading, 1000, 0, 1).is_err());
        let e = spaced_timesteps(TimestepSpacing::Leading, 1000, 1001, 1).unwrap_err();
        assert!(e.to_string().contains("steps"), "{e}");
    }

    #[test]
    fn scaled_linear_alphas_cumprod_matches_sd15_endpoints() {
        let s = DiscreteSchedule::from_config(&sd15()).unwrap();
        assert_eq!(s.len(), 1000);
        assert!((s.alphas_cumprod[0] - 0.99915).abs() < 1e-6);
        // diffusers: alphas_cumprod[-1] of SD1.5 = 0.00466009508818388
        assert!((s.alphas_cumprod[999] - 0.004_660_095).abs() < 1e-8, "{}", s.alphas_cumprod[999]);
    }

    #[test]
    fn cosine_schedule_is_not_degenerate() {
        let cfg = SchedulerConfig { beta_schedule: Some(BetaSchedule::SquaredcosCapV2), ..Default::default() };
        let s = DiscreteSchedule::from_config(&cfg).unwrap();
        assert!(s.betas.windows(2).all(|w| w[1] >= w[0]));
        assert!(s.alphas_cumprod[0] > 0.9999 && s.alphas_cumprod[999] < 1e-3);
        assert!((s.betas[999] - 0.999).abs() < 1e-6);
    }

    #[test]
    fn zero_snr_rescale_reaches_zero() {
        let mut cfg = sd15();
        cfg.rescale_betas_zero_snr = Some(true);
        let s = DiscreteSchedule::from_config(&cfg).unwrap();
        assert!(s.alphas_cumprod[999] < 1e-6);
    }

    #[test]
    fn non_finite_json_tokens_are_accepted() {
        let c = SchedulerConfig::from_json_str(r#"{"lambda_min_clipped": -Infinity, "beta_start": 0.1, "x": "NaN"}"#).unwrap();
        assert_eq!(c.beta_start, Some(0.1));
    }

    #[test]
    fn numpy_rounding_is_half_to_even() {
        assert_eq!(np_round(0.5), 0.0);
        assert_eq!(np_round(1.5), 2.0);
        assert_eq!(np_round(2.5), 2.0);
        assert_eq!(np_round(-0.5), -0.0);
        assert_eq!(np_round(2.6), 3.0);
    }

    #[test]
    fn karras_endpoints() {
        let s = karras_sigmas(0.03, 14.6, 5);
        assert!((s[0] - 14.6).abs() < 1e-9 && (s[4] - 0.03).abs() < 1e-9);
    }

    #[test]
    fn flux_mu_at_base_and_max() {
        assert!((flux_mu(256, 256, 4096, 0.5, 1.15) - 0.5).abs() < 1e-12);
        assert!((flux_mu(4096, 256, 4096, 0.5, 1.15) - 1.15).abs() < 1e-12);
    }
}
