//! `stipple eval --report`: measure on a model the four claims Stipple is built on, and write
//! them up (docs/seed-claims.md, PNG charts, sample grids, the raw numbers as JSON).
//!
//! 1. DDIM reaches DDPM-1000 quality in 10–50x fewer steps.
//! 2. Higher guidance: more faithful to the prompt, less varied.
//! 3. Beyond 25–30 steps, quality gains diminish (DDIM, Euler, DPM++ 2M).
//! 4. Latent diffusion is several times faster than pixel-space diffusion at equal quality.
//!
//! "Quality" is the checker's attribute accuracy on prompts naming all five attributes, plus the
//! palette error (mean distance of a pixel to the nearest palette colour: how clean the flat
//! colours and edges are). Every measurement here runs in the same process, so timings compare.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;
use stipple_core::dit::stipple_dit::{StippleDit, StippleDitConfig};
use stipple_core::image_io::RgbImage;
use stipple_core::pipeline::Pipeline;
use stipple_core::sampler::SamplerKind;
use stipple_core::{Error, Result};

use crate::caption::named_attributes;
use crate::eval::{evaluate, full_prompts, Settings, PROMPT_SEED};
use crate::plot::{draw, Chart, Scale, Series};
use crate::scene::{Colour, IMAGE_SIZE};

/// What the report measures. [`ReportPlan::standard`] is what docs/seed-claims.md is made with.
#[derive(Debug, Clone, Serialize)]
pub struct ReportPlan {
    /// Prompts naming all five attributes per measured point (the first of `stipple eval`'s set).
    pub prompts: usize,
    pub ddpm_steps: Vec<usize>,
    pub ddim_steps: Vec<usize>,
    pub cfg_scales: Vec<f32>,
    /// Under-specified prompts for the variety measurement, and images per prompt.
    pub variety_prompts: Vec<String>,
    pub variety_seeds: u64,
    pub curve_samplers: Vec<SamplerKind>,
    pub curve_steps: Vec<usize>,
    /// Pixel-space twins (patch sizes over the 128x128 RGB image) and timed passes of each.
    pub twin_patches: Vec<usize>,
    pub twin_runs: usize,
}

impl ReportPlan {
    pub fn standard() -> Self {
        Self {
            prompts: 32,
            ddpm_steps: vec![10, 25, 50, 100, 250, 1000],
            ddim_steps: vec![5, 10, 20, 50, 100],
            cfg_scales: vec![1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0],
            variety_prompts: ["a red circle", "a large square", "a triangle on a blue background", "a small shape in the center"]
                .map(String::from)
                .to_vec(),
            variety_seeds: 8,
            curve_samplers: vec![SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::Dpmpp2m],
            curve_steps: vec![5, 10, 15, 20, 25, 30, 40, 50],
            twin_patches: vec![16, 8, 4],
            twin_runs: 3,
        }
    }

    /// A few images per measurement: exercises every path of the report in seconds.
    pub fn quick() -> Self {
        Self {
            prompts: 2,
            ddpm_steps: vec![4, 10],
            ddim_steps: vec![2, 4],
            cfg_scales: vec![1.0, 4.0],
            variety_prompts: vec!["a red circle".into()],
            variety_seeds: 2,
            curve_samplers: vec![SamplerKind::Ddim, SamplerKind::Euler],
            curve_steps: vec![2, 4],
            twin_patches: vec![16],
            twin_runs: 1,
        }
    }

    /// Images the plan generates (for a progress bar); points shared between claims count once.
    pub fn images(&self, default_steps: usize, default_cfg: f32) -> usize {
        self.points(default_steps, default_cfg).len() * self.prompts
            + self.cfg_scales.len() * self.variety_prompts.len() * self.variety_seeds as usize
    }

    /// Every (sampler, steps, cfg) the full-prompt measurements need, without repeats.
    fn points(&self, default_steps: usize, default_cfg: f32) -> Vec<PointKey> {
        let mut keys: Vec<PointKey> = Vec::new();
        let mut add = |k: PointKey| {
            if !keys.contains(&k) {
                keys.push(k);
            }
        };
        add(PointKey::new(SamplerKind::Ddim, default_steps, default_cfg));
        self.ddpm_steps.iter().for_each(|&s| add(PointKey::new(SamplerKind::Ddpm, s, default_cfg)));
        self.ddim_steps.iter().for_each(|&s| add(PointKey::new(SamplerKind::Ddim, s, default_cfg)));
        self.cfg_scales.iter().for_each(|&c| add(PointKey::new(SamplerKind::Ddim, default_steps, c)));
        for &sampler in &self.curve_samplers {
            self.curve_steps.iter().for_each(|&s| add(PointKey::new(sampler, s, default_cfg)));
        }
        keys
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct PointKey {
    sampler: SamplerKind,
    steps: usize,
    cfg_bits: u32,
}

impl PointKey {
    fn new(sampler: SamplerKind, steps: usize, cfg: f32) -> Self {
        Self { sampler, steps, cfg_bits: cfg.to_bits() }
    }
}

/// Quality and time of one setting on the full prompts.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub sampler: String,
    pub steps: usize,
    pub cfg_scale: f32,
    pub images: usize,
    /// Fraction of named attributes the images show, and `(correct, asked)` per attribute.
    pub accuracy: f64,
    pub per_attribute: [(usize, usize); 5],
    /// Standard error of `accuracy` (binomial over the attributes asked).
    pub accuracy_se: f64,
    /// Mean distance (sRGB units, 0–441) of a pixel to the nearest palette colour.
    pub palette_error: f64,
    pub median_seconds: f64,
}

/// Faithfulness and variety at one guidance scale, on the under-specified prompts.
#[derive(Debug, Clone, Serialize)]
pub struct VarietyPoint {
    pub cfg_scale: f32,
    /// Fraction of the attributes the prompts do name that the images show.
    pub faithfulness: f64,
    /// Mean over prompts and unnamed attributes of (distinct values seen − 1) / (most possible − 1).
    pub variety: f64,
    /// Standard error of that mean (over the prompt-attribute pairs), so a change in variety can
    /// be told from noise.
    pub variety_se: f64,
}

/// Per-step cost of the latent DiT and its pixel-space twins.
#[derive(Debug, Clone, Serialize)]
pub struct TwinTiming {
    pub name: String,
    pub space: String,
    pub patch: usize,
    pub tokens: usize,
    pub values_per_token: usize,
    /// Forward-pass FLOPs of a guided step (batch 2), counted from the architecture.
    pub gflops: f64,
    pub median_step_seconds: f64,
}

/// Everything measured, as written to data.json.
#[derive(Debug, Clone, Serialize)]
pub struct Measurements {
    pub plan: ReportPlan,
    pub default_steps: usize,
    pub default_cfg: f32,
    pub points: Vec<Point>,
    pub variety: Vec<VarietyPoint>,
    pub twins: Vec<TwinTiming>,
    /// Median seconds of one whole latent image at the default settings (text, 20 steps, decode).
    pub latent_image_seconds: f64,
    pub total_seconds: f64,
}

impl Measurements {
    /// The shipped latent DiT's timing, and the pixel twin claim 4 compares it with: the finest
    /// one measured (the argument for that choice is in the report's section 4).
    fn claim_four_pair(&self) -> (Option<&TwinTiming>, Option<&TwinTiming>) {
        let latent = self.twins.iter().find(|t| t.space == "latent");
        let equal = self.twins.iter().filter(|t| t.space == "pixel").min_by_key(|t| t.patch);
        (latent, equal)
    }
}

/// Where and how the report was made, written at its top.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub command: String,
    pub model: PathBuf,
    pub machine: String,
    pub date: String,
    pub revision: String,
}

/// Images generated so far, of the total; called after each one.
pub type Progress<'a> = &'a mut dyn FnMut(usize, &str);

/// Run the whole plan.
pub fn measure(pipeline: &Pipeline, dit: &StippleDitConfig, plan: &ReportPlan, progress: Progress) -> Result<(Measurements, Samples)> {
    let started = Instant::now();
    let d = pipeline.defaults;
    let prompts = full_prompts(PROMPT_SEED, plan.prompts);
    let mut done = 0usize;
    let mut points = Vec::new();
    let mut samples = Samples::default();
    for key in plan.points(d.steps, d.cfg_scale) {
        let cfg = f32::from_bits(key.cfg_bits);
        let label = format!("{} {} steps cfg {cfg}", key.sampler.name(), key.steps);
        let keep = key == PointKey::new(SamplerKind::Ddim, d.steps, d.cfg_scale);
        let (point, images) = measure_point(pipeline, &prompts, key.sampler, key.steps, cfg, &mut |_: &RgbImage| {
            done += 1;
            progress(done, &label)
        })?;
        if keep {
            samples.default_grid = images;
            samples.default_prompts = prompts.clone();
        }
        points.push(point);
    }
    let mut variety = Vec::new();
    for &cfg in &plan.cfg_scales {
        let label = format!("variety cfg {cfg}");
        let (v, first_prompt_images) = measure_variety(pipeline, plan, d.steps, cfg, &mut |_: &RgbImage| {
            done += 1;
            progress(done, &label)
        })?;
        samples.variety_rows.push((cfg, first_prompt_images));
        variety.push(v);
    }
    samples.variety_prompt = plan.variety_prompts.first().cloned().unwrap_or_default();
    let twins = time_twins(dit, plan)?;
    let latent_image_seconds = points
        .iter()
        .find(|p| p.sampler == SamplerKind::Ddim.name() && p.steps == d.steps && p.cfg_scale == d.cfg_scale)
        .map(|p| p.median_seconds)
        .unwrap_or(f64::NAN);
    let m = Measurements {
        plan: plan.clone(),
        default_steps: d.steps,
        default_cfg: d.cfg_scale,
        points,
        variety,
        twins,
        latent_image_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    Ok((m, samples))
}

/// Images kept for the report's grids.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub default_prompts: Vec<String>,
    pub default_grid: Vec<RgbImage>,
    pub variety_prompt: String,
    /// Per guidance scale, the first variety prompt's images.
    pub variety_rows: Vec<(f32, Vec<RgbImage>)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Mean distance of a pixel to its nearest palette colour.
pub fn palette_error(image: &RgbImage) -> f64 {
    let n = image.pixels.len() / 3;
    let sum: f64 = image.pixels.chunks_exact(3).map(|p| Colour::nearest([p[0], p[1], p[2]]).1).sum();
    sum / n.max(1) as f64
}

fn measure_point(
    pipeline: &Pipeline,
    prompts: &[String],
    sampler: SamplerKind,
    steps: usize,
    cfg_scale: f32,
    each: &mut dyn FnMut(&RgbImage),
) -> Result<(Point, Vec<RgbImage>)> {
    let settings = Settings { steps, cfg_scale, sampler, seeds: 1, first_seed: 0 };
    let (mut seconds, mut palette, mut images) = (Vec::new(), 0f64, Vec::new());
    let report = evaluate(pipeline, prompts, settings, &mut |s| {
        seconds.push(s.seconds);
        palette += palette_error(&s.image);
        images.push(s.image.clone());
        each(&s.image);
    })?;
    let asked: usize = report.per_attribute.iter().map(|a| a.1).sum();
    let p = report.accuracy();
    let point = Point {
        sampler: sampler.name().to_string(),
        steps,
        cfg_scale,
        images: report.images,
        accuracy: p,
        per_attribute: report.per_attribute,
        accuracy_se: (p * (1.0 - p) / asked.max(1) as f64).sqrt(),
        palette_error: palette / report.images.max(1) as f64,
        median_seconds: median(seconds),
    };
    Ok((point, images))
}

/// The values an image shows for each attribute (`None` where there is no object).
fn shown(reading: &crate::checker::Reading) -> [Option<String>; 5] {
    let o = reading.object;
    [
        Some(reading.background.name().to_string()),
        o.map(|o| o.colour.name().to_string()),
        o.map(|o| o.shape.name().to_string()),
        o.map(|o| o.size.name().to_string()),
        o.map(|o| o.cell.phrase().to_string()),
    ]
}

/// How many values each attribute can take (background, colour, shape, size, position).
const CARDINALITY: [usize; 5] = [8, 8, 3, 2, 9];

fn measure_variety(
    pipeline: &Pipeline,
    plan: &ReportPlan,
    steps: usize,
    cfg_scale: f32,
    each: &mut dyn FnMut(&RgbImage),
) -> Result<(VarietyPoint, Vec<RgbImage>)> {
    let settings = Settings { steps, cfg_scale, sampler: SamplerKind::Ddim, seeds: plan.variety_seeds, first_seed: 1_000 };
    let mut seen: HashMap<(String, usize), BTreeSet<String>> = HashMap::new();
    let mut first_images = Vec::new();
    let first = plan.variety_prompts.first().cloned().unwrap_or_default();
    let report = evaluate(pipeline, &plan.variety_prompts, settings, &mut |s| {
        for (a, value) in shown(&s.reading).into_iter().enumerate() {
            if let Some(v) = value {
                seen.entry((s.prompt.clone(), a)).or_default().insert(v);
            }
        }
        if s.prompt == first {
            first_images.push(s.image.clone());
        }
        each(&s.image);
    })?;
    let mut scores = Vec::new();
    for prompt in &plan.variety_prompts {
        let named = named_attributes(prompt);
        let is_named = [
            named.background.is_some(),
            named.colour.is_some(),
            named.shape.is_some(),
            named.size.is_some(),
            named.cell.is_some(),
        ];
        for a in 0..5 {
            let possible = CARDINALITY[a].min(plan.variety_seeds as usize);
            if is_named[a] || possible < 2 {
                continue;
            }
            let distinct = seen.get(&(prompt.clone(), a)).map_or(0, BTreeSet::len);
            scores.push((distinct.max(1) - 1) as f64 / (possible - 1) as f64);
        }
    }
    let n = scores.len().max(1) as f64;
    let variety = scores.iter().sum::<f64>() / n;
    let spread = scores.iter().map(|s| (s - variety).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let variety_se = (spread / n).sqrt();
    Ok((VarietyPoint { cfg_scale, faithfulness: report.accuracy(), variety, variety_se }, first_images))
}

/// Forward FLOPs of one guided step (batch 2) of a DiT with `tokens` image tokens.
fn dit_gflops(c: &StippleDitConfig, tokens: usize, text_tokens: usize) -> f64 {
    let (n, l, d, dc) = (tokens as f64, text_tokens as f64, c.hidden_size as f64, c.context_dim as f64);
    let patch_dim = (c.in_channels * c.patch_size * c.patch_size) as f64;
    let per_block = n * 4.0 * d * d          // self-attention q, k, v, out
        + 2.0 * n * n * d                     // scores and weighted sum
        + n * 2.0 * d * d + l * 2.0 * dc * d  // cross-attention q, out; k, v of the text
        + 2.0 * n * l * d                     // cross scores and sum
        + n * 2.0 * d * d * c.mlp_ratio as f64 // MLP
        + 6.0 * d * d; // adaLN modulation (per sample)
    let macs = c.depth as f64 * per_block + n * patch_dim * d * 2.0;
    2.0 * 2.0 * macs / 1e9
}

/// Time one guided step (batch 2) of the latent DiT and of its pixel-space twins (same width,
/// depth and heads; RGB patches of the 128x128 image), all with zero weights (the cost does not
/// depend on the values).
fn time_twins(latent: &StippleDitConfig, plan: &ReportPlan) -> Result<Vec<TwinTiming>> {
    let text_tokens = 20;
    let mut out = Vec::new();
    let latent_side = latent.sample_size;
    let mut configs = vec![("latent DiT (shipped)".to_string(), "latent".to_string(), latent.clone(), latent_side)];
    for &p in &plan.twin_patches {
        let twin = StippleDitConfig { in_channels: 3, patch_size: p, sample_size: IMAGE_SIZE, ..latent.clone() };
        configs.push((format!("pixel twin, {p}x{p} patches"), "pixel".to_string(), twin, IMAGE_SIZE));
    }
    let device = Device::Cpu;
    for (name, space, config, side) in configs {
        let dit = StippleDit::new(&config, VarBuilder::zeros(DType::F32, &device))?;
        let x = Tensor::zeros((2, config.in_channels, side, side), DType::F32, &device)?;
        let t = Tensor::new(&[500f32, 500.0], &device)?;
        let context = Tensor::zeros((2, text_tokens, config.context_dim), DType::F32, &device)?;
        let pooled = Tensor::zeros((2, config.pooled_dim), DType::F32, &device)?;
        dit.forward(&x, &t, &context, &pooled)?; // warm-up
        let mut times = Vec::new();
        for _ in 0..plan.twin_runs.max(1) {
            let t0 = Instant::now();
            dit.forward(&x, &t, &context, &pooled)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let tokens = (side / config.patch_size).pow(2);
        out.push(TwinTiming {
            name,
            space,
            patch: config.patch_size,
            tokens,
            values_per_token: config.in_channels * config.patch_size * config.patch_size,
            gflops: dit_gflops(&config, tokens, text_tokens),
            median_step_seconds: median(times),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Verdicts

/// A claim, its verdict and the sentence of evidence behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub claim: String,
    pub verdict: &'static str,
    pub evidence: String,
}

fn find<'a>(m: &'a Measurements, sampler: SamplerKind, steps: usize, cfg: f32) -> Option<&'a Point> {
    m.points.iter().find(|p| p.sampler == sampler.name() && p.steps == steps && p.cfg_scale == cfg)
}

fn se_diff(a: &Point, b: &Point) -> f64 {
    se_of_difference(a.accuracy_se, b.accuracy_se)
}

/// Standard error of the difference of two independent estimates with standard errors `a`, `b`.
fn se_of_difference(a: f64, b: f64) -> f64 {
    (a.powi(2) + b.powi(2)).sqrt()
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Judge the four claims from the measurements (rules stated in the report).
pub fn verdicts(m: &Measurements) -> Vec<Verdict> {
    let cfg = m.default_cfg;
    let mut v = Vec::new();

    // 1. DDIM vs DDPM-1000.
    let max_ddpm = m.plan.ddpm_steps.iter().copied().max().unwrap_or(0);
    let claim = format!("DDIM reaches DDPM's quality (DDPM at {max_ddpm} steps) in 10–50x fewer steps");
    v.push(match find(m, SamplerKind::Ddpm, max_ddpm, cfg) {
        None => Verdict { claim, verdict: "not measured", evidence: "no DDPM run at the reference step count".into() },
        Some(reference) => {
            let mut ddim: Vec<&Point> = m.points.iter().filter(|p| p.sampler == "ddim" && p.cfg_scale == cfg).collect();
            ddim.sort_by_key(|p| p.steps);
            match ddim.iter().find(|p| p.accuracy >= reference.accuracy - se_diff(p, reference)) {
                Some(p) => {
                    let ratio = max_ddpm as f64 / p.steps as f64;
                    let time_ratio = reference.median_seconds / p.median_seconds;
                    let verdict = if ratio >= 10.0 { "supported" } else { "not supported" };
                    Verdict {
                        claim,
                        verdict,
                        evidence: format!(
                            "DDPM {max_ddpm}: {} accuracy ({:.2} s/image); DDIM is within one standard error of it from {} steps ({}, {:.3} s/image): {ratio:.0}x fewer steps, {time_ratio:.0}x less time",
                            pct(reference.accuracy), reference.median_seconds, p.steps, pct(p.accuracy), p.median_seconds
                        ),
                    }
                }
                None => Verdict {
                    claim,
                    verdict: "not supported",
                    evidence: format!("no DDIM step count measured reaches DDPM {max_ddpm}'s {}", pct(reference.accuracy)),
                },
            }
        }
    });

    // 2. Guidance: faithfulness up, variety down.
    let claim = "Higher CFG scale gives more prompt-faithful but less varied images".to_string();
    let (lo, hi) = (m.variety.first(), m.variety.last());
    let steps = m.default_steps;
    let (acc_lo, acc_hi) = (
        m.plan.cfg_scales.first().and_then(|&c| find(m, SamplerKind::Ddim, steps, c)),
        m.plan.cfg_scales.last().and_then(|&c| find(m, SamplerKind::Ddim, steps, c)),
    );
    v.push(match (lo, hi, acc_lo, acc_hi) {
        (Some(lo), Some(hi), Some(a_lo), Some(a_hi)) => {
            let faithful = a_hi.accuracy - a_lo.accuracy > se_diff(a_hi, a_lo);
            // A fall within the noise of two small samples of prompts is not a fall.
            let less_varied = lo.variety - hi.variety > se_of_difference(lo.variety_se, hi.variety_se);
            let best = m
                .plan
                .cfg_scales
                .iter()
                .filter_map(|&c| find(m, SamplerKind::Ddim, steps, c))
                .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
                .expect("measured");
            Verdict {
                claim,
                verdict: match (faithful, less_varied) {
                    (true, true) => "supported",
                    (false, false) => "not supported",
                    _ => "partly supported",
                },
                evidence: format!(
                    "scale {} → {}: full-prompt accuracy {} → {} (best {} at scale {}), variety on under-specified prompts {:.2} ± {:.2} → {:.2} ± {:.2}",
                    lo.cfg_scale,
                    hi.cfg_scale,
                    pct(a_lo.accuracy),
                    pct(a_hi.accuracy),
                    pct(best.accuracy),
                    best.cfg_scale,
                    lo.variety,
                    lo.variety_se,
                    hi.variety,
                    hi.variety_se
                ),
            }
        }
        _ => Verdict { claim, verdict: "not measured", evidence: "the guidance sweep is empty".into() },
    });

    // 3. Diminishing returns beyond 25–30 steps.
    let claim = "Beyond 25–30 steps quality gains diminish (DDIM, Euler, DPM++ 2M)".to_string();
    let knee_steps = m.plan.curve_steps.iter().copied().filter(|&s| s <= 30).max();
    let mut parts = Vec::new();
    let mut all = true;
    for &sampler in &m.plan.curve_samplers {
        let curve: Vec<&Point> = m.plan.curve_steps.iter().filter_map(|&s| find(m, sampler, s, cfg)).collect();
        let (Some(knee), Some(first)) = (knee_steps.and_then(|k| find(m, sampler, k, cfg)), curve.first()) else {
            all = false;
            continue;
        };
        let after = curve.iter().filter(|p| p.steps > knee.steps).max_by(|a, b| a.accuracy.total_cmp(&b.accuracy));
        let gain_before = knee.accuracy - first.accuracy;
        let (gain_after, flat) = match after {
            Some(a) => (a.accuracy - knee.accuracy, a.accuracy - knee.accuracy <= se_diff(a, knee)),
            None => (0.0, true),
        };
        all &= flat;
        parts.push(format!(
            "{}: {} → {} steps {:+.1} points, {} steps → more {:+.1} points{}",
            sampler.name(),
            first.steps,
            knee.steps,
            100.0 * gain_before,
            knee.steps,
            100.0 * gain_after,
            if flat { " (within noise)" } else { "" }
        ));
    }
    v.push(Verdict {
        claim,
        verdict: if parts.is_empty() { "not measured" } else if all { "supported" } else { "not supported" },
        evidence: parts.join("; "),
    });

    // 4. Latent vs pixel space.
    let claim = "Latent diffusion is several times faster than pixel-space diffusion at equal quality".to_string();
    v.push(match m.claim_four_pair() {
        (Some(l), Some(px)) => {
            let step_ratio = px.median_step_seconds / l.median_step_seconds;
            let twin_image = px.median_step_seconds * m.default_steps as f64;
            let image_ratio = twin_image / m.latent_image_seconds;
            Verdict {
                claim,
                verdict: if image_ratio >= 3.0 { "supported (compute measured; quality parity argued, not measured)" } else { "not supported" },
                evidence: format!(
                    "a guided step of the pixel twin with {p}x{p} patches ({} tokens, {:.1} GFLOPs) takes {:.3} s against the latent DiT's {:.4} s ({} tokens, {:.2} GFLOPs): {step_ratio:.0}x; a whole {}-step image {twin_image:.2} s against {:.3} s with text encoding and decoding: {image_ratio:.0}x",
                    px.tokens,
                    px.gflops,
                    px.median_step_seconds,
                    l.median_step_seconds,
                    l.tokens,
                    l.gflops,
                    m.default_steps,
                    m.latent_image_seconds,
                    p = px.patch
                ),
            }
        }
        _ => Verdict { claim, verdict: "not measured", evidence: "no twin timings".into() },
    });
    v
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Images side by side, `cols` per row, with a `gap`-pixel white border between them.
pub fn grid(images: &[RgbImage], cols: usize, gap: usize) -> RgbImage {
    let (w, h) = images.first().map(|i| (i.width, i.height)).unwrap_or((1, 1));
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let (gw, gh) = (cols * w + (cols + 1) * gap, rows * h + (rows + 1) * gap);
    let mut pixels = vec![255u8; gw * gh * 3];
    for (k, img) in images.iter().enumerate() {
        let (ox, oy) = (gap + (k % cols) * (w + gap), gap + (k / cols) * (h + gap));
        for y in 0..h.min(img.height) {
            let src = &img.pixels[y * img.width * 3..(y * img.width + w.min(img.width)) * 3];
            let start = ((oy + y) * gw + ox) * 3;
            pixels[start..start + src.len()].copy_from_slice(src);
        }
    }
    RgbImage { width: gw, height: gh, pixels }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("writing {}", path.display()), e)
}

fn chart(c: &Chart, dir: &Path, name: &str) -> Result<String> {
    draw(c, &dir.join(name)).map_err(Error::Unsupported)?;
    Ok(name.to_string())
}

fn curve_at(m: &Measurements, sampler: SamplerKind, steps: &[usize], cfg: f32, y: impl Fn(&Point) -> f64) -> Series {
    let points = steps.iter().filter_map(|&s| find(m, sampler, s, cfg)).map(|p| (p.steps as f64, y(p))).collect();
    Series { label: sampler.to_string(), points }
}

/// One stage of the model's training run, from its `training_log.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TrainingStage {
    pub name: String,
    pub steps: usize,
    pub batch_size: usize,
    pub seconds: f64,
    pub items_per_sec: f64,
    pub initial_loss: f64,
    pub final_loss: f64,
    pub loss_curve: Vec<(usize, f64)>,
}

/// The model folder's `training_log.json`, as `stipple train` writes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TrainingLog {
    pub seed: u64,
    pub stages: Vec<TrainingStage>,
}

fn training_section(o: &mut String, log: &TrainingLog, assets: &Path) -> Result<()> {
    let series = log
        .stages
        .iter()
        .map(|st| Series { label: st.name.clone(), points: st.loss_curve.iter().map(|&(x, y)| (x as f64, y)).collect() })
        .filter(|s| !s.points.is_empty())
        .collect::<Vec<_>>();
    let total: f64 = log.stages.iter().map(|s| s.seconds).sum();
    o.push_str(&format!(
        "## The model's training run\n\nFrom the model folder's `training_log.json` (seed {}): {:.0} min in all.\n\n| stage | steps × batch | wall time | images/s | loss, first → final |\n|---|---|---|---|---|\n",
        log.seed,
        total / 60.0
    ));
    for st in &log.stages {
        o.push_str(&format!(
            "| {} | {} × {} | {:.1} min | {:.1} | {:.4} → {:.4} |\n",
            st.name,
            st.steps,
            st.batch_size,
            st.seconds / 60.0,
            st.items_per_sec,
            st.initial_loss,
            st.final_loss
        ));
    }
    if !series.is_empty() {
        let name = chart(
            &Chart {
                title: "Training loss (logged averages)".into(),
                x_label: "step".into(),
                y_label: "loss".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Log,
                y_range: None,
                series,
            },
            assets,
            "training_loss.png",
        )?;
        o.push_str(&format!("\n![training loss](seed-claims/{name})\n"));
    }
    o.push('\n');
    Ok(())
}

/// Write `<dir>/seed-claims.md`, its charts and grids under `<dir>/seed-claims/`, and the raw
/// numbers as `<dir>/seed-claims/data.json`; with the model's training log, a section on the run.
pub fn write(m: &Measurements, samples: &Samples, run: &RunInfo, training: Option<&TrainingLog>, dir: &Path) -> Result<PathBuf> {
    let assets = dir.join("seed-claims");
    std::fs::create_dir_all(&assets).map_err(|e| io(&assets, e))?;
    let cfg = m.default_cfg;
    let acc = |p: &Point| p.accuracy;
    let lin01 = Some((0.0, 1.0));

    let ddim_steps: Vec<usize> = m.plan.ddim_steps.clone();
    let c1a = chart(
        &Chart {
            title: "Claim 1: quality vs steps, DDPM and DDIM".into(),
            x_label: "sampler steps".into(),
            y_label: "attribute accuracy".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Linear,
            y_range: lin01,
            series: vec![curve_at(m, SamplerKind::Ddpm, &m.plan.ddpm_steps, cfg, acc), curve_at(m, SamplerKind::Ddim, &ddim_steps, cfg, acc)],
        },
        &assets,
        "claim1_quality.png",
    )?;
    let c1b = chart(
        &Chart {
            title: "Claim 1: time per image vs steps".into(),
            x_label: "sampler steps".into(),
            y_label: "seconds per image (median)".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            y_range: None,
            series: vec![
                curve_at(m, SamplerKind::Ddpm, &m.plan.ddpm_steps, cfg, |p| p.median_seconds),
                curve_at(m, SamplerKind::Ddim, &ddim_steps, cfg, |p| p.median_seconds),
            ],
        },
        &assets,
        "claim1_time.png",
    )?;
    let steps = m.default_steps;
    let faithful = Series {
        label: "accuracy, full prompts".into(),
        points: m.plan.cfg_scales.iter().filter_map(|&c| find(m, SamplerKind::Ddim, steps, c)).map(|p| (p.cfg_scale as f64, p.accuracy)).collect(),
    };
    let faithful_partial =
        Series { label: "accuracy, under-specified prompts".into(), points: m.variety.iter().map(|v| (v.cfg_scale as f64, v.faithfulness)).collect() };
    let variety = Series { label: "variety, under-specified prompts".into(), points: m.variety.iter().map(|v| (v.cfg_scale as f64, v.variety)).collect() };
    let c2 = chart(
        &Chart {
            title: format!("Claim 2: guidance scale (DDIM, {steps} steps)"),
            x_label: "CFG scale".into(),
            y_label: "fraction".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            y_range: lin01,
            series: vec![faithful, faithful_partial, variety],
        },
        &assets,
        "claim2_guidance.png",
    )?;
    let c3a = chart(
        &Chart {
            title: "Claim 3: quality vs steps".into(),
            x_label: "sampler steps".into(),
            y_label: "attribute accuracy".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            y_range: lin01,
            series: m.plan.curve_samplers.iter().map(|&s| curve_at(m, s, &m.plan.curve_steps, cfg, acc)).collect(),
        },
        &assets,
        "claim3_quality.png",
    )?;
    let c3b = chart(
        &Chart {
            title: "Claim 3: palette error vs steps (lower is cleaner)".into(),
            x_label: "sampler steps".into(),
            y_label: "mean distance to palette (sRGB)".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            y_range: None,
            series: m.plan.curve_samplers.iter().map(|&s| curve_at(m, s, &m.plan.curve_steps, cfg, |p| p.palette_error)).collect(),
        },
        &assets,
        "claim3_palette.png",
    )?;

    let default_grid = "samples_default.png";
    grid(&samples.default_grid.iter().take(32).cloned().collect::<Vec<_>>(), 8, 4).save_png(&assets.join(default_grid), &[])?;
    let variety_grid = "samples_guidance.png";
    let rows: Vec<RgbImage> = samples.variety_rows.iter().flat_map(|(_, imgs)| imgs.iter().cloned()).collect();
    grid(&rows, m.plan.variety_seeds as usize, 4).save_png(&assets.join(variety_grid), &[])?;

    let data = serde_json::to_string_pretty(m).map_err(|e| Error::Unsupported(e.to_string()))?;
    let data_path = assets.join("data.json");
    std::fs::write(&data_path, data).map_err(|e| io(&data_path, e))?;

    let mut md = markdown(m, samples, run, &verdicts(m), [&c1a, &c1b, &c2, &c3a, &c3b], default_grid, variety_grid);
    if let Some(log) = training {
        training_section(&mut md, log, &assets)?;
    }
    let path = dir.join("seed-claims.md");
    std::fs::write(&path, md).map_err(|e| io(&path, e))?;
    Ok(path)
}

fn point_row(p: &Point) -> String {
    let per: Vec<String> = p.per_attribute.iter().map(|&(c, a)| if a == 0 { "–".into() } else { format!("{:.0}%", 100.0 * c as f64 / a as f64) }).collect();
    format!(
        "| {} | {} | {} | {} ± {:.1} | {} | {:.1} | {:.3} |",
        p.sampler,
        p.steps,
        p.cfg_scale,
        pct(p.accuracy),
        100.0 * p.accuracy_se,
        per.join(" / "),
        p.palette_error,
        p.median_seconds
    )
}

const POINT_HEADER: &str = "| sampler | steps | CFG | accuracy ± s.e. | background / colour / shape / size / position | palette error | s / image |\n|---|---|---|---|---|---|---|";

#[allow(clippy::too_many_arguments)]
fn markdown(m: &Measurements, s: &Samples, run: &RunInfo, verdicts: &[Verdict], charts: [&str; 5], default_grid: &str, variety_grid: &str) -> String {
    let mut o = String::new();
    let cfg = m.default_cfg;
    let line = |o: &mut String, t: &str| {
        o.push_str(t);
        o.push('\n');
    };
    line(&mut o, "# The seed's claims, measured on Stipple's default model\n");
    line(&mut o, &format!("Generated by `{}` on {} ({}), revision {}, model `{}`; the whole run took {:.0} s. Nothing in this file is edited by hand: rerun the command to remake it. Raw numbers: [seed-claims/data.json](seed-claims/data.json).\n", run.command, run.date, run.machine, run.revision, run.model.display(), m.total_seconds));
    line(&mut o, &format!(
        "**Quality** is the checker's reading of each image (crate `stipple-train`, module `checker`: background colour, object colour, shape, size and 3x3 cell, read back from the pixels): the fraction of the attributes a prompt names that the image shows, on the first {} prompts of `stipple eval`'s set (each names all five), one image per prompt, the same seed per prompt at every setting. ± is one binomial standard error. The **palette error** (mean distance of a pixel to the nearest palette colour, sRGB units) says how clean the flat colours and edges are. Times are medians per image on one thread pool of this machine, text encoding and decoding included. Unless a table says otherwise: DDIM, {} steps, CFG {}, the model's defaults.\n",
        m.plan.prompts, m.default_steps, cfg
    ));
    line(&mut o, "| # | claim | verdict | evidence |\n|---|---|---|---|");
    for (i, v) in verdicts.iter().enumerate() {
        line(&mut o, &format!("| {} | {} | **{}** | {} |", i + 1, v.claim, v.verdict, v.evidence));
    }
    line(&mut o, "");
    line(&mut o, "Rules: claim 1 takes the fewest DDIM steps whose accuracy is within one standard error (of the difference) of DDPM's at its most steps; supported when that is at least 10x fewer steps. Claim 2 compares the lowest and highest scale: supported when accuracy rises by more than a standard error and variety falls by more than one (± is the standard error of the mean over the prompt-attribute pairs). Claim 3: supported when, for every sampler, no step count above the 25–30 knee beats the knee by more than a standard error. Claim 4: see its section.\n");

    line(&mut o, &format!("## Samples at the default settings\n\n![samples](seed-claims/{default_grid})\n\nPrompts, left to right, top to bottom:\n"));
    for (i, p) in s.default_prompts.iter().take(s.default_grid.len().min(32)).enumerate() {
        line(&mut o, &format!("{}. {p}", i + 1));
    }
    line(&mut o, "");

    line(&mut o, &format!("## 1. DDIM vs DDPM\n\n![quality](seed-claims/{})\n![time](seed-claims/{})\n", charts[0], charts[1]));
    line(&mut o, POINT_HEADER);
    for sampler in [SamplerKind::Ddpm, SamplerKind::Ddim] {
        let list = if sampler == SamplerKind::Ddpm { &m.plan.ddpm_steps } else { &m.plan.ddim_steps };
        for &st in list {
            if let Some(p) = find(m, sampler, st, cfg) {
                line(&mut o, &point_row(p));
            }
        }
    }
    line(&mut o, "\nDDPM here is the ancestral sampler on a subset of the 1000 training steps (diffusers' DDPMScheduler with `num_inference_steps`), so its curve also shows how badly it does with few steps; DDIM (η = 0) is deterministic given the initial noise.\n");

    line(&mut o, &format!("## 2. Guidance scale: faithfulness against variety\n\n![guidance](seed-claims/{})\n", charts[2]));
    line(&mut o, &format!("Under-specified prompts, {} seeds each: {}. Variety is, per prompt and per attribute the prompt leaves out, the number of distinct values the checker reads across the seeds, less one, over the most possible less one (1 = every seed different where it can be, 0 = always the same); averaged.\n", m.plan.variety_seeds, m.plan.variety_prompts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ")));
    line(&mut o, "| CFG | accuracy, full prompts | accuracy, under-specified prompts | variety |\n|---|---|---|---|");
    for v in &m.variety {
        let full = find(m, SamplerKind::Ddim, m.default_steps, v.cfg_scale).map(|p| pct(p.accuracy)).unwrap_or_default();
        line(&mut o, &format!("| {} | {} | {} | {:.2} ± {:.2} |", v.cfg_scale, full, pct(v.faithfulness), v.variety, v.variety_se));
    }
    line(&mut o, &format!("\n\"{}\" at each scale (rows: {}), {} seeds:\n\n![guidance samples](seed-claims/{variety_grid})\n", s.variety_prompt, s.variety_rows.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>().join(", "), m.plan.variety_seeds));

    line(&mut o, &format!("## 3. Steps: where the gains stop\n\n![quality](seed-claims/{})\n![palette](seed-claims/{})\n", charts[3], charts[4]));
    line(&mut o, POINT_HEADER);
    for &sampler in &m.plan.curve_samplers {
        for &st in &m.plan.curve_steps {
            if let Some(p) = find(m, sampler, st, cfg) {
                line(&mut o, &point_row(p));
            }
        }
    }
    line(&mut o, "");

    line(&mut o, "## 4. Latent against pixel space\n");
    let (latent, equal) = m.claim_four_pair();
    let (lp, lv) = latent.map_or((0, 0), |t| (t.patch, t.values_per_token));
    line(&mut o, &format!("A trained pixel-space twin did not fit the 2-hour training budget next to the shipped model, so this comparison is by compute, measured: the same transformer (width, depth, heads, text conditioning) run on RGB patches of the 128x128 image instead of {lp}x{lp} patches of the latent, every network timed in this run (one guided step, batch 2, zero weights, which cost the same as trained ones), FLOPs counted from the architecture.\n"));
    line(&mut o, "| network | space | patch | tokens | values per token | GFLOPs per guided step | s per guided step (median) |\n|---|---|---|---|---|---|---|");
    for t in &m.twins {
        line(&mut o, &format!("| {} | {} | {} | {} | {} | {:.2} | {:.4} |", t.name, t.space, t.patch, t.tokens, t.values_per_token, t.gflops, t.median_step_seconds));
    }
    let pixel_values: Vec<String> = m.twins.iter().filter(|t| t.space == "pixel").map(|t| t.values_per_token.to_string()).collect();
    if let Some(finest) = equal {
        let fv = finest.values_per_token;
        let against = if fv <= lv { format!("no more than the latent model's {lv}") } else { format!("{:.0}x the latent model's {lv}", fv as f64 / lv.max(1) as f64) };
        line(&mut o, &format!("\nWhich twin counts as \"equal quality\" is an argument, not a measurement. The latent DiT's tokens carry {lv} values ({lp}x{lp} patches of {} latent channels), and the autoencoder, not the transformer, draws the anti-aliased edges at full resolution. A pixel twin has to draw those itself, from tokens of {} values. The verdict uses the finest twin measured ({fv} values per token, {against}), the cheapest one we expect to reach the same edges and placement; the coarser ones bound the speed-up from below.\n", lv / (lp * lp).max(1), pixel_values.join(", ")));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(sampler: &str, steps: usize, cfg: f32, accuracy: f64, seconds: f64) -> Point {
        Point {
            sampler: sampler.into(),
            steps,
            cfg_scale: cfg,
            images: 100,
            accuracy,
            per_attribute: [(0, 0); 5],
            accuracy_se: 0.01,
            palette_error: 1.0,
            median_seconds: seconds,
        }
    }

    fn measurements(ddim_acc: [f64; 3], ddpm_acc: f64, variety: [f64; 2]) -> Measurements {
        let mut plan = ReportPlan::quick();
        plan.ddpm_steps = vec![1000];
        plan.ddim_steps = vec![10, 50, 200];
        plan.cfg_scales = vec![1.0, 4.0];
        plan.curve_samplers = vec![SamplerKind::Ddim];
        plan.curve_steps = vec![10, 50, 200];
        let mut points = vec![point("ddpm", 1000, 4.0, ddpm_acc, 10.0)];
        for (s, a) in [10, 50, 200].into_iter().zip(ddim_acc) {
            points.push(point("ddim", s, 4.0, a, s as f64 / 100.0));
        }
        points.push(point("ddim", 20, 1.0, 0.5, 0.2));
        // The default setting's point counts as a DDIM measurement too.
        points.push(point("ddim", 20, 4.0, ddim_acc[0], 0.2));
        Measurements {
            plan,
            default_steps: 20,
            default_cfg: 4.0,
            points,
            variety: vec![
                VarietyPoint { cfg_scale: 1.0, faithfulness: 0.5, variety: variety[0], variety_se: 0.05 },
                VarietyPoint { cfg_scale: 4.0, faithfulness: 0.9, variety: variety[1], variety_se: 0.05 },
            ],
            twins: vec![],
            latent_image_seconds: 0.2,
            total_seconds: 1.0,
        }
    }

    #[test]
    fn claim_one_follows_the_fewest_ddim_steps_that_match_ddpm() {
        let v = verdicts(&measurements([0.5, 0.9, 0.9], 0.9, [0.8, 0.2]));
        assert_eq!(v[0].verdict, "supported", "{}", v[0].evidence);
        assert!(v[0].evidence.contains("from 50 steps"), "{}", v[0].evidence);
        // DDIM needs 200 steps: only 5x fewer.
        let v = verdicts(&measurements([0.5, 0.6, 0.9], 0.9, [0.8, 0.2]));
        assert_eq!(v[0].verdict, "not supported", "{}", v[0].evidence);
    }

    #[test]
    fn claim_two_needs_both_directions() {
        assert_eq!(verdicts(&measurements([0.9; 3], 0.9, [0.8, 0.2]))[1].verdict, "supported");
        assert_eq!(verdicts(&measurements([0.9; 3], 0.9, [0.2, 0.8]))[1].verdict, "partly supported");
        // A fall smaller than its standard error (0.05 each side, 0.07 for the difference) is noise.
        assert_eq!(verdicts(&measurements([0.9; 3], 0.9, [0.51, 0.50]))[1].verdict, "partly supported");
        assert_eq!(verdicts(&measurements([0.9; 3], 0.9, [0.51, 0.40]))[1].verdict, "supported");
    }

    #[test]
    fn claim_three_fails_when_more_steps_still_help() {
        // Knee is the largest curve step <= 30: 10 here; 50 steps is much better.
        let v = verdicts(&measurements([0.5, 0.9, 0.9], 0.9, [0.8, 0.2]));
        assert_eq!(v[2].verdict, "not supported", "{}", v[2].evidence);
        let v = verdicts(&measurements([0.9, 0.9, 0.91], 0.9, [0.8, 0.2]));
        assert_eq!(v[2].verdict, "supported", "{}", v[2].evidence);
    }

    #[test]
    fn grid_places_images_with_gaps() {
        let red = RgbImage { width: 2, height: 2, pixels: [255, 0, 0].repeat(4) };
        let g = grid(&[red.clone(), red.clone(), red], 2, 1);
        assert_eq!((g.width, g.height), (7, 7));
        let at = |x: usize, y: usize| &g.pixels[(y * g.width + x) * 3..(y * g.width + x) * 3 + 3];
        assert_eq!(at(1, 1), [255, 0, 0]);
        assert_eq!(at(0, 0), [255, 255, 255]);
        assert_eq!(at(4, 4), [255, 255, 255]); // the empty fourth cell
        assert_eq!(at(1, 4), [255, 0, 0]);
    }

    #[test]
    fn flops_grow_with_tokens_quadratically_in_attention() {
        let c = StippleDitConfig {
            in_channels: 4,
            patch_size: 2,
            sample_size: 16,
            hidden_size: 192,
            depth: 6,
            num_heads: 6,
            mlp_ratio: 4,
            context_dim: 128,
            pooled_dim: 128,
            timestep_features: 256,
            gated_mlp: false,
        };
        let (a, b) = (dit_gflops(&c, 64, 20), dit_gflops(&c, 1024, 20));
        assert!(a > 0.5 && a < 2.0, "{a}");
        assert!(b / a > 16.0, "{}", b / a);
    }
}
