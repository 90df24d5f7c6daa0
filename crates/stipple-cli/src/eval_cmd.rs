//! `stipple eval`: generate images for a prompt set and score them with the checker that reads
//! the scene back (background, object colour, shape, size, 3x3 cell).

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use stipple_core::image_io::RgbImage;
use stipple_core::sampler::SamplerKind;
use stipple_train::eval::{autoencoder_roundtrip, evaluate, full_prompts, Report, Settings, ATTRIBUTES, PROMPT_SEED};

use crate::user_error;


#[derive(clap::Args)]
pub struct Args {
    /// Model folder.
    #[arg(short = 'm', long, default_value = crate::DEFAULT_MODEL)]
    model: PathBuf,
    /// Prompts, one per line (default: the built-in set of prompts naming all five attributes).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Size of the built-in prompt set.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Sampler steps (default: the model's).
    #[arg(long)]
    steps: Option<usize>,
    /// Guidance scale (default: the model's).
    #[arg(long = "cfg-scale")]
    cfg_scale: Option<f32>,
    /// Sampler (default: the model's).
    #[arg(long)]
    sampler: Option<String>,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Save every image and a grid of the first 64 here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Score the model's autoencoder instead: encode and decode this many generated images and
    /// read the reconstructions back.
    #[arg(long, value_name = "IMAGES")]
    autoencoder: Option<usize>,
    /// Measure the four claims the product is built on and write DIR/seed-claims.md with its
    /// charts, sample grids and raw numbers under DIR/seed-claims/ (DIR defaults to docs).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "docs")]
    report: Option<PathBuf>,
    /// With --report: a couple of images per measurement instead of the full plan (a smoke run
    /// of every part of the report, in seconds; its numbers mean nothing).
    #[arg(long, requires = "report")]
    quick: bool,
    /// With --report: prompts per measured setting (default 32; fewer is faster and noisier).
    #[arg(long, requires = "report", value_name = "N")]
    report_prompts: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let prompts: Vec<String> = match &args.prompts {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the prompt file {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        None => full_prompts(PROMPT_SEED, args.count),
    };
    anyhow::ensure!(!prompts.is_empty(), "no prompts to evaluate");
    let model = crate::load_model(&args.model, &Device::Cpu)?;
    if let Some(dir) = &args.report {
        return report(&args, &model.pipeline, dir);
    }
    if let Some(n) = args.autoencoder {
        let (report, error) = autoencoder_roundtrip(model.pipeline.autoencoder.as_ref(), PROMPT_SEED, n.max(1)).map_err(user_error)?;
        println!("{} reconstructions: mean absolute error {error:.4} (images in [-1, 1])", report.images);
        print_attributes(&report);
        return Ok(());
    }
    let d = model.pipeline.defaults;
    let sampler: SamplerKind = match &args.sampler {
        Some(s) => s.parse().map_err(user_error)?,
        None => d.sampler,
    };
    let settings = Settings {
        steps: args.steps.unwrap_or(d.steps),
        cfg_scale: args.cfg_scale.unwrap_or(d.cfg_scale),
        sampler,
        seeds: args.seeds.max(1),
        first_seed: args.first_seed,
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut images: Vec<RgbImage> = Vec::new();
    let mut index = 0usize;
    let report = evaluate(&model.pipeline, &prompts, settings, &mut |s| {
        if let Some(dir) = &args.out {
            let marks: String = s.correct.iter().map(|c| match c {
                Some(true) => '+',
                Some(false) => '-',
                None => '.',
            }).collect();
            let path = dir.join(format!("{index:04}_{marks}.png"));
            let _ = s.image.save_png(&path, &[("prompt", &s.prompt)]);
            if images.len() < 64 {
                images.push(s.image.clone());
            }
        }
        index += 1;
    })
    .map_err(user_error)?;
    if let Some(dir) = &args.out {
        stipple_train::report::grid(&images, 8, 0).save_png(&dir.join("grid.png"), &[]).map_err(user_error)?;
    }
    if args.json {
        println!("{}", serde_json::json!({
            "model": args.model, "steps": settings.steps, "cfg_scale": settings.cfg_scale, "sampler": settings.sampler.name(),
            "images": report.images, "accuracy": report.accuracy(), "mean_seconds": report.mean_seconds,
            "per_attribute": ATTRIBUTES.iter().zip(report.per_attribute).map(|(n, (c, a))| (n.to_string(), serde_json::json!([c, a]))).collect::<serde_json::Map<_, _>>(),
        }));
        return Ok(());
    }
    println!(
        "{} images ({} prompts x {} seeds), {} steps {} cfg {}: {:.3} s per image",
        report.images, prompts.len(), settings.seeds, settings.steps, settings.sampler, settings.cfg_scale, report.mean_seconds
    );
    print_attributes(&report);
    Ok(())
}

fn report(args: &Args, pipeline: &stipple_core::pipeline::Pipeline, dir: &std::path::Path) -> anyhow::Result<()> {
    use stipple_train::report::{measure, verdicts, write, ReportPlan, RunInfo};
    let model_dir = crate::resolve_model_path(&args.model);
    let config_path = model_dir.join("transformer/config.json");
    let dit: stipple_core::dit::stipple_dit::StippleDitConfig = serde_json::from_slice(
        &std::fs::read(&config_path).with_context(|| format!("the report needs a Stipple DiT model folder; reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let mut plan = if args.quick { ReportPlan::quick() } else { ReportPlan::standard() };
    if let Some(n) = args.report_prompts {
        anyhow::ensure!(n >= 1, "--report-prompts must be at least 1");
        plan.prompts = n;
    }
    let d = pipeline.defaults;
    let bar = indicatif::ProgressBar::new(plan.images(d.steps, d.cfg_scale) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} image {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let (m, samples) = measure(pipeline, &dit, &plan, &mut |done, what| {
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    })
    .map_err(user_error)?;
    bar.finish_and_clear();
    let run = RunInfo {
        command: std::iter::once("stipple".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" "),
        model: args.model.clone(),
        machine: crate::machine_description(),
        date: crate::utc_date(),
        revision: crate::git_revision(),
    };
    let log_path = model_dir.join("training_log.json");
    let training: Option<stipple_train::report::TrainingLog> = match std::fs::read(&log_path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", log_path.display()))?),
        Err(_) => None,
    };
    let path = write(&m, &samples, &run, training.as_ref(), dir).map_err(user_error)?;
    for (i, v) in verdicts(&m).iter().enumerate() {
        println!("claim {}: {} — {}", i + 1, v.verdict, v.evidence);
    }
    println!("wrote {} ({:.0} s)", path.display(), m.total_seconds);
    Ok(())
}

fn print_attributes(report: &Report) {
    for (name, (c, a)) in ATTRIBUTES.iter().zip(report.per_attribute) {
        if a > 0 {
            println!("  {name:<10} {:5.1}% ({c}/{a})", 100.0 * c as f64 / a as f64);
        }
    }
    println!("  all        {:5.1}%", 100.0 * report.accuracy());
}
