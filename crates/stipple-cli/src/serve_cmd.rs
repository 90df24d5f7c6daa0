//! `stipple serve` and `stipple worker`: the web service, and standalone queue workers.

use std::path::PathBuf;

use anyhow::Context;
use stipple_server::Config;

/// Settings shared by both commands; flags override the config file and `STIPPLE_*` variables.
#[derive(clap::Args)]
pub struct ServiceArgs {
    /// TOML config file (default: $STIPPLE_CONFIG, else ./stipple.toml if present).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Folder for the database, images and signing key.
    #[arg(long = "data-dir")]
    data_dir: Option<PathBuf>,
    /// Database URL (sqlite://... or postgres://...).
    #[arg(long = "database-url")]
    database_url: Option<String>,
    /// Model folder to serve (repeat for several; the first is the default). Replaces the
    /// configured models, the shipped default model included.
    #[arg(short = 'm', long = "model")]
    models: Vec<PathBuf>,
    /// Engine workers in this process.
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Address to listen on.
    #[arg(long)]
    addr: Option<String>,
}

impl ServiceArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let file = self.config.clone().or_else(|| std::env::var_os("STIPPLE_CONFIG").map(PathBuf::from)).or_else(|| {
            let local = PathBuf::from("stipple.toml");
            local.exists().then_some(local)
        });
        let mut config = Config::load(file.as_deref(), std::env::vars())?;
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(u) = &self.database_url {
            config.database_url = Some(u.clone());
        }
        if !self.models.is_empty() {
            config.default_model_dir = PathBuf::new();
            config.models = self.models.iter().cloned().map(stipple_server::config::ModelConfig::Path).collect();
        }
        if let Some(w) = self.workers {
            config.workers = w;
        }
        Ok(config)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.service.config()?;
    if let Some(a) = args.addr {
        config.addr = a;
    }
    runtime()?.block_on(async {
        let server = stipple_server::Server::start(config).await?;
        eprintln!("Stipple is serving on http://{} (Ctrl-C stops)", server.addr);
        server.run_until_signal().await;
        Ok(())
    })
}

pub fn worker(args: ServiceArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    runtime()?.block_on(async {
        eprintln!("Stipple worker running {} job(s) at a time (Ctrl-C stops)", config.workers.max(1));
        stipple_server::run_workers(config).await?;
        Ok(())
    })
}
