//! `stipple bench dit`: memory and per-step time of the FLUX.1-schnell-size and SD3-medium-size
//! transformers at real width with random weights, per weight format (f32, bf16, f16, q8_0,
//! q4_0; compute in f32).
//!
//! A full FLUX step is tens of minutes of CPU on a small machine and its f32 weights (48 GB) do
//! not fit one, so each (model, format) is measured on the real-width network cut to 0 and 1
//! blocks (see [`Model::cuts`]), each in its own process (so peak memory is its own), and the full
//! depth is extrapolated: blocks run one after another on the same token count, so a step costs
//! `base + Σ blocks × per-block time`. Peak memory is the full model's weights (counted exactly
//! from its shapes) plus the largest peak a cut-down reached above its own weights (activations,
//! the one weight widened for a product, the runtime).

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use stipple_core::checkpoint::{ParameterCount, RandomWeights};
use stipple_core::dit::{FluxConfig, FluxTransformer, Sd3Config, Sd3Transformer, FLUX_SCHNELL_CONFIG, SD3_MEDIUM_CONFIG};
use stipple_core::layers::{LinearFormat, ModelWeights};
use stipple_core::model::{Conditioning, Denoiser, ImageInfo};

#[derive(clap::Args)]
pub struct DitArgs {
    /// Models: flux-schnell, sd3-medium.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["flux-schnell".to_string(), "sd3-medium".to_string()])]
    models: Vec<String>,
    /// Linear weight formats: f32, bf16, f16, q8_0, q4_0.
    #[arg(long, value_delimiter = ',', default_values_t = LinearFormat::ALL.iter().map(|f| f.name().to_string()).collect::<Vec<_>>())]
    formats: Vec<String>,
    /// Image side in pixels (latents are side / 8).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Print one JSON object per model and format instead of text.
    #[arg(long)]
    json: bool,
    /// Internal: measure one cut-down network in this process (model,format,first-kind blocks,second-kind blocks).
    #[arg(long, hide = true)]
    part: Option<String>,
}

/// The two architectures, at their published sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    FluxSchnell,
    Sd3Medium,
}

impl Model {
    fn parse(s: &str) -> anyhow::Result<Model> {
        match s {
            "flux-schnell" | "flux" => Ok(Model::FluxSchnell),
            "sd3-medium" | "sd3" => Ok(Model::Sd3Medium),
            _ => bail!("unknown model `{s}`; choose flux-schnell or sd3-medium"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Model::FluxSchnell => "flux-schnell",
            Model::Sd3Medium => "sd3-medium",
        }
    }

    /// Block counts of the full model: (double, single) for FLUX, (joint, 0) for SD3.
    fn depth(self) -> (usize, usize) {
        match self {
            Model::FluxSchnell => (19, 38),
            Model::Sd3Medium => (24, 0),
        }
    }

    /// The cut-downs measured: FLUX (double, single) blocks 0/0, 1/0, 0/1; SD3 joint blocks 0, 1,
    /// 2 (a lone block is the last one, `context_pre_only`, which skips the text MLP).
    fn cuts(self) -> Vec<(usize, usize)> {
        match self {
            Model::FluxSchnell => vec![(0, 0), (1, 0), (0, 1)],
            Model::Sd3Medium => vec![(0, 0), (1, 0), (2, 0)],
        }
    }

    /// The full depth from the cut-downs' measurements (seconds add up per block): FLUX base + 19
    /// double + 38 single; SD3 base + last + 23 full blocks.
    fn extrapolate(self, parts: &[Part], value: impl Fn(&Part) -> f64) -> f64 {
        let v: Vec<f64> = parts.iter().map(value).collect();
        let (first, second) = self.depth();
        match self {
            Model::FluxSchnell => v[0] + first as f64 * (v[1] - v[0]) + second as f64 * (v[2] - v[0]),
            Model::Sd3Medium => v[1] + (first - 1) as f64 * (v[2] - v[1]),
        }
    }

    /// The transformer with `blocks` of each kind, on `weights`.
    fn build(self, blocks: (usize, usize), weights: ModelWeights) -> stipple_core::Result<Box<dyn Denoiser>> {
        let path = std::path::Path::new("transformer/config.json");
        Ok(match self {
            Model::FluxSchnell => {
                let mut c = FluxConfig::from_json(FLUX_SCHNELL_CONFIG, path)?;
                (c.num_layers, c.num_single_layers) = blocks;
                Box::new(FluxTransformer::new(c, weights)?)
            }
            Model::Sd3Medium => {
                let mut c = Sd3Config::from_json(SD3_MEDIUM_CONFIG, path)?;
                c.num_layers = blocks.0;
                Box::new(Sd3Transformer::new(c, weights)?)
            }
        })
    }

    /// One denoiser call as the pipeline makes it at `size`²: FLUX batch 1 with 512 T5 tokens
    /// (no unconditional pass), SD3 batch 2 (CFG) with 77 + 256 tokens.
    fn inputs(self, size: usize) -> anyhow::Result<(Tensor, Tensor, Conditioning)> {
        let dev = Device::Cpu;
        let l = size / 8;
        let (batch, tokens, pooled) = match self {
            Model::FluxSchnell => (1, 512, 768),
            Model::Sd3Medium => (2, 77 + 256, 2048),
        };
        let x = Tensor::randn(0f32, 1.0, (batch, 16, l, l), &dev)?;
        let t = Tensor::full(500f32, batch, &dev)?;
        let cond = Conditioning {
            context: Tensor::randn(0f32, 1.0, (batch, tokens, 4096), &dev)?,
            pooled: Some(Tensor::randn(0f32, 1.0, (batch, pooled), &dev)?),
        };
        Ok((x, t, cond))
    }
}

/// What one cut-down run measured.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Part {
    seconds: f64,
    /// CPU time of the pass over all threads: with other work on the machine, `cpu_seconds /
    /// threads` is what the pass would take alone.
    cpu_seconds: f64,
    /// Peak resident memory of the process, MB.
    peak_mb: f64,
}

pub fn run(args: DitArgs) -> anyhow::Result<()> {
    if let Some(part) = &args.part {
        return measure_part(part, args.size);
    }
    anyhow::ensure!(args.size > 0 && args.size % 16 == 0, "--size must be a positive multiple of 16, got {}", args.size);
    let models = args.models.iter().map(|m| Model::parse(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let formats = args.formats.iter().map(|f| f.parse::<LinearFormat>()).collect::<Result<Vec<_>, _>>()?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for model in models {
        let count = ParameterCount::of(|w| model.build(model.depth(), w))?;
        for &format in &formats {
            let parts = model.cuts().into_iter().map(|c| spawn_part(model, format, c, args.size)).collect::<anyhow::Result<Vec<_>>>()?;
            let step_s = model.extrapolate(&parts, |p| p.seconds);
            let step_cpu_s = model.extrapolate(&parts, |p| p.cpu_seconds);
            let weights_mb = count.bytes(format) as f64 / MB;
            let mut above_weights_mb = 0f64;
            for (cut, part) in model.cuts().into_iter().zip(&parts) {
                let cut_weights = ParameterCount::of(|w| model.build(cut, w))?.bytes(format) as f64 / MB;
                above_weights_mb = above_weights_mb.max(part.peak_mb - cut_weights);
            }
            let peak_mb = weights_mb + above_weights_mb;
            let times: Vec<String> = parts.iter().map(|p| format!("{:.2}", p.seconds)).collect();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"model": model.name(), "format": format.name(), "size": args.size,
                        "parameters": count.total(), "weights_mb": weights_mb, "est_step_s": step_s, "est_step_cpu_s": step_cpu_s,
                        "est_peak_mb": peak_mb, "cuts": model.cuts(), "parts": parts, "threads": threads})
                );
            } else {
                println!(
                    "{} {} {}x{}: {:.2}B params, weights {:.0} MB; est. step {:.1} s ({:.1} CPU-s), est. peak {:.0} MB \
                     (cut-downs {:?}: {} s); {threads} threads",
                    model.name(),
                    format.name(),
                    args.size,
                    args.size,
                    count.total() as f64 / 1e9,
                    weights_mb,
                    step_s,
                    step_cpu_s,
                    peak_mb,
                    model.cuts(),
                    times.join(" / "),
                );
            }
        }
    }
    Ok(())
}

const MB: f64 = 1024.0 * 1024.0;

/// Run one cut-down measurement in a child process (its own peak memory).
fn spawn_part(model: Model, format: LinearFormat, blocks: (usize, usize), size: usize) -> anyhow::Result<Part> {
    let exe = std::env::current_exe().context("finding the stipple executable")?;
    let spec = format!("{},{},{},{}", model.name(), format.name(), blocks.0, blocks.1);
    let out = Command::new(exe)
        .args(["bench", "dit", "--size", &size.to_string(), "--part", &spec])
        .output()
        .context("running a benchmark part")?;
    if !out.status.success() {
        bail!("benchmark part {spec} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("benchmark part {spec} printed {line:?}"))
}

/// The child: build, one warm-up pass (quantized kernels repack weights on first use), two timed
/// passes.
fn measure_part(spec: &str, size: usize) -> anyhow::Result<()> {
    let fields: Vec<&str> = spec.split(',').collect();
    let [model, format, a, b] = fields.as_slice() else { bail!("--part takes model,format,blocks,blocks") };
    let model = Model::parse(model)?;
    let format: LinearFormat = format.parse()?;
    let blocks = (a.parse()?, b.parse()?);
    let denoiser = model.build(blocks, RandomWeights::model_weights(format, &Device::Cpu))?;
    let (x, t, cond) = model.inputs(size)?;
    let info = ImageInfo::default();
    let pass = || -> anyhow::Result<(f64, f64)> {
        let (t0, cpu0) = (Instant::now(), cpu_seconds());
        let out = denoiser.forward(&x, &t, &cond, &info)?;
        let _ = out.sum_all()?.to_scalar::<f32>()?;
        Ok((t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
    };
    pass()?;
    // The better of two passes: other work on a shared machine only ever slows a pass down.
    let (a, b) = (pass()?, pass()?);
    let (seconds, cpu_seconds) = if a.0 <= b.0 { a } else { b };
    let part = Part { seconds, cpu_seconds, peak_mb: proc_status_mb("VmHWM:") };
    println!("{}", serde_json::to_string(&part)?);
    Ok(())
}

/// User + system CPU time of this process (`/proc/self/stat`, Linux's 100 ticks per second); 0
/// where unknown.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    ticks.iter().sum::<f64>() / 100.0
}

/// A memory line of `/proc/self/status` in MB; 0 where unknown.
pub fn proc_status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(seconds: &[f64]) -> Vec<Part> {
        seconds.iter().map(|&s| Part { seconds: s, cpu_seconds: s, peak_mb: 0.0 }).collect()
    }

    #[test]
    fn full_depth_adds_up_the_measured_blocks() {
        // FLUX: base 1, a double block 2, a single block 1 → 1 + 19·2 + 38·1.
        assert_eq!(Model::FluxSchnell.extrapolate(&parts(&[1.0, 3.0, 2.0]), |p| p.seconds), 77.0);
        // SD3: base 1, the last (context_pre_only) block 1, a full block 2 → 2 + 23·2.
        assert_eq!(Model::Sd3Medium.extrapolate(&parts(&[1.0, 2.0, 4.0]), |p| p.seconds), 48.0);
        assert_eq!(Model::FluxSchnell.cuts().len(), 3);
        assert!(Model::parse("sdxl").is_err());
    }
}
