//! Kinds `flux_pipeline` and `sd3_pipeline` (testdata/pipelines/README.md): a whole tiny
//! FluxPipeline / StableDiffusion3Pipeline txt2img run through [`Pipeline::generate`], with the
//! text conditioning, schedule, every step's latents and network outputs, and the decoded image
//! compared.

use candle_core::{Device, Tensor};

use super::{Case, Outputs};
use crate::loader::{load_pipeline, sd3_conditioner};
use crate::model::TextEncoder;
use crate::pipeline::{Flow, Request};
use crate::sampler::{NoiseSource, ReplayNoise, SamplerKind};
use crate::{Error, Result};

pub fn run(case: &Case) -> Result<Outputs> {
    let dir = case.model_dir()?;
    let device = Device::Cpu;
    let model = load_pipeline(dir, &device)?;
    let pipe = &model.pipeline;
    let strings = case.strings.as_ref().ok_or_else(|| Error::Unsupported("pipeline case without strings".into()))?;
    let text = |key: &str| strings.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let (prompt, negative) = (text("prompt"), text("negative_prompt"));
    let number = |key: &str| -> Result<f64> {
        case.param(key)?.as_f64().ok_or_else(|| Error::Unsupported(format!("param `{key}` is not a number")))
    };
    let req = Request {
        prompt: prompt.clone(),
        negative_prompt: negative.clone(),
        width: number("width")? as usize,
        height: number("height")? as usize,
        steps: number("num_inference_steps")? as usize,
        cfg_scale: number("guidance_scale")? as f32,
        sampler: SamplerKind::FlowEuler,
        eta: 0.0,
        init: None,
    };

    let mut out = Outputs::new();
    let cond = pipe.text_encoder.encode(&[&prompt])?;
    out.insert("prompt_embeds".into(), cond.context);
    if let Some(pooled) = cond.pooled {
        out.insert("pooled_prompt_embeds".into(), pooled);
    }
    if case.spec.compare.iter().any(|c| c == "negative_prompt_embeds") {
        let neg = pipe.text_encoder.encode(&[&negative])?;
        out.insert("negative_prompt_embeds".into(), neg.context);
        if let Some(pooled) = neg.pooled {
            out.insert("negative_pooled_prompt_embeds".into(), pooled);
        }
    }
    if case.spec.compare.iter().any(|c| c == "prompt_embeds_no_t5") {
        let without_t5 = sd3_conditioner(&crate::checkpoint::open_pipeline(dir)?, false, &device)?;
        out.insert("prompt_embeds_no_t5".into(), without_t5.encode(&[&prompt])?.context);
    }

    let latents_in: Vec<f32> = case.tensor("latents_in")?.flatten_all()?.to_vec1()?;
    let mut noise = ReplayNoise::none().with_initial(vec![latents_in.clone()]);
    let noise: &mut dyn NoiseSource = &mut noise;
    let (mut latents, mut model_out, mut guided, mut timesteps) = (vec![latents_in], vec![], vec![], vec![]);
    let mut shape = [0usize; 4];
    let result = pipe.generate(&req, noise, &mut |ev| {
        shape = ev.latent_shape;
        timesteps.push(ev.timestep as f32);
        model_out.push(ev.denoiser_output.clone());
        guided.push(ev.guided.to_vec());
        latents.push(ev.latents.to_vec());
        Flow::Continue
    })?;

    let sampler = pipe.sampler(&req)?;
    let sigmas = sampler.sigmas().ok_or_else(|| Error::Unsupported("flow sampler without sigmas".into()))?.to_vec();
    let n = timesteps.len();
    let stack = |rows: &[Vec<f32>]| -> Result<Tensor> {
        let mut dims = vec![rows.len()];
        dims.extend_from_slice(&shape);
        Ok(Tensor::from_vec(rows.concat(), dims, &device)?)
    };
    out.insert("timesteps".into(), Tensor::from_vec(timesteps, n, &device)?);
    out.insert("sigmas".into(), Tensor::from_vec(sigmas.clone(), sigmas.len(), &device)?);
    out.insert("latents".into(), stack(&latents)?);
    out.insert("noise_pred".into(), stack(&guided)?);
    out.insert("transformer_output".into(), Tensor::stack(&model_out, 0)?);
    out.insert("decoded".into(), result.decoded.clone());
    let image = crate::image_io::to_unit_range(&result.decoded)?.permute((0, 2, 3, 1))?.contiguous()?;
    out.insert("image".into(), image);
    Ok(out)
}
