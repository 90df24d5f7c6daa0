//! The `stipple` command.

mod bench_cmd;
mod bench_dit;
mod conformance_cmd;
mod generate_cmd;
mod quantize_cmd;

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
    /// Benchmark the engine at real model sizes (random weights, nothing downloaded).
    #[command(subcommand)]
    Bench(bench_cmd::Bench),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STIPPLE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => generate_cmd::run(args),
        Command::Quantize(args) => quantize_cmd::run(args),
        Command::Conformance(args) => conformance_cmd::run(args),
        Command::Bench(b) => bench_cmd::run(b),
    }
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
