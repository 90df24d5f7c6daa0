//! `stipple generate` end to end on the tiny reference pipeline: the same seed gives diffusers'
//! image, from a diffusers folder and from a single-file checkpoint converted from it.

mod common;
use common::*;

use candle_core::{DType, Device};

/// diffusers' image for the sd_pipeline case, as 8-bit RGB (`round(image * 255)`).
fn reference_pixels() -> Vec<u8> {
    let t = candle_core::safetensors::load(vectors().join("cases/sd_pipeline/sd_pipeline_tiny_ddim.safetensors"), &Device::Cpu)
        .unwrap();
    let img = t["image"].to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    img.iter().map(|&v| (v * 255.0).round() as u8).collect()
}

/// The case's settings: prompt, seed 12 (the seed its latents were drawn with), DDIM, 2 steps.
fn generate_like_reference(model: &str, out: &std::path::Path) -> std::process::Output {
    stipple(&[
        "generate",
        "a painting of a squirrel eating a burger",
        "--model",
        model,
        "--seed",
        "12",
        "--steps",
        "2",
        "--cfg-scale",
        "7",
        "-W",
        "64",
        "-H",
        "64",
        "--sampler",
        "ddim",
        "-o",
        out.to_str().unwrap(),
    ])
}

fn assert_close_to_reference(png: &std::path::Path) {
    let (w, h, pixels, texts) = read_png(png);
    assert_eq!((w, h), (64, 64));
    let reference = reference_pixels();
    let worst = pixels.iter().zip(&reference).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
    // Within the pipeline case's float tolerance an 8-bit value can round the other way, never more.
    assert!(worst <= 1, "pixels differ from diffusers by up to {worst}");
    let params = &texts.iter().find(|(k, _)| k == "parameters").expect("parameters chunk").1;
    assert!(
        params.starts_with("a painting of a squirrel eating a burger\nSteps: 2, Sampler: DDIM, CFG scale: 7, Seed: 12, Size: 64x64"),
        "{params}"
    );
}

#[test]
fn seeded_generation_reproduces_diffusers_from_a_folder_and_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = vectors().join("models/sd_tiny");
    let png = dir.path().join("folder.png");
    let out = generate_like_reference(folder.to_str().unwrap(), &png);
    assert!(out.status.success(), "{}", text(&out));
    assert_close_to_reference(&png);

    let single = dir.path().join("sd_tiny.safetensors");
    let out = stipple(&["convert", folder.to_str().unwrap(), single.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let png2 = dir.path().join("single.png");
    let out = generate_like_reference(single.to_str().unwrap(), &png2);
    assert!(out.status.success(), "{}", text(&out));
    assert_close_to_reference(&png2);
    assert_eq!(read_png(&png).2, read_png(&png2).2, "folder and single file give different images");
}

#[test]
fn bad_flags_get_errors_that_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let model = vectors().join("models/sd_tiny");
    let model = model.to_str().unwrap();
    let o = dir.path().join("x.png");
    let o = o.to_str().unwrap();
    for (args, needle) in [
        (vec!["-W", "65"], "-W/--width"),
        (vec!["-H", "0"], "-H/--height"),
        (vec!["--steps", "0"], "--steps"),
        (vec!["--cfg-scale", "NaN"], "--cfg-scale"),
        (vec!["--cfg-scale", "-2"], "--cfg-scale"),
        (vec!["--sampler", "heun"], "--sampler"),
        (vec!["--init-image", "/nonexistent.png"], "--init-image"),
    ] {
        let mut all = vec!["generate", "a cat", "--model", model, "-o", o, "--steps", "1"];
        all.extend(args.iter().copied());
        let out = stipple(&all);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {t}");
        assert!(t.contains(needle), "{args:?}: {t}");
    }
    assert!(!std::path::Path::new(o).exists(), "a failed run left an output file");
}

#[test]
fn pickles_and_missing_models_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 not really").unwrap();
    let out = stipple(&["generate", "a cat", "--model", ckpt.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("pickle") && t.contains(".safetensors"), "{t}");

    let missing = dir.path().join("nowhere");
    let out = stipple(&["generate", "a cat", "--model", missing.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("nowhere"), "{t}");
}

#[test]
fn img2img_and_inpainting_run_and_keep_the_unmasked_region_close() {
    let dir = tempfile::tempdir().unwrap();
    let model = vectors().join("models/sd_tiny");
    let model = model.to_str().unwrap();
    let base = dir.path().join("base.png");
    let out = stipple(&["generate", "a cat", "--model", model, "--seed", "3", "--steps", "4", "-o", base.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // A mask that repaints the right half only.
    let mask = dir.path().join("mask.png");
    let mut m = image::GrayImage::new(64, 64);
    for (x, _, p) in m.enumerate_pixels_mut() {
        p.0[0] = if x >= 32 { 255 } else { 0 };
    }
    m.save(&mask).unwrap();
    let inpainted = dir.path().join("inpainted.png");
    let out = stipple(&[
        "generate", "a dog", "--model", model, "--seed", "4", "--steps", "4", "--init-image", base.to_str().unwrap(),
        "--mask", mask.to_str().unwrap(), "--strength", "1", "-o", inpainted.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let img2img = dir.path().join("img2img.png");
    let out = stipple(&[
        "generate", "a dog", "--model", model, "--seed", "4", "--steps", "4", "--init-image", base.to_str().unwrap(),
        "--strength", "0.5", "-o", img2img.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let params = read_png(&img2img).3;
    assert!(params[0].1.contains("Denoising strength: 0.5"), "{:?}", params);

    // The kept (left) half of the inpainted image stays nearer the original than the repainted half.
    let (a, b) = (read_png(&base).2, read_png(&inpainted).2);
    let diff = |x0: usize, x1: usize| -> f64 {
        let mut s = 0f64;
        for y in 0..64 {
            for x in x0..x1 {
                for c in 0..3 {
                    let i = (y * 64 + x) * 3 + c;
                    s += (a[i] as f64 - b[i] as f64).abs();
                }
            }
        }
        s / (64.0 * (x1 - x0) as f64 * 3.0)
    };
    let (kept, repainted) = (diff(0, 24), diff(40, 64));
    assert!(kept < repainted, "kept half changed by {kept}, repainted half by {repainted}");
}
