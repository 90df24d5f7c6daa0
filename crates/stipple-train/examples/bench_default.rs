use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;
use stipple_core::dit::stipple_dit::{StippleDit, StippleDitConfig};
use stipple_core::model::Autoencoder;
use stipple_core::vae::stipple_vae::{StippleAutoencoder, StippleVaeConfig};

fn time<F: FnMut() -> anyhow::Result<()>>(name: &str, n: usize, mut f: F) -> f64 {
    f().unwrap();
    let t = Instant::now();
    for _ in 0..n { f().unwrap(); }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!("{name}: {ms:.2} ms");
    ms
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("all");
    if which == "all" || which.starts_with("dit") {
        let configs = if which == "dit1" { vec![(192usize, 6usize, 6usize)] } else { vec![(192usize, 6usize, 6usize), (256, 6, 8), (256, 8, 8), (320, 6, 8)] };
        for (d, depth, heads) in configs {
            let cfg = StippleDitConfig { in_channels: 4, patch_size: 2, sample_size: 16, hidden_size: d, depth, num_heads: heads, mlp_ratio: 4, context_dim: 128, pooled_dim: 128, timestep_features: 256 };
            let vm = VarMap::new();
            let dit = StippleDit::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
            let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            println!("DiT d{d} depth{depth}: {:.2}M params", params as f64 / 1e6);
            let x = Tensor::randn(0f32, 1., (2, 4, 16, 16), &dev)?;
            let t = Tensor::new(&[500f32, 500.], &dev)?;
            let ctx = Tensor::randn(0f32, 1., (2, 24, 128), &dev)?;
            let pooled = Tensor::randn(0f32, 1., (2, 128), &dev)?;
            let plain = |t: &Tensor| t.detach();
            let _ = plain;
            // inference: weights as plain tensors (no graph)
            let vb = VarBuilder::from_tensors(vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect(), DType::F32, &dev);
            let dit_inf = StippleDit::new(&cfg, vb)?;
            time("  fwd batch2 (inference)", 10, || { dit_inf.forward_eps(&x, &t, &ctx, &pooled)?; Ok(()) });
            let bs = 32;
            let xb = Tensor::randn(0f32, 1., (bs, 4, 16, 16), &dev)?;
            let tb = Tensor::ones(bs, DType::F32, &dev)?;
            let cb = Tensor::randn(0f32, 1., (bs, 24, 128), &dev)?;
            let pb = Tensor::randn(0f32, 1., (bs, 128), &dev)?;
            let ms = time("  train step batch 32 (fwd+bwd)", 3, || { let l = dit.forward_eps(&xb, &tb, &cb, &pb)?.sqr()?.mean_all()?; l.backward()?; Ok(()) });
            println!("  => {:.1} samples/s", bs as f64 / ms * 1000.0);
        }
    }
    if which == "all" || which == "vae" {
        for ch in [vec![32usize, 64usize], vec![48, 96], vec![64, 128]] {
            let cfg = StippleVaeConfig { in_channels: 3, latent_channels: 4, pixel_block: 4, channels: ch.clone(), encoder_blocks: 1, decoder_blocks: 2, norm_groups: 8, scaling_factor: 1.0, shift_factor: 0.0 };
            let vm = VarMap::new();
            let vae = StippleAutoencoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
            let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            println!("VAE {ch:?}: {:.2}M params", params as f64 / 1e6);
            let vb = VarBuilder::from_tensors(vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect(), DType::F32, &dev);
            let vae_inf = StippleAutoencoder::new(&cfg, vb)?;
            let z = Tensor::randn(0f32, 1., (1, 4, 16, 16), &dev)?;
            time("  decode 1 image", 10, || { vae_inf.decode_raw(&z)?; Ok(()) });
            let bs = 8;
            let img = Tensor::randn(0f32, 1., (bs, 3, 128, 128), &dev)?;
            let ms = time("  train step batch 8", 3, || {
                let (m, _lv) = vae.encode_moments(&img)?;
                let r = vae.decode_raw(&m)?;
                (r - &img)?.abs()?.mean_all()?.backward()?; Ok(()) });
            println!("  => {:.1} images/s", bs as f64 / ms * 1000.0);
        }
    }
    Ok(())
}
