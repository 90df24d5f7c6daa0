//! The FLUX transformer in Black Forest Labs' original layout (`double_blocks.*`,
//! `single_blocks.*` ... — the layout of BFL's single files and of the community's GGUF files),
//! read under diffusers' names. The correspondence is diffusers'
//! `convert_flux_transformer_checkpoint_to_diffusers`: fused projections are cut into row ranges
//! (`qkv` → `to_q`/`to_k`/`to_v`; `linear1` → `to_q`/`to_k`/`to_v`/`proj_mlp`) and the final
//! modulation's halves are swapped (BFL: shift, scale; diffusers: scale, shift).
//!
//! The row selections and the [`Mapping`] builder are shared with SD3's original layout
//! (`sd3_layout.rs`).

use std::ops::Range;

use super::store::Transform;
use crate::{Error, Result};

/// Which rows (indices along the first dimension) of a stored tensor a model tensor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSelect {
    All,
    Range(usize, usize),
    /// The second half followed by the first.
    SwapHalves,
}

impl RowSelect {
    /// The row ranges to read, in order, from a tensor of `rows` rows.
    pub fn ranges(&self, rows: usize) -> Result<Vec<Range<usize>>> {
        match *self {
            RowSelect::All => Ok(vec![0..rows]),
            RowSelect::Range(a, b) if a < b && b <= rows => Ok(vec![a..b]),
            RowSelect::SwapHalves if rows % 2 == 0 => Ok(vec![rows / 2..rows, 0..rows / 2]),
            _ => Err(Error::Unsupported(format!("cannot take {self:?} of a tensor with {rows} rows"))),
        }
    }

    /// The store transform that reads these rows.
    pub fn transform(&self) -> Transform {
        match *self {
            RowSelect::All => Transform::Identity,
            RowSelect::Range(start, end) => Transform::Rows { start, len: end - start },
            RowSelect::SwapHalves => Transform::SwapHalves,
        }
    }

    /// How many rows the selection yields from `rows`.
    pub fn len(&self, rows: usize) -> usize {
        match *self {
            RowSelect::All | RowSelect::SwapHalves => rows,
            RowSelect::Range(a, b) => b.saturating_sub(a),
        }
    }
}

/// One model tensor: its diffusers name, the stored tensor and the rows it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub model: String,
    pub stored: String,
    pub rows: RowSelect,
}

/// Builds the list of [`Mapped`] tensors of an original layout.
pub(crate) struct Mapping<'a> {
    rows_of: &'a dyn Fn(&str) -> Option<usize>,
    out: Vec<Mapped>,
}

impl<'a> Mapping<'a> {
    pub fn new(rows_of: &'a dyn Fn(&str) -> Option<usize>) -> Mapping<'a> {
        Mapping { rows_of, out: Vec::new() }
    }

    pub fn rows_of(&self, stored: &str) -> Option<usize> {
        (self.rows_of)(stored)
    }

    /// How many blocks `{prefix}.{i}.{probe}` exist, counting from 0.
    pub fn count(&self, prefix: &str, probe: &str) -> usize {
        (0..).take_while(|i| self.rows_of(&format!("{prefix}.{i}.{probe}")).is_some()).count()
    }

    /// One tensor.
    pub fn tensor(&mut self, model: impl Into<String>, stored: impl Into<String>, rows: RowSelect) {
        self.out.push(Mapped { model: model.into(), stored: stored.into(), rows });
    }

    /// A linear layer: weight and bias, optionally a row selection of a fused one.
    pub fn linear(&mut self, model: &str, stored: &str, rows: RowSelect) {
        for part in ["weight", "bias"] {
            self.tensor(format!("{model}.{part}"), format!("{stored}.{part}"), rows.clone());
        }
    }

    /// The list, or which stored tensors are missing (`what` names the model in the message).
    pub fn finish(self, what: &str) -> Result<Vec<Mapped>> {
        let missing: Vec<&str> =
            self.out.iter().filter(|m| (self.rows_of)(&m.stored).is_none()).map(|m| m.stored.as_str()).collect();
        if !missing.is_empty() {
            return Err(Error::Unsupported(format!(
                "the original-layout {what} lacks {} tensor(s): {}",
                missing.len(),
                missing.iter().take(8).copied().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(self.out)
    }
}

/// The key that marks the original layout.
pub const MARKER: &str = "double_blocks.0.img_attn.qkv.weight";

/// Model tensors of an original-layout FLUX transformer. `rows_of(name)` gives the first
/// dimension of a stored tensor (`None` when absent); names are without any
/// `model.diffusion_model.` prefix.
pub fn flux_original(rows_of: &dyn Fn(&str) -> Option<usize>) -> Result<Vec<Mapped>> {
    let inner = rows_of("img_in.weight")
        .ok_or_else(|| Error::Unsupported("an original-layout FLUX transformer needs `img_in.weight`".into()))?;
    let mut m = Mapping::new(rows_of);
    for (model, stored) in [
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
        ("context_embedder", "txt_in"),
        ("x_embedder", "img_in"),
        ("proj_out", "final_layer.linear"),
    ] {
        m.linear(model, stored, RowSelect::All);
    }
    if rows_of("guidance_in.in_layer.weight").is_some() {
        m.linear("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer", RowSelect::All);
        m.linear("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer", RowSelect::All);
    }
    m.linear("norm_out.linear", "final_layer.adaLN_modulation.1", RowSelect::SwapHalves);
    let thirds = |k: usize| RowSelect::Range(k * inner, (k + 1) * inner);

    let double_blocks = m.count("double_blocks", "img_attn.qkv.weight");
    for i in 0..double_blocks {
        let (d, s) = (format!("transformer_blocks.{i}"), format!("double_blocks.{i}"));
        m.linear(&format!("{d}.norm1.linear"), &format!("{s}.img_mod.lin"), RowSelect::All);
        m.linear(&format!("{d}.norm1_context.linear"), &format!("{s}.txt_mod.lin"), RowSelect::All);
        for (k, name) in ["to_q", "to_k", "to_v"].into_iter().enumerate() {
            m.linear(&format!("{d}.attn.{name}"), &format!("{s}.img_attn.qkv"), thirds(k));
        }
        for (k, name) in ["add_q_proj", "add_k_proj", "add_v_proj"].into_iter().enumerate() {
            m.linear(&format!("{d}.attn.{name}"), &format!("{s}.txt_attn.qkv"), thirds(k));
        }
        m.linear(&format!("{d}.ff.net.0.proj"), &format!("{s}.img_mlp.0"), RowSelect::All);
        m.linear(&format!("{d}.ff.net.2"), &format!("{s}.img_mlp.2"), RowSelect::All);
        m.linear(&format!("{d}.ff_context.net.0.proj"), &format!("{s}.txt_mlp.0"), RowSelect::All);
        m.linear(&format!("{d}.ff_context.net.2"), &format!("{s}.txt_mlp.2"), RowSelect::All);
        m.linear(&format!("{d}.attn.to_out.0"), &format!("{s}.img_attn.proj"), RowSelect::All);
        m.linear(&format!("{d}.attn.to_add_out"), &format!("{s}.txt_attn.proj"), RowSelect::All);
        // The RMS norms' scales are single tensors.
        m.tensor(format!("{d}.attn.norm_q.weight"), format!("{s}.img_attn.norm.query_norm.scale"), RowSelect::All);
        m.tensor(format!("{d}.attn.norm_k.weight"), format!("{s}.img_attn.norm.key_norm.scale"), RowSelect::All);
        m.tensor(format!("{d}.attn.norm_added_q.weight"), format!("{s}.txt_attn.norm.query_norm.scale"), RowSelect::All);
        m.tensor(format!("{d}.attn.norm_added_k.weight"), format!("{s}.txt_attn.norm.key_norm.scale"), RowSelect::All);
    }
    for i in 0..m.count("single_blocks", "linear1.weight") {
        let (d, s) = (format!("single_transformer_blocks.{i}"), format!("single_blocks.{i}"));
        let fused = m.rows_of(&format!("{s}.linear1.weight")).unwrap_or(0);
        if fused <= 3 * inner {
            return Err(Error::Unsupported(format!(
                "`{s}.linear1.weight` has {fused} rows; FLUX's fused q/k/v/MLP projection has more than 3 × {inner}"
            )));
        }
        m.linear(&format!("{d}.norm.linear"), &format!("{s}.modulation.lin"), RowSelect::All);
        for (k, name) in ["to_q", "to_k", "to_v"].into_iter().enumerate() {
            m.linear(&format!("{d}.attn.{name}"), &format!("{s}.linear1"), thirds(k));
        }
        m.linear(&format!("{d}.proj_mlp"), &format!("{s}.linear1"), RowSelect::Range(3 * inner, fused));
        m.linear(&format!("{d}.proj_out"), &format!("{s}.linear2"), RowSelect::All);
        m.tensor(format!("{d}.attn.norm_q.weight"), format!("{s}.norm.query_norm.scale"), RowSelect::All);
        m.tensor(format!("{d}.attn.norm_k.weight"), format!("{s}.norm.key_norm.scale"), RowSelect::All);
    }
    m.finish("FLUX transformer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Row counts of a 1 double + 1 single block FLUX in the original layout (inner 4, MLP 8).
    fn original(guidance: bool) -> BTreeMap<String, usize> {
        let mut t = BTreeMap::new();
        let mut add = |name: &str, rows: usize| {
            t.insert(name.to_string(), rows);
        };
        for (n, rows) in [("time_in.in_layer", 4), ("time_in.out_layer", 4), ("vector_in.in_layer", 4), ("vector_in.out_layer", 4),
            ("txt_in", 4), ("img_in", 4), ("final_layer.linear", 4), ("final_layer.adaLN_modulation.1", 8),
            ("double_blocks.0.img_mod.lin", 24), ("double_blocks.0.txt_mod.lin", 24), ("double_blocks.0.img_attn.qkv", 12),
            ("double_blocks.0.txt_attn.qkv", 12), ("double_blocks.0.img_mlp.0", 8), ("double_blocks.0.img_mlp.2", 4),
            ("double_blocks.0.txt_mlp.0", 8), ("double_blocks.0.txt_mlp.2", 4), ("double_blocks.0.img_attn.proj", 4),
            ("double_blocks.0.txt_attn.proj", 4), ("single_blocks.0.modulation.lin", 12), ("single_blocks.0.linear1", 20),
            ("single_blocks.0.linear2", 4)]
        {
            add(&format!("{n}.weight"), rows);
            add(&format!("{n}.bias"), rows);
        }
        if guidance {
            for n in ["guidance_in.in_layer", "guidance_in.out_layer"] {
                add(&format!("{n}.weight"), 4);
                add(&format!("{n}.bias"), 4);
            }
        }
        for n in ["double_blocks.0.img_attn.norm.query_norm.scale", "double_blocks.0.img_attn.norm.key_norm.scale",
            "double_blocks.0.txt_attn.norm.query_norm.scale", "double_blocks.0.txt_attn.norm.key_norm.scale",
            "single_blocks.0.norm.query_norm.scale", "single_blocks.0.norm.key_norm.scale"]
        {
            add(n, 2);
        }
        t
    }

    fn find<'a>(m: &'a [Mapped], model: &str) -> &'a Mapped {
        m.iter().find(|e| e.model == model).unwrap_or_else(|| panic!("no {model}"))
    }

    #[test]
    fn fused_projections_split_and_final_modulation_swaps() {
        let t = original(true);
        let m = flux_original(&|n| t.get(n).copied()).unwrap();
        assert_eq!(find(&m, "transformer_blocks.0.attn.to_k.weight").rows, RowSelect::Range(4, 8));
        assert_eq!(find(&m, "transformer_blocks.0.attn.add_v_proj.bias").stored, "double_blocks.0.txt_attn.qkv.bias");
        assert_eq!(find(&m, "transformer_blocks.0.attn.add_v_proj.bias").rows, RowSelect::Range(8, 12));
        assert_eq!(find(&m, "single_transformer_blocks.0.proj_mlp.weight").rows, RowSelect::Range(12, 20));
        assert_eq!(find(&m, "norm_out.linear.weight").rows, RowSelect::SwapHalves);
        assert_eq!(find(&m, "time_text_embed.guidance_embedder.linear_2.bias").stored, "guidance_in.out_layer.bias");
        assert_eq!(find(&m, "single_transformer_blocks.0.attn.norm_k.weight").stored, "single_blocks.0.norm.key_norm.scale");
        assert_eq!(RowSelect::SwapHalves.ranges(8).unwrap(), vec![4..8, 0..4]);
        // schnell has no guidance embedder.
        let t = original(false);
        let m = flux_original(&|n| t.get(n).copied()).unwrap();
        assert!(m.iter().all(|e| !e.model.contains("guidance")));
    }

    #[test]
    fn missing_tensors_are_listed() {
        let mut t = original(false);
        t.remove("double_blocks.0.txt_mlp.2.bias");
        let err = flux_original(&|n| t.get(n).copied()).unwrap_err().to_string();
        assert!(err.contains("double_blocks.0.txt_mlp.2.bias"), "{err}");
    }
}
