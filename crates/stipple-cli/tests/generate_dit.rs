//! `stipple generate` end to end on the tiny FLUX, SD3 and SD3.5 reference pipelines
//! (testdata/pipelines): the same seed and settings give diffusers' image.

mod common;
use common::*;

use candle_core::{DType, Device};
use std::path::Path;

/// diffusers' image for a case, as 8-bit RGB (`round(image * 255)`).
fn reference_pixels(case: &str) -> Vec<u8> {
    let path = pipelines().join(format!("cases/{case}.safetensors"));
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let img = t["image"].to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    img.iter().map(|&v| (v * 255.0).round() as u8).collect()
}

/// Generate a 32×48 image with `args` and check the PNG against the case's image.
fn assert_reproduces(model: &str, case: &str, args: &[&str]) -> String {
    assert_reproduces_at(model, case, (32, 48), args)
}

/// Generate a `width`×`height` image with `args` and check the PNG against the case's image:
/// within the case's float tolerance an 8-bit value can round the other way, never more.
fn assert_reproduces_at(model: &str, case: &str, (width, height): (u32, u32), args: &[&str]) -> String {
    let (pixels, texts) = common::generate_pixels(&pipelines().join("models").join(model), (width, height), args);
    let reference = reference_pixels(case);
    let worst = pixels.iter().zip(&reference).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "{case}: pixels differ from diffusers by up to {worst}");
    texts.iter().find(|(k, _)| k == "parameters").expect("parameters chunk").1.clone()
}

#[test]
fn dit_pipelines_match_diffusers_step_by_step() {
    let out = stipple(&["conformance", pipelines().to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("6 passed, 0 failed"), "{t}");
}

#[test]
fn flux_schnell_defaults_to_four_unguided_steps_and_reproduces_diffusers() {
    // No --steps / --cfg-scale: schnell's defaults (4 steps, no guidance) are the case's settings.
    let params = assert_reproduces("flux_schnell_tiny", "flux_pipeline/flux_schnell_tiny_4steps", &["--seed", "40"]);
    assert!(params.contains("Steps: 4, Sampler: Euler (flow matching)"), "{params}");
    // The guidance scale is ignored by an unguided model.
    assert_reproduces("flux_schnell_tiny", "flux_pipeline/flux_schnell_tiny_4steps", &["--seed", "40", "--cfg-scale", "9"]);
}

#[test]
fn flux_dev_embeds_the_guidance_scale_and_reproduces_diffusers() {
    let args = ["--seed", "41", "--steps", "3", "--cfg-scale", "4"];
    let params = assert_reproduces("flux_dev_tiny", "flux_pipeline/flux_dev_tiny_3steps", &args);
    assert!(params.contains("CFG scale: 4"), "{params}");
}

#[test]
fn sd3_with_cfg_and_a_negative_prompt_reproduces_diffusers() {
    let args = ["--seed", "42", "--steps", "3", "--cfg-scale", "5", "-n", "blurry photo"];
    assert_reproduces("sd3_tiny", "sd3_pipeline/sd3_tiny_3steps", &args);
}

/// SD3.5-medium's transformer layout (RMS query/key norms, a second image self-attention in
/// the first block) read from the folder's config; no negative prompt.
#[test]
fn sd35_medium_reproduces_diffusers() {
    let args = ["--seed", "52", "--steps", "2", "--cfg-scale", "4.5"];
    assert_reproduces_at("sd35_medium_tiny", "sd3_pipeline/sd35_medium_tiny_2steps", (16, 32), &args);
}

/// Copy a pipeline folder so a test can break it.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn partial_folders_list_what_is_found_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("flux");
    copy_dir(&pipelines().join("models/flux_schnell_tiny"), &model);
    let generate = |model: &Path| stipple(&["generate", "a cat", "--model", model.to_str().unwrap(), "-W", "32", "-H", "32"]);

    // The T5 folders are gone but model_index.json still lists them.
    std::fs::remove_dir_all(model.join("text_encoder_2")).unwrap();
    std::fs::remove_dir_all(model.join("tokenizer_2")).unwrap();
    let out = generate(&model);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("`text_encoder_2` (T5EncoderModel)") && t.contains("`tokenizer_2`") && t.contains("missing"), "{t}");
    assert!(t.contains("transformer/") && t.contains("vae/"), "{t}");

    // ... and no longer listed: the family's requirements name them.
    let index_path = model.join("model_index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["text_encoder_2"] = serde_json::json!([null, null]);
    index["tokenizer_2"] = serde_json::json!([null, null]);
    std::fs::write(&index_path, index.to_string()).unwrap();
    let out = generate(&model);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("FLUX.1 pipeline is incomplete") && t.contains("text_encoder_2 (T5 encoder)"), "{t}");
    assert!(t.contains("tokenizer_2 (T5 tokenizer: tokenizer.json or spiece.model)") && t.contains("found scheduler, text_encoder, tokenizer, transformer, vae"), "{t}");

    // A folder whose denoiser is neither a UNet nor a known transformer.
    let sd3 = dir.path().join("sd3");
    copy_dir(&pipelines().join("models/sd3_tiny"), &sd3);
    std::fs::remove_dir_all(sd3.join("transformer")).unwrap();
    let index_path = sd3.join("model_index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["transformer"] = serde_json::json!([null, null]);
    std::fs::write(&index_path, index.to_string()).unwrap();
    let out = generate(&sd3);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("neither a `unet` nor a `transformer`") && t.contains("text_encoder_3"), "{t}");
}

#[test]
fn quantized_transformers_generate_close_to_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let model = pipelines().join("models/flux_dev_tiny");
    let reference = reference_pixels("flux_pipeline/flux_dev_tiny_3steps");
    // Largest 8-bit difference from diffusers' f32 image allowed per quantization (measured: 1 and 9).
    for (quant, allowed) in [("q8_0", 4), ("q4_0", 24)] {
        let gguf = dir.path().join(format!("flux_{quant}.gguf"));
        let out = stipple(&[
            "quantize", model.join("transformer").to_str().unwrap(), gguf.to_str().unwrap(), "--type", quant,
        ]);
        let t = text(&out);
        assert!(out.status.success() && t.contains(&format!("linear weights in {quant}")), "{t}");

        let png = dir.path().join(format!("{quant}.png"));
        let out = stipple(&[
            "generate", "a painting of a squirrel eating a burger", "--model", model.to_str().unwrap(), "--transformer",
            gguf.to_str().unwrap(), "--seed", "41", "--steps", "3", "--cfg-scale", "4", "-W", "32", "-H", "48", "-o",
            png.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let pixels = read_png(&png).2;
        let worst = pixels.iter().zip(&reference).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
        assert!(worst <= allowed, "{quant}: up to {worst} from diffusers' f32 image (allowed {allowed})");

        // A GGUF given as the model is recognised and pointed to --transformer.
        let out = stipple(&["generate", "a cat", "--model", gguf.to_str().unwrap()]);
        let t = text(&out);
        assert!(!out.status.success() && t.contains("FLUX.1 transformer in GGUF") && t.contains("--transformer"), "{t}");
    }
    // An SD3 folder refuses a FLUX transformer file; an SD model refuses --transformer.
    let gguf = dir.path().join("flux_q8_0.gguf");
    let out = stipple(&["generate", "a cat", "--model", pipelines().join("models/sd3_tiny").to_str().unwrap(),
        "--transformer", gguf.to_str().unwrap(), "-W", "32", "-H", "32"]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("holds a FLUX.1 transformer"), "{t}");
    let out = stipple(&["generate", "a cat", "--model", vectors().join("models/sd_tiny").to_str().unwrap(),
        "--transformer", gguf.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("--transformer"), "{t}");
}
