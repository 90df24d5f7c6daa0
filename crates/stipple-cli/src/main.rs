//! The `stipple` command.

mod bench_cmd;
mod bench_dit;
mod conformance_cmd;
mod eval_cmd;
mod generate_cmd;
mod serve_cmd;
mod quantize_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stipple", version, about = "Text-to-image diffusion, self-hosted")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an image from a prompt.
    Generate(generate_cmd::Args),
    /// Quantize a FLUX / SD3 transformer to a GGUF file (q8_0 or q4_0 linear weights).
    Quantize(quantize_cmd::Args),
    /// Check the engine against reference vectors produced by HuggingFace diffusers.
    Conformance(conformance_cmd::Args),
    /// Write a diffusers pipeline folder as one single-file .safetensors checkpoint (original key
    /// layout, configs and tokenizers in its metadata).
    Convert {
        /// The diffusers pipeline folder (SD 1.x / 2.x / SDXL).
        input: std::path::PathBuf,
        /// The .safetensors file to write.
        output: std::path::PathBuf,
    },
    /// Train the default model from a config file (models/stipple-default/train.json).
    Train(train_cmd::Args),
    /// Score a model on prompts with the checker that reads scenes back from images.
    Eval(eval_cmd::Args),
    /// Benchmark the engine at real model sizes (random weights, nothing downloaded).
    #[command(subcommand)]
    Bench(bench_cmd::Bench),
    /// Run the web service: page, JSON API, OpenAI-compatible API and in-process workers.
    Serve(serve_cmd::ServeArgs),
    /// Run queue workers only, against the configured database (to scale out).
    Worker(serve_cmd::ServiceArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STIPPLE_LOG").unwrap_or_else(|_| "warn,stipple_server=info".into()))
        .with_writer(std::io::stderr)
        .init();
    pin_thread_count();
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => generate_cmd::run(args),
        Command::Quantize(args) => quantize_cmd::run(args),
        Command::Conformance(args) => conformance_cmd::run(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Eval(args) => eval_cmd::run(args),
        Command::Bench(b) => bench_cmd::run(b),
        Command::Convert { input, output } => {
            if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
                anyhow::bail!("the output must be a .safetensors file, got {}", output.display());
            }
            stipple_core::checkpoint::to_single_file(&input, &output).map_err(user_error)?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Worker(args) => serve_cmd::worker(args),
    }
}

/// Fix candle's thread count for the whole run. Unless `RAYON_NUM_THREADS` is set, candle
/// recomputes its default (by reading /proc/cpuinfo) on every matmul: a fifth of the time of a
/// small model's image. Its first answer is kept, so nothing else changes.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// Where the shipped default model lives (relative to the repository root).
pub const DEFAULT_MODEL: &str = "models/stipple-default";

/// Where a `--model` path points: as given; but the default, when the working directory has no
/// `models/stipple-default`, is the copy in the checkout this binary was built from, so
/// `stipple generate "..."` works from any directory.
pub fn resolve_model_path(path: &std::path::Path) -> std::path::PathBuf {
    if path == std::path::Path::new(DEFAULT_MODEL) && !path.exists() {
        let built_from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(DEFAULT_MODEL);
        if built_from.exists() {
            return built_from;
        }
    }
    path.to_path_buf()
}

/// Load a model for a command; an untrained default model folder gets the command that trains it.
pub fn load_model(path: &std::path::Path, device: &candle_core::Device) -> anyhow::Result<stipple_core::loader::LoadedModel> {
    load_model_with(path, &stipple_core::loader::LoadOptions::default(), device)
}

/// `load_model` with loading options (a separate transformer file for FLUX / SD3).
pub fn load_model_with(
    path: &std::path::Path,
    options: &stipple_core::loader::LoadOptions,
    device: &candle_core::Device,
) -> anyhow::Result<stipple_core::loader::LoadedModel> {
    let path = &resolve_model_path(path);
    if !path.join("model_index.json").exists() && path.join("train.json").is_file() {
        anyhow::bail!(
            "{} holds the default model's recipe but no weights yet; train them with `stipple train --config {}`",
            path.display(),
            path.join("train.json").display()
        );
    }
    stipple_core::loader::load_pipeline_with(path, options, device).map_err(user_error)
}

/// Turn an engine error into a message for the command line: parameter errors name the flag.
pub fn user_error(e: stipple_core::Error) -> anyhow::Error {
    match e {
        stipple_core::Error::InvalidParam { param, reason } => {
            let flag = match param {
                "width" => "-W/--width".to_string(),
                "height" => "-H/--height".to_string(),
                other => format!("--{other}"),
            };
            anyhow::anyhow!("invalid {flag}: {reason}")
        }
        other => anyhow::Error::new(other),
    }
}

/// "N cores, CPU model" of this machine, for benchmark and report headers.
pub fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {cpu}")
}

/// Today's UTC date, YYYY-MM-DD (civil-from-days, so no date crate for one line of a report).
pub fn utc_date() -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02}")
}

/// The checkout's short commit (with "+changes" when the tree is dirty), or "unknown".
pub fn git_revision() -> String {
    let run = |args: &[&str]| std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success());
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(o) => {
            let rev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
            if dirty { format!("{rev}+changes") } else { rev }
        }
        None => "unknown".into(),
    }
}
