//! A short training run of a miniature model: both stages lower their loss, a resumed run
//! continues from its checkpoint, and the written folder loads and generates through the same
//! loader and pipeline as every other model.

use std::path::Path;

use candle_core::Device;
use stipple_core::pipeline::{Flow, Request};
use stipple_core::rng::TorchRng;
use stipple_train::config::TrainConfig;
use stipple_train::train::{train, Event, Options};

fn tiny_config(dir: &Path, ae_steps: usize, dn_steps: usize) -> TrainConfig {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stipple-default/train.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
    c["output_dir"] = "model".into();
    c["checkpoint_dir"] = "checkpoints".into();
    let ae = &mut c["autoencoder"];
    ae["model"]["channels"] = serde_json::json!([8, 16]);
    ae["model"]["norm_groups"] = 4.into();
    ae["model"]["decoder_blocks"] = 1.into();
    ae["optim"]["steps"] = ae_steps.into();
    ae["optim"]["batch_size"] = 4.into();
    ae["optim"]["learning_rate"] = 0.003.into();
    ae["optim"]["warmup_steps"] = 5.into();
    ae["optim"]["checkpoint_every"] = 10.into();
    ae["latent_stats_images"] = 16.into();
    let dn = &mut c["denoiser"];
    // 2x2 patches whatever the shipped model uses: this miniature with 4x4 patches (16 tokens)
    // learns too little in 20 steps to tell a working loop from a broken one (loss 0.90 -> 0.78).
    for (k, v) in [("patch_size", 2), ("hidden_size", 32), ("depth", 2), ("num_heads", 2), ("mlp_ratio", 2), ("context_dim", 32), ("pooled_dim", 32), ("timestep_features", 32)] {
        dn["model"][k] = v.into();
    }
    // A small pool: the shipped recipe's draws batches from encoded scenes; the miniature does too.
    dn["latent_pool"] = 64.into();
    dn["text_encoder"]["hidden_size"] = 32.into();
    dn["text_encoder"]["num_layers"] = 1.into();
    dn["text_encoder"]["num_heads"] = 2.into();
    dn["optim"]["steps"] = dn_steps.into();
    dn["optim"]["batch_size"] = 8.into();
    dn["optim"]["learning_rate"] = 0.002.into();
    dn["optim"]["warmup_steps"] = 5.into();
    dn["optim"]["checkpoint_every"] = 10.into();
    c["defaults"]["steps"] = 3.into();
    let path = dir.join("train.json");
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    TrainConfig::load(&path).unwrap()
}

#[test]
fn short_training_lowers_the_loss_resumes_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), 30, 20);
    let summaries = train(&config, &Options::default(), &mut |_| {}).unwrap();
    for s in &summaries {
        assert!(s.final_loss < 0.8 * s.initial_loss, "{}: {} -> {}", s.name, s.initial_loss, s.final_loss);
    }

    // Ten more denoiser steps: the autoencoder is done, the denoiser resumes at step 20.
    let longer = tiny_config(dir.path(), 30, 30);
    let mut starts = Vec::new();
    train(&longer, &Options::default(), &mut |e| {
        if let Event::Stage { name, done, .. } = e {
            starts.push((name, done));
        }
    })
    .unwrap();
    assert_eq!(starts, vec![("autoencoder", 30), ("denoiser", 20)]);

    let model = stipple_core::loader::load_pipeline(&config.output_dir, &Device::Cpu).unwrap();
    assert_eq!(model.pipeline_class, "StipplePipeline");
    let d = model.pipeline.defaults;
    assert_eq!((d.width, d.height, d.steps), (128, 128, 3));
    let req = Request {
        prompt: "a large red circle in the top left on a blue background".into(),
        negative_prompt: String::new(),
        width: d.width,
        height: d.height,
        steps: d.steps,
        cfg_scale: d.cfg_scale,
        sampler: d.sampler,
        eta: 0.0,
        init: None,
    };
    let out = model.pipeline.generate(&req, &mut TorchRng::new(1), &mut |_| Flow::Continue).unwrap();
    assert_eq!((out.image.width, out.image.height), (128, 128));
    // Unknown words degrade to [UNK] instead of failing.
    let odd = Request { prompt: "a crimson dodecahedron, très grand".into(), ..req };
    model.pipeline.generate(&odd, &mut TorchRng::new(2), &mut |_| Flow::Continue).unwrap();
}

#[test]
fn the_same_config_and_seed_give_the_same_weights() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let files = ["vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"];
    let mut runs = Vec::new();
    for dir in [&a, &b] {
        let config = tiny_config(dir.path(), 8, 8);
        train(&config, &Options::default(), &mut |_| {}).unwrap();
        runs.push(files.map(|f| std::fs::read(config.output_dir.join(f)).unwrap()));
    }
    assert!(runs[0] == runs[1], "two runs of one config wrote different weights");
}

#[test]
fn v_prediction_trains_and_the_folder_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(dir.path(), 10, 40);
    config.scheduler["prediction_type"] = "v_prediction".into();
    let summaries = train(&config, &Options::default(), &mut |_| {}).unwrap();
    let denoiser = &summaries[1];
    assert!(denoiser.final_loss < 0.8 * denoiser.initial_loss, "{} -> {}", denoiser.initial_loss, denoiser.final_loss);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config.output_dir.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    assert_eq!(written["prediction_type"], "v_prediction");

    // Sample prediction is refused by name.
    let other = tempfile::tempdir().unwrap();
    let mut sample = tiny_config(other.path(), 2, 2);
    sample.scheduler["prediction_type"] = "sample".into();
    let err = train(&sample, &Options::default(), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("v_prediction"), "{err}");
}

#[test]
fn auxiliary_heads_add_their_losses_train_and_stay_out_of_the_model_folder() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    // The shipped recipe has both heads; each run here sets them explicitly.
    let mut plain = tiny_config(dirs[0].path(), 6, 30);
    (plain.denoiser.coverage_loss_weight, plain.denoiser.colour_loss_weight) = (None, None);
    let mut coverage = tiny_config(dirs[1].path(), 6, 30);
    (coverage.denoiser.coverage_loss_weight, coverage.denoiser.colour_loss_weight) = (Some(1.0), None);
    let mut both = tiny_config(dirs[2].path(), 6, 30);
    both.denoiser.coverage_loss_weight = Some(1.0);
    both.denoiser.colour_loss_weight = Some(1.0);
    let denoiser = |config| train(config, &Options::default(), &mut |_| {}).unwrap().remove(1);
    let (plain_dn, coverage_dn, both_dn) = (denoiser(&plain), denoiser(&coverage), denoiser(&both));
    // The coverage head starts near zero output against targets 3·coverage − 1 (mostly −1):
    // about +1 on the loss at first. The colour head's targets (block colours in [-1, 1]) add
    // their mean square, about 0.4 over the palette.
    assert!(coverage_dn.initial_loss > plain_dn.initial_loss + 0.5, "{} vs {}", coverage_dn.initial_loss, plain_dn.initial_loss);
    assert!(both_dn.initial_loss > coverage_dn.initial_loss + 0.15, "{} vs {}", both_dn.initial_loss, coverage_dn.initial_loss);
    for (name, run) in [("coverage", &coverage_dn), ("coverage and colour", &both_dn)] {
        assert!(run.final_loss < 0.8 * run.initial_loss, "{name}: {} -> {}", run.initial_loss, run.final_loss);
    }
    let exported =
        candle_core::safetensors::load(both.output_dir.join("transformer/diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    let names = exported.keys().collect::<Vec<_>>();
    assert!(names.iter().all(|k| !k.contains("coverage") && !k.contains("colour")), "{names:?}");
    stipple_core::loader::load_pipeline(&both.output_dir, &Device::Cpu).unwrap();
}
