//! `stipple train`: train the default model from a config file (generated data, AdamW, EMA,
//! resumable checkpoints), with a progress bar per stage.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    keep_freed_memory();
    // candle's element-wise thread pool spin-waits between operations; sharing 2 cores with the
    // matmul threads (and with anything else running) it cost up to half of a training step.
    // Training's heavy element-wise work runs in Stipple's own kernels, which use rayon.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let started = Instant::now();
    // Without a terminal (logs, CI) the bar is hidden: print a line now and then instead.
    let plain = !std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut bar: Option<ProgressBar> = None;
    let mut prep_bar: Option<ProgressBar> = None;
    let mut on_event = |event: Event| match event {
        Event::Stage { name, steps, done, params } => {
            if let Some(b) = bar.take() {
                b.finish();
            }
            let b = progress_bar(steps, name, "{prefix:>11} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]");
            b.set_position(done as u64);
            b.println(format!("{name}: {:.2}M parameters, {steps} steps (resuming at {done})", params as f64 / 1e6));
            bar = Some(b);
        }
        Event::Step { name, step, steps, loss, lr, items_per_sec } => {
            let message = format!("loss {loss:.4} lr {lr:.1e} {items_per_sec:.1} img/s");
            if plain && (last_line.elapsed() > Duration::from_secs(30) || step == steps) {
                eprintln!("{name} {step}/{steps} {message} ({:.0} s)", started.elapsed().as_secs_f64());
                last_line = Instant::now();
            }
            if let Some(b) = &bar {
                b.set_position(step as u64);
                b.set_message(message);
            }
        }
        Event::Preparing { name, done, total } => {
            if prep_bar.is_none() {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                prep_bar = Some(progress_bar(total, name, "{prefix:>11} [{bar:30}] {pos}/{len} [{elapsed_precise}<{eta_precise}]"));
            }
            if let Some(b) = &prep_bar {
                b.set_position(done as u64);
            }
            if plain && (last_line.elapsed() > Duration::from_secs(30) || done == total) {
                eprintln!("{name} {done}/{total} ({:.0} s)", started.elapsed().as_secs_f64());
                last_line = Instant::now();
            }
            if done == total {
                if let Some(b) = prep_bar.take() {
                    b.finish();
                }
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

/// Training allocates and frees the same large activation buffers every step; by default glibc
/// returns them to the kernel and page-faults them back in (a tenth of a step on 2 cores).
/// Keep them in the heap instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator tuning parameters; called before training starts.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
        mallopt(M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// A bar of `len` items named `name`, drawn with `template` (a static indicatif template).
fn progress_bar(len: usize, name: &'static str, template: &'static str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(ProgressStyle::with_template(template).expect("static template").progress_chars("=> "));
    b.set_prefix(name);
    b
}
