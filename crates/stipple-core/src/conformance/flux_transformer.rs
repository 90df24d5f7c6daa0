//! Kind `flux_transformer` (README §5.8): `transformer(hidden_states, encoder_hidden_states,
//! pooled_projections, timestep, img_ids, txt_ids[, guidance]).sample` on packed tokens.

use candle_core::{DType, Device};

use super::{Case, Outputs};
use crate::dit::{FluxInputs, FluxTransformer};
use crate::Result;

pub fn run(case: &Case) -> Result<Outputs> {
    let model = FluxTransformer::load(case.model_dir()?, DType::F32, &Device::Cpu)?;
    let guidance = match model.config().guidance_embeds {
        true => Some(case.tensor("guidance")?),
        false => None,
    };
    let output = model.forward_packed(&FluxInputs {
        hidden_states: case.tensor("hidden_states")?,
        encoder_hidden_states: case.tensor("encoder_hidden_states")?,
        pooled_projections: case.tensor("pooled_projections")?,
        timestep: case.tensor("timestep")?,
        img_ids: case.tensor("img_ids")?,
        txt_ids: case.tensor("txt_ids")?,
        guidance,
    })?;
    let mut outputs = Outputs::new();
    outputs.insert("output".into(), output);
    Ok(outputs)
}
