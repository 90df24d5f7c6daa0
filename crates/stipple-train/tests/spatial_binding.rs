//! The text-to-layout path of the default model's networks, in isolation: a miniature DiT and
//! text encoder learn, from pure noise (t = 999, v-prediction), to put a square in the cell the
//! caption names. This is the regression the shipped model has to solve to follow position words;
//! if a defect in the spatial path (patch order, position table, cross-attention, their
//! gradients) made the layout unreachable from the text, this fails.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use stipple_core::dit::stipple_dit::{StippleDit, StippleDitConfig};
use stipple_core::text::stipple_text::{word_level_tokenizer_json, StippleTextConfig, StippleTextModel, WordTokenizer};
use stipple_train::caption::VOCABULARY;
use stipple_train::config::Optimisation;
use stipple_train::init::seeded_var_builder;
use stipple_train::optim::{learning_rate, AdamW, Params};
use stipple_train::rng::SplitMix64;
use stipple_train::scene::Cell;

const LATENT: usize = 16;
/// ᾱ at t = 999 of the default model's linear schedule.
const ALPHA_BAR_999: f32 = 4.04e-5;

/// A 4-channel latent: -0.5 everywhere, +1.5 on a 6x6 square centred on `cell`.
fn latent(cell: Cell) -> Vec<f32> {
    let centres = [2.75f32, 8.0, 13.25]; // 22, 64 and 106 px at 8x compression
    let (cy, cx) = (centres[cell.row], centres[cell.col]);
    let plane: Vec<f32> = (0..LATENT * LATENT)
        .map(|i| {
            let (y, x) = ((i / LATENT) as f32 + 0.5, (i % LATENT) as f32 + 0.5);
            if (y - cy).abs() < 3.0 && (x - cx).abs() < 3.0 { 1.5 } else { -0.5 }
        })
        .collect();
    plane.repeat(4)
}

fn normal(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[test]
fn the_dit_learns_to_place_an_object_where_the_caption_says() {
    let dev = Device::Cpu;
    let cells: Vec<Cell> = Cell::all().collect();
    let text_config = StippleTextConfig { vocab_size: VOCABULARY.len() + 2, max_length: 12, hidden_size: 64, num_layers: 1, num_heads: 4, mlp_ratio: 2 };
    let dit_config = StippleDitConfig {
        in_channels: 4,
        patch_size: 2,
        sample_size: LATENT,
        hidden_size: 96,
        depth: 2,
        num_heads: 4,
        mlp_ratio: 2,
        context_dim: 64,
        pooled_dim: 64,
        timestep_features: 64,
        gated_mlp: false,
    };
    let tokenizer = WordTokenizer::from_json(&word_level_tokenizer_json(VOCABULARY), 12, std::path::Path::new("words")).unwrap();
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 1);
    let text = StippleTextModel::new(&text_config, vb.pp("text_encoder")).unwrap();
    let dit = StippleDit::new(&dit_config, vb.pp("transformer")).unwrap();
    let params = Params::of(&varmap);
    let steps = 150;
    let optim: Optimisation = serde_json::from_value(serde_json::json!({
        "steps": steps, "batch_size": 16, "learning_rate": 1e-3, "final_lr_fraction": 0.1, "warmup_steps": 20,
        "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "max_grad_norm": 1.0, "ema_decay": 0.999, "checkpoint_every": 1000
    }))
    .unwrap();
    let mut adam = AdamW::new(&params);
    let (signal, noise) = (ALPHA_BAR_999.sqrt() as f64, (1.0 - ALPHA_BAR_999).sqrt() as f64);
    let shape = |n: usize| (n, 4, LATENT, LATENT);
    let condition = |batch: &[Cell]| {
        let captions: Vec<String> = batch.iter().map(|c| format!("a square {}", c.phrase())).collect();
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        text.forward(&tokenizer.encode_batch(&refs, &dev).unwrap()).unwrap()
    };

    // The predicted image x₀ = √ᾱ·x − √(1−ᾱ)·v; which cell's square is it closest to?
    let placed_right = || -> usize {
        let mut rng = SplitMix64::new(99);
        let asked: Vec<Cell> = (0..18).map(|i| cells[i % 9]).collect();
        let (context, pooled) = condition(&asked);
        let x = Tensor::from_vec(normal(&mut rng, 18 * 1024), shape(18), &dev).unwrap();
        let v = dit.forward(&x, &Tensor::full(999f32, 18, &dev).unwrap(), &context, &pooled).unwrap();
        let x0 = ((x * signal).unwrap() - (v * noise).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let candidates: Vec<Vec<f32>> = cells.iter().map(|&c| latent(c)).collect();
        (0..18)
            .filter(|&i| {
                let image = &x0[i * 1024..(i + 1) * 1024];
                let distance = |k: usize| candidates[k].iter().zip(image).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
                let nearest = (0..9).min_by(|&a, &b| distance(a).total_cmp(&distance(b))).unwrap();
                cells[nearest] == asked[i]
            })
            .count()
    };
    let before = placed_right();

    let mut rng = SplitMix64::new(7);
    let t = Tensor::full(999f32, 16, &dev).unwrap();
    for step in 0..steps {
        let batch: Vec<Cell> = (0..16).map(|_| cells[rng.below(9)]).collect();
        let x0 = Tensor::from_vec(batch.iter().flat_map(|&c| latent(c)).collect::<Vec<_>>(), shape(16), &dev).unwrap();
        let eps = Tensor::from_vec(normal(&mut rng, 16 * 1024), shape(16), &dev).unwrap();
        let x = ((&x0 * signal).unwrap() + (&eps * noise).unwrap()).unwrap();
        let target = ((&eps * signal).unwrap() - (&x0 * noise).unwrap()).unwrap();
        let (context, pooled) = condition(&batch);
        let loss = (dit.forward(&x, &t, &context, &pooled).unwrap() - target).unwrap().sqr().unwrap().mean_all().unwrap();
        adam.step(&params, &loss.backward().unwrap(), &optim, learning_rate(&optim, step)).unwrap();
    }
    let after = placed_right();
    assert!(before <= 4, "an untrained model should not know the layout: {before}/18");
    assert!(after >= 16, "after training, {after}/18 squares are where the caption put them");
}
