//! Research: one denoiser training step of the shipped text encoder and DiT on fixed inputs,
//! saving its inputs, outputs, loss and every parameter's gradient, so that an independent
//! implementation (research/gradient_check.py, PyTorch autograd) can check the backward pass.
//!
//! usage: cargo run --release -p stipple-train --example grad_dump [out.safetensors]
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use stipple_core::dit::stipple_dit::{StippleDit, StippleDitConfig};
use stipple_core::text::stipple_text::{word_level_tokenizer_json, StippleTextConfig, StippleTextModel, WordTokenizer};
use stipple_train::caption::{CaptionStyle, VOCABULARY};
use stipple_train::dataset::batch;
use stipple_train::init::seeded_var_builder;
use stipple_train::optim::Params;

fn main() -> stipple_core::Result<()> {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stipple-default");
    let out = std::env::args().nth(1).unwrap_or("/tmp/grad_dump.safetensors".into());
    let dit_cfg: StippleDitConfig = serde_json::from_str(&std::fs::read_to_string(model.join("transformer/config.json")).unwrap()).unwrap();
    let text_cfg: StippleTextConfig = serde_json::from_str(&std::fs::read_to_string(model.join("text_encoder/config.json")).unwrap()).unwrap();
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 1);
    let text = StippleTextModel::new(&text_cfg, vb.pp("text_encoder"))?;
    let dit = StippleDit::new(&dit_cfg, vb.pp("transformer"))?;
    let params = Params::of(&varmap);
    let te = candle_core::safetensors::load(model.join("text_encoder/model.safetensors"), &Device::Cpu)?;
    let tr = candle_core::safetensors::load(model.join("transformer/diffusion_pytorch_model.safetensors"), &Device::Cpu)?;
    for (name, var) in params.names.iter().zip(&params.vars) {
        let t = if let Some(n) = name.strip_prefix("text_encoder.") { &te[n] } else { &tr[name.strip_prefix("transformer.").unwrap()] };
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    let tokenizer = WordTokenizer::from_json(&word_level_tokenizer_json(VOCABULARY), text_cfg.max_length, Path::new("t"))?;
    let bs = 8;
    let (_, captions) = batch(5, 0, bs, CaptionStyle::default())?;
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let ids = tokenizer.encode_batch(&refs, &Device::Cpu)?;
    let noisy = Tensor::randn(0f32, 1.0, (bs, 4, 16, 16), &Device::Cpu)?;
    let target = Tensor::randn(0f32, 1.0, (bs, 4, 16, 16), &Device::Cpu)?;
    let t = Tensor::new(&[999f32, 900.0, 700.0, 500.0, 300.0, 100.0, 20.0, 0.0], &Device::Cpu)?;
    let w = Tensor::new(&[1f32, 1.0, 1.0, 1.0, 0.8, 0.3, 0.1, 0.05], &Device::Cpu)?.reshape((bs, 1, 1, 1))?;
    let (context, pooled) = text.forward(&ids)?;
    let predicted = dit.forward(&noisy, &t, &context, &pooled)?;
    let loss = (&predicted - &target)?.sqr()?.broadcast_mul(&w)?.mean_all()?;
    let grads = loss.backward()?;
    let mut dump: HashMap<String, Tensor> = HashMap::new();
    dump.insert("in.ids".into(), ids.to_dtype(DType::I64)?);
    dump.insert("in.noisy".into(), noisy);
    dump.insert("in.target".into(), target);
    dump.insert("in.t".into(), t);
    dump.insert("in.w".into(), w);
    dump.insert("out.pred".into(), predicted);
    dump.insert("out.context".into(), context);
    dump.insert("out.loss".into(), loss.reshape(1)?);
    for (name, var) in params.names.iter().zip(&params.vars) {
        match grads.get(var.as_tensor()) {
            Some(g) => { dump.insert(format!("grad.{name}"), g.clone()); }
            None => eprintln!("no gradient for {name}"),
        }
    }
    candle_core::safetensors::save(&dump, &out)?;
    println!("wrote {out} (captions {captions:?})");
    Ok(())
}
