//! Kind `t5_encoder` (README §5.4): `text_encoder(input_ids, output_hidden_states=True)` without an
//! attention mask.

use candle_core::{DType, Device, Tensor};

use super::{Case, Outputs};
use crate::text::T5EncoderModel;
use crate::Result;

pub fn run(case: &Case) -> Result<Outputs> {
    let model = T5EncoderModel::load(case.model_dir()?, DType::F32, &Device::Cpu)?;
    let out = model.forward(case.tensor("input_ids")?)?;

    let mut outputs = Outputs::new();
    outputs.insert("hidden_states".into(), Tensor::stack(&out.hidden_states, 0)?);
    outputs.insert("last_hidden_state".into(), out.last_hidden_state);
    Ok(outputs)
}
