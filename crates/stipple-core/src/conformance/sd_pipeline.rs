//! `sd_pipeline` cases: a whole tiny Stable Diffusion txt2img run through [`Pipeline::generate`],
//! with every intermediate compared (vectors README section 5.10).

use candle_core::{Device, Tensor};

use super::scheduler_trajectory::replay_noise;
use super::{Case, Outputs};
use crate::loader::load_pipeline;
use crate::pipeline::{Flow, Request};
use crate::sampler::SamplerKind;
use crate::text::clip_tokenizer::ClipTokenizer;
use crate::{Error, Result};

pub fn run(case: &Case) -> Result<Outputs> {
    let dir = case.model_dir()?;
    let device = Device::Cpu;
    let model = load_pipeline(dir, &device)?;
    let pipe = &model.pipeline;
    let strings = case.strings.as_ref().ok_or_else(|| Error::Unsupported("sd_pipeline case without strings".into()))?;
    let prompt = strings["prompt"].as_str().unwrap_or_default().to_string();
    let negative = strings["negative_prompt"].as_str().unwrap_or("").to_string();
    let p = &case.spec.params;
    let sampler = match p["scheduler_class"].as_str().unwrap_or_default() {
        "DDIMScheduler" => SamplerKind::Ddim,
        "DDPMScheduler" => SamplerKind::Ddpm,
        "EulerDiscreteScheduler" => SamplerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
        "DPMSolverMultistepScheduler" => SamplerKind::Dpmpp2m,
        "LCMScheduler" => SamplerKind::Lcm,
        other => return Err(Error::Unsupported(format!("scheduler class `{other}`"))),
    };
    let req = Request {
        prompt: prompt.clone(),
        negative_prompt: negative.clone(),
        width: p["width"].as_u64().unwrap_or(0) as usize,
        height: p["height"].as_u64().unwrap_or(0) as usize,
        steps: p["num_inference_steps"].as_u64().unwrap_or(0) as usize,
        cfg_scale: p["guidance_scale"].as_f64().unwrap_or(f64::NAN) as f32,
        sampler,
        eta: p["eta"].as_f64().unwrap_or(0.0) as f32,
        init: None,
    };

    let mut out = Outputs::new();
    let tokenizer = ClipTokenizer::from_folder(&dir.join("tokenizer"), None)?;
    for (name, text) in [("prompt_input_ids", &prompt), ("negative_input_ids", &negative)] {
        let (ids, _) = tokenizer.encode_batch(&[text])?;
        let ids: Vec<i64> = ids[0].iter().map(|&i| i as i64).collect();
        let n = ids.len();
        out.insert(name.into(), Tensor::from_vec(ids, (1, n), &device)?);
    }
    out.insert("prompt_embeds".into(), pipe.text_encoder.encode(&[&prompt])?.context);
    out.insert("negative_prompt_embeds".into(), pipe.text_encoder.encode(&[&negative])?.context);

    let latents_in: Vec<f32> = case.tensor("latents_in")?.flatten_all()?.to_vec1()?;
    let mut noise = replay_noise(case)?.with_initial(vec![latents_in]);
    let (mut latents, mut unet_in, mut unet_out, mut guided, mut timesteps) = (vec![], vec![], vec![], vec![], vec![]);
    let mut shape = [0usize; 4];
    let result = pipe.generate(&req, &mut noise, &mut |ev| {
        shape = ev.latent_shape;
        timesteps.push(ev.timestep as i64);
        unet_in.push(ev.denoiser_input.clone());
        unet_out.push(ev.denoiser_output.clone());
        guided.push(ev.guided.to_vec());
        latents.push(ev.latents.to_vec());
        Flow::Continue
    })?;
    // latents[0] = latents_in * init_noise_sigma, as the pipeline starts.
    let sampler_box = crate::sampler::build(sampler, &pipe.scheduler, req.steps, Default::default())?;
    let sigma = sampler_box.init_noise_sigma();
    let first = case.tensor("latents_in")?.flatten_all()?.to_vec1::<f32>()?.iter().map(|&v| v * sigma).collect();
    let mut all_latents = vec![first];
    all_latents.extend(latents);

    let n = timesteps.len();
    let stack = |rows: &[Vec<f32>], lead: usize| -> Result<Tensor> {
        let mut dims = vec![lead, 1];
        dims.extend_from_slice(&shape[1..]);
        Ok(Tensor::from_vec(rows.concat(), dims, &device)?)
    };
    out.insert("timesteps".into(), Tensor::from_vec(timesteps.clone(), n, &device)?);
    out.insert("unet_timestep".into(), Tensor::from_vec(timesteps, n, &device)?);
    out.insert("latents".into(), stack(&all_latents, n + 1)?);
    out.insert("noise_pred".into(), stack(&guided, n)?);
    out.insert("unet_input".into(), Tensor::stack(&unet_in, 0)?);
    out.insert("unet_output".into(), Tensor::stack(&unet_out, 0)?);
    out.insert("decoded".into(), result.decoded.clone());
    let image = crate::image_io::to_unit_range(&result.decoded)?.permute((0, 2, 3, 1))?.contiguous()?;
    out.insert("image".into(), image);
    Ok(out)
}
