//! The `stipple` command.

mod conformance_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stipple", version, about = "Text-to-image diffusion, self-hosted")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the engine against reference vectors produced by HuggingFace diffusers.
    Conformance(conformance_cmd::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STIPPLE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Conformance(args) => conformance_cmd::run(args),
    }
}
