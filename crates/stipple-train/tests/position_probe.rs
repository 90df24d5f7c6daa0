//! Diagnostic (ignored): can the DiT + text encoder learn to put a square where the caption
//! says, from pure noise (t = 999), as a plain regression? Prints accuracy over training.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use stipple_core::dit::stipple_dit::{StippleDit, StippleDitConfig};
use stipple_core::text::stipple_text::{word_level_tokenizer_json, StippleTextConfig, StippleTextModel, WordTokenizer};
use stipple_train::caption::VOCABULARY;
use stipple_train::config::Optimisation;
use stipple_train::init::seeded_var_builder;
use stipple_train::optim::{learning_rate, AdamW, Params};
use stipple_train::rng::SplitMix64;

const POS: [&str; 9] = ["in the top left", "at the top", "in the top right", "on the left", "in the center", "on the right", "in the bottom left", "at the bottom", "in the bottom right"];

fn scene(cell: usize) -> Vec<f32> {
    let mut x = vec![-0.5f32; 4 * 256];
    let centres = [2.75f32, 8.0, 13.25];
    let (cy, cx) = (centres[cell / 3], centres[cell % 3]);
    for c in 0..4 {
        for y in 0..16 {
            for xx in 0..16 {
                if (y as f32 + 0.5 - cy).abs() < 3.0 && (xx as f32 + 0.5 - cx).abs() < 3.0 {
                    x[c * 256 + y * 16 + xx] = 1.5;
                }
            }
        }
    }
    x
}

fn normal(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[test]
#[ignore]
fn position_probe() {
    let dev = Device::Cpu;
    let steps: usize = std::env::var("PROBE_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    let hidden: usize = std::env::var("PROBE_HIDDEN").ok().and_then(|s| s.parse().ok()).unwrap_or(192);
    let depth: usize = std::env::var("PROBE_DEPTH").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let lr: f64 = std::env::var("PROBE_LR").ok().and_then(|s| s.parse().ok()).unwrap_or(8e-4);
    let text_config = StippleTextConfig { vocab_size: VOCABULARY.len() + 2, max_length: 20, hidden_size: 128, num_layers: 2, num_heads: 4, mlp_ratio: 4 };
    let dit_config = StippleDitConfig { in_channels: 4, patch_size: 2, sample_size: 16, hidden_size: hidden, depth, num_heads: 6, mlp_ratio: 4, context_dim: 128, pooled_dim: 128, timestep_features: 256 };
    let tok = WordTokenizer::from_json(&word_level_tokenizer_json(VOCABULARY), 20, std::path::Path::new("t")).unwrap();
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 1);
    let text = StippleTextModel::new(&text_config, vb.pp("text_encoder")).unwrap();
    let dit = StippleDit::new(&dit_config, vb.pp("transformer")).unwrap();
    let params = Params::of(&varmap);
    let o: Optimisation = serde_json::from_value(serde_json::json!({"steps": steps, "batch_size": 32, "learning_rate": lr, "final_lr_fraction": 0.1, "warmup_steps": 50, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "max_grad_norm": 1.0, "ema_decay": 0.999, "checkpoint_every": 1000})).unwrap();
    let mut adam = AdamW::new(&params);
    let ab = 4.04e-5f32;
    let (sa, sn) = (ab.sqrt(), (1.0 - ab).sqrt());
    let mut rng = SplitMix64::new(7);
    let bs = 32;
    let t999 = Tensor::full(999f32, bs, &dev).unwrap();
    let eval = |text: &StippleTextModel, dit: &StippleDit| -> f32 {
        let mut erng = SplitMix64::new(99);
        let caps: Vec<String> = (0..36).map(|i| format!("a square {}", POS[i % 9])).collect();
        let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        let (ctx, pooled) = text.forward(&tok.encode_batch(&refs, &dev).unwrap()).unwrap();
        let xt = Tensor::from_vec(normal(&mut erng, 36 * 1024), (36, 4, 16, 16), &dev).unwrap();
        let v = dit.forward(&xt, &Tensor::full(999f32, 36, &dev).unwrap(), &ctx, &pooled).unwrap();
        let x0 = ((xt * sa as f64).unwrap() - (v * sn as f64).unwrap()).unwrap();
        let x0 = x0.narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut right = 0;
        for i in 0..36 {
            let img = &x0[i * 256..(i + 1) * 256];
            let score = |cell: usize| scene(cell)[..256].iter().zip(img).map(|(m, v)| if *m > 0.0 { *v } else { 0.0 }).sum::<f32>();
            let best = (0..9).max_by(|a, b| score(*a).total_cmp(&score(*b))).unwrap();
            right += (best == i % 9) as usize;
        }
        right as f32 / 36.0
    };
    let mut losses = Vec::new();
    for step in 0..steps {
        let cells: Vec<usize> = (0..bs).map(|_| rng.below(9)).collect();
        let caps: Vec<String> = cells.iter().map(|&c| format!("a square {}", POS[c])).collect();
        let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        let x0: Vec<f32> = cells.iter().flat_map(|&c| scene(c)).collect();
        let x0 = Tensor::from_vec(x0, (bs, 4, 16, 16), &dev).unwrap();
        let eps = Tensor::from_vec(normal(&mut rng, bs * 1024), (bs, 4, 16, 16), &dev).unwrap();
        let xt = ((&x0 * sa as f64).unwrap() + (&eps * sn as f64).unwrap()).unwrap();
        let target = ((&eps * sa as f64).unwrap() - (&x0 * sn as f64).unwrap()).unwrap();
        let (ctx, pooled) = text.forward(&tok.encode_batch(&refs, &dev).unwrap()).unwrap();
        let pred = dit.forward(&xt, &t999, &ctx, &pooled).unwrap();
        let loss = (pred - target).unwrap().sqr().unwrap().mean_all().unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        adam.step(&params, &grads, &o, learning_rate(&o, step)).unwrap();
        if (step + 1) % 50 == 0 {
            let tail = &losses[losses.len() - 50..];
            eprintln!("step {} loss {:.4} position accuracy {:.2}", step + 1, tail.iter().sum::<f32>() / 50.0, eval(&text, &dit));
        }
    }
    let _ = DType::F32;
}

/// The same question on the real data: generated scenes through the shipped autoencoder, the
/// real captions. `PROBE_T=999` trains at t = 999 only, `PROBE_T=uniform` at uniform timesteps.
#[test]
#[ignore]
fn position_probe_real_data() {
    use stipple_core::model::Autoencoder;
    use stipple_core::vae::stipple_vae::{StippleAutoencoder, StippleVaeConfig};
    use stipple_train::caption::{caption, CaptionStyle};
    use stipple_train::dataset::{batch, to_signed_chw};
    use stipple_train::scene::{Cell, Scene};
    let dev = Device::Cpu;
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or(d.to_string());
    let steps: usize = env("PROBE_STEPS", "300").parse().unwrap();
    let uniform = env("PROBE_T", "999") == "uniform";
    let fixed = env("PROBE_FIXED", "0") == "1";
    use stipple_train::scene::{Colour, Shape, Size};
    let model_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stipple-default");
    let vw = stipple_core::checkpoint::open_component(&model_dir.join("vae")).unwrap();
    let vc: StippleVaeConfig = serde_json::from_value(vw.config.clone()).unwrap();
    let vae = StippleAutoencoder::new(&vc, vw.var_builder(DType::F32, &dev)).unwrap();
    let (scale, shift) = (vae.scaling_factor(), vae.shift_factor().unwrap_or(0.0));
    let encode = |images: &Tensor| -> Tensor { ((vae.encode_moments(images).unwrap().0 - shift).unwrap() * scale).unwrap() };
    let text_config = StippleTextConfig { vocab_size: VOCABULARY.len() + 2, max_length: 20, hidden_size: 128, num_layers: env("PROBE_TEXT_LAYERS", "2").parse().unwrap(), num_heads: 4, mlp_ratio: 4 };
    let dit_config = StippleDitConfig { in_channels: 4, patch_size: 2, sample_size: 16, hidden_size: 192, depth: 6, num_heads: 6, mlp_ratio: 4, context_dim: 128, pooled_dim: 128, timestep_features: 256 };
    let tok = WordTokenizer::from_json(&word_level_tokenizer_json(VOCABULARY), 20, std::path::Path::new("t")).unwrap();
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 1);
    let text = StippleTextModel::new(&text_config, vb.pp("text_encoder")).unwrap();
    let dit = StippleDit::new(&dit_config, vb.pp("transformer")).unwrap();
    let emb_std: f64 = env("PROBE_EMB_STD", "0.02").parse().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.contains("token_embedding") {
            var.set(&Tensor::randn(0f32, emb_std as f32, var.shape(), &dev).unwrap()).unwrap();
        }
        let mod_std: f32 = env("PROBE_MOD_STD", "0").parse().unwrap();
        if mod_std > 0.0 && name.contains("modulation") && name.ends_with("weight") {
            var.set(&Tensor::randn(0f32, mod_std, var.shape(), &dev).unwrap()).unwrap();
        }
    }
    let params = Params::of(&varmap);
    let lr: f64 = env("PROBE_LR", "8e-4").parse().unwrap();
    let o: Optimisation = serde_json::from_value(serde_json::json!({"steps": steps, "batch_size": 32, "learning_rate": lr, "final_lr_fraction": 0.1, "warmup_steps": 50, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "max_grad_norm": 1.0, "ema_decay": 0.999, "checkpoint_every": 1000})).unwrap();
    let mut adam = AdamW::new(&params);
    // Linear betas 1e-4 → 0.02 over 1000 steps.
    let mut ab = Vec::with_capacity(1000);
    let mut acc = 1.0f64;
    for i in 0..1000 {
        acc *= 1.0 - (1e-4 + (0.02 - 1e-4) * i as f64 / 999.0);
        ab.push(acc as f32);
    }
    let mut rng = SplitMix64::new(7);
    let bs = 32;
    let style = CaptionStyle { drop_attribute: 0.15, drop_caption: 0.1, synonym: 0.15 };
    let full = CaptionStyle { drop_attribute: 0.0, drop_caption: 0.0, synonym: 0.0 };
    // Eval: 18 scenes with full captions; which of the 9 placements does x0(t=999) look like?
    let mut erng = SplitMix64::new(5);
    let scenes: Vec<(Scene, String)> = (0..18).map(|_| {
        let mut s = Scene::random(&mut erng);
        if fixed {
            s = Scene { background: Colour::Blue, object: Colour::Red, shape: Shape::Square, size: Size::Large, ..s };
        }
        let c = caption(&s, full, &mut erng);
        (s, c)
    }).collect();
    let variants: Vec<Tensor> = scenes.iter().map(|(s, _)| {
        let imgs: Vec<f32> = Cell::all().flat_map(|cell| to_signed_chw(&Scene { cell, jitter: (0.0, 0.0), ..*s }.render())).collect();
        encode(&Tensor::from_vec(imgs, (9, 3, 128, 128), &dev).unwrap())
    }).collect();
    let cells: Vec<Cell> = Cell::all().collect();
    let eval = |text: &StippleTextModel, dit: &StippleDit| -> f32 {
        let refs: Vec<&str> = scenes.iter().map(|(_, c)| c.as_str()).collect();
        let (ctx, pooled) = text.forward(&tok.encode_batch(&refs, &dev).unwrap()).unwrap();
        let mut nrng = SplitMix64::new(11);
        let xt = Tensor::from_vec(normal(&mut nrng, 18 * 1024), (18, 4, 16, 16), &dev).unwrap();
        let v = dit.forward(&xt, &Tensor::full(999f32, 18, &dev).unwrap(), &ctx, &pooled).unwrap();
        let a = ab[999];
        let x0 = ((xt * a.sqrt() as f64).unwrap() - (v * (1.0 - a).sqrt() as f64).unwrap()).unwrap();
        let mut right = 0;
        for i in 0..18 {
            let p = x0.narrow(0, i, 1).unwrap();
            let d: Vec<f32> = (0..9).map(|k| (variants[i].narrow(0, k, 1).unwrap() - &p).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).collect();
            let best = (0..9).min_by(|x, y| d[*x].total_cmp(&d[*y])).unwrap();
            right += (cells[best] == scenes[i].0.cell) as usize;
        }
        right as f32 / 18.0
    };
    let mut losses = Vec::new();
    for step in 0..steps {
        let fixed_until: usize = env("PROBE_FIXED_UNTIL", "0").parse().unwrap();
        let (images, caps) = if fixed || step < fixed_until {
            let mut px = Vec::new();
            let mut caps = Vec::new();
            for _ in 0..bs {
                let s = Scene { background: Colour::Blue, object: Colour::Red, shape: Shape::Square, size: Size::Large, ..Scene::random(&mut rng) };
                px.extend(to_signed_chw(&s.render()));
                caps.push(caption(&s, style, &mut rng));
            }
            (Tensor::from_vec(px, (bs, 3, 128, 128), &dev).unwrap(), caps)
        } else {
            batch(3, (step * bs) as u64, bs, style).unwrap()
        };
        let x0 = encode(&images);
        let band = env("PROBE_T", "999").split_once('-').map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
        let ts: Vec<usize> = (0..bs).map(|_| match band { Some((lo, hi)) => lo + rng.below(hi - lo), None if uniform => rng.below(1000), None => 999 }).collect();
        let col = |f: &dyn Fn(f32) -> f32| Tensor::from_vec(ts.iter().map(|&t| f(ab[t])).collect::<Vec<_>>(), (bs, 1, 1, 1), &dev).unwrap();
        let (sa, sn) = (col(&|a| a.sqrt()), col(&|a| (1.0 - a).sqrt()));
        let eps = Tensor::from_vec(normal(&mut rng, bs * 1024), (bs, 4, 16, 16), &dev).unwrap();
        let xt = (x0.broadcast_mul(&sa).unwrap() + eps.broadcast_mul(&sn).unwrap()).unwrap();
        let target = (eps.broadcast_mul(&sa).unwrap() - x0.broadcast_mul(&sn).unwrap()).unwrap();
        let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        let (ctx, pooled) = text.forward(&tok.encode_batch(&refs, &dev).unwrap()).unwrap();
        let t = Tensor::from_vec(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), bs, &dev).unwrap();
        let pred = dit.forward(&xt, &t, &ctx, &pooled).unwrap();
        let loss = (pred - target).unwrap().sqr().unwrap().mean_all().unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        adam.step(&params, &grads, &o, learning_rate(&o, step)).unwrap();
        if (step + 1) % 50 == 0 {
            let tail = &losses[losses.len() - 50..];
            eprintln!("step {} loss {:.4} position accuracy {:.2}", step + 1, tail.iter().sum::<f32>() / 50.0, eval(&text, &dit));
        }
    }
}

/// Where in the latent does moving the object change things? Prints |Δz| per latent pixel.
#[test]
#[ignore]
fn autoencoder_locality() {
    use stipple_core::model::Autoencoder;
    use stipple_core::vae::stipple_vae::{StippleAutoencoder, StippleVaeConfig};
    use stipple_train::dataset::to_signed_chw;
    use stipple_train::scene::{Cell, Scene};
    let dev = Device::Cpu;
    let model_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stipple-default");
    let vw = stipple_core::checkpoint::open_component(&model_dir.join("vae")).unwrap();
    let vc: StippleVaeConfig = serde_json::from_value(vw.config.clone()).unwrap();
    let vae = StippleAutoencoder::new(&vc, vw.var_builder(DType::F32, &dev)).unwrap();
    let mut rng = SplitMix64::new(5);
    let s = Scene::random(&mut rng);
    let img = |cell: Cell| Tensor::from_vec(to_signed_chw(&Scene { cell, jitter: (0.0, 0.0), ..s }.render()), (1, 3, 128, 128), &dev).unwrap();
    let z = |cell| ((vae.encode_moments(&img(cell)).unwrap().0 - vae.shift_factor().unwrap_or(0.0)).unwrap() * vae.scaling_factor()).unwrap();
    let a = z(Cell { row: 0, col: 0 });
    let b = z(Cell { row: 2, col: 2 });
    eprintln!("scene {s:?}; latent std {:.3}", a.flatten_all().unwrap().var(0).unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap());
    let d = (a - b).unwrap().abs().unwrap().sum(1).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    for row in d {
        eprintln!("{}", row.iter().map(|v| format!("{:4.1}", v)).collect::<Vec<_>>().join(" "));
    }
}
