//! `stipple conformance DIR`: one line per case, then `N passed, N failed`.

use std::path::PathBuf;

use anyhow::Context;
use stipple_core::conformance::{run_case, Manifest};

#[derive(clap::Args)]
pub struct Args {
    /// Folder holding manifest.json (format 1) and the case files.
    dir: PathBuf,
    /// Run only cases of these kinds (comma-separated, e.g. `unet,vae_decode`).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Run only cases whose id contains this text.
    #[arg(long)]
    filter: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let manifest = Manifest::load(&args.dir).with_context(|| format!("loading vectors from {}", args.dir.display()))?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for spec in &manifest.cases {
        if !args.kinds.is_empty() && !args.kinds.contains(&spec.kind) {
            continue;
        }
        if let Some(f) = &args.filter {
            if !spec.id.contains(f.as_str()) {
                continue;
            }
        }
        let report = run_case(&args.dir, spec);
        let ok = report.passed();
        let detail = match (&report.error, report.worst()) {
            (Some(e), _) => format!("error: {e}"),
            (None, Some(w)) => match w.max_abs_err {
                Some(err) => format!("worst {} max|a-b| {:.3e} <= {:.3e}", w.name, err, w.allowance),
                None => format!("worst {}: {}", w.name, w.note.as_deref().unwrap_or("missing")),
            },
            (None, None) => "nothing compared".to_string(),
        };
        println!("{:<36} {:<22} {}  {}", report.id, report.kind, if ok { "PASS" } else { "FAIL" }, detail);
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
