//! The SD3 / SD3.5 MMDiT in Stability's original layout (`joint_blocks.{i}.x_block` /
//! `context_block`, `x_embedder.proj`, `t_embedder.mlp` ... — the layout of `sd3_medium.safetensors`
//! and the SD3.5 releases), read under diffusers' names. The correspondence is diffusers'
//! `convert_sd3_transformer_checkpoint_to_diffusers`: fused `qkv` projections are cut into thirds
//! (`to_q`/`to_k`/`to_v`, `add_q_proj`/...), and the modulations that feed a final
//! `AdaLayerNormContinuous` — the last block's context block (`context_pre_only`) and the final
//! layer — have their halves swapped (Stability: shift, scale; diffusers: scale, shift).
//!
//! [`infer_config`] reads the dimensions diffusers reads from the weights (number of blocks, SD3.5's
//! dual-attention blocks and query/key norms, the caption width) and the others the shapes fix.

use serde_json::Value;

use super::flux_layout::{Mapped, Mapping, RowSelect};
use crate::{Error, Result};

/// The key that marks the original layout.
pub const MARKER: &str = "joint_blocks.0.x_block.attn.qkv.weight";

/// Model tensors of an original-layout SD3 transformer. `rows_of(name)` gives the first dimension
/// of a stored tensor (`None` when absent); names are without the `model.diffusion_model.` prefix.
pub fn sd3_original(rows_of: &dyn Fn(&str) -> Option<usize>) -> Result<Vec<Mapped>> {
    let mut m = Mapping::new(rows_of);
    m.tensor("pos_embed.pos_embed", "pos_embed", RowSelect::All);
    for (model, stored) in [
        ("pos_embed.proj", "x_embedder.proj"),
        ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
        ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
        ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
        ("context_embedder", "context_embedder"),
        ("proj_out", "final_layer.linear"),
    ] {
        m.linear(model, stored, RowSelect::All);
    }
    m.linear("norm_out.linear", "final_layer.adaLN_modulation.1", RowSelect::SwapHalves);

    let layers = m.count("joint_blocks", "x_block.attn.qkv.weight");
    for i in 0..layers {
        let d = format!("transformer_blocks.{i}");
        let (x, c) = (format!("joint_blocks.{i}.x_block"), format!("joint_blocks.{i}.context_block"));
        let last = i + 1 == layers;
        attention(&mut m, &format!("{d}.attn"), &format!("{x}.attn"), ["to_q", "to_k", "to_v"], ["norm_q", "norm_k"])?;
        attention(
            &mut m,
            &format!("{d}.attn"),
            &format!("{c}.attn"),
            ["add_q_proj", "add_k_proj", "add_v_proj"],
            ["norm_added_q", "norm_added_k"],
        )?;
        m.linear(&format!("{d}.attn.to_out.0"), &format!("{x}.attn.proj"), RowSelect::All);
        if m.rows_of(&format!("{x}.attn2.qkv.weight")).is_some() {
            // SD3.5-medium's second image self-attention.
            let (model, stored) = (format!("{d}.attn2"), format!("{x}.attn2"));
            attention(&mut m, &model, &stored, ["to_q", "to_k", "to_v"], ["norm_q", "norm_k"])?;
            m.linear(&format!("{d}.attn2.to_out.0"), &format!("{x}.attn2.proj"), RowSelect::All);
        }
        m.linear(&format!("{d}.norm1.linear"), &format!("{x}.adaLN_modulation.1"), RowSelect::All);
        m.linear(&format!("{d}.ff.net.0.proj"), &format!("{x}.mlp.fc1"), RowSelect::All);
        m.linear(&format!("{d}.ff.net.2"), &format!("{x}.mlp.fc2"), RowSelect::All);
        if last {
            // context_pre_only: the context only modulates, through an AdaLayerNormContinuous.
            m.linear(&format!("{d}.norm1_context.linear"), &format!("{c}.adaLN_modulation.1"), RowSelect::SwapHalves);
        } else {
            m.linear(&format!("{d}.attn.to_add_out"), &format!("{c}.attn.proj"), RowSelect::All);
            m.linear(&format!("{d}.norm1_context.linear"), &format!("{c}.adaLN_modulation.1"), RowSelect::All);
            m.linear(&format!("{d}.ff_context.net.0.proj"), &format!("{c}.mlp.fc1"), RowSelect::All);
            m.linear(&format!("{d}.ff_context.net.2"), &format!("{c}.mlp.fc2"), RowSelect::All);
        }
    }
    m.finish("SD3 transformer")
}

/// The fused q/k/v projection at `stored.qkv` as three diffusers projections under `model`, and
/// the RMS query/key norms (`ln_q`, `ln_k`) where the file has them (SD3.5).
fn attention(m: &mut Mapping, model: &str, stored: &str, projections: [&str; 3], norms: [&str; 2]) -> Result<()> {
    let rows = m.rows_of(&format!("{stored}.qkv.weight")).unwrap_or(0);
    if rows % 3 != 0 {
        return Err(Error::Unsupported(format!("`{stored}.qkv.weight` has {rows} rows, not three equal blocks")));
    }
    let third = rows / 3;
    for (k, name) in projections.into_iter().enumerate() {
        m.linear(&format!("{model}.{name}"), &format!("{stored}.qkv"), RowSelect::Range(k * third, (k + 1) * third));
    }
    if m.rows_of(&format!("{stored}.ln_q.weight")).is_some() {
        m.tensor(format!("{model}.{}.weight", norms[0]), format!("{stored}.ln_q.weight"), RowSelect::All);
        m.tensor(format!("{model}.{}.weight", norms[1]), format!("{stored}.ln_k.weight"), RowSelect::All);
    }
    Ok(())
}

/// Set the dimensions of an `SD3Transformer2DModel` config that the original-layout weights fix
/// (`shape_of(name)` without the prefix). Kept from `config`: `sample_size` (only a default image
/// size), and `attention_head_dim` when the file has no query/key norms to measure it.
pub fn infer_config(
    config: &mut Value,
    shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> std::result::Result<(), String> {
    let shape = |name: &str| shape_of(name).ok_or_else(|| format!("the SD3 transformer has no `{name}`"));
    let [inner, in_channels, patch, _] = shape("x_embedder.proj.weight")?[..] else {
        return Err("`x_embedder.proj.weight` is not a 4-D convolution weight".into());
    };
    let context = shape("context_embedder.weight")?;
    let pooled = shape("y_embedder.mlp.0.weight")?;
    let out_rows = shape("final_layer.linear.weight")?[0];
    let positions = *shape("pos_embed")?.get(1).ok_or("`pos_embed` is not [1, positions, width]")?;
    let side = (positions as f64).sqrt().round() as usize;
    if side * side != positions || patch == 0 || out_rows % (patch * patch) != 0 {
        return Err(format!("`pos_embed` ({positions} positions) or the patch size ({patch}) is not consistent"));
    }
    let layers = (0..).take_while(|i| shape_of(&format!("joint_blocks.{i}.x_block.attn.qkv.weight")).is_some()).count();
    let dual: Vec<usize> =
        (0..layers).filter(|i| shape_of(&format!("joint_blocks.{i}.x_block.attn2.qkv.weight")).is_some()).collect();
    let qk_norm = shape_of("joint_blocks.0.x_block.attn.ln_q.weight");
    let head_dim = match &qk_norm {
        Some(s) => s[0],
        None => config.get("attention_head_dim").and_then(Value::as_u64).unwrap_or(64) as usize,
    };
    if head_dim == 0 || inner % head_dim != 0 {
        return Err(format!("the width {inner} is not a multiple of the head width {head_dim}"));
    }
    let fields = [
        ("patch_size", patch.into()),
        ("in_channels", in_channels.into()),
        ("out_channels", (out_rows / (patch * patch)).into()),
        ("num_layers", layers.into()),
        ("attention_head_dim", head_dim.into()),
        ("num_attention_heads", (inner / head_dim).into()),
        ("caption_projection_dim", context[0].into()),
        ("joint_attention_dim", context.get(1).copied().unwrap_or(0).into()),
        ("pooled_projection_dim", pooled.get(1).copied().unwrap_or(0).into()),
        ("pos_embed_max_size", side.into()),
        ("dual_attention_layers", dual.into()),
        ("qk_norm", if qk_norm.is_some() { "rms_norm".into() } else { Value::Null }),
    ];
    let object = config.as_object_mut().ok_or("the transformer config is not a JSON object")?;
    for (key, value) in fields {
        object.insert(key.to_string(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Shapes of a 2-block SD3.5-medium-like MMDiT (width 8, head 4, one dual-attention block).
    fn original() -> BTreeMap<String, Vec<usize>> {
        let mut t = BTreeMap::new();
        let mut add = |name: &str, shape: &[usize]| {
            t.insert(name.to_string(), shape.to_vec());
        };
        add("pos_embed", &[1, 36, 8]);
        add("x_embedder.proj.weight", &[8, 16, 2, 2]);
        add("x_embedder.proj.bias", &[8]);
        for (n, rows, cols) in [("t_embedder.mlp.0", 8, 256), ("t_embedder.mlp.2", 8, 8), ("y_embedder.mlp.0", 8, 20),
            ("y_embedder.mlp.2", 8, 8), ("context_embedder", 8, 24), ("final_layer.linear", 64, 8),
            ("final_layer.adaLN_modulation.1", 16, 8)]
        {
            add(&format!("{n}.weight"), &[rows, cols]);
            add(&format!("{n}.bias"), &[rows]);
        }
        for i in 0..2 {
            let mut blocks = vec![("x_block", 6 * 8)];
            blocks.push(("context_block", if i == 1 { 2 * 8 } else { 6 * 8 }));
            for (block, modulation) in blocks {
                let p = format!("joint_blocks.{i}.{block}");
                let mut linears = vec![("attn.qkv", 24), ("adaLN_modulation.1", modulation)];
                if block == "x_block" || i == 0 {
                    linears.extend([("attn.proj", 8), ("mlp.fc1", 32), ("mlp.fc2", 8)]);
                }
                if block == "x_block" && i == 0 {
                    linears.extend([("attn2.qkv", 24), ("attn2.proj", 8)]);
                    add(&format!("{p}.attn2.ln_q.weight"), &[4]);
                    add(&format!("{p}.attn2.ln_k.weight"), &[4]);
                }
                for (n, rows) in linears {
                    add(&format!("{p}.{n}.weight"), &[rows, 8]);
                    add(&format!("{p}.{n}.bias"), &[rows]);
                }
                add(&format!("{p}.attn.ln_q.weight"), &[4]);
                add(&format!("{p}.attn.ln_k.weight"), &[4]);
            }
        }
        t
    }

    fn find<'a>(m: &'a [Mapped], model: &str) -> &'a Mapped {
        m.iter().find(|e| e.model == model).unwrap_or_else(|| panic!("no {model}"))
    }

    #[test]
    fn fused_projections_split_and_final_modulations_swap() {
        let t = original();
        let m = sd3_original(&|n| t.get(n).map(|s| s[0])).unwrap();
        assert_eq!(find(&m, "transformer_blocks.0.attn.to_k.weight").rows, RowSelect::Range(8, 16));
        assert_eq!(find(&m, "transformer_blocks.1.attn.add_v_proj.bias").stored, "joint_blocks.1.context_block.attn.qkv.bias");
        assert_eq!(find(&m, "transformer_blocks.0.attn2.to_v.weight").rows, RowSelect::Range(16, 24));
        assert_eq!(find(&m, "transformer_blocks.0.attn.norm_added_k.weight").stored, "joint_blocks.0.context_block.attn.ln_k.weight");
        assert_eq!(find(&m, "transformer_blocks.0.norm1_context.linear.weight").rows, RowSelect::All);
        assert_eq!(find(&m, "transformer_blocks.1.norm1_context.linear.bias").rows, RowSelect::SwapHalves);
        assert_eq!(find(&m, "norm_out.linear.weight").rows, RowSelect::SwapHalves);
        assert_eq!(find(&m, "pos_embed.proj.weight").stored, "x_embedder.proj.weight");
        // The last block's context side has no output projection or MLP.
        assert!(m.iter().all(|e| !e.model.starts_with("transformer_blocks.1.ff_context")));
        assert!(m.iter().all(|e| e.model != "transformer_blocks.1.attn.to_add_out.weight"));
        assert!(m.iter().all(|e| !e.model.starts_with("transformer_blocks.1.attn2")));
        // Every stored tensor is used.
        let used: std::collections::BTreeSet<&str> = m.iter().map(|e| e.stored.as_str()).collect();
        assert_eq!(used.len(), t.len());
    }

    #[test]
    fn missing_tensors_are_listed() {
        let mut t = original();
        t.remove("joint_blocks.0.context_block.mlp.fc2.bias");
        let err = sd3_original(&|n| t.get(n).map(|s| s[0])).unwrap_err().to_string();
        assert!(err.contains("SD3 transformer lacks 1 tensor(s): joint_blocks.0.context_block.mlp.fc2.bias"), "{err}");
    }

    #[test]
    fn config_dimensions_come_from_the_shapes() {
        let t = original();
        let mut config = serde_json::json!({"attention_head_dim": 64, "sample_size": 128, "num_layers": 24});
        infer_config(&mut config, &|n| t.get(n).cloned()).unwrap();
        assert_eq!(config["num_layers"], 2);
        assert_eq!((config["attention_head_dim"].as_u64(), config["num_attention_heads"].as_u64()), (Some(4), Some(2)));
        assert_eq!(config["dual_attention_layers"], serde_json::json!([0]));
        assert_eq!(config["qk_norm"], "rms_norm");
        assert_eq!((config["pos_embed_max_size"].as_u64(), config["out_channels"].as_u64()), (Some(6), Some(16)));
        assert_eq!((config["joint_attention_dim"].as_u64(), config["pooled_projection_dim"].as_u64()), (Some(24), Some(20)));
        assert_eq!(config["sample_size"], 128, "kept from the default");
        // Without query/key norms the head width is the default's.
        let mut t = original();
        t.retain(|k, _| !k.contains(".ln_"));
        let mut config = serde_json::json!({"attention_head_dim": 4});
        infer_config(&mut config, &|n| t.get(n).cloned()).unwrap();
        assert_eq!((config["num_attention_heads"].as_u64(), config["qk_norm"].is_null()), (Some(2), true));
        let mut config = serde_json::json!({"attention_head_dim": 3});
        assert!(infer_config(&mut config, &|n| t.get(n).cloned()).unwrap_err().contains("head width 3"));
    }
}
