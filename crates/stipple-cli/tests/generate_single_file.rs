//! `stipple generate --model FILE.safetensors` on all-in-one FLUX / SD3 single files in the
//! original layouts (testdata/single_file, written from the tiny reference pipelines by
//! make_single_files.py): the same seed and settings give diffusers' image, as the folders do
//! (generate_dit.rs).

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

/// Copy testdata/single_file/`name`.safetensors into a fresh folder, with the tokenizer folders
/// `tokenizers` of the reference pipeline next to it (files whose metadata lacks them).
fn single_file(name: &str, tokenizers: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.safetensors"));
    std::fs::copy(repo().join(format!("testdata/single_file/{name}.safetensors")), &file).unwrap();
    for tokenizer in tokenizers {
        let (from, to) = (pipelines().join("models").join(name).join(tokenizer), dir.path().join(tokenizer));
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    (dir, file)
}

/// The RGB pixels `stipple generate` makes from `model` at `width`×`height` with `args`.
fn generate(model: &Path, size: (u32, u32), args: &[&str]) -> Vec<u8> {
    common::generate_pixels(model, size, args).0
}

/// The single file gives the very image its diffusers folder gives, and that image is diffusers'
/// (within the case's float tolerance an 8-bit value can round the other way, never more).
fn assert_reproduces(model: &Path, case: &str, size: (u32, u32), args: &[&str]) {
    let pixels = generate(model, size, args);
    let name = model.file_stem().unwrap().to_str().unwrap();
    assert!(pixels == generate(&pipelines().join("models").join(name), size, args), "{name}: file and folder differ");
    let reference = reference_pixels(case);
    let worst = pixels.iter().zip(&reference).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "{case}: pixels from {} differ from diffusers by up to {worst}", model.display());
}

/// Everything in the metadata, tokenizers included; schnell's defaults (4 steps, no guidance).
#[test]
fn flux_schnell_all_in_one_reproduces_diffusers() {
    let (_dir, file) = single_file("flux_schnell_tiny", &[]);
    assert_reproduces(&file, "flux_pipeline/flux_schnell_tiny_4steps", (32, 48), &["--seed", "40"]);
}

/// No model_index or scheduler in the metadata (FLUX.1-dev's published ones, told from the
/// `guidance_in` weights), tokenizers beside the file, VAE under `first_stage_model.`.
#[test]
fn flux_dev_all_in_one_with_tokenizer_folders_reproduces_diffusers() {
    let (_dir, file) = single_file("flux_dev_tiny", &["tokenizer", "tokenizer_2"]);
    let args = ["--seed", "41", "--steps", "3", "--cfg-scale", "4"];
    assert_reproduces(&file, "flux_pipeline/flux_dev_tiny_3steps", (32, 48), &args);
}

#[test]
fn sd3_all_in_one_reproduces_diffusers() {
    let (_dir, file) = single_file("sd3_tiny", &[]);
    let args = ["--seed", "42", "--steps", "3", "--cfg-scale", "5", "-n", "blurry photo"];
    assert_reproduces(&file, "sd3_pipeline/sd3_tiny_3steps", (32, 48), &args);
}

/// The transformer's config is inferred from the weights (query/key norms, dual attention).
#[test]
fn sd35_medium_all_in_one_with_inferred_transformer_config_reproduces_diffusers() {
    let (_dir, file) = single_file("sd35_medium_tiny", &["tokenizer", "tokenizer_2", "tokenizer_3"]);
    let args = ["--seed", "52", "--steps", "2", "--cfg-scale", "4.5"];
    assert_reproduces(&file, "sd3_pipeline/sd35_medium_tiny_2steps", (16, 32), &args);
}

/// Without the tokenizer folders, the error says which to copy from which repository.
#[test]
fn missing_tokenizer_folders_are_named_with_their_repository() {
    let (_dir, file) = single_file("flux_dev_tiny", &["tokenizer"]);
    let out = stipple(&["generate", "a cat", "--model", file.to_str().unwrap(), "-W", "32", "-H", "32"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("missing tokenizer_2") && t.contains("found scheduler, text_encoder, text_encoder_2, tokenizer, transformer, vae"), "{t}");
    assert!(t.contains("`tokenizer_2/` of the diffusers repository black-forest-labs/FLUX.1-dev"), "{t}");
}
