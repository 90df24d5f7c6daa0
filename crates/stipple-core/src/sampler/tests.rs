//! Edge cases every sampler must handle: one step, step counts that do not divide the training
//! range, trailing spacing, and the conventions of their first and last steps.

use super::*;
use crate::schedule::{BetaSchedule, SchedulerConfig, TimestepSpacing};

fn sd15() -> SchedulerConfig {
    SchedulerConfig {
        beta_start: Some(0.00085),
        beta_end: Some(0.012),
        beta_schedule: Some(BetaSchedule::ScaledLinear),
        steps_offset: Some(1),
        set_alpha_to_one: Some(false),
        clip_sample: Some(false),
        ..Default::default()
    }
}

fn flux() -> SchedulerConfig {
    SchedulerConfig { shift: Some(1.0), use_dynamic_shifting: Some(true), ..Default::default() }
}

/// Run a whole trajectory with an "oracle" model that knows the clean sample `x0`, so every
/// sampler should land on (or very near) it.
fn denoise_to_constant(kind: SamplerKind, config: &SchedulerConfig, steps: usize) -> Vec<f32> {
    let mut s = build(kind, config, steps, SamplerOptions { image_seq_len: Some(256), ..Default::default() }).unwrap();
    let len = 16;
    let target = 0.5f32;
    let mut noise_src = FixedNoise(0);
    let start: Vec<f32> = (0..len).map(|i| ((i as f32 * 0.37).sin()) * s.init_noise_sigma()).collect();
    let mut x = start;
    for i in 0..s.num_steps() {
        let inp = s.scale_model_input(&x, i);
        let out: Vec<f32> = if kind.is_flow() {
            let sigma = s.sigmas().unwrap()[i];
            // v = noise - x0, with noise recovered from x = sigma*noise + (1-sigma)*x0
            inp.iter().map(|&xi| (xi - (1.0 - sigma) * target) / sigma - target).collect()
        } else {
            // epsilon that explains the scaled input as noised `target`
            let t = s.timesteps()[i];
            let cfg = DiscreteSchedule::from_config(config).unwrap();
            let a = interp_alpha(&cfg.alphas_cumprod, t);
            let scaled: Vec<f32> = inp.clone();
            let factor = if s.sigmas().is_some() && !matches!(kind, SamplerKind::Dpmpp2m | SamplerKind::Dpmpp2mKarras) {
                1.0
            } else {
                1.0
            };
            scaled.iter().map(|&xi| (xi * factor - a.sqrt() * target) / (1.0 - a).sqrt()).collect()
        };
        x = s.step(&out, i, &x, &mut noise_src).unwrap().prev_sample;
    }
    x
}

use crate::schedule::DiscreteSchedule;

fn interp_alpha(ac: &[f32], t: f64) -> f32 {
    let lo = t.floor() as usize;
    let hi = (lo + 1).min(ac.len() - 1);
    let w = (t - lo as f64) as f32;
    // interpolate in sigma space as the Euler ladders do
    let s = |a: f32| ((1.0 - a) / a).sqrt();
    let sig = s(ac[lo]) * (1.0 - w) + s(ac[hi]) * w;
    1.0 / (sig * sig + 1.0)
}

struct FixedNoise(u32);
impl NoiseSource for FixedNoise {
    fn draw(&mut self, _step: usize, len: usize) -> Result<Vec<f32>> {
        self.0 += 1;
        Ok((0..len).map(|i| ((i as f32 + self.0 as f32) * 1.7).cos() * 0.1).collect())
    }
    fn draw_initial(&mut self, len: usize) -> Result<Vec<f32>> {
        self.draw(0, len)
    }
}

#[test]
fn every_sampler_recovers_the_clean_sample_from_an_oracle() {
    for kind in SamplerKind::ALL {
        // Trailing spacing: with `leading`, a single step would start at t = 1 (as in diffusers).
        let cfg = if kind.is_flow() { flux() } else { SchedulerConfig { timestep_spacing: Some(TimestepSpacing::Trailing), ..sd15() } };
        for steps in [1usize, 7, 20] {
            let x = denoise_to_constant(kind, &cfg, steps);
            let worst = x.iter().map(|v| (v - 0.5).abs()).fold(0f32, f32::max);
            // Stochastic samplers re-noise to the final sigma (0 here) so all end at x0; the
            // tolerance covers DDPM/DDIM's last alpha (set_alpha_to_one = false).
            assert!(worst < 0.05, "{kind} with {steps} steps ended {worst} away from x0: {x:?}");
        }
    }
}

#[test]
fn one_step_runs_for_every_sampler() {
    for kind in SamplerKind::ALL {
        let cfg = if kind.is_flow() { flux() } else { sd15() };
        let s = build(kind, &cfg, 1, SamplerOptions { image_seq_len: Some(1024), ..Default::default() }).unwrap();
        assert_eq!(s.num_steps(), 1, "{kind}");
    }
}

#[test]
fn step_counts_that_do_not_divide_1000() {
    let d = Ddim::new(&sd15(), 7, 0.0).unwrap();
    // leading: 1000 // 7 = 142
    assert_eq!(d.timesteps(), &[853.0, 711.0, 569.0, 427.0, 285.0, 143.0, 1.0]);
    let e = Euler::new(&sd15(), 7, false).unwrap();
    assert_eq!(e.timesteps().len(), 7);
    assert_eq!(e.timesteps()[0], 999.0);
    assert_eq!(e.timesteps()[6], 0.0);
    assert_eq!(e.sigmas().unwrap().len(), 8);
}

#[test]
fn trailing_spacing_starts_at_the_last_training_step() {
    let mut cfg = sd15();
    cfg.timestep_spacing = Some(TimestepSpacing::Trailing);
    for kind in [SamplerKind::Ddim, SamplerKind::Ddpm, SamplerKind::Euler, SamplerKind::Dpmpp2m] {
        let s = build(kind, &cfg, 4, SamplerOptions::default()).unwrap();
        assert_eq!(s.timesteps()[0], 999.0, "{kind}");
    }
    // Euler with trailing spacing starts from sigma_max, not sqrt(sigma_max² + 1)
    let e = Euler::new(&cfg, 4, false).unwrap();
    assert_eq!(e.init_noise_sigma(), e.sigmas().unwrap()[0]);
}

#[test]
fn euler_leading_spacing_scales_initial_noise_with_unit_variance() {
    let mut cfg = sd15();
    cfg.timestep_spacing = Some(TimestepSpacing::Leading);
    let e = Euler::new(&cfg, 10, false).unwrap();
    let s0 = e.sigmas().unwrap()[0];
    assert!((e.init_noise_sigma() - (s0 * s0 + 1.0).sqrt()).abs() < 1e-6);
}

#[test]
fn dpmpp_karras_sigmas_are_spaced_in_rho_space() {
    let s = DpmPp2m::new(&sd15(), 10, true).unwrap();
    let sig = s.sigmas().unwrap();
    assert_eq!(sig.len(), 11);
    assert_eq!(sig[10], 0.0);
    let rho = |x: f32| (x as f64).powf(1.0 / 7.0);
    let d0 = rho(sig[0]) - rho(sig[1]);
    let d8 = rho(sig[8]) - rho(sig[9]);
    assert!((d0 - d8).abs() < 1e-5, "{d0} vs {d8}");
    // timesteps are integers and descending
    assert!(s.timesteps().windows(2).all(|w| w[0] > w[1]));
    assert!(s.timesteps().iter().all(|t| t.fract() == 0.0));
}

#[test]
fn dpmpp_lower_order_final_uses_first_order_last_step() {
    // With final sigma 0 the last step returns the data prediction exactly.
    let mut s = DpmPp2m::new(&sd15(), 3, false).unwrap();
    let x = vec![1.0f32; 4];
    let eps = vec![0.25f32; 4];
    let mut n = ReplayNoise::none();
    let mut cur = x;
    let mut last = None;
    for i in 0..3 {
        let sigma = s.sigmas().unwrap()[i];
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let x0: Vec<f32> = cur.iter().map(|&v| (v - sigma * alpha * 0.25) / alpha).collect();
        let out = s.step(&eps, i, &cur, &mut n).unwrap();
        cur = out.prev_sample;
        last = Some(x0);
    }
    let x0 = last.unwrap();
    for (a, b) in cur.iter().zip(&x0) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn ddim_eta_draws_noise_and_eta_zero_does_not() {
    let mut d0 = Ddim::new(&sd15(), 4, 0.0).unwrap();
    let x = vec![0.3f32; 8];
    // ReplayNoise::none() errors if asked for noise
    assert!(d0.step(&x, 0, &x, &mut ReplayNoise::none()).is_ok());
    let mut d1 = Ddim::new(&sd15(), 4, 1.0).unwrap();
    assert!(d1.step(&x, 0, &x, &mut ReplayNoise::none()).is_err());
    assert!(Ddim::new(&sd15(), 4, f32::NAN).is_err());
}

#[test]
fn lcm_rejects_more_steps_than_its_distillation_schedule() {
    assert!(Lcm::new(&sd15(), 50).is_ok());
    let e = Lcm::new(&sd15(), 51).err().unwrap();
    assert!(e.to_string().contains("steps"));
    assert_eq!(Lcm::new(&sd15(), 4).unwrap().timesteps(), &[999.0, 759.0, 499.0, 259.0]);
}

#[test]
fn flow_dynamic_shift_needs_the_image_size() {
    assert!(FlowEuler::new(&flux(), 4, None, None).is_err());
    let f = FlowEuler::new(&flux(), 4, None, Some(4096)).unwrap();
    // mu = 1.15 at 4096 tokens: the first sigma stays 1 and the rest move up
    assert_eq!(f.sigmas().unwrap()[0], 1.0);
    assert!(f.sigmas().unwrap()[2] > 0.5);
}

#[test]
fn sampler_names_parse_and_errors_list_choices() {
    assert_eq!("Euler a".parse::<SamplerKind>().unwrap(), SamplerKind::EulerAncestral);
    assert_eq!("DPM++ 2M Karras".parse::<SamplerKind>().unwrap(), SamplerKind::Dpmpp2mKarras);
    for k in SamplerKind::ALL {
        assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
    }
    let e = "heun".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(e.contains("sampler") && e.contains("ddim"), "{e}");
}

#[test]
fn zero_steps_is_an_error_naming_steps() {
    let e = build(SamplerKind::Euler, &sd15(), 0, SamplerOptions::default()).err().unwrap();
    assert!(e.to_string().contains("steps"));
}
