//! `scheduler_trajectory` cases: a full sampling loop driven by the fake model
//! `a * model_input + b * (float32(t) / 1000)` (vectors README section 5.1).

use candle_core::{Device, Tensor};

use super::{Case, Outputs};
use crate::sampler::{build, Ddim, FlowEuler, ReplayNoise, Sampler, SamplerKind, SamplerOptions};
use crate::schedule::{DiscreteSchedule, SchedulerConfig};
use crate::{Error, Result};

pub fn run(case: &Case) -> Result<Outputs> {
    let class = case.param("scheduler_class")?.as_str().unwrap_or_default().to_string();
    let config: SchedulerConfig = serde_json::from_value(case.param("scheduler_config")?.clone())
        .map_err(|e| Error::Unsupported(format!("scheduler_config: {e}")))?;
    let set_timesteps = case.param("set_timesteps")?;
    let steps = case.param("num_inference_steps")?.as_u64().unwrap_or(0) as usize;
    let eta = case.spec.params.pointer("/step_kwargs/eta").and_then(|v| v.as_f64()).unwrap_or(0.0) as f32;
    let fake = case.param("fake_model")?;
    let a = fake["a"].as_f64().unwrap_or(0.0) as f32;
    let b = fake["b"].as_f64().unwrap_or(0.0) as f32;

    let mut sampler: Box<dyn Sampler> = match class.as_str() {
        "FlowMatchEulerDiscreteScheduler" => {
            let sigmas = set_timesteps.get("sigmas").and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|x| x.as_f64()).collect());
            let mu = set_timesteps.get("mu").and_then(|v| v.as_f64());
            Box::new(FlowEuler::with_mu(&config, steps, sigmas, mu)?)
        }
        "DDIMScheduler" => Box::new(Ddim::new(&config, steps, eta)?),
        other => {
            let kind = match other {
                "DDPMScheduler" => SamplerKind::Ddpm,
                "EulerDiscreteScheduler" => SamplerKind::Euler,
                "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
                "DPMSolverMultistepScheduler" => SamplerKind::Dpmpp2m,
                "LCMScheduler" => SamplerKind::Lcm,
                _ => return Err(Error::Unsupported(format!("scheduler class `{other}`"))),
            };
            build(kind, &config, steps, SamplerOptions::default())?
        }
    };

    let latent = case.tensor("latent_noise")?;
    let shape = latent.dims().to_vec();
    let x_init: Vec<f32> = latent.flatten_all()?.to_vec1()?;
    let mut noise = replay_noise(case)?;

    let n = sampler.num_steps();
    let mut samples = Vec::with_capacity(n + 1);
    let (mut inputs, mut outputs, mut pred_x0) = (Vec::new(), Vec::new(), Vec::new());
    let init_sigma = sampler.init_noise_sigma();
    let mut x: Vec<f32> = x_init.iter().map(|&v| v * init_sigma).collect();
    samples.push(x.clone());
    for i in 0..n {
        let t = sampler.timesteps()[i] as f32;
        let input = sampler.scale_model_input(&x, i);
        let model_output: Vec<f32> = input.iter().map(|&v| a * v + b * (t / 1000.0)).collect();
        let out = sampler.step(&model_output, i, &x, &mut noise)?;
        x = out.prev_sample;
        samples.push(x.clone());
        inputs.push(input);
        outputs.push(model_output);
        if let Some(p) = out.pred_x0 {
            pred_x0.push(p);
        }
    }

    let mut result = Outputs::new();
    let stacked = |rows: &[Vec<f32>]| -> Result<Tensor> {
        let mut dims = vec![rows.len()];
        dims.extend_from_slice(&shape);
        Ok(Tensor::from_vec(rows.concat(), dims, &Device::Cpu)?)
    };
    result.insert("samples".into(), stacked(&samples)?);
    result.insert("model_inputs".into(), stacked(&inputs)?);
    result.insert("model_outputs".into(), stacked(&outputs)?);
    if pred_x0.len() == n {
        result.insert("pred_x0".into(), stacked(&pred_x0)?);
    }
    let ts = sampler.timesteps();
    let timesteps = if sampler.integer_timesteps() {
        Tensor::from_vec(ts.iter().map(|&t| t as i64).collect::<Vec<_>>(), n, &Device::Cpu)?
    } else {
        Tensor::from_vec(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), n, &Device::Cpu)?
    };
    result.insert("timesteps".into(), timesteps);
    if let Some(s) = sampler.sigmas() {
        result.insert("sigmas".into(), Tensor::from_slice(s, s.len(), &Device::Cpu)?);
    }
    if class != "FlowMatchEulerDiscreteScheduler" {
        let schedule = DiscreteSchedule::from_config(&config)?;
        result.insert("alphas_cumprod".into(), Tensor::from_slice(&schedule.alphas_cumprod, schedule.len(), &Device::Cpu)?);
        result.insert("init_noise_sigma".into(), Tensor::from_slice(&[init_sigma], 1, &Device::Cpu)?);
    }
    Ok(result)
}

/// The stored noise draws of a case (`noise[j]` is drawn in step `noise_steps[j]`).
pub fn replay_noise(case: &Case) -> Result<ReplayNoise> {
    let (Some(noise), Some(steps)) = (case.tensors.get("noise"), case.tensors.get("noise_steps")) else {
        return Ok(ReplayNoise::none());
    };
    let steps: Vec<i64> = steps.to_vec1()?;
    let mut draws = Vec::new();
    for (j, &s) in steps.iter().enumerate() {
        draws.push((s as usize, noise.get(j)?.flatten_all()?.to_vec1::<f32>()?));
    }
    Ok(ReplayNoise::new(draws))
}
