//! Diffusers folders: a pipeline (`model_index.json` + one subfolder per component) or a bare
//! component folder (`config.json` + weights).
//!
//! Weights of a component folder, in order of preference: `diffusion_pytorch_model.safetensors`
//! (diffusers models) or `model.safetensors` (transformers models), then the sharded forms
//! `*.safetensors.index.json`, then the `fp16` variants of both (`*.fp16.safetensors`,
//! `*.safetensors.index.fp16.json`). Pickle weights (`*.bin`) are refused with the reason.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::config_json::read_config;
use super::pickle;
use super::safetensors_file::SafetensorsFile;
use super::source::{class_from_config, ComponentWeights, PipelineSource, SchedulerConfig, SourceFormat, TokenizerSource};
use super::store::{StoredTensor, Transform, WeightStore};
use crate::{Error, Result};

pub const MODEL_INDEX: &str = "model_index.json";
pub const CONFIG: &str = "config.json";
pub const SCHEDULER_CONFIG: &str = "scheduler_config.json";

/// What a diffusers folder looks like, for error messages.
const FOLDER_LAYOUT: &str = "a diffusers pipeline folder holds model_index.json and one subfolder per component \
    (unet/, vae/, text_encoder/, tokenizer/, scheduler/ ...); each model subfolder holds config.json and its weights \
    (diffusion_pytorch_model.safetensors or model.safetensors, or .fp16.safetensors variants, or shards listed in a \
    *.safetensors.index.json)";

/// Weight file stems: diffusers models, then transformers models.
const WEIGHT_STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// Components Stipple never runs (and whose weights are often pickles).
const UNUSED_COMPONENTS: [&str; 3] = ["safety_checker", "feature_extractor", "image_encoder"];

/// The weight files of a component folder.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightFiles {
    Single(PathBuf),
    /// A `*.safetensors.index.json` listing shards.
    Sharded(PathBuf),
}

/// Find a component folder's weights (see the module doc for the order).
pub fn find_weights(dir: &Path) -> Result<WeightFiles> {
    for variant in ["", ".fp16"] {
        for stem in WEIGHT_STEMS {
            let single = dir.join(format!("{stem}{variant}.safetensors"));
            if single.is_file() {
                return Ok(WeightFiles::Single(single));
            }
            let index = dir.join(format!("{stem}.safetensors.index{variant}.json"));
            if index.is_file() {
                return Ok(WeightFiles::Sharded(index));
            }
        }
    }
    for stem in ["diffusion_pytorch_model", "pytorch_model"] {
        for name in [format!("{stem}.bin"), format!("{stem}.fp16.bin"), format!("{stem}.bin.index.json")] {
            let path = dir.join(&name);
            if path.is_file() {
                return Err(pickle::refusal(&path, "the folder has only `.bin` weights"));
            }
        }
    }
    Err(Error::missing_file(
        dir.join("diffusion_pytorch_model.safetensors"),
        format!(
            "no weights in {}: looked for diffusion_pytorch_model.safetensors, model.safetensors, their .fp16 variants \
             and sharded *.safetensors.index.json; {FOLDER_LAYOUT}",
            dir.display()
        ),
    ))
}

/// diffusers < 0.14 named the VAE's attention projections `query`, `key`, `value`, `proj_attn`;
/// diffusers itself still reads such folders, renaming as here.
fn current_vae_name(name: &str) -> Cow<'_, str> {
    const RENAMES: [(&str, &str); 4] =
        [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")];
    if name.contains(".attentions.") {
        for (old, new) in RENAMES {
            if name.contains(old) {
                return Cow::Owned(name.replacen(old, new, 1));
            }
        }
    }
    Cow::Borrowed(name)
}

/// Open a component folder's weights as a store; `class_name` selects legacy renames.
pub fn open_weights(dir: &Path, description: &str, class_name: Option<&str>) -> Result<WeightStore> {
    let mut store = WeightStore::new(description);
    let add = |store: &mut WeightStore, file: usize, stored: &str| {
        let model_name = match class_name {
            Some("AutoencoderKL") => current_vae_name(stored),
            _ => Cow::Borrowed(stored),
        };
        store.insert(&model_name, StoredTensor { file, name: stored.to_string(), transform: Transform::Identity })
    };
    match find_weights(dir)? {
        WeightFiles::Single(path) => {
            let file = Arc::new(SafetensorsFile::open(&path)?);
            let index = store.add_file(file.clone());
            for name in file.tensors().keys() {
                add(&mut store, index, name)?;
            }
        }
        WeightFiles::Sharded(index_path) => {
            let weight_map = read_weight_map(&index_path)?;
            let mut shards: BTreeMap<&str, usize> = BTreeMap::new();
            for (tensor, shard) in &weight_map {
                let file = match shards.get(shard.as_str()) {
                    Some(&i) => i,
                    None => {
                        let i = store.add_file(Arc::new(open_shard(&index_path, shard)?));
                        shards.insert(shard, i);
                        i
                    }
                };
                add(&mut store, file, tensor)?;
            }
        }
    }
    Ok(store)
}

/// The `weight_map` of a sharded index: tensor name → shard file name.
fn read_weight_map(index_path: &Path) -> Result<BTreeMap<String, String>> {
    let index = read_config(index_path)?;
    let map = index.get("weight_map").and_then(Value::as_object).ok_or_else(|| {
        Error::invalid_file(index_path, "has no `weight_map` object (tensor name → shard file)")
    })?;
    map.iter()
        .map(|(tensor, shard)| match shard.as_str() {
            Some(s) => Ok((tensor.clone(), s.to_string())),
            None => Err(Error::invalid_file(index_path, format!("`weight_map` entry for `{tensor}` is not a file name"))),
        })
        .collect()
}

fn open_shard(index_path: &Path, shard: &str) -> Result<SafetensorsFile> {
    // Shards live beside the index; a path elsewhere is a malformed (or hostile) index.
    let mut parts = Path::new(shard).components();
    if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) {
        return Err(Error::invalid_file(index_path, format!("shard `{shard}` is not a plain file name in the index's folder")));
    }
    let path = index_path.parent().unwrap_or(Path::new(".")).join(shard);
    if !path.is_file() {
        return Err(Error::missing_file(
            &path,
            format!("listed as a shard by {}; download the missing shard", index_path.display()),
        ));
    }
    SafetensorsFile::open(&path)
}

/// Open a bare component folder (`config.json` + weights).
pub fn open_component_folder(dir: &Path, name: &str, class_name: Option<String>) -> Result<ComponentWeights> {
    let config_path = dir.join(CONFIG);
    if !config_path.is_file() {
        if dir.join(MODEL_INDEX).is_file() {
            return Err(Error::missing_file(
                config_path,
                format!(
                    "{} is a whole pipeline (it has model_index.json): open it as a pipeline, or give one of its component \
                     subfolders (unet/, vae/ ...)",
                    dir.display()
                ),
            ));
        }
        return Err(Error::missing_file(
            config_path,
            format!("a component folder holds config.json next to its weights; {FOLDER_LAYOUT}"),
        ));
    }
    let config = read_config(&config_path)?;
    let class_name = class_name.or_else(|| class_from_config(&config));
    let store = open_weights(dir, &format!("`{name}` weights in {}", dir.display()), class_name.as_deref())?;
    Ok(ComponentWeights { name: name.to_string(), class_name, config, store })
}

/// What Stipple does with a pipeline component.
#[derive(Debug, PartialEq)]
enum Role {
    Model,
    Scheduler,
    Tokenizer,
    Unused,
}

fn role(name: &str, class: &str) -> Role {
    if UNUSED_COMPONENTS.contains(&name) || class.contains("ImageProcessor") || class.contains("FeatureExtractor") {
        Role::Unused
    } else if name.starts_with("scheduler") || class.ends_with("Scheduler") {
        Role::Scheduler
    } else if name.starts_with("tokenizer") || class.contains("Tokenizer") {
        Role::Tokenizer
    } else {
        Role::Model
    }
}

/// Open a diffusers pipeline folder: every listed model's config and weights (headers
/// validated, nothing loaded), the scheduler config and the tokenizer folders.
pub fn open_pipeline_folder(dir: &Path) -> Result<PipelineSource> {
    let index_path = dir.join(MODEL_INDEX);
    if !index_path.is_file() {
        let hint = if dir.join(CONFIG).is_file() {
            format!("{} holds a single component (config.json), not a pipeline; open it as a component", dir.display())
        } else {
            FOLDER_LAYOUT.to_string()
        };
        return Err(Error::missing_file(index_path, hint));
    }
    let model_index = read_config(&index_path)?;
    let pipeline_class = model_index
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_file(&index_path, "has no `_class_name` (the pipeline class)"))?
        .to_string();
    let mut source = PipelineSource {
        origin: dir.to_path_buf(),
        format: SourceFormat::DiffusersFolder,
        pipeline_class,
        model_index: model_index.clone(),
        models: BTreeMap::new(),
        scheduler: None,
        tokenizers: BTreeMap::new(),
    };
    let Some(entries) = model_index.as_object() else {
        return Err(Error::invalid_file(&index_path, "is not a JSON object"));
    };
    // Every listed component, so a partial download is reported whole, not one folder at a time.
    let mut listed = Vec::new();
    let mut missing = Vec::new();
    for (name, entry) in entries {
        // Components are `[library, class]`; `[null, null]` marks an absent optional one.
        let Some(class) = entry.as_array().and_then(|e| e.get(1)).and_then(Value::as_str) else {
            continue;
        };
        let role = role(name, class);
        if role == Role::Unused {
            continue;
        }
        if dir.join(name).is_dir() {
            listed.push((name, class, role));
        } else {
            missing.push(format!("`{name}` ({class})"));
        }
    }
    if !missing.is_empty() {
        let present: Vec<String> = listed.iter().map(|(name, _, _)| format!("{name}/")).collect();
        let (noun, verb) =
            if missing.len() == 1 { ("component", "its folder is") } else { ("components", "their folders are") };
        return Err(Error::missing_file(
            dir,
            format!(
                "model_index.json lists {noun} {} but {verb} missing (the folder has: {}); {FOLDER_LAYOUT}",
                missing.join(", "),
                if present.is_empty() { "none of them".to_string() } else { present.join(", ") }
            ),
        ));
    }
    for (name, class, role) in listed {
        let component_dir = dir.join(name);
        match role {
            Role::Model => {
                let weights = open_component_folder(&component_dir, name, Some(class.to_string()))?;
                source.models.insert(name.clone(), weights);
            }
            Role::Scheduler => {
                let config = read_config(&component_dir.join(SCHEDULER_CONFIG))?;
                source.scheduler = Some(SchedulerConfig { class_name: class.to_string(), config });
            }
            Role::Tokenizer => {
                source.tokenizers.insert(name.clone(), TokenizerSource::Folder(component_dir));
            }
            Role::Unused => {}
        }
    }
    Ok(source)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::safetensors_file::test_files::write_f32;
    use candle_core::{DType, Device};

    pub fn sd_tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/models/sd_tiny")
    }

    /// Copy a folder tree (test fixtures only).
    pub fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn opens_the_reference_pipeline() {
        let source = open_pipeline_folder(&sd_tiny()).unwrap();
        assert_eq!(source.pipeline_class, "StableDiffusionPipeline");
        assert_eq!(source.model_names().collect::<Vec<_>>(), ["text_encoder", "unet", "vae"]);
        let unet = source.model("unet").unwrap();
        assert_eq!(unet.class_name.as_deref(), Some("UNet2DConditionModel"));
        assert_eq!(unet.config["cross_attention_dim"], 32);
        let w = unet.var_builder(DType::F32, &Device::Cpu).get((32, 4, 3, 3), "conv_in.weight").unwrap();
        assert_eq!(w.dims(), &[32, 4, 3, 3]);
        assert_eq!(source.scheduler().unwrap().class_name, "DDIMScheduler");
        assert!(source.tokenizer("tokenizer").unwrap().has_file("vocab.json"));
        let err = source.tokenizer("tokenizer_2").unwrap_err().to_string();
        assert!(err.contains("tokenizer_2"), "{err}");
    }

    #[test]
    fn shape_mismatch_names_tensor_config_and_stored_shapes() {
        let unet = open_component_folder(&sd_tiny().join("unet"), "unet", None).unwrap();
        let vb = unet.var_builder(DType::F32, &Device::Cpu);
        let err = vb.get((64, 4, 3, 3), "conv_in.weight").unwrap_err().to_string();
        assert!(err.contains("`conv_in.weight`") && err.contains("[32, 4, 3, 3]") && err.contains("[64, 4, 3, 3]"), "{err}");
        assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    }

    #[test]
    fn missing_weights_name_the_file_the_folder_and_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG), "{}").unwrap();
        let err = open_component_folder(dir.path(), "unet", None).unwrap_err().to_string();
        assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("model_index.json") && err.contains("config.json"), "{err}");
    }

    #[test]
    fn pickle_only_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG), "{}").unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
        let err = open_component_folder(dir.path(), "text_encoder", None).unwrap_err().to_string();
        assert!(err.contains("pytorch_model.bin") && err.contains("arbitrary code"), "{err}");
    }

    #[test]
    fn missing_component_folder_and_missing_model_index() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&sd_tiny(), dir.path());
        std::fs::remove_dir_all(dir.path().join("vae")).unwrap();
        let err = open_pipeline_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`vae`") && err.contains("AutoencoderKL") && err.contains("folder is missing"), "{err}");
        let err = open_pipeline_folder(&dir.path().join("unet")).unwrap_err().to_string();
        assert!(err.contains("model_index.json") && err.contains("single component"), "{err}");
        let err = open_component_folder(dir.path(), "x", None).unwrap_err().to_string();
        assert!(err.contains("whole pipeline"), "{err}");
    }

    #[test]
    fn fp16_variant_and_legacy_vae_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG), r#"{"_class_name": "AutoencoderKL"}"#).unwrap();
        write_f32(
            dir.path(),
            "diffusion_pytorch_model.fp16.safetensors",
            &[("decoder.mid_block.attentions.0.query.weight", &[1], &[1.0]), ("decoder.conv_in.bias", &[1], &[2.0])],
            &[],
        );
        let vae = open_component_folder(dir.path(), "vae", None).unwrap();
        assert_eq!(vae.store.names().collect::<Vec<_>>(), ["decoder.conv_in.bias", "decoder.mid_block.attentions.0.to_q.weight"]);
    }

    #[test]
    fn sharded_weights_load_like_a_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b): (&[f32], &[f32]) = (&[1., 2.], &[3.]);
        write_f32(dir.path(), "model-00001-of-00002.safetensors", &[("x", &[2], a)], &[]);
        write_f32(dir.path(), "model-00002-of-00002.safetensors", &[("y", &[1], b), ("unlisted", &[1], b)], &[]);
        std::fs::write(dir.path().join(CONFIG), "{}").unwrap();
        let index = r#"{"metadata": {"total_size": 12}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let c = open_component_folder(dir.path(), "text_encoder", None).unwrap();
        assert_eq!(c.store.names().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(c.store.load("y", DType::F32, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap(), vec![3.]);

        std::fs::write(dir.path().join("model.safetensors.index.json"), index.replace("00002-of", "00003-of")).unwrap();
        let err = open_component_folder(dir.path(), "text_encoder", None).unwrap_err().to_string();
        assert!(err.contains("model-00003-of-00002.safetensors") && err.contains("model.safetensors.index.json"), "{err}");

        std::fs::write(dir.path().join("model.safetensors.index.json"), r#"{"weight_map": {"x": "../x.safetensors"}}"#).unwrap();
        let err = open_component_folder(dir.path(), "text_encoder", None).unwrap_err().to_string();
        assert!(err.contains("not a plain file name"), "{err}");

        let lying = r#"{"weight_map": {"z": "model-00001-of-00002.safetensors"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), lying).unwrap();
        let err = open_component_folder(dir.path(), "text_encoder", None).unwrap_err().to_string();
        assert!(err.contains("model-00001-of-00002.safetensors") && err.contains("no tensor `z`"), "{err}");
    }
}
