//! SDXL end to end against diffusers: the tiny random StableDiffusionXLPipeline of
//! testdata/sdxl_tiny (made by its make_sdxl_tiny.py) run with the same seed. Covers the two text
//! encoders (penultimate states, pooled text_embeds), zeros for the empty negative prompt, the
//! UNet's text_time embedding, Euler with leading spacing, and SDXL's VAE scaling factor.

use std::path::PathBuf;

use candle_core::{DType, Device};
use stipple_core::loader::load_pipeline;
use stipple_core::pipeline::{Flow, Request};
use stipple_core::rng::TorchRng;
use stipple_core::sampler::SamplerKind;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/sdxl_tiny")
}

/// `max|a - b| <= abs + rel * max|b|`, the reference vectors' rule.
fn assert_close(name: &str, got: &[f32], want: &[f32], abs: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let max_ref = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let err = got.iter().zip(want).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    let allowance = abs + rel * max_ref;
    assert!(err <= allowance, "{name}: max|a-b| {err:e} > {allowance:e}");
}

#[test]
fn tiny_sdxl_matches_diffusers() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data().join("reference.json")).unwrap()).unwrap();
    let reference = candle_core::safetensors::load(data().join("reference.safetensors"), &Device::Cpu).unwrap();
    let flat = |k: &str| reference[k].to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();

    let model = load_pipeline(&data().join("model"), &Device::Cpu).unwrap();
    assert_eq!(model.pipeline_class, "StableDiffusionXLPipeline");
    assert_eq!(model.pipeline.defaults.sampler, SamplerKind::Euler);
    let size = meta["size"].as_u64().unwrap() as usize;
    let req = Request {
        prompt: meta["prompt"].as_str().unwrap().into(),
        negative_prompt: String::new(),
        width: size,
        height: size,
        steps: meta["steps"].as_u64().unwrap() as usize,
        cfg_scale: meta["guidance_scale"].as_f64().unwrap() as f32,
        sampler: SamplerKind::Euler,
        eta: 0.0,
        init: None,
    };
    let mut rng = TorchRng::new(meta["seed"].as_u64().unwrap());
    let mut steps = 0;
    let out = model
        .pipeline
        .generate(&req, &mut rng, &mut |_| {
            steps += 1;
            Flow::Continue
        })
        .unwrap();
    assert_eq!(steps, req.steps);
    let (abs, rel) = (meta["tolerance"]["abs"].as_f64().unwrap(), meta["tolerance"]["rel"].as_f64().unwrap());
    assert_close("latents", &out.latents, &flat("latents"), abs, rel);
    let image = stipple_core::image_io::to_unit_range(&out.decoded).unwrap().permute((0, 2, 3, 1)).unwrap();
    let image: Vec<f32> = image.flatten_all().unwrap().to_vec1().unwrap();
    assert_close("image", &image, &flat("image"), abs, rel);
}
