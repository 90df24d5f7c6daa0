//! Single-file checkpoints in the original key layouts, read as diffusers-named components (the
//! key correspondence is in `original_layout.rs`, `flux_layout.rs` and `sd3_layout.rs`):
//!
//! * Stable Diffusion 1.x, 2.x and SDXL base (CompVis / Stability layout);
//! * all-in-one FLUX.1-dev / -schnell files (ComfyUI's `flux1-dev-fp8.safetensors` ...: BFL's
//!   transformer under `model.diffusion_model.`, `text_encoders.clip_l` / `t5xxl`, the VAE under
//!   `vae.` or `first_stage_model.`);
//! * SD3 / SD3.5 files in Stability's layout (`sd3_medium.safetensors`, MMDiT only, and
//!   `sd3_medium_incl_clips_t5xxlfp16.safetensors`, with `text_encoders.clip_l` / `clip_g` /
//!   `t5xxl` and the VAE).
//!
//! The family is told by the tensors (`Family::detect`), never by the file name: FLUX.1-dev by
//! its `guidance_in` embedding, SD3.5 by its query/key norms (medium: dual attention). A file
//! holding only a FLUX / SD3 transformer is no pipeline: `stipple generate` points it to
//! `--transformer` with a diffusers folder as the model. Files missing other parts (no text
//! encoders, say) load, and the pipeline loader lists what is found and what is missing.
//!
//! # Configs: Stipple's metadata convention
//!
//! The original layout carries weights only. Stipple reads configs from the file's safetensors
//! `__metadata__` when present, under these keys (values are JSON text, as the files diffusers
//! writes; bare `NaN` / `Infinity` / `-Infinity` are accepted):
//!
//! | key | content |
//! |---|---|
//! | `stipple.model_index` | the pipeline's `model_index.json` (pipeline class, component classes) |
//! | `stipple.<component>_config` | that component's `config.json` (`unet`, `vae`, `text_encoder`, `text_encoder_2`) or `scheduler_config.json` (`scheduler`) |
//! | `stipple.<tokenizer>_files` | a JSON object `{file name: file text}` holding a tokenizer folder (`tokenizer`, `tokenizer_2`) |
//!
//! [`super::to_single_file`] writes all of them (for SD families). Files without them
//! (checkpoints from the web) get the published configs of the family's reference model
//! (`default_configs.rs`): SD 1.5 for SD 1.x, SDXL base 1.0 for SDXL, FLUX.1-dev / -schnell,
//! SD3-medium / SD3.5-medium / SD3.5-large. An SD3 transformer's dimensions (blocks, widths,
//! position table, dual attention, query/key norms and with them the head width) are read from
//! the weights, as diffusers does, so fine-tunes and other sizes load without metadata; FLUX
//! transformers take the published config (their rotary axes are not in the weights). SD 2.x
//! files need the metadata (the weights do not say whether the model predicts noise or velocity).
//!
//! # Tokenizers
//!
//! Tokenizers are looked for in the metadata (`stipple.tokenizer_files` ...), then as folders
//! named after the component next to the checkpoint (`<dir>/tokenizer/`, `<dir>/tokenizer_2/`,
//! `<dir>/tokenizer_3/`, copied from the model's diffusers repository; a T5 folder may hold
//! `tokenizer.json` or `spiece.model`). [`PipelineSource::tokenizer`] and [`missing_advice`] name
//! the folders and the repository when they are missing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::config_json::parse_config;
use super::default_configs::DefaultConfigs;
use super::original_layout::{component_rules, transformer_tensors, ComponentLayout, Family, UNET_PREFIX};
use super::sd3_layout;
use super::safetensors_file::SafetensorsFile;
use super::source::{class_from_config, ComponentWeights, PipelineSource, SchedulerConfig, SourceFormat, TokenizerSource};
use super::store::{StoredTensor, WeightStore};
use crate::{Error, Result};

/// Metadata key of the pipeline's `model_index.json`.
pub const MODEL_INDEX_KEY: &str = "stipple.model_index";

/// Metadata key of a component's config.
pub fn config_key(component: &str) -> String {
    format!("stipple.{component}_config")
}

/// Metadata key of a tokenizer's files.
pub fn files_key(component: &str) -> String {
    format!("stipple.{component}_files")
}

/// A metadata entry parsed as JSON; `None` when absent.
fn metadata_json(file: &SafetensorsFile, key: &str) -> Result<Option<Value>> {
    file.metadata()
        .get(key)
        .map(|text| {
            parse_config(text).map_err(|why| Error::invalid_file(file.path(), format!("metadata `{key}` is {why}")))
        })
        .transpose()
}

/// A component's config: from the metadata, else the family default (adapted to the file), else `None`.
fn component_config(file: &SafetensorsFile, family: Family, component: &str) -> Result<Option<Value>> {
    if let Some(config) = metadata_json(file, &config_key(component))? {
        return Ok(Some(config));
    }
    let Some((defaults, text)) = DefaultConfigs::of(family).and_then(|d| Some((d, d.component(component)?))) else {
        return Ok(None);
    };
    tracing::info!("{}: no `{component}` config in the metadata; using {}'s", file.path().display(), defaults.source);
    let mut config: Value = serde_json::from_str(text).expect("default configs are valid JSON (tested)");
    if component == "transformer" && file.info(&format!("{UNET_PREFIX}{}", sd3_layout::MARKER)).is_some() {
        let shape_of = |name: &str| file.info(&format!("{UNET_PREFIX}{name}")).map(|i| i.shape.clone());
        sd3_layout::infer_config(&mut config, &shape_of).map_err(|why| {
            Error::invalid_file(file.path(), format!("cannot read the SD3 transformer's dimensions: {why}"))
        })?;
    }
    if component == "unet" {
        // Inpainting (9) and instruct-pix2pix (8) fine-tunes widen only the UNet's input; as
        // diffusers does, take the input width from the weights.
        let conv_in = format!("{UNET_PREFIX}input_blocks.0.0.weight");
        if let Some(&channels) = file.info(&conv_in).and_then(|info| info.shape.get(1)) {
            config["in_channels"] = channels.into();
        }
    }
    Ok(Some(config))
}

/// The store of one component: every key under its prefix that the layout maps, renamed.
fn component_store(file: &Arc<SafetensorsFile>, layout: &ComponentLayout, config: &Value) -> Result<WeightStore> {
    let path = file.path();
    let mut store = WeightStore::new(format!(
        "`{}` weights of {} (original layout, keys under `{}`)",
        layout.component,
        path.display(),
        layout.prefix
    ));
    let index = store.add_file(file.clone());
    let rows_of =
        |name: &str| file.info(&format!("{}{name}", layout.prefix)).map(|i| i.shape.first().copied().unwrap_or(1));
    if let Some(tensors) = transformer_tensors(layout, &rows_of) {
        let tensors = tensors.map_err(|e| Error::invalid_file(path, e.to_string()))?;
        for m in tensors {
            let name = format!("{}{}", layout.prefix, m.stored);
            store.insert(&m.model, StoredTensor { file: index, name, transform: m.rows.transform() })?;
        }
        return Ok(store);
    }
    let rules = component_rules(layout, config).map_err(|why| {
        Error::invalid_file(path, format!("cannot map the `{}` weights: its config: {why}", layout.component))
    })?;
    for (key, info) in file.tensors_with_prefix(layout.prefix) {
        for (name, kind) in rules.to_diffusers(key) {
            let transform = kind
                .transform(&info.shape)
                .map_err(|why| Error::invalid_file(path, format!("tensor `{key}` cannot provide `{name}`: {why}")))?;
            store.insert(&name, StoredTensor { file: index, name: key.clone(), transform })?;
        }
    }
    Ok(store)
}

fn embedded_files(file: &SafetensorsFile, key: &str) -> Result<Option<BTreeMap<String, String>>> {
    let Some(value) = metadata_json(file, key)? else {
        return Ok(None);
    };
    serde_json::from_value(value)
        .map(Some)
        .map_err(|_| Error::invalid_file(file.path(), format!("metadata `{key}` is not a JSON object of file texts")))
}

/// Open a single-file checkpoint as a pipeline source.
pub fn open_single_file(path: &Path) -> Result<PipelineSource> {
    let file = Arc::new(SafetensorsFile::open(path)?);
    let family = Family::detect(&file).map_err(|why| Error::invalid_file(path, why))?;
    let defaults = DefaultConfigs::of(family);
    let model_index = match metadata_json(&file, MODEL_INDEX_KEY)? {
        Some(index) => index,
        None => match defaults {
            Some(d) => serde_json::from_str(d.model_index).expect("default configs are valid JSON (tested)"),
            None => serde_json::json!({ "_class_name": family.pipeline_class() }),
        },
    };
    let pipeline_class =
        model_index.get("_class_name").and_then(Value::as_str).unwrap_or(family.pipeline_class()).to_string();
    let index_class = |component: &str| {
        model_index.get(component).and_then(|e| e.get(1)).and_then(Value::as_str).map(str::to_string)
    };

    let mut models = BTreeMap::new();
    for layout in family.components() {
        if models.contains_key(layout.component) || file.tensors_with_prefix(layout.prefix).next().is_none() {
            continue; // e.g. a UNet-only file, or the VAE under its second prefix
        }
        let config = component_config(&file, family, layout.component)?.ok_or_else(|| {
            Error::invalid_file(
                path,
                format!(
                    "this {} checkpoint has no `{}` config in its metadata (`{}`) and Stipple has no default for it \
                     (SD 2.x models differ in prediction type); use the model's diffusers folder, or convert it with \
                     `stipple convert` from that folder",
                    family.name(),
                    layout.component,
                    config_key(layout.component)
                ),
            )
        })?;
        let store = component_store(&file, layout, &config)?;
        let class_name = index_class(layout.component).or_else(|| class_from_config(&config));
        let name = layout.component.to_string();
        models.insert(name.clone(), ComponentWeights { name, class_name, config, store });
    }

    let scheduler = component_config(&file, family, "scheduler")?.map(|config| SchedulerConfig {
        class_name: index_class("scheduler").or_else(|| class_from_config(&config)).unwrap_or_default(),
        config,
    });

    let mut tokenizers = BTreeMap::new();
    for &name in family.tokenizers() {
        if let Some(files) = embedded_files(&file, &files_key(name))? {
            tokenizers.insert(name.to_string(), TokenizerSource::Embedded { checkpoint: path.to_path_buf(), files });
        } else {
            let beside = path.parent().unwrap_or(Path::new(".")).join(name);
            if beside.is_dir() {
                tokenizers.insert(name.to_string(), TokenizerSource::Folder(beside));
            }
        }
    }

    Ok(PipelineSource {
        origin: path.to_path_buf(),
        format: SourceFormat::SingleFile { family },
        pipeline_class,
        model_index,
        models,
        scheduler,
        tokenizers,
    })
}

/// What to do about the components `missing` (models and tokenizers) of a single file of
/// `family`: which folders to copy from which diffusers repository, and where to.
pub fn missing_advice(checkpoint: &Path, family: Family, missing: &[&str]) -> String {
    let repository = DefaultConfigs::of(family).map(|d| d.source);
    let from =
        repository.map_or("the model's diffusers repository".to_string(), |r| format!("the diffusers repository {r}"));
    let beside = checkpoint.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (tokenizers, models): (Vec<&str>, Vec<&str>) = missing.iter().partition(|m| m.starts_with("tokenizer"));
    let mut advice = Vec::new();
    if !tokenizers.is_empty() {
        let folders: Vec<String> = tokenizers.iter().map(|t| format!("`{t}/`")).collect();
        advice.push(format!(
            "single files carry no tokenizers: copy the folder(s) {} of {from} into {} (next to the checkpoint)",
            folders.join(", "),
            beside.display()
        ));
    }
    if !models.is_empty() {
        advice.push(format!(
            "{} holds no weights for {}: use an all-in-one checkpoint that includes them, or the diffusers folder of \
             {} with this file as `--transformer`",
            checkpoint.display(),
            models.join(", "),
            repository.unwrap_or("the model")
        ));
    }
    advice.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::safetensors_file::test_files::write_f32;
    use candle_core::{DType, Device};

    #[test]
    fn web_checkpoints_get_default_configs_and_mapped_names() {
        let dir = tempfile::tempdir().unwrap();
        let q: Vec<f32> = (0..4).map(|v| v as f32).collect();
        let path = write_f32(
            dir.path(),
            "sd15.safetensors",
            &[
                ("cond_stage_model.transformer.text_model.final_layer_norm.bias", &[2], &[1., 2.]),
                ("first_stage_model.decoder.mid.attn_1.q.weight", &[2, 2, 1, 1], &q),
                ("model.diffusion_model.out.2.bias", &[4], &q),
                ("model.diffusion_model.input_blocks.0.0.weight", &[1, 9, 1, 1], &[0.; 9]),
                ("model_ema.decay", &[1], &[0.999]),
            ],
            &[],
        );
        let source = open_single_file(&path).unwrap();
        assert_eq!(source.format, SourceFormat::SingleFile { family: Family::Sd1 });
        assert_eq!(source.pipeline_class, "StableDiffusionPipeline");
        let vae = source.model("vae").unwrap();
        assert_eq!(vae.config["block_out_channels"][3], 512);
        let q = vae.var_builder(DType::F32, &Device::Cpu).get((2, 2), "decoder.mid_block.attentions.0.to_q.weight").unwrap();
        assert_eq!(q.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 1., 2., 3.]);
        let unet = source.model("unet").unwrap();
        assert!(unet.store.contains("conv_out.bias") && unet.store.contains("conv_in.weight"));
        // An inpainting UNet: the default config takes its input width from the weights.
        assert_eq!(unet.config["in_channels"], 9);
        assert_eq!(unet.config["cross_attention_dim"], 768);
        assert_eq!(source.model("text_encoder").unwrap().class_name.as_deref(), Some("CLIPTextModel"));
        assert_eq!(source.scheduler().unwrap().class_name, "PNDMScheduler");
        // No tokenizer in the file or beside it: the error says where to put one.
        let err = source.tokenizer("tokenizer").unwrap_err().to_string();
        assert!(err.contains("carries no tokenizer") && err.contains(&dir.path().join("tokenizer").display().to_string()), "{err}");
        std::fs::create_dir(dir.path().join("tokenizer")).unwrap();
        assert!(matches!(open_single_file(&path).unwrap().tokenizer("tokenizer").unwrap(), TokenizerSource::Folder(_)));
    }

    #[test]
    fn unet_only_files_have_only_a_unet() {
        let dir = tempfile::tempdir().unwrap();
        let k = vec![0f32; 2 * 2048];
        let path = write_f32(
            dir.path(),
            "xl_unet.safetensors",
            &[("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", &[2, 2048], &k)],
            &[],
        );
        let source = open_single_file(&path).unwrap();
        assert_eq!(source.format, SourceFormat::SingleFile { family: Family::Sdxl });
        assert_eq!(source.model_names().collect::<Vec<_>>(), ["unet"]);
        let err = source.model("vae").unwrap_err().to_string();
        assert!(err.contains("no `vae` weights") && err.contains("Stable Diffusion XL"), "{err}");
    }

    #[test]
    fn unknown_files_and_sd2_without_configs_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_f32(dir.path(), "lora.safetensors", &[("lora_unet_down.alpha", &[1], &[1.])], &[]);
        let err = open_single_file(&path).unwrap_err().to_string();
        assert!(err.contains("lora.safetensors") && err.contains("no Stable Diffusion keys"), "{err}");

        let path = write_f32(dir.path(), "sd2.safetensors", &[("cond_stage_model.model.ln_final.bias", &[1], &[1.])], &[]);
        let err = open_single_file(&path).unwrap_err().to_string();
        assert!(err.contains("Stable Diffusion 2.x") && err.contains("stipple.text_encoder_config"), "{err}");

        let path = write_f32(
            dir.path(),
            "bad_meta.safetensors",
            &[("cond_stage_model.transformer.text_model.x", &[1], &[1.])],
            &[("stipple.text_encoder_config", "{oops")],
        );
        let err = open_single_file(&path).unwrap_err().to_string();
        assert!(err.contains("stipple.text_encoder_config") && err.contains("not valid JSON"), "{err}");
    }

    fn testdata(path: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(path)
    }

    /// The all-in-one FLUX / SD3 files of testdata/single_file (the tiny reference pipelines in
    /// the original layouts) give every component's tensors exactly as the diffusers folder has them.
    #[test]
    fn all_in_one_dit_files_read_like_their_diffusers_folders() {
        for (name, family, components) in [
            ("flux_schnell_tiny", Family::FluxSchnell, &["transformer", "vae", "text_encoder", "text_encoder_2"][..]),
            ("flux_dev_tiny", Family::FluxDev, &["transformer", "vae", "text_encoder", "text_encoder_2"][..]),
            ("sd3_tiny", Family::Sd3, &["transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"][..]),
            ("sd35_medium_tiny", Family::Sd35Medium, &["transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"][..]),
        ] {
            let source = open_single_file(&testdata(&format!("single_file/{name}.safetensors"))).unwrap();
            assert_eq!(source.format, SourceFormat::SingleFile { family }, "{name}");
            assert_eq!(source.model_names().collect::<Vec<_>>().len(), components.len(), "{name}");
            let folder = testdata(&format!("pipelines/models/{name}"));
            for &component in components {
                let weights = source.model(component).unwrap();
                let dir = folder.join(component);
                let file = ["model.safetensors", "diffusion_pytorch_model.safetensors"].map(|f| dir.join(f));
                let file = file.iter().find(|f| f.is_file()).unwrap();
                let reference = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
                assert_eq!(weights.store.len(), reference.len(), "{name}/{component}");
                for (tensor, expected) in &reference {
                    let got = weights.store.load(tensor, DType::F32, &Device::Cpu).unwrap();
                    assert_eq!(got.dims(), expected.dims(), "{name}/{component}/{tensor}");
                    let diff = (got - expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}/{component}/{tensor}");
                }
                // Configs: the metadata's, or (sd35_medium_tiny's transformer) inferred from the shapes.
                let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
                for (key, value) in expected.as_object().unwrap() {
                    if key != "sample_size" && !key.starts_with('_') {
                        assert_eq!(weights.config.get(key), Some(value), "{name}/{component}: {key}");
                    }
                }
            }
        }
    }

    #[test]
    fn dit_files_without_metadata_get_published_defaults_and_repository_advice() {
        // flux_dev_tiny carries no model_index / scheduler config: FLUX.1-dev's.
        let path = testdata("single_file/flux_dev_tiny.safetensors");
        let source = open_single_file(&path).unwrap();
        assert_eq!(source.pipeline_class, "FluxPipeline");
        let scheduler = source.scheduler().unwrap();
        assert_eq!((scheduler.class_name.as_str(), &scheduler.config["use_dynamic_shifting"]), ("FlowMatchEulerDiscreteScheduler", &Value::Bool(true)));
        assert_eq!(source.model("transformer").unwrap().class_name.as_deref(), Some("FluxTransformer2DModel"));
        // No tokenizer beside testdata/single_file: the error names the folder and the repository.
        let err = source.tokenizer("tokenizer_2").unwrap_err().to_string();
        assert!(err.contains("`tokenizer_2/` folder of the diffusers repository black-forest-labs/FLUX.1-dev"), "{err}");
        let advice = missing_advice(&path, Family::Sd35Medium, &["tokenizer", "tokenizer_3", "text_encoder_3"]);
        assert!(advice.contains("`tokenizer/`, `tokenizer_3/` of the diffusers repository stabilityai/stable-diffusion-3.5-medium"), "{advice}");
        assert!(advice.contains("no weights for text_encoder_3"), "{advice}");
        // The embedded tokenizers of flux_schnell_tiny are found.
        let schnell = open_single_file(&testdata("single_file/flux_schnell_tiny.safetensors")).unwrap();
        assert!(matches!(schnell.tokenizer("tokenizer_2").unwrap(), TokenizerSource::Embedded { .. }));
        assert_eq!(schnell.scheduler().unwrap().config["shift"], 1.0);
    }

    #[test]
    fn text_encoders_without_a_transformer_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_f32(dir.path(), "clips.safetensors", &[("text_encoders.clip_l.transformer.text_model.x", &[1], &[1.])], &[]);
        let err = open_single_file(&path).unwrap_err().to_string();
        assert!(err.contains("no FLUX or SD3 transformer"), "{err}");
    }
}
