//! The `stipple` command.

mod bench_cmd;
mod conformance_cmd;
mod eval_cmd;
mod generate_cmd;
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
    /// Check the engine against reference vectors produced by HuggingFace diffusers.
    Conformance(conformance_cmd::Args),
    /// Train the default model from a config file (models/stipple-default/train.json).
    Train(train_cmd::Args),
    /// Score a model on prompts with the checker that reads scenes back from images.
    Eval(eval_cmd::Args),
    /// Benchmark the engine at real model sizes (random weights, nothing downloaded).
    #[command(subcommand)]
    Bench(bench_cmd::Bench),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STIPPLE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    pin_thread_count();
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => generate_cmd::run(args),
        Command::Conformance(args) => conformance_cmd::run(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Eval(args) => eval_cmd::run(args),
        Command::Bench(b) => bench_cmd::run(b),
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

/// Load a model for a command; an untrained default model folder gets the command that trains it.
pub fn load_model(path: &std::path::Path, device: &candle_core::Device) -> anyhow::Result<stipple_core::loader::LoadedModel> {
    if !path.join("model_index.json").exists() && path.join("train.json").is_file() {
        anyhow::bail!(
            "{} holds the default model's recipe but no weights yet; train them with `stipple train --config {}`",
            path.display(),
            path.join("train.json").display()
        );
    }
    stipple_core::loader::load_pipeline(path, device).map_err(user_error)
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
