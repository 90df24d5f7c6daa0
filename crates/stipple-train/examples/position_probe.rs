//! Research probe: can the DiT + text encoder learn to put the object where the caption says,
//! from pure noise (t = 999, v target), as a plain regression? Every 50 steps it prints the
//! loss and how often the predicted x₀ is nearest to the scene's own placement among the nine
//! (18 scenes, chance 11%). Results: the model card, "What blocks position".
//!
//! cargo run --release -p stipple-train --example position_probe, with environment variables:
//! PROBE_STEPS (300), PROBE_PATCH (4), PROBE_HIDDEN / PROBE_DEPTH / PROBE_HEADS (192 / 6 / 6),
//! PROBE_GATED=1 (SwiGLU), PROBE_LR (8e-4), PROBE_BS (32), PROBE_POOL (4096 pre-encoded scenes),
//! PROBE_T (999, `uniform` or `LO-HI`), PROBE_FIXED=1 (fresh red-on-blue large squares each
//! step) with PROBE_VARY_SS=1 (shape and size as generated), PROBE_VARY_ALL=1 (everything as
//! generated), PROBE_POS_CAPTION=1 (captions naming only colours and position), PROBE_AUX=W (a
//! coverage head with loss weight W; needs PROBE_FIXED=1).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use stipple_core::dit::stipple_dit::{StippleDit, StippleDitConfig};
use stipple_core::text::stipple_text::{word_level_tokenizer_json, StippleTextConfig, StippleTextModel, WordTokenizer};
use stipple_train::caption::VOCABULARY;
use stipple_train::config::Optimisation;
use stipple_train::init::seeded_var_builder;
use stipple_train::optim::{learning_rate, AdamW, Params};
use stipple_train::rng::SplitMix64;

fn normal(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn main() {
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
    // With PROBE_FIXED: keep the random shape and size (colours stay red on blue), and/or caption
    // only colours and position.
    let vary_ss = env("PROBE_VARY_SS", "0") == "1";
    let pos_caption = env("PROBE_POS_CAPTION", "0") == "1";
    let vary_all = env("PROBE_VARY_ALL", "0") == "1";
    let aux_weight: f64 = env("PROBE_AUX", "0").parse().unwrap();
    let fix = |s: Scene| if vary_all { s } else if vary_ss { Scene { background: Colour::Blue, object: Colour::Red, ..s } } else { Scene { background: Colour::Blue, object: Colour::Red, shape: Shape::Square, size: Size::Large, ..s } };
    let cap = |s: &Scene, style: CaptionStyle, rng: &mut SplitMix64| if pos_caption { format!("a red shape {} on a blue background", s.cell.phrase()) } else { caption(s, style, rng) };
    use stipple_train::scene::{Colour, Shape, Size};
    let model_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stipple-default");
    let vw = stipple_core::checkpoint::open_component(&model_dir.join("vae")).unwrap();
    let vc: StippleVaeConfig = serde_json::from_value(vw.config.clone()).unwrap();
    let vae = StippleAutoencoder::new(&vc, vw.var_builder(DType::F32, &dev)).unwrap();
    let (scale, shift) = (vae.scaling_factor(), vae.shift_factor().unwrap_or(0.0));
    let encode = |images: &Tensor| -> Tensor { ((vae.encode_moments(images).unwrap().0 - shift).unwrap() * scale).unwrap() };
    let text_config = StippleTextConfig { vocab_size: VOCABULARY.len() + 2, max_length: 20, hidden_size: 128, num_layers: env("PROBE_TEXT_LAYERS", "2").parse().unwrap(), num_heads: 4, mlp_ratio: 4 };
    let dit_config = StippleDitConfig { in_channels: 4, patch_size: env("PROBE_PATCH", "4").parse().unwrap(), sample_size: 16, hidden_size: env("PROBE_HIDDEN", "192").parse().unwrap(), depth: env("PROBE_DEPTH", "6").parse().unwrap(), num_heads: env("PROBE_HEADS", "6").parse().unwrap(), mlp_ratio: 4, context_dim: 128, pooled_dim: 128, timestep_features: 256, gated_mlp: env("PROBE_GATED", "0") == "1" };
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
    let patch = dit_config.patch_size;
    let mask_head = stipple_core::nn::trainable::linear(dit_config.hidden_size, patch * patch, vb.pp("mask_head")).unwrap();
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
    let bs: usize = env("PROBE_BS", "32").parse().unwrap();
    let style = CaptionStyle { drop_attribute: 0.15, drop_caption: 0.1, synonym: 0.15 };
    let full = CaptionStyle { drop_attribute: 0.0, drop_caption: 0.0, synonym: 0.0 };
    // Eval: 18 scenes with full captions; which of the 9 placements does x0(t=999) look like?
    let mut erng = SplitMix64::new(5);
    let scenes: Vec<(Scene, String)> = (0..18).map(|_| {
        let mut s = Scene::random(&mut erng);
        if fixed {
            s = fix(s);
        }
        let c = if fixed { cap(&s, full, &mut erng) } else { caption(&s, full, &mut erng) };
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
    let pool_n: usize = env("PROBE_POOL", "4096").parse().unwrap();
    let mut pool_lat = Vec::new();
    let mut pool_caps: Vec<String> = Vec::new();
    if !fixed {
        for k in 0..pool_n / 32 {
            let (im, c) = batch(3, (k * 32) as u64, 32, style).unwrap();
            pool_lat.push(encode(&im));
            pool_caps.extend(c);
        }
    }
    let pool = if fixed { None } else { Some(Tensor::cat(&pool_lat, 0).unwrap()) };
    eprintln!("pool ready");
    let mut losses = Vec::new();
    for step in 0..steps {
        let fixed_until: usize = env("PROBE_FIXED_UNTIL", "0").parse().unwrap();
        let mut mask_rows: Vec<f32> = Vec::new();
        let (images, caps) = if fixed || step < fixed_until {
            let mut px = Vec::new();
            let mut caps = Vec::new();
            for _ in 0..bs {
                let s = fix(Scene::random(&mut rng));
                px.extend(to_signed_chw(&s.render()));
                mask_rows.extend(stipple_train::train::coverage_target(&s.coverage_map(8)));
                caps.push(cap(&s, style, &mut rng));
            }
            (Tensor::from_vec(px, (bs, 3, 128, 128), &dev).unwrap(), caps)
        } else {
            (Tensor::zeros(1, DType::F32, &dev).unwrap(), vec![])
        };
        let (x0, caps) = if let (Some(pool), true) = (&pool, caps.is_empty()) {
            let idx: Vec<u32> = (0..bs).map(|_| rng.below(pool_caps.len()) as u32).collect();
            let x0 = pool.index_select(&Tensor::new(idx.as_slice(), &dev).unwrap(), 0).unwrap();
            (x0, idx.iter().map(|&i| pool_caps[i as usize].clone()).collect::<Vec<_>>())
        } else {
            (encode(&images), caps)
        };
        let masks = if mask_rows.is_empty() { Tensor::zeros((bs, 1, 16, 16), DType::F32, &dev).unwrap() } else { Tensor::from_vec(mask_rows, (bs, 1, 16, 16), &dev).unwrap() };
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
        let (pred, tokens) = dit.forward_with_tokens(&xt, &t, &ctx, &pooled).unwrap();
        let mut loss = (pred - target).unwrap().sqr().unwrap().mean_all().unwrap();
        if aux_weight > 0.0 {
            // Auxiliary head: the object's coverage of each latent pixel, from the last tokens.
            let m = mask_head.forward(&tokens).unwrap();
            let m = stipple_core::dit::patches::unpatchify(&m, 16 / patch, 16 / patch, patch, stipple_core::dit::patches::TokenLayout::ChannelMajor).unwrap();
            let aux = (m - &masks).unwrap().sqr().unwrap().mean_all().unwrap();
            if step % 50 == 0 { eprintln!("  aux loss {:.4}", aux.to_scalar::<f32>().unwrap()); }
            loss = (loss + (aux * aux_weight).unwrap()).unwrap();
        }
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        adam.step(&params, &grads, &o, learning_rate(&o, step)).unwrap();
        if (step + 1) % 50 == 0 {
            let tail = &losses[losses.len() - 50..];
            eprintln!("step {} loss {:.4} position accuracy {:.2}", step + 1, tail.iter().sum::<f32>() / 50.0, eval(&text, &dit));
        }
    }
}

