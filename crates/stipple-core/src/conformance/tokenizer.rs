//! Kind `tokenizer` (README §5.2): `tokenizer(prompts, padding="max_length", max_length=77,
//! truncation=True)` of a CLIP tokenizer folder.

use candle_core::{Device, Tensor};

use super::{Case, Outputs};
use crate::text::ClipTokenizer;
use crate::{Error, Result};

pub fn run(case: &Case) -> Result<Outputs> {
    let prompts: Vec<&str> = case
        .strings
        .as_ref()
        .and_then(|s| s.get("prompts"))
        .and_then(|p| p.as_array())
        .and_then(|p| p.iter().map(|v| v.as_str()).collect::<Option<Vec<_>>>())
        .ok_or_else(|| Error::Unsupported(format!("case {} has no string list `prompts`", case.spec.id)))?;
    let pad_override = case.param("load_kwargs")?.get("pad_token").and_then(|p| p.as_str());
    let tokenizer = ClipTokenizer::from_folder(case.model_dir()?, pad_override)?;

    let max_length = case.param("max_length")?.as_u64();
    if max_length != Some(tokenizer.max_length() as u64) {
        return Err(Error::Unsupported(format!(
            "case {} asks for max_length {max_length:?}; the tokenizer's model_max_length is {}",
            case.spec.id,
            tokenizer.max_length()
        )));
    }

    let (ids, mask) = tokenizer.encode_batch(&prompts)?;
    let as_i64 = |rows: Vec<Vec<u32>>| -> Result<Tensor> {
        let rows: Vec<Vec<i64>> = rows.into_iter().map(|r| r.into_iter().map(i64::from).collect()).collect();
        Ok(Tensor::new(rows, &Device::Cpu)?)
    };
    let mut out = Outputs::new();
    out.insert("input_ids".into(), as_i64(ids)?);
    out.insert("attention_mask".into(), as_i64(mask)?);
    Ok(out)
}
