//! `stipple train`: train the default model from a config file (generated data, AdamW, EMA,
//! resumable checkpoints), with a progress bar per stage.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use stipple_train::config::TrainConfig;
use stipple_train::train::{train, Event, Options};

use crate::user_error;

#[derive(clap::Args)]
pub struct Args {
    /// The training config (e.g. models/stipple-default/train.json).
    #[arg(long)]
    config: PathBuf,
    /// Ignore existing checkpoints and start over.
    #[arg(long)]
    restart: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = TrainConfig::load(&args.config).map_err(user_error)?;
    let started = Instant::now();
    let mut bar: Option<ProgressBar> = None;
    let mut on_event = |event: Event| match event {
        Event::Stage { name, steps, done, params } => {
            if let Some(b) = bar.take() {
                b.finish();
            }
            let b = ProgressBar::new(steps as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b.set_prefix(name);
            b.set_position(done as u64);
            b.println(format!("{name}: {:.2}M parameters, {steps} steps (resuming at {done})", params as f64 / 1e6));
            bar = Some(b);
        }
        Event::Step { step, loss, lr, items_per_sec, .. } => {
            if let Some(b) = &bar {
                b.set_position(step as u64);
                b.set_message(format!("loss {loss:.4} lr {lr:.1e} {items_per_sec:.1} img/s"));
            }
        }
        Event::Note(text) => match &bar {
            Some(b) => b.println(text),
            None => println!("{text}"),
        },
    };
    let summaries = train(&config, &Options { restart: args.restart }, &mut on_event).map_err(user_error)?;
    if let Some(b) = bar.take() {
        b.finish();
    }
    for s in &summaries {
        println!(
            "{}: {} steps of {} in {:.0} s ({:.1} img/s), final loss {:.4}",
            s.name, s.steps, s.batch_size, s.seconds, s.items_per_sec, s.final_loss
        );
    }
    println!(
        "wrote {} in {:.0} s (this session)",
        config.output_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
