//! The original Stable Diffusion checkpoint layout (CompVis `ldm` for SD 1.x / 2.x, Stability
//! `sgm` for SDXL) and its correspondence with diffusers / transformers names.
//!
//! One file holds every model under a prefix:
//!
//! | prefix | model | diffusers component |
//! |---|---|---|
//! | `model.diffusion_model.` | UNet (`input_blocks`, `middle_block`, `output_blocks`) | `unet` |
//! | `first_stage_model.` | VAE (`encoder.down.{i}.block.{j}`, `mid.attn_1`, ...) | `vae` |
//! | `cond_stage_model.transformer.` | SD 1.x CLIP ViT-L, already in transformers' layout | `text_encoder` |
//! | `cond_stage_model.model.` | SD 2.x OpenCLIP ViT-H (`transformer.resblocks`, fused `in_proj`) | `text_encoder` |
//! | `conditioner.embedders.0.transformer.` | SDXL CLIP ViT-L | `text_encoder` |
//! | `conditioner.embedders.1.model.` | SDXL OpenCLIP ViT-bigG | `text_encoder_2` |
//!
//! All-in-one FLUX.1 files (ComfyUI's `flux1-dev-fp8.safetensors` ...) and SD3 / SD3.5 files
//! (`sd3_medium_incl_clips_t5xxlfp16.safetensors` ...) use other prefixes:
//!
//! | prefix | model | FLUX component | SD3 component |
//! |---|---|---|---|
//! | `model.diffusion_model.` | transformer: BFL's (`double_blocks`) / Stability's (`joint_blocks`) layout | `transformer` | `transformer` |
//! | `vae.` or `first_stage_model.` | 16-channel VAE in the LDM layout | `vae` | `vae` |
//! | `text_encoders.clip_l.transformer.` | CLIP-L, transformers' layout | `text_encoder` | `text_encoder` |
//! | `text_encoders.clip_g.transformer.` | OpenCLIP-G, transformers' layout | — | `text_encoder_2` |
//! | `text_encoders.t5xxl.transformer.` | T5-XXL encoder, transformers' layout | `text_encoder_2` | `text_encoder_3` |
//!
//! The tables follow diffusers' `convert_from_ckpt.py` / `single_file_utils.py` and its inverse
//! `convert_diffusers_to_original_stable_diffusion.py`; block indices are derived from the
//! component's config (`layers_per_block`, block types), so they hold for any block count.
//! The transformers' fused projections are not prefix renames; their tables are in
//! `flux_layout.rs` and `sd3_layout.rs` ([`transformer_tensors`]).

use serde_json::Value;

use super::flux_layout::{self, Mapped};
use super::key_rules::{RuleTable, TensorKind};
use super::safetensors_file::SafetensorsFile;
use super::sd3_layout;

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const SD1_CLIP_PREFIX: &str = "cond_stage_model.transformer.";
pub const SD2_OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";
/// The SDXL refiner's only text encoder (OpenCLIP bigG as embedder 0): not supported.
const SDXL_REFINER_PREFIX: &str = "conditioner.embedders.0.model.";
/// The all-in-one FLUX / SD3 files' text encoders and VAE.
pub const CLIP_L_PREFIX: &str = "text_encoders.clip_l.transformer.";
pub const CLIP_G_PREFIX: &str = "text_encoders.clip_g.transformer.";
pub const T5XXL_PREFIX: &str = "text_encoders.t5xxl.transformer.";
const TEXT_ENCODERS_PREFIX: &str = "text_encoders.";
pub const VAE_SHORT_PREFIX: &str = "vae.";

/// The Stable Diffusion generation a single file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: CLIP ViT-L text encoder, 768-wide cross-attention.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H text encoder, 1024-wide cross-attention.
    Sd2,
    /// SDXL base: CLIP ViT-L + OpenCLIP ViT-bigG, 2048-wide cross-attention.
    Sdxl,
    /// FLUX.1-dev (and other guidance-distilled FLUX.1): the transformer has `guidance_in`.
    FluxDev,
    /// FLUX.1-schnell: no guidance embedding.
    FluxSchnell,
    /// SD3-medium: MMDiT without query/key norms.
    Sd3,
    /// SD3.5-medium: query/key norms and dual-attention blocks.
    Sd35Medium,
    /// SD3.5-large: query/key norms, no dual attention.
    Sd35Large,
}

/// The network a component's keys describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Unet,
    Vae,
    /// CLIP text model stored in transformers' own layout (`text_model.*`).
    HfClip,
    /// OpenCLIP text tower, mapped to transformers' CLIPTextModel(WithProjection).
    OpenClip { projection: bool },
    /// T5 encoder stored in transformers' own layout.
    HfT5,
    /// FLUX transformer in BFL's layout.
    FluxTransformer,
    /// SD3 MMDiT in Stability's layout.
    Sd3Transformer,
}

/// Where one diffusers component lives in a single file.
#[derive(Debug, Clone, Copy)]
pub struct ComponentLayout {
    pub component: &'static str,
    pub prefix: &'static str,
    pub architecture: Architecture,
}

const fn layout(component: &'static str, prefix: &'static str, architecture: Architecture) -> ComponentLayout {
    ComponentLayout { component, prefix, architecture }
}

const SD1_LAYOUT: &[ComponentLayout] = &[
    layout("unet", UNET_PREFIX, Architecture::Unet),
    layout("vae", VAE_PREFIX, Architecture::Vae),
    layout("text_encoder", SD1_CLIP_PREFIX, Architecture::HfClip),
];
const SD2_LAYOUT: &[ComponentLayout] = &[
    layout("unet", UNET_PREFIX, Architecture::Unet),
    layout("vae", VAE_PREFIX, Architecture::Vae),
    layout("text_encoder", SD2_OPEN_CLIP_PREFIX, Architecture::OpenClip { projection: false }),
];
const SDXL_LAYOUT: &[ComponentLayout] = &[
    layout("unet", UNET_PREFIX, Architecture::Unet),
    layout("vae", VAE_PREFIX, Architecture::Vae),
    layout("text_encoder", SDXL_CLIP_PREFIX, Architecture::HfClip),
    layout("text_encoder_2", SDXL_OPEN_CLIP_PREFIX, Architecture::OpenClip { projection: true }),
];

// Two VAE prefixes: the first one present is read (diffusers' LDM_VAE_KEYS).
const FLUX_LAYOUT: &[ComponentLayout] = &[
    layout("transformer", UNET_PREFIX, Architecture::FluxTransformer),
    layout("vae", VAE_SHORT_PREFIX, Architecture::Vae),
    layout("vae", VAE_PREFIX, Architecture::Vae),
    layout("text_encoder", CLIP_L_PREFIX, Architecture::HfClip),
    layout("text_encoder_2", T5XXL_PREFIX, Architecture::HfT5),
];
const SD3_LAYOUT: &[ComponentLayout] = &[
    layout("transformer", UNET_PREFIX, Architecture::Sd3Transformer),
    layout("vae", VAE_PREFIX, Architecture::Vae),
    layout("vae", VAE_SHORT_PREFIX, Architecture::Vae),
    layout("text_encoder", CLIP_L_PREFIX, Architecture::HfClip),
    layout("text_encoder_2", CLIP_G_PREFIX, Architecture::HfClip),
    layout("text_encoder_3", T5XXL_PREFIX, Architecture::HfT5),
];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "Stable Diffusion 1.x",
            Family::Sd2 => "Stable Diffusion 2.x",
            Family::Sdxl => "Stable Diffusion XL",
            Family::FluxDev => "FLUX.1-dev",
            Family::FluxSchnell => "FLUX.1-schnell",
            Family::Sd3 => "Stable Diffusion 3",
            Family::Sd35Medium => "Stable Diffusion 3.5 Medium",
            Family::Sd35Large => "Stable Diffusion 3.5 Large",
        }
    }

    /// The diffusers pipeline class of this family.
    pub fn pipeline_class(self) -> &'static str {
        match self {
            Family::Sd1 | Family::Sd2 => "StableDiffusionPipeline",
            Family::Sdxl => "StableDiffusionXLPipeline",
            Family::FluxDev | Family::FluxSchnell => "FluxPipeline",
            Family::Sd3 | Family::Sd35Medium | Family::Sd35Large => "StableDiffusion3Pipeline",
        }
    }

    /// The model components of this family and where their keys live.
    pub fn components(self) -> &'static [ComponentLayout] {
        match self {
            Family::Sd1 => SD1_LAYOUT,
            Family::Sd2 => SD2_LAYOUT,
            Family::Sdxl => SDXL_LAYOUT,
            Family::FluxDev | Family::FluxSchnell => FLUX_LAYOUT,
            Family::Sd3 | Family::Sd35Medium | Family::Sd35Large => SD3_LAYOUT,
        }
    }

    /// The tokenizer components of this family.
    pub fn tokenizers(self) -> &'static [&'static str] {
        match self {
            Family::Sd1 | Family::Sd2 => &["tokenizer"],
            Family::Sdxl | Family::FluxDev | Family::FluxSchnell => &["tokenizer", "tokenizer_2"],
            Family::Sd3 | Family::Sd35Medium | Family::Sd35Large => &["tokenizer", "tokenizer_2", "tokenizer_3"],
        }
    }

    /// Tell the family from a file's keys: the transformer's layout (FLUX, SD3), then text
    /// encoder prefixes, then the UNet's cross-attention width for files without text encoders.
    pub fn detect(file: &SafetensorsFile) -> std::result::Result<Family, String> {
        let has = |prefix: &str| file.tensors_with_prefix(prefix).next().is_some();
        let transformer = |name: &str| file.info(&format!("{UNET_PREFIX}{name}")).is_some();
        if transformer(flux_layout::MARKER) {
            // As diffusers' infer_diffusers_model_type: dev has the guidance embedding.
            return Ok(if transformer("guidance_in.in_layer.weight") { Family::FluxDev } else { Family::FluxSchnell });
        }
        if transformer(sd3_layout::MARKER) {
            let qk_norm = transformer("joint_blocks.0.x_block.attn.ln_q.weight");
            let dual_attention = transformer("joint_blocks.0.x_block.attn2.qkv.weight");
            return Ok(match (qk_norm, dual_attention) {
                (false, _) => Family::Sd3,
                (true, true) => Family::Sd35Medium,
                (true, false) => Family::Sd35Large,
            });
        }
        if has(CLIP_G_PREFIX) {
            return Ok(Family::Sd3);
        }
        if has(TEXT_ENCODERS_PREFIX) {
            return Err(format!(
                "the file holds text encoders (`{TEXT_ENCODERS_PREFIX}*`) but no FLUX or SD3 transformer under \
                 `{UNET_PREFIX}`, so it is no model Stipple can run; use a file that includes the transformer, or the \
                 model's diffusers folder"
            ));
        }
        if has(SDXL_OPEN_CLIP_PREFIX) {
            return Ok(Family::Sdxl);
        }
        if has(SDXL_REFINER_PREFIX) {
            return Err("this is an SDXL refiner checkpoint, which Stipple does not read as a single file; use the \
                        diffusers folder of the refiner"
                .into());
        }
        if has(SD2_OPEN_CLIP_PREFIX) {
            return Ok(Family::Sd2);
        }
        if has(SD1_CLIP_PREFIX) {
            return Ok(Family::Sd1);
        }
        let context_width = file
            .tensors()
            .iter()
            .find(|(k, _)| k.starts_with(UNET_PREFIX) && k.ends_with("attn2.to_k.weight"))
            .and_then(|(_, info)| info.shape.get(1).copied());
        match context_width {
            Some(768) => Ok(Family::Sd1),
            Some(1024) => Ok(Family::Sd2),
            Some(2048) => Ok(Family::Sdxl),
            Some(w) => Err(format!(
                "the UNet's cross-attention is {w} wide, which matches no Stable Diffusion version Stipple knows \
                 (768: SD 1.x, 1024: SD 2.x, 2048: SDXL)"
            )),
            None => Err(format!(
                "no Stable Diffusion keys found (expected keys under `{UNET_PREFIX}`, `{VAE_PREFIX}`, \
                 `cond_stage_model.`, `conditioner.embedders.` or `{TEXT_ENCODERS_PREFIX}`): Stipple reads single \
                 files of SD 1.x, SD 2.x, SDXL, FLUX.1 and SD3 / SD3.5 in the original layout; for other models use a \
                 diffusers folder"
            )),
        }
    }

    /// The family a diffusers pipeline is written as, from its `model_index.json` and text
    /// encoder config (SD 2.x uses the SD pipeline class with an OpenCLIP-H text encoder).
    pub fn of_pipeline(model_index: &Value, text_encoder_config: Option<&Value>) -> std::result::Result<Family, String> {
        let class = model_index.get("_class_name").and_then(Value::as_str).unwrap_or_default();
        match class {
            "StableDiffusionXLPipeline" => Ok(Family::Sdxl),
            "StableDiffusionPipeline" => {
                let open_clip_h = text_encoder_config.is_some_and(|c| {
                    c.get("hidden_size").and_then(Value::as_u64) == Some(1024)
                        && c.get("hidden_act").and_then(Value::as_str) == Some("gelu")
                });
                Ok(if open_clip_h { Family::Sd2 } else { Family::Sd1 })
            }
            other => Err(format!(
                "pipeline class `{other}` has no original single-file layout Stipple can write (supported: \
                 StableDiffusionPipeline, StableDiffusionXLPipeline)"
            )),
        }
    }
}

/// The rename table of one component, from its diffusers config.
pub fn component_rules(layout: &ComponentLayout, config: &Value) -> std::result::Result<RuleTable, String> {
    match layout.architecture {
        Architecture::Unet => unet_rules(layout.prefix, config),
        Architecture::Vae => vae_rules(layout.prefix, config),
        Architecture::HfClip => Ok(hf_clip_rules(layout.prefix)),
        Architecture::OpenClip { projection } => {
            let layers = usize_field(config, "num_hidden_layers")?;
            Ok(open_clip_rules(layout.prefix, layers, projection))
        }
        Architecture::HfT5 => {
            let mut t = RuleTable::default();
            t.add(layout.prefix, "");
            Ok(t)
        }
        Architecture::FluxTransformer | Architecture::Sd3Transformer => {
            Err("a transformer's fused projections are mapped by `transformer_tensors`, not renamed".into())
        }
    }
}

/// The diffusers tensors of a transformer component in the original layout, `rows_of` giving the
/// first dimension of a stored tensor named without the layout's prefix; `None` for components
/// that are prefix renames ([`component_rules`]).
pub fn transformer_tensors(
    layout: &ComponentLayout,
    rows_of: &dyn Fn(&str) -> Option<usize>,
) -> Option<crate::Result<Vec<Mapped>>> {
    match layout.architecture {
        Architecture::FluxTransformer => Some(flux_layout::flux_original(rows_of)),
        Architecture::Sd3Transformer => Some(sd3_layout::sd3_original(rows_of)),
        _ => None,
    }
}

fn usize_field(config: &Value, key: &str) -> std::result::Result<usize, String> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| format!("config field `{key}` is missing or not a non-negative integer"))
}

fn str_list<'a>(config: &'a Value, key: &str) -> std::result::Result<Vec<&'a str>, String> {
    config
        .get(key)
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("config field `{key}` is missing or not a list of strings"))
}

/// Whether a UNet block type has cross-attention transformers (the only blocks the original
/// layout places at `.1` after each resnet).
fn block_has_attention(block_type: &str) -> std::result::Result<bool, String> {
    match block_type {
        "DownBlock2D" | "UpBlock2D" => Ok(false),
        "CrossAttnDownBlock2D" | "CrossAttnUpBlock2D" => Ok(true),
        other => Err(format!("UNet block type `{other}` has no original-layout mapping in Stipple")),
    }
}

/// An `ldm` ResBlock at `original` as a diffusers ResnetBlock2D at `diffusers`.
fn unet_resnet(t: &mut RuleTable, original: &str, diffusers: &str) {
    t.add(original, diffusers);
    for (o, d) in [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ] {
        t.add(format!("{original}{o}"), format!("{diffusers}{d}"));
    }
}

fn unet_rules(p: &str, config: &Value) -> std::result::Result<RuleTable, String> {
    let down = str_list(config, "down_block_types")?;
    let up = str_list(config, "up_block_types")?;
    // A per-block list of `layers_per_block` exists in diffusers but not in any SD checkpoint.
    let lpb = usize_field(config, "layers_per_block")?;
    let mut t = RuleTable::default();
    t.add(format!("{p}time_embed.0."), "time_embedding.linear_1.");
    t.add(format!("{p}time_embed.2."), "time_embedding.linear_2.");
    match config.get("addition_embed_type") {
        Some(Value::String(s)) if s == "text_time" => {
            t.add(format!("{p}label_emb.0.0."), "add_embedding.linear_1.");
            t.add(format!("{p}label_emb.0.2."), "add_embedding.linear_2.");
        }
        None | Some(Value::Null) => {}
        Some(other) => return Err(format!("UNet addition_embed_type {other} has no original-layout mapping")),
    }
    t.add(format!("{p}input_blocks.0.0."), "conv_in.");
    for (i, block) in down.iter().enumerate() {
        let attention = block_has_attention(block)?;
        for j in 0..lpb {
            let n = i * (lpb + 1) + j + 1;
            unet_resnet(&mut t, &format!("{p}input_blocks.{n}.0."), &format!("down_blocks.{i}.resnets.{j}."));
            if attention {
                t.add(format!("{p}input_blocks.{n}.1."), format!("down_blocks.{i}.attentions.{j}."));
            }
        }
        if i + 1 < down.len() {
            t.add(format!("{p}input_blocks.{}.0.op.", (i + 1) * (lpb + 1)), format!("down_blocks.{i}.downsamplers.0.conv."));
        }
    }
    match config.get("mid_block_type") {
        None => mid_cross_attn(&mut t, p),
        Some(Value::String(s)) if s == "UNetMidBlock2DCrossAttn" => mid_cross_attn(&mut t, p),
        Some(Value::Null) => {}
        Some(other) => return Err(format!("UNet mid_block_type {other} has no original-layout mapping")),
    }
    for (i, block) in up.iter().enumerate() {
        let attention = block_has_attention(block)?;
        for j in 0..=lpb {
            let n = i * (lpb + 1) + j;
            unet_resnet(&mut t, &format!("{p}output_blocks.{n}.0."), &format!("up_blocks.{i}.resnets.{j}."));
            if attention {
                t.add(format!("{p}output_blocks.{n}.1."), format!("up_blocks.{i}.attentions.{j}."));
            }
        }
        if i + 1 < up.len() {
            // The upsampler follows the block's last resnet (and its attention, if any).
            let slot = if attention { 2 } else { 1 };
            t.add(format!("{p}output_blocks.{}.{slot}.", i * (lpb + 1) + lpb), format!("up_blocks.{i}.upsamplers.0."));
        }
    }
    t.add(format!("{p}out.0."), "conv_norm_out.");
    t.add(format!("{p}out.2."), "conv_out.");
    Ok(t)
}

fn mid_cross_attn(t: &mut RuleTable, p: &str) {
    unet_resnet(t, &format!("{p}middle_block.0."), "mid_block.resnets.0.");
    t.add(format!("{p}middle_block.1."), "mid_block.attentions.0.");
    unet_resnet(t, &format!("{p}middle_block.2."), "mid_block.resnets.1.");
}

/// An `ldm` VAE ResnetBlock: same names as diffusers except the shortcut.
fn vae_resnet(t: &mut RuleTable, original: &str, diffusers: &str) {
    t.add(original, diffusers);
    t.add(format!("{original}nin_shortcut."), format!("{diffusers}conv_shortcut."));
}

fn vae_rules(p: &str, config: &Value) -> std::result::Result<RuleTable, String> {
    let blocks = config
        .get("block_out_channels")
        .and_then(Value::as_array)
        .map(Vec::len)
        .ok_or_else(|| "config field `block_out_channels` is missing or not a list".to_string())?;
    let lpb = usize_field(config, "layers_per_block")?;
    let mid_attention = config.get("mid_block_add_attention").and_then(Value::as_bool).unwrap_or(true);
    let mut t = RuleTable::default();
    for side in ["encoder", "decoder"] {
        t.add(format!("{p}{side}.conv_in."), format!("{side}.conv_in."));
        t.add(format!("{p}{side}.conv_out."), format!("{side}.conv_out."));
        t.add(format!("{p}{side}.norm_out."), format!("{side}.conv_norm_out."));
        vae_resnet(&mut t, &format!("{p}{side}.mid.block_1."), &format!("{side}.mid_block.resnets.0."));
        vae_resnet(&mut t, &format!("{p}{side}.mid.block_2."), &format!("{side}.mid_block.resnets.1."));
        if mid_attention {
            let (o, d) = (format!("{p}{side}.mid.attn_1."), format!("{side}.mid_block.attentions.0."));
            t.add(format!("{o}norm."), format!("{d}group_norm."));
            for (oo, dd) in [("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")] {
                t.add_kind(format!("{o}{oo}"), format!("{d}{dd}"), TensorKind::Conv1x1AsLinear);
            }
        }
    }
    for i in 0..blocks {
        for j in 0..lpb {
            vae_resnet(&mut t, &format!("{p}encoder.down.{i}.block.{j}."), &format!("encoder.down_blocks.{i}.resnets.{j}."));
        }
        if i + 1 < blocks {
            t.add(format!("{p}encoder.down.{i}.downsample.conv."), format!("encoder.down_blocks.{i}.downsamplers.0.conv."));
        }
        // The original decoder numbers its levels from the bottom; diffusers from the top.
        let level = blocks - 1 - i;
        for j in 0..=lpb {
            vae_resnet(&mut t, &format!("{p}decoder.up.{level}.block.{j}."), &format!("decoder.up_blocks.{i}.resnets.{j}."));
        }
        if i + 1 < blocks {
            t.add(format!("{p}decoder.up.{level}.upsample.conv."), format!("decoder.up_blocks.{i}.upsamplers.0.conv."));
        }
    }
    t.add(format!("{p}quant_conv."), "quant_conv.");
    t.add(format!("{p}post_quant_conv."), "post_quant_conv.");
    Ok(t)
}

fn hf_clip_rules(p: &str) -> RuleTable {
    let mut t = RuleTable::default();
    t.add(format!("{p}text_model."), "text_model.");
    // CLIPTextModelWithProjection's projection (SD3's CLIP-L and CLIP-G).
    t.add(format!("{p}text_projection."), "text_projection.");
    // Checkpoints saved with transformers < 4.x lack the `text_model.` level.
    t.add_read_only(p, "text_model.");
    t
}

fn open_clip_rules(p: &str, layers: usize, projection: bool) -> RuleTable {
    let mut t = RuleTable::default();
    t.add(format!("{p}token_embedding."), "text_model.embeddings.token_embedding.");
    t.add(format!("{p}positional_embedding"), "text_model.embeddings.position_embedding.weight");
    t.add(format!("{p}ln_final."), "text_model.final_layer_norm.");
    if projection {
        // OpenCLIP computes `x @ text_projection`; a Linear computes `x @ weight.T`.
        t.add_kind(format!("{p}text_projection"), "text_projection.weight", TensorKind::Transposed);
    }
    for i in 0..layers {
        let (o, d) = (format!("{p}transformer.resblocks.{i}."), format!("text_model.encoder.layers.{i}."));
        for (oo, dd) in [
            ("ln_1.", "layer_norm1."),
            ("ln_2.", "layer_norm2."),
            ("mlp.c_fc.", "mlp.fc1."),
            ("mlp.c_proj.", "mlp.fc2."),
            ("attn.out_proj.", "self_attn.out_proj."),
        ] {
            t.add(format!("{o}{oo}"), format!("{d}{dd}"));
        }
        for (index, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let kind = TensorKind::FusedPart { index, parts: 3 };
            t.add_kind(format!("{o}attn.in_proj_weight"), format!("{d}self_attn.{proj}.weight"), kind);
            t.add_kind(format!("{o}attn.in_proj_bias"), format!("{d}self_attn.{proj}.bias"), kind);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_like_unet() -> Value {
        serde_json::json!({
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 2
        })
    }

    fn to_diffusers(t: &RuleTable, key: &str) -> String {
        let v = t.to_diffusers(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0].0.clone()
    }

    #[test]
    fn unet_keys_match_diffusers_conversion_script() {
        // Pairs from diffusers' convert_diffusers_to_original_stable_diffusion.py for SD 1.5.
        let t = unet_rules(UNET_PREFIX, &sd15_like_unet()).unwrap();
        let m = "model.diffusion_model.";
        for (o, d) in [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("input_blocks.2.1.proj_in.weight", "down_blocks.0.attentions.1.proj_in.weight"),
            ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("input_blocks.4.0.skip_connection.bias", "down_blocks.1.resnets.0.conv_shortcut.bias"),
            ("input_blocks.11.0.out_layers.3.weight", "down_blocks.3.resnets.1.conv2.weight"),
            ("middle_block.1.transformer_blocks.0.attn2.to_k.weight", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
            ("middle_block.2.emb_layers.1.bias", "mid_block.resnets.1.time_emb_proj.bias"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            ("output_blocks.8.2.conv.weight", "up_blocks.2.upsamplers.0.conv.weight"),
            ("output_blocks.11.1.norm.weight", "up_blocks.3.attentions.2.norm.weight"),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ] {
            assert_eq!(to_diffusers(&t, &format!("{m}{o}")), d);
            assert_eq!(t.to_original(d).unwrap().0, format!("{m}{o}"));
        }
        // The last down block (DownBlock2D) has no attention.
        assert!(t.to_diffusers("model.diffusion_model.input_blocks.10.1.proj_in.weight").is_empty());
    }

    #[test]
    fn sdxl_unet_has_the_label_embedding() {
        let config = serde_json::json!({
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 2, "addition_embed_type": "text_time"
        });
        let t = unet_rules(UNET_PREFIX, &config).unwrap();
        assert_eq!(to_diffusers(&t, "model.diffusion_model.label_emb.0.2.weight"), "add_embedding.linear_2.weight");
        assert_eq!(to_diffusers(&t, "model.diffusion_model.output_blocks.2.2.conv.weight"), "up_blocks.0.upsamplers.0.conv.weight");
        assert_eq!(to_diffusers(&t, "model.diffusion_model.output_blocks.5.2.conv.weight"), "up_blocks.1.upsamplers.0.conv.weight");
        assert_eq!(to_diffusers(&t, "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.ff.net.2.bias"),
            "down_blocks.2.attentions.0.transformer_blocks.9.ff.net.2.bias");
        let bad = serde_json::json!({"down_block_types": ["AttnDownBlock2D"], "up_block_types": [], "layers_per_block": 1});
        assert!(unet_rules(UNET_PREFIX, &bad).unwrap_err().contains("AttnDownBlock2D"));
    }

    #[test]
    fn vae_keys_match_diffusers_conversion_script() {
        let config = serde_json::json!({"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2});
        let t = vae_rules(VAE_PREFIX, &config).unwrap();
        let f = "first_stage_model.";
        for (o, d) in [
            ("encoder.down.0.block.1.conv2.weight", "encoder.down_blocks.0.resnets.1.conv2.weight"),
            ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("encoder.down.2.downsample.conv.bias", "encoder.down_blocks.2.downsamplers.0.conv.bias"),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("decoder.up.3.block.2.norm1.bias", "decoder.up_blocks.0.resnets.2.norm1.bias"),
            ("decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight"),
            ("decoder.mid.block_2.conv1.weight", "decoder.mid_block.resnets.1.conv1.weight"),
            ("decoder.mid.attn_1.norm.bias", "decoder.mid_block.attentions.0.group_norm.bias"),
            ("decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ] {
            assert_eq!(to_diffusers(&t, &format!("{f}{o}")), d);
            assert_eq!(t.to_original(d).unwrap().0, format!("{f}{o}"));
        }
        assert_eq!(t.to_diffusers("first_stage_model.encoder.mid.attn_1.q.weight")[0].1, TensorKind::Conv1x1AsLinear);
        // Training-only keys (the discriminator of the VAE loss) map to nothing.
        assert!(t.to_diffusers("first_stage_model.loss.discriminator.main.0.weight").is_empty());
    }

    #[test]
    fn open_clip_keys() {
        let t = open_clip_rules(SDXL_OPEN_CLIP_PREFIX, 32, true);
        let p = SDXL_OPEN_CLIP_PREFIX;
        let qkv = t.to_diffusers(&format!("{p}transformer.resblocks.31.attn.in_proj_weight"));
        assert_eq!(qkv.len(), 3);
        assert_eq!(qkv[1].0, "text_model.encoder.layers.31.self_attn.k_proj.weight");
        assert_eq!(to_diffusers(&t, &format!("{p}transformer.resblocks.3.mlp.c_fc.bias")), "text_model.encoder.layers.3.mlp.fc1.bias");
        assert_eq!(t.to_diffusers(&format!("{p}text_projection"))[0], ("text_projection.weight".to_string(), TensorKind::Transposed));
        assert_eq!(to_diffusers(&t, &format!("{p}positional_embedding")), "text_model.embeddings.position_embedding.weight");
        assert!(t.to_diffusers(&format!("{p}logit_scale")).is_empty());
        let sd2 = open_clip_rules(SD2_OPEN_CLIP_PREFIX, 23, false);
        // SD 2.x's text encoder drops OpenCLIP's last layer and has no projection.
        assert!(sd2.to_diffusers("cond_stage_model.model.transformer.resblocks.23.ln_1.weight").is_empty());
        assert!(sd2.to_diffusers("cond_stage_model.model.text_projection").is_empty());
    }

    #[test]
    fn hf_clip_accepts_the_legacy_spelling() {
        let t = hf_clip_rules(SD1_CLIP_PREFIX);
        assert_eq!(to_diffusers(&t, "cond_stage_model.transformer.text_model.final_layer_norm.bias"), "text_model.final_layer_norm.bias");
        assert_eq!(to_diffusers(&t, "cond_stage_model.transformer.embeddings.position_ids"), "text_model.embeddings.position_ids");
        assert_eq!(t.to_original("text_model.final_layer_norm.bias").unwrap().0, "cond_stage_model.transformer.text_model.final_layer_norm.bias");
    }

    #[test]
    fn pipeline_families() {
        let sd = serde_json::json!({"_class_name": "StableDiffusionPipeline"});
        let h = serde_json::json!({"hidden_size": 1024, "hidden_act": "gelu"});
        assert_eq!(Family::of_pipeline(&sd, None).unwrap(), Family::Sd1);
        assert_eq!(Family::of_pipeline(&sd, Some(&h)).unwrap(), Family::Sd2);
        let xl = serde_json::json!({"_class_name": "StableDiffusionXLPipeline"});
        assert_eq!(Family::of_pipeline(&xl, None).unwrap(), Family::Sdxl);
        assert!(Family::of_pipeline(&serde_json::json!({"_class_name": "FluxPipeline"}), None).unwrap_err().contains("FluxPipeline"));
    }
}
