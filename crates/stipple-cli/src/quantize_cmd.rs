//! `stipple quantize`: a FLUX / SD3 transformer's safetensors weights to a GGUF file with q8_0 or
//! q4_0 linear weights, for `stipple generate --transformer`.

use std::path::PathBuf;

use stipple_core::checkpoint::{quantize_transformer, QuantType};

use crate::user_error;

#[derive(clap::Args)]
pub struct Args {
    /// The transformer: a diffusers `transformer/` folder or its .safetensors file.
    input: PathBuf,
    /// The GGUF file to write.
    output: PathBuf,
    /// Block quantization of the linear weights: q8_0 or q4_0.
    #[arg(long = "type", default_value = "q8_0")]
    quant: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let quant: QuantType = args.quant.parse().map_err(user_error)?;
    if args.output.exists() && args.output.canonicalize().ok() == args.input.canonicalize().ok() {
        anyhow::bail!("the output {} is the input; choose another file", args.output.display());
    }
    let report = quantize_transformer(&args.input, &args.output, quant).map_err(user_error)?;
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "wrote {}: {} transformer, {} linear weights in {}, {} tensors kept as stored; {:.1} MB -> {:.1} MB",
        args.output.display(),
        report.architecture,
        report.quantized,
        quant.name(),
        report.kept,
        mb(report.bytes_in),
        mb(report.bytes_out)
    );
    Ok(())
}
