//! Writing a diffusers pipeline folder as one `.safetensors` file in the original layout, with
//! Stipple's configs and tokenizers in its metadata (see [`super::single_file`]) — the inverse
//! of reading a single file, used by `stipple convert` and to test the single-file path.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::diffusers::open_pipeline_folder;
use super::key_rules::TensorKind;
use super::original_layout::{component_rules, Family};
use super::safetensors_writer::{write_safetensors, PlannedTensor};
use super::single_file::{config_key, files_key, MODEL_INDEX_KEY};
use super::source::{ComponentWeights, TokenizerSource};
use crate::{Error, Result};

/// Buffers that transformers used to save but the original layout has no place for.
const DROPPED_BUFFERS: [&str; 1] = ["text_model.embeddings.position_ids"];

/// Tokenizer files larger than this are not embedded (CLIP's largest, tokenizer.json, is 3.6 MB).
const MAX_EMBEDDED_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One original tensor and the diffusers tensors it is made of.
struct Source<'a> {
    component: &'a ComponentWeights,
    kind: TensorKind,
    /// Diffusers names, in part order (one unless fused).
    parts: Vec<Option<String>>,
}

/// Write the pipeline in `diffusers_dir` as the single file `out_path` (which must end in
/// `.safetensors`), keeping each tensor's dtype.
pub fn to_single_file(diffusers_dir: &Path, out_path: &Path) -> Result<()> {
    if out_path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(Error::param("output", format!("{} must end in .safetensors", out_path.display())));
    }
    let source = open_pipeline_folder(diffusers_dir)?;
    let text_config = source.model("text_encoder").ok().map(|c| &c.config);
    let family = Family::of_pipeline(&source.model_index, text_config)
        .map_err(|why| Error::Unsupported(format!("cannot convert {}: {why}", diffusers_dir.display())))?;

    let mut metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (MODEL_INDEX_KEY.to_string(), source.model_index.to_string()),
    ]);
    let mut originals: BTreeMap<String, Source> = BTreeMap::new();
    for layout in family.components() {
        let component = source.model(layout.component)?;
        metadata.insert(config_key(layout.component), component.config.to_string());
        let rules = component_rules(layout, &component.config).map_err(|why| {
            Error::Unsupported(format!("cannot convert `{}` of {}: {why}", layout.component, diffusers_dir.display()))
        })?;
        for name in component.store.names() {
            let Some((original, kind)) = rules.to_original(name) else {
                if DROPPED_BUFFERS.contains(&name) {
                    continue;
                }
                return Err(Error::Unsupported(format!(
                    "tensor `{name}` of `{}` in {} has no place in the original {} layout",
                    layout.component,
                    diffusers_dir.display(),
                    family.name()
                )));
            };
            let (index, parts) = match kind {
                TensorKind::FusedPart { index, parts } => (index, parts),
                _ => (0, 1),
            };
            let entry = originals.entry(original).or_insert_with(|| Source { component, kind, parts: vec![None; parts] });
            entry.parts[index] = Some(name.to_string());
        }
    }
    if let Ok(scheduler) = source.scheduler() {
        metadata.insert(config_key("scheduler"), scheduler.config.to_string());
    }
    for &name in family.tokenizers() {
        if let Ok(TokenizerSource::Folder(dir)) = source.tokenizer(name) {
            metadata.insert(files_key(name), serde_json::to_string(&tokenizer_files(dir)?).expect("strings serialise"));
        }
    }

    let mut plan = Vec::with_capacity(originals.len());
    let mut sources = Vec::with_capacity(originals.len());
    for (original, source) in originals {
        plan.push(planned(&original, &source)?);
        sources.push(source);
    }
    write_safetensors(out_path, &metadata, &plan, |i| original_tensor(&sources[i]))
}

/// The dtype and shape an original tensor will have, from its parts' stored headers.
fn planned(original: &str, source: &Source) -> Result<PlannedTensor> {
    let store = &source.component.store;
    let mut dtype = None;
    let mut shape: Option<Vec<usize>> = None;
    for part in &source.parts {
        let Some(name) = part else {
            return Err(Error::Unsupported(format!(
                "`{original}` fuses {} tensors of `{}` but some are missing (have: {:?})",
                source.parts.len(),
                source.component.name,
                source.parts.iter().flatten().collect::<Vec<_>>()
            )));
        };
        let part_dtype = store.stored_dtype(name).expect("name comes from the store");
        let part_shape = source.kind.original_shape(store.shape(name).expect("name comes from the store"));
        let consistent = dtype.is_none_or(|d| d == part_dtype)
            && shape.as_ref().is_none_or(|s| s.get(1..) == part_shape.get(1..));
        if !consistent {
            return Err(Error::Unsupported(format!("the parts of `{original}` differ in dtype or shape")));
        }
        dtype = Some(part_dtype);
        shape = Some(match shape {
            // Fused parts stack along the first dimension.
            Some(mut s) => {
                s[0] += part_shape[0];
                s
            }
            None => part_shape,
        });
    }
    Ok(PlannedTensor {
        name: original.to_string(),
        dtype: dtype.expect("at least one part"),
        shape: shape.expect("at least one part"),
    })
}

/// Build one original tensor from its diffusers parts (on the CPU, in the stored dtype).
fn original_tensor(source: &Source) -> Result<Tensor> {
    let store = &source.component.store;
    let mut parts = Vec::with_capacity(source.parts.len());
    for name in source.parts.iter().flatten() {
        let dtype: DType = store.stored_dtype(name).expect("name comes from the store");
        parts.push(store.load(name, dtype, &Device::Cpu)?);
    }
    let tensor = match source.kind {
        TensorKind::Same => parts.swap_remove(0),
        TensorKind::Conv1x1AsLinear => {
            let t = parts.swap_remove(0);
            match *t.dims() {
                [o, i] => t.reshape((o, i, 1, 1))?,
                _ => t,
            }
        }
        TensorKind::Transposed => parts.swap_remove(0).t()?.contiguous()?,
        TensorKind::FusedPart { .. } => Tensor::cat(&parts, 0)?,
    };
    Ok(tensor)
}

/// The text files of a tokenizer folder, by name.
fn tokenizer_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let is_text = matches!(path.extension().and_then(|e| e.to_str()), Some("json" | "txt" | "model"));
        let size = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if !path.is_file() || !is_text || size > MAX_EMBEDDED_FILE_BYTES {
            continue;
        }
        // Binary files (a sentencepiece `.model`) are skipped: metadata holds text only.
        if let Ok(text) = std::fs::read_to_string(&path) {
            files.insert(name.to_string(), text);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::diffusers::tests::{copy_dir, sd_tiny};
    use crate::checkpoint::safetensors_writer::write_safetensors;
    use crate::checkpoint::{open_pipeline, PipelineSource, SafetensorsFile, SourceFormat};

    /// Every tensor of every listed component is identical through both sources.
    fn assert_same_weights(a: &PipelineSource, b: &PipelineSource, components: &[&str]) {
        for &c in components {
            let (x, y) = (a.model(c).unwrap(), b.model(c).unwrap());
            assert_eq!(x.config, y.config, "{c} config");
            assert_eq!(x.class_name, y.class_name, "{c} class");
            let names: Vec<&str> = x.store.names().collect();
            assert_eq!(names, y.store.names().collect::<Vec<_>>(), "{c} names");
            for name in names {
                let tx = x.store.load(name, DType::F32, &Device::Cpu).unwrap();
                let ty = y.store.load(name, DType::F32, &Device::Cpu).unwrap();
                assert_eq!(tx.dims(), ty.dims(), "{c} {name}");
                let (vx, vy) = (tx.flatten_all().unwrap().to_vec1::<f32>().unwrap(), ty.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                assert!(vx.iter().zip(&vy).all(|(p, q)| p.to_bits() == q.to_bits()), "{c} {name} differs");
            }
        }
    }

    #[test]
    fn sd_tiny_round_trips_through_a_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sd_tiny.safetensors");
        to_single_file(&sd_tiny(), &out).unwrap();

        let folder = open_pipeline(&sd_tiny()).unwrap();
        let single = open_pipeline(&out).unwrap();
        assert_eq!(single.format, SourceFormat::SingleFile { family: Family::Sd1 });
        assert_eq!(single.pipeline_class, "StableDiffusionPipeline");
        assert_same_weights(&folder, &single, &["unet", "vae", "text_encoder"]);
        assert_eq!(folder.scheduler().unwrap().config, single.scheduler().unwrap().config);
        assert_eq!(single.scheduler().unwrap().class_name, "DDIMScheduler");
        let tok = single.tokenizer("tokenizer").unwrap();
        assert!(matches!(tok, TokenizerSource::Embedded { .. }));
        assert_eq!(tok.read_file("vocab.json").unwrap(), folder.tokenizer("tokenizer").unwrap().read_file("vocab.json").unwrap());

        // The file really is in the original layout, reshapes included.
        let file = SafetensorsFile::open(&out).unwrap();
        assert_eq!(file.info("first_stage_model.decoder.mid.attn_1.q.weight").unwrap().shape, vec![64, 64, 1, 1]);
        assert!(file.info("model.diffusion_model.output_blocks.2.2.conv.weight").is_some());
        assert!(file.info("cond_stage_model.transformer.text_model.final_layer_norm.weight").is_some());
        assert!(file.tensors().keys().all(|k| k.starts_with("model.diffusion_model.")
            || k.starts_with("first_stage_model.")
            || k.starts_with("cond_stage_model.transformer.")));
        let vb = single.model("vae").unwrap().var_builder(DType::F32, &Device::Cpu);
        assert_eq!(vb.get((64, 64), "decoder.mid_block.attentions.0.to_q.weight").unwrap().dims(), &[64, 64]);
    }

    /// A tiny SDXL-shaped pipeline built from sd_tiny's models, with the parts SDXL adds: the
    /// UNet's `add_embedding` and an OpenCLIP-style second text encoder with a projection.
    fn tiny_sdxl_folder(root: &Path) {
        copy_dir(&sd_tiny(), root);
        let index = serde_json::json!({
            "_class_name": "StableDiffusionXLPipeline",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]
        });
        std::fs::write(root.join("model_index.json"), index.to_string()).unwrap();
        copy_dir(&sd_tiny().join("tokenizer"), &root.join("tokenizer_2"));

        let extend = |from: &Path, to: &Path, extra: Vec<(&str, Tensor)>| {
            let file = SafetensorsFile::open(from).unwrap();
            let mut tensors: Vec<(String, Tensor)> =
                file.tensors().keys().map(|k| (k.clone(), file.load(k, &Device::Cpu).unwrap())).collect();
            tensors.extend(extra.into_iter().map(|(n, t)| (n.to_string(), t)));
            let plan: Vec<PlannedTensor> = tensors
                .iter()
                .map(|(n, t)| PlannedTensor { name: n.clone(), dtype: t.dtype(), shape: t.dims().to_vec() })
                .collect();
            write_safetensors(to, &BTreeMap::new(), &plan, |i| Ok(tensors[i].1.clone())).unwrap();
        };
        let ramp = |rows: usize, cols: usize| {
            Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu).unwrap().reshape((rows, cols)).unwrap()
        };

        let unet = root.join("unet");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(unet.join("config.json")).unwrap()).unwrap();
        config["addition_embed_type"] = "text_time".into();
        std::fs::write(unet.join("config.json"), config.to_string()).unwrap();
        let weights = unet.join("diffusion_pytorch_model.safetensors");
        extend(&weights.clone(), &weights, vec![
            ("add_embedding.linear_1.weight", ramp(128, 16)),
            ("add_embedding.linear_1.bias", ramp(1, 128).flatten_all().unwrap()),
            ("add_embedding.linear_2.weight", ramp(128, 128)),
            ("add_embedding.linear_2.bias", ramp(1, 128).flatten_all().unwrap()),
        ]);

        let te2 = root.join("text_encoder_2");
        std::fs::create_dir_all(&te2).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("text_encoder/config.json")).unwrap()).unwrap();
        config["architectures"] = serde_json::json!(["CLIPTextModelWithProjection"]);
        config["hidden_act"] = "gelu".into();
        std::fs::write(te2.join("config.json"), config.to_string()).unwrap();
        // A non-symmetric projection, so that a missing transpose would show.
        extend(&root.join("text_encoder/model.safetensors"), &te2.join("model.safetensors"), vec![("text_projection.weight", ramp(32, 32))]);
    }

    #[test]
    fn sdxl_layout_round_trips_with_fused_qkv_and_transposed_projection() {
        let dir = tempfile::tempdir().unwrap();
        let folder_path = dir.path().join("xl");
        tiny_sdxl_folder(&folder_path);
        let out = dir.path().join("xl.safetensors");
        to_single_file(&folder_path, &out).unwrap();

        let folder = open_pipeline(&folder_path).unwrap();
        let single = open_pipeline(&out).unwrap();
        assert_eq!(single.format, SourceFormat::SingleFile { family: Family::Sdxl });
        assert_same_weights(&folder, &single, &["unet", "vae", "text_encoder", "text_encoder_2"]);
        assert!(single.tokenizer("tokenizer_2").unwrap().has_file("merges.txt"));

        let file = SafetensorsFile::open(&out).unwrap();
        let p = "conditioner.embedders.1.model.";
        assert_eq!(file.info(&format!("{p}transformer.resblocks.4.attn.in_proj_weight")).unwrap().shape, vec![96, 32]);
        assert_eq!(file.info(&format!("{p}transformer.resblocks.4.attn.in_proj_bias")).unwrap().shape, vec![96]);
        assert!(file.info("model.diffusion_model.label_emb.0.2.bias").is_some());
        assert!(file.info("conditioner.embedders.0.transformer.text_model.final_layer_norm.bias").is_some());
        // OpenCLIP stores the projection input-major: element [0, 1] is the Linear's [1, 0].
        let stored = file.load(&format!("{p}text_projection"), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(stored[0][1], 32.0);
        // The q rows of the fused projection are the first third.
        let k = folder.model("text_encoder_2").unwrap().store.load("text_model.encoder.layers.4.self_attn.k_proj.weight", DType::F32, &Device::Cpu).unwrap();
        let fused = file.load(&format!("{p}transformer.resblocks.4.attn.in_proj_weight"), &Device::Cpu).unwrap();
        assert_eq!(fused.narrow(0, 32, 32).unwrap().to_vec2::<f32>().unwrap(), k.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn refuses_other_outputs_and_pipelines() {
        let dir = tempfile::tempdir().unwrap();
        let err = to_single_file(&sd_tiny(), &dir.path().join("x.ckpt")).unwrap_err().to_string();
        assert!(err.contains("x.ckpt") && err.contains(".safetensors"), "{err}");
        let folder = dir.path().join("flux");
        copy_dir(&sd_tiny(), &folder);
        std::fs::write(folder.join("model_index.json"), r#"{"_class_name": "FluxPipeline"}"#).unwrap();
        let err = to_single_file(&folder, &dir.path().join("f.safetensors")).unwrap_err().to_string();
        assert!(err.contains("FluxPipeline"), "{err}");
    }
}
