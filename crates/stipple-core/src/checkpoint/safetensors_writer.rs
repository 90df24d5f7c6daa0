//! Writing a safetensors file one tensor at a time, so that converting a multi-gigabyte
//! checkpoint never holds more than one tensor in memory.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use super::safetensors_file::dtype_name;
use crate::{Error, Result};

/// One tensor to be written: its name, dtype and shape, known before its data.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Write `plan` to `path` with `metadata`; `produce(i)` makes tensor `i` when its turn comes.
/// The file appears at `path` only once complete (written beside it, then renamed).
pub fn write_safetensors(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    plan: &[PlannedTensor],
    mut produce: impl FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for t in plan {
        let dtype = dtype_name(t.dtype)
            .ok_or_else(|| Error::Unsupported(format!("cannot write tensor `{}` of dtype {:?}", t.name, t.dtype)))?;
        let len = t.shape.iter().product::<usize>() * t.dtype.size_in_bytes();
        let entry = json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + len]});
        if header.insert(t.name.clone(), entry).is_some() || t.name == "__metadata__" {
            return Err(Error::Unsupported(format!("internal: tensor name `{}` planned twice", t.name)));
        }
        offset += len;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    // Pad with spaces (allowed by the format) so the data section starts 8-byte aligned.
    header.resize(header.len().div_ceil(8) * 8, b' ');

    let partial = path.with_extension("safetensors.partial");
    let written = write_data(&partial, &header, plan, &mut produce);
    if written.is_err() {
        // Leave nothing half-written behind; the original error is what matters.
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(format!("renaming {} to {}", partial.display(), path.display()), e))
}

fn write_data(
    partial: &Path,
    header: &[u8],
    plan: &[PlannedTensor],
    produce: &mut impl FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let io_err = |e: std::io::Error| Error::io(format!("writing {}", partial.display()), e);
    let file = std::fs::File::create(partial).map_err(io_err)?;
    let mut out = BufWriter::new(file);
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_err)?;
    out.write_all(header).map_err(io_err)?;
    for (i, t) in plan.iter().enumerate() {
        let tensor = produce(i)?;
        if tensor.dtype() != t.dtype || tensor.dims() != t.shape.as_slice() {
            return Err(Error::Unsupported(format!(
                "internal: tensor `{}` came out {:?} {:?}, planned {:?} {:?}",
                t.name,
                tensor.dtype(),
                tensor.dims(),
                t.dtype,
                t.shape
            )));
        }
        tensor.write_bytes(&mut out)?;
    }
    out.into_inner().map_err(|e| io_err(e.into_error()))?.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SafetensorsFile;
    use candle_core::Device;

    #[test]
    fn written_files_pass_validation_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        let tensors = [
            Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap(),
            Tensor::new(&[7i64], &Device::Cpu).unwrap(),
            Tensor::new(&[1.5f32], &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap(),
        ];
        let plan: Vec<PlannedTensor> = ["b", "a", "h"]
            .iter()
            .zip(&tensors)
            .map(|(n, t)| PlannedTensor { name: n.to_string(), dtype: t.dtype(), shape: t.dims().to_vec() })
            .collect();
        let metadata = BTreeMap::from([("k".to_string(), "v".to_string())]);
        write_safetensors(&path, &metadata, &plan, |i| Ok(tensors[i].clone())).unwrap();
        assert!(!dir.path().join("out.safetensors.partial").exists());
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.metadata()["k"], "v");
        assert_eq!(f.load("b", &Device::Cpu).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1., 2., 3.], vec![4., 5., 6.]]);
        assert_eq!(f.load("a", &Device::Cpu).unwrap().to_vec1::<i64>().unwrap(), vec![7]);
        assert_eq!(f.load("h", &Device::Cpu).unwrap().dtype(), DType::F16);
        let header_len = u64::from_le_bytes(std::fs::read(&path).unwrap()[..8].try_into().unwrap());
        assert_eq!((8 + header_len) % 8, 0);
    }

    #[test]
    fn a_tensor_that_does_not_match_its_plan_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        let plan = [PlannedTensor { name: "x".into(), dtype: DType::F32, shape: vec![2] }];
        let err = write_safetensors(&path, &BTreeMap::new(), &plan, |_| Ok(Tensor::zeros(3, DType::F32, &Device::Cpu)?));
        assert!(err.unwrap_err().to_string().contains("`x`"));
        assert!(!path.exists() && !dir.path().join("out.safetensors.partial").exists());
    }
}
