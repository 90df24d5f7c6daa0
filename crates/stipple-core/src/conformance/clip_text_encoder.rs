//! Kind `clip_text_encoder` (README §5.3): `text_encoder(input_ids, output_hidden_states=True)`
//! without an attention mask.

use candle_core::{DType, Device, Tensor};

use super::{Case, Outputs};
use crate::text::ClipTextModel;
use crate::Result;

pub fn run(case: &Case) -> Result<Outputs> {
    let model = ClipTextModel::load(case.model_dir()?, &Device::Cpu, DType::F32)?;
    let out = model.forward(case.tensor("input_ids")?)?;

    let mut outputs = Outputs::new();
    outputs.insert("hidden_states".into(), Tensor::stack(&out.hidden_states, 0)?);
    outputs.insert("last_hidden_state".into(), out.last_hidden_state);
    outputs.insert("pooler_output".into(), out.pooled);
    if let Some(text_embeds) = out.text_embeds {
        outputs.insert("text_embeds".into(), text_embeds);
    }
    Ok(outputs)
}
