//! Kind `sd3_transformer` (README §5.9): `transformer(hidden_states, encoder_hidden_states,
//! pooled_projections, timestep).sample`.

use candle_core::{DType, Device};

use super::{Case, Outputs};
use crate::dit::Sd3Transformer;
use crate::Result;

pub fn run(case: &Case) -> Result<Outputs> {
    let model = Sd3Transformer::load(case.model_dir()?, DType::F32, &Device::Cpu)?;
    let output = model.forward(
        case.tensor("hidden_states")?,
        case.tensor("timestep")?,
        case.tensor("encoder_hidden_states")?,
        case.tensor("pooled_projections")?,
    )?;
    let mut outputs = Outputs::new();
    outputs.insert("output".into(), output);
    Ok(outputs)
}
