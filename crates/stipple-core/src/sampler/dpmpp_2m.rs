//! DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver in log-SNR time that
//! reuses the previous step's prediction; diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`, `solver_type="midpoint"`.

use super::{refuse_unsupported, NoiseSource, Sampler, StepOutput};
use crate::schedule::{
    interp_index, karras_sigmas, np_linspace, np_round, sigma_to_t, DiscreteSchedule, PredictionType, SchedulerConfig,
    TimestepSpacing,
};
use crate::{Error, Result};

pub struct DpmPp2m {
    timesteps: Vec<f64>,
    /// One sigma per step plus the final one.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    /// The previous step's data prediction and how many steps have run.
    previous_x0: Option<Vec<f32>>,
    steps_taken: usize,
}

/// `(alpha_t, sigma_t)` of the variance-preserving process at noise level `sigma`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Log signal-to-noise ratio `log(alpha) - log(sigma)`.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmPp2m {
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        refuse_unsupported(config)?;
        for (key, value, wanted) in [
            ("algorithm_type", config.algorithm_type.as_deref(), "dpmsolver++"),
            ("solver_type", config.solver_type.as_deref(), "midpoint"),
        ] {
            if let Some(v) = value {
                if v != wanted {
                    return Err(Error::Unsupported(format!("DPM++ 2M supports {key} `{wanted}`, the config says `{v}`")));
                }
            }
        }
        if config.solver_order.is_some_and(|o| o != 2) {
            return Err(Error::Unsupported("DPM++ 2M is the second-order solver (solver_order 2)".into()));
        }
        let schedule = DiscreteSchedule::from_config(config)?;
        let train = schedule.len();
        if steps > train {
            return Err(Error::param("steps", format!("{steps} is more than the model's {train} training timesteps")));
        }

        // Clip the smallest log-SNRs (matters for cosine schedules): searchsorted on the
        // ascending flipped lambdas.
        let clip = config.lambda_min_clipped();
        let lambdas: Vec<f32> = schedule.alphas_cumprod.iter().map(|&a| lambda(a.sqrt(), (1.0 - a).sqrt())).collect();
        let clipped_idx = lambdas.iter().rev().take_while(|&&l| (l as f64) < clip).count();
        let last_timestep = train - clipped_idx;

        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let mut timesteps: Vec<f64> = match spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> = np_linspace(0.0, last_timestep as f64 - 1.0, steps + 1).into_iter().map(np_round).collect();
                v.reverse();
                v.pop();
                v
            }
            TimestepSpacing::Leading => {
                let ratio = (last_timestep / (steps + 1)) as f64;
                (1..=steps).rev().map(|i| np_round(i as f64 * ratio) + config.offset() as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / steps as f64;
                let mut v = Vec::new();
                let mut k = 0usize;
                while last_timestep as f64 - k as f64 * ratio > 0.0 {
                    v.push(np_round(last_timestep as f64 - k as f64 * ratio) - 1.0);
                    k += 1;
                }
                v
            }
        };

        let train_sigmas = schedule.sigmas();
        let mut sigmas: Vec<f64> = if karras || config.use_karras_sigmas.unwrap_or(false) {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            let sigma_min = config.sigma_min.unwrap_or(train_sigmas[0] as f64);
            let sigma_max = config.sigma_max.unwrap_or(*train_sigmas.last().unwrap_or(&1.0) as f64);
            let s = karras_sigmas(sigma_min, sigma_max, steps);
            let cosine = config.beta_schedule == Some(crate::schedule::BetaSchedule::SquaredcosCapV2);
            timesteps = s
                .iter()
                .map(|&sig| {
                    let t = sigma_to_t(sig, &log_sigmas);
                    // Cast to int64 as diffusers does (rounded first, except for cosine schedules).
                    if cosine { t.trunc() } else { np_round(t) }
                })
                .collect();
            s
        } else {
            timesteps.iter().map(|&t| interp_index(t, &train_sigmas)).collect()
        };
        let final_sigmas_type = config.final_sigmas_type.as_deref().unwrap_or("zero");
        sigmas.push(match final_sigmas_type {
            "zero" => 0.0,
            "sigma_min" => train_sigmas[0] as f64,
            other => return Err(Error::Unsupported(format!("final_sigmas_type `{other}` is not supported"))),
        });
        Ok(DpmPp2m {
            timesteps,
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            prediction: config.prediction(),
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_zero: final_sigmas_type == "zero",
            previous_x0: None,
            steps_taken: 0,
        })
    }

    /// The data prediction `x0` at `step` (DPM-Solver++ works with x0, not epsilon).
    fn data_prediction(&self, model_output: &[f32], sample: &[f32], step: usize) -> Result<Vec<f32>> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step]);
        Ok(match self.prediction {
            PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&x, &e)| (x - sigma_t * e) / alpha_t).collect(),
            PredictionType::Sample => model_output.to_vec(),
            PredictionType::VPrediction => model_output.iter().zip(sample).map(|(&v, &x)| alpha_t * x - sigma_t * v).collect(),
            PredictionType::FlowPrediction => {
                let s = self.sigmas[step];
                sample.iter().zip(model_output).map(|(&x, &v)| x - s * v).collect()
            }
        })
    }
}

impl Sampler for DpmPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn integer_timesteps(&self) -> bool {
        true
    }
    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn step(&mut self, model_output: &[f32], step: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput> {
        let n = self.timesteps.len();
        // Lower-order steps at the end keep few-step runs stable (diffusers' rule).
        let lower_order_final =
            step == n - 1 && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_zero);

        let x0 = self.data_prediction(model_output, sample, step)?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let c0 = alpha_t * ((-h).exp() - 1.0);

        let prev: Vec<f32> = match (&self.previous_x0, self.steps_taken >= 1 && !lower_order_final) {
            (Some(m1), true) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
                let lambda_s1 = lambda(alpha_s1, sigma_s1);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let inv_r0 = 1.0 / r0;
                let half_c0 = 0.5 * c0;
                sample
                    .iter()
                    .zip(&x0)
                    .zip(m1)
                    .map(|((&x, &m0), &m1)| {
                        let d1 = inv_r0 * (m0 - m1);
                        ratio * x - c0 * m0 - half_c0 * d1
                    })
                    .collect()
            }
            _ => sample.iter().zip(&x0).map(|(&x, &m0)| ratio * x - c0 * m0).collect(),
        };
        self.previous_x0 = Some(x0);
        self.steps_taken += 1;
        Ok(StepOutput { prev_sample: prev, pred_x0: None })
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step]);
        original.iter().zip(noise).map(|(&x, &n)| alpha_t * x + sigma_t * n).collect()
    }
}
