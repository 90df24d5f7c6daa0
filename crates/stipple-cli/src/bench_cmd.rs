//! `stipple bench`: timings of the engine's heavy parts at real model sizes, with random weights
//! (no download), and of the shipped default model end to end. Reports go to bench/README.md
//! (see bench/run_unet.sh).

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use stipple_core::checkpoint::{published_config, Family, RandomWeights};
use stipple_core::model::{Conditioning, Denoiser, ImageInfo};
use stipple_core::unet::{UNet2DConditionModel, UNetConfig};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// One SD 1.5 UNet forward pass (CFG batch 2, f32) per run, at each image size.
    Unet(UnetArgs),
    /// FLUX.1-schnell- and SD3-medium-size transformers: per-step time and peak memory per weight
    /// format, extrapolated from cut-down networks at real width.
    Dit(crate::bench_dit::DitArgs),
    /// One whole image from the shipped default model (prompt to pixels, the model's default
    /// size, 20 DDIM steps with guidance) per run.
    Default(DefaultArgs),
}

#[derive(clap::Args)]
pub struct DefaultArgs {
    /// The model folder.
    #[arg(long, default_value = crate::DEFAULT_MODEL)]
    model: std::path::PathBuf,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Guidance scale (default: the model's).
    #[arg(long = "cfg-scale")]
    cfg_scale: Option<f32>,
    /// Timed runs, after one warm-up run.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct UnetArgs {
    /// Image sizes in pixels (square; latents are size / 8).
    #[arg(long, value_delimiter = ',', default_values_t = vec![512usize, 256])]
    sizes: Vec<usize>,
    /// Timed runs per size, after one warm-up run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print one JSON object per size instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Unet(args) => unet(args),
        Bench::Dit(args) => crate::bench_dit::run(args),
        Bench::Default(args) => default_model(args),
    }
}

fn default_model(args: DefaultArgs) -> anyhow::Result<()> {
    use stipple_core::pipeline::{Flow, Request};
    use stipple_core::rng::TorchRng;
    use stipple_core::sampler::SamplerKind;

    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let device = Device::Cpu;
    let model = crate::load_model(&args.model, &device)?;
    let d = model.pipeline.defaults;
    let req = Request {
        prompt: "a small green triangle at the bottom on a black background".into(),
        negative_prompt: String::new(),
        width: d.width,
        height: d.height,
        steps: args.steps,
        cfg_scale: args.cfg_scale.unwrap_or(d.cfg_scale),
        sampler: SamplerKind::Ddim,
        eta: 0.0,
        init: None,
    };
    anyhow::ensure!(req.cfg_scale > 1.0, "--cfg-scale must be above 1 to time guided sampling");
    let pass = |seed: u64| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        model.pipeline.generate(&req, &mut TorchRng::new(seed), &mut |_| Flow::Continue).map_err(crate::user_error)?;
        Ok(t0.elapsed().as_secs_f64())
    };
    pass(0)?; // warm-up
    let mut times: Vec<f64> = (1..=args.runs as u64).map(pass).collect::<anyhow::Result<_>>()?;
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": args.model, "width": d.width, "height": d.height, "steps": req.steps,
                "sampler": "ddim", "cfg_scale": req.cfg_scale, "runs": args.runs, "median_s": median, "min_s": min,
                "max_s": max, "threads": threads})
        );
    } else {
        println!(
            "default model {}x{}, {} DDIM steps, cfg {}: median {median:.3} s, min {min:.3} s, max {max:.3} s over {} runs; {threads} threads",
            d.width, d.height, req.steps, req.cfg_scale, args.runs
        );
    }
    Ok(())
}

fn unet(args: UnetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let device = Device::Cpu;
    let config_text = published_config(Family::Sd1, "unet").context("SD 1.5 UNet config is embedded")?;
    let config: UNetConfig = serde_json::from_str(config_text)?;
    let unet = UNet2DConditionModel::new(RandomWeights::var_builder(DType::F32, &device), &config)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for &size in &args.sizes {
        anyhow::ensure!(size % 64 == 0 && size > 0, "--sizes must be positive multiples of 64, got {size}");
        let l = size / 8;
        let x = Tensor::randn(0f32, 1.0, (2, 4, l, l), &device)?;
        let t = Tensor::from_vec(vec![500f32, 500.0], 2, &device)?;
        let cond = Conditioning { context: Tensor::randn(0f32, 1.0, (2, 77, 768), &device)?, pooled: None };
        let info = ImageInfo::default();
        let pass = || -> anyhow::Result<f64> {
            let t0 = Instant::now();
            let out = unet.forward(&x, &t, &cond, &info)?;
            // Force the result (candle's CPU ops are eager, but be explicit about completion).
            let _ = out.sum_all()?.to_scalar::<f32>()?;
            Ok(t0.elapsed().as_secs_f64())
        };
        pass()?; // warm-up
        let mut times: Vec<f64> = (0..args.runs).map(|_| pass()).collect::<anyhow::Result<_>>()?;
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let (min, max) = (times[0], times[times.len() - 1]);
        let peak_mb = peak_rss_mb();
        if args.json {
            println!(
                "{}",
                serde_json::json!({"impl": "stipple", "size": size, "batch": 2, "runs": args.runs,
                    "median_s": median, "min_s": min, "max_s": max, "peak_rss_mb": peak_mb, "threads": threads})
            );
        } else {
            println!(
                "unet sd1.5 {size}x{size} batch 2 f32: median {median:.3} s, min {min:.3} s, max {max:.3} s over {} runs; peak RSS {peak_mb:.0} MB; {threads} threads",
                args.runs
            );
        }
    }
    Ok(())
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MB; 0 where unknown.
fn peak_rss_mb() -> f64 {
    crate::bench_dit::proc_status_mb("VmHWM:")
}
