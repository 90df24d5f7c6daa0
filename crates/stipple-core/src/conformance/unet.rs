//! Conformance kind `unet`: `UNet2DConditionModel(sample, timestep, encoder_hidden_states
//! [, added_cond_kwargs]).sample` (README section 5.5).

use candle_core::{DType, Device};

use super::{Case, Outputs};
use crate::unet::UNet2DConditionModel;
use crate::Result;

pub fn run(case: &Case) -> Result<Outputs> {
    let unet = UNet2DConditionModel::load(case.model_dir()?, DType::F32, &Device::Cpu)?;
    let added = if unet.needs_added_conditioning() {
        Some((case.tensor("text_embeds")?, case.tensor("time_ids")?))
    } else {
        None
    };
    let output = unet.forward_with_added(
        case.tensor("sample")?,
        case.tensor("timestep")?,
        case.tensor("encoder_hidden_states")?,
        added,
    )?;
    Ok(Outputs::from([("output".to_string(), output)]))
}
