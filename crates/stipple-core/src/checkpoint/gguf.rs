//! GGUF files (ggml's container, as stable-diffusion.cpp and the FLUX community publish quantized
//! transformers): memory-mapped, the header parsed by candle and every tensor's byte range checked
//! against the file before use.
//!
//! ggml keeps a 2-D weight `[out, in]` as `out` rows of `in / block` blocks, so a block-quantized
//! tensor can be cut into row ranges without re-quantizing — which is how fused projections of
//! the original FLUX layout (`qkv`, `linear1`) become diffusers' separate `to_q` / `to_k` / `to_v`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::{Error, Result};

/// One tensor of a GGUF file (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub dtype: GgmlDType,
    /// PyTorch order (`[out, in]` for a linear weight; GGUF stores the dimensions reversed).
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    len: usize,
}

impl GgufTensor {
    /// Rows (indices along the first dimension) of a 1-D tensor count single elements.
    fn rows(&self) -> usize {
        match self.shape.as_slice() {
            [] => 1,
            [n] => *n,
            [first, ..] => *first,
        }
    }

    fn first_dim_bytes(&self) -> usize {
        self.len / self.rows().max(1)
    }
}

/// The float types a GGUF tensor can have besides block-quantized ones.
pub fn float_dtype(dtype: GgmlDType) -> Option<DType> {
    match dtype {
        GgmlDType::F32 => Some(DType::F32),
        GgmlDType::F16 => Some(DType::F16),
        GgmlDType::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// A validated, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    tensors: BTreeMap<String, GgufTensor>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

/// The GGUF magic, `"GGUF"` little-endian.
const MAGIC: &[u8; 4] = b"GGUF";

impl GgufFile {
    /// Whether `path` starts with the GGUF magic (whatever its extension).
    pub fn is_gguf(path: &Path) -> bool {
        use std::io::Read;
        let mut magic = [0u8; 4];
        File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
    }

    /// Open, map and validate `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::missing_file(path, "the GGUF file does not exist; check the path"),
            _ => Error::io(format!("opening {}", path.display()), e),
        })?;
        // SAFETY: read-only map; weight files are not rewritten while a model runs (the contract of
        // every mmap-based loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("memory-mapping {}", path.display()), e))?;
        if mmap.len() < 4 || &mmap[..4] != MAGIC {
            return Err(Error::invalid_file(path, "not a GGUF file (it does not start with `GGUF`)"));
        }
        let content = gguf_file::Content::read(&mut Cursor::new(&mmap[..]))
            .map_err(|e| Error::invalid_file(path, format!("unreadable GGUF header: {e}; the file is corrupt or truncated")))?;
        let mut tensors = BTreeMap::new();
        for (name, info) in &content.tensor_infos {
            let bad = |why: String| Error::invalid_file(path, format!("tensor `{name}`: {why}"));
            let shape = info.shape.dims().to_vec();
            let dtype = info.ggml_dtype;
            let elems = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| bad("shape overflows".into()))?;
            let block = dtype.block_size();
            if shape.last().copied().unwrap_or(1) % block != 0 {
                return Err(bad(format!("rows of {:?} are not whole {dtype:?} blocks of {block}", shape)));
            }
            let len = elems / block * dtype.type_size();
            let start = usize::try_from(content.tensor_data_offset.saturating_add(info.offset))
                .map_err(|_| bad("offset beyond the address space".into()))?;
            if start.checked_add(len).is_none_or(|end| end > mmap.len()) {
                return Err(bad(format!(
                    "its {len} bytes at offset {start} run past the end of the {}-byte file: the file is truncated; \
                     download it again",
                    mmap.len()
                )));
            }
            tensors.insert(name.clone(), GgufTensor { dtype, shape, start, len });
        }
        let metadata = content
            .metadata
            .iter()
            .filter_map(|(k, v)| v.to_string().ok().map(|s| (k.clone(), s.clone())))
            .collect();
        Ok(GgufFile { path: path.to_path_buf(), mmap, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &BTreeMap<String, GgufTensor> {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.get(name)
    }

    /// String metadata (`general.architecture`, Stipple's `stipple.config` ...).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The bytes of `rows` (indices along the first dimension) of tensor `t`, in order.
    fn row_bytes<'a>(&'a self, t: &GgufTensor, rows: &[std::ops::Range<usize>]) -> Result<Cow<'a, [u8]>> {
        let step = t.first_dim_bytes();
        let all = &self.mmap[t.start..t.start + t.len];
        if t.shape.len() <= 1 && float_dtype(t.dtype).is_none() {
            // A 1-D quantized tensor packs several elements per block: only whole-tensor reads.
            if rows.len() != 1 || rows[0] != (0..t.rows()) {
                return Err(Error::invalid_file(&self.path, "a 1-D block-quantized tensor cannot be split"));
            }
        }
        Ok(match rows {
            [r] => Cow::Borrowed(&all[r.start * step..r.end * step]),
            _ => Cow::Owned(rows.iter().flat_map(|r| all[r.start * step..r.end * step].iter().copied()).collect()),
        })
    }

    /// Rows of `name` as a candle QTensor (any ggml type), shape `[rows, rest...]`.
    pub fn qtensor(&self, name: &str, rows: &[std::ops::Range<usize>], device: &Device) -> Result<QTensor> {
        let t = self.get(name)?;
        let bytes = aligned(self.row_bytes(t, rows)?);
        let mut shape = t.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = rows.iter().map(|r| r.len()).sum();
        }
        let storage = QStorage::from_data(Cow::Borrowed(bytes.as_bytes()), device, t.dtype)?;
        Ok(QTensor::new(storage, shape)?)
    }

    /// Rows of `name` as a plain tensor: float types as stored, block-quantized ones dequantized
    /// to f32.
    pub fn dense(&self, name: &str, rows: &[std::ops::Range<usize>], device: &Device) -> Result<Tensor> {
        let t = self.get(name)?;
        match float_dtype(t.dtype) {
            Some(dtype) => {
                let bytes = aligned(self.row_bytes(t, rows)?);
                let mut shape = t.shape.clone();
                if let Some(first) = shape.first_mut() {
                    *first = rows.iter().map(|r| r.len()).sum();
                }
                Ok(Tensor::from_raw_buffer(bytes.as_bytes(), dtype, &shape, device)?)
            }
            None => Ok(self.qtensor(name, rows, device)?.dequantize(device)?),
        }
    }

    fn get(&self, name: &str) -> Result<&GgufTensor> {
        self.tensors.get(name).ok_or_else(|| Error::invalid_file(&self.path, format!("has no tensor `{name}`")))
    }

    /// The first dimension of `name` (`0..rows_of(name)` selects the whole tensor).
    pub fn rows_of(&self, name: &str) -> Option<usize> {
        self.tensors.get(name).map(GgufTensor::rows)
    }
}

/// Bytes in a buffer aligned for every ggml block and float type (candle reinterprets them in
/// place and asserts alignment); borrowed when they already are.
enum Aligned<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u64>, usize),
}

impl Aligned<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Aligned::Borrowed(b) => b,
            // SAFETY: a u64 buffer viewed as its first `len` bytes (len <= 8 × its length).
            Aligned::Owned(words, len) => unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, *len) },
        }
    }
}

fn aligned(bytes: Cow<'_, [u8]>) -> Aligned<'_> {
    const ALIGN: usize = 8;
    if let Cow::Borrowed(b) = bytes {
        if (b.as_ptr() as usize) % ALIGN == 0 {
            return Aligned::Borrowed(b);
        }
    }
    let len = bytes.len();
    let mut words = vec![0u64; len.div_ceil(ALIGN)];
    // SAFETY: the u64 buffer holds at least `len` bytes; any byte pattern is a valid u64.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, len) }.copy_from_slice(&bytes);
    Aligned::Owned(words, len)
}

/// One tensor of a GGUF file to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// PyTorch order.
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorSpec {
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() / self.dtype.block_size() * self.dtype.type_size()
    }
}

/// The `ggml_type` number of a dtype (ggml.h).
fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// The data alignment (ggml's default, so no `general.alignment` key is needed).
const ALIGNMENT: usize = 32;
/// gguf value type of strings.
const STRING_TYPE: u32 = 8;

/// Write a GGUF (version 3) file: string `metadata`, then the tensors of `specs`, whose data
/// `produce(i)` makes one at a time — the header needs only shapes and types, so a file larger
/// than memory streams through.
pub fn write_gguf(
    path: &Path,
    metadata: &[(&str, String)],
    specs: &[TensorSpec],
    mut produce: impl FnMut(usize) -> Result<QTensor>,
) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::io(format!("writing {}", path.display()), e);
    // The header is small: build it whole, then stream the data.
    let mut header = Vec::new();
    let string = |h: &mut Vec<u8>, s: &str| {
        h.extend_from_slice(&(s.len() as u64).to_le_bytes());
        h.extend_from_slice(s.as_bytes());
    };
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(specs.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut header, key);
        header.extend_from_slice(&STRING_TYPE.to_le_bytes());
        string(&mut header, value);
    }
    let mut offset = 0usize;
    for spec in specs {
        string(&mut header, &spec.name);
        header.extend_from_slice(&(spec.shape.len() as u32).to_le_bytes());
        // ggml lists dimensions fastest first.
        for &d in spec.shape.iter().rev() {
            header.extend_from_slice(&(d as u64).to_le_bytes());
        }
        header.extend_from_slice(&ggml_type_id(spec.dtype).to_le_bytes());
        header.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += spec.data_len().next_multiple_of(ALIGNMENT);
    }
    header.resize(header.len().next_multiple_of(ALIGNMENT), 0);
    let file = File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(&header).map_err(io)?;
    for (i, spec) in specs.iter().enumerate() {
        let tensor = produce(i)?;
        let data = tensor.data()?;
        if tensor.dtype() != spec.dtype || tensor.shape().dims() != spec.shape.as_slice() || data.len() != spec.data_len() {
            return Err(Error::Unsupported(format!(
                "internal: tensor `{}` came out as {:?} {:?}, the header says {:?} {:?}",
                spec.name,
                tensor.dtype(),
                tensor.shape(),
                spec.dtype,
                spec.shape
            )));
        }
        w.write_all(&data).map_err(io)?;
        w.write_all(&vec![0u8; data.len().next_multiple_of(ALIGNMENT) - data.len()]).map_err(io)?;
    }
    w.flush().map_err(io)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn write(dir: &Path, tensors: Vec<(String, QTensor)>) -> PathBuf {
        let path = dir.join("t.gguf");
        let specs: Vec<TensorSpec> = tensors
            .iter()
            .map(|(name, t)| TensorSpec { name: name.clone(), shape: t.shape().dims().to_vec(), dtype: t.dtype() })
            .collect();
        let mut tensors = tensors.into_iter().map(|(_, t)| t);
        write_gguf(&path, &[("general.architecture", "test".into())], &specs, |_| Ok(tensors.next().unwrap())).unwrap();
        path
    }

    #[test]
    fn rows_of_quantized_and_float_tensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (6, 64), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let h = QTensor::quantize(&w, GgmlDType::F16).unwrap();
        let path = write(dir.path(), vec![("q".into(), q), ("h".into(), h)]);
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.tensor("q").unwrap().shape, vec![6, 64]);
        assert_eq!(file.metadata()["general.architecture"], "test");

        // Rows 4..6 then 0..2 of the quantized tensor equal those rows quantized on their own.
        let parts = file.qtensor("q", &[4..6, 0..2], &dev).unwrap().dequantize(&dev).unwrap();
        let rows = Tensor::cat(&[w.narrow(0, 4, 2).unwrap(), w.narrow(0, 0, 2).unwrap()], 0).unwrap();
        let expect = QTensor::quantize(&rows, GgmlDType::Q8_0).unwrap().dequantize(&dev).unwrap();
        let d = (parts - expect).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
        let half = file.dense("h", &[1..3], &dev).unwrap();
        assert_eq!(half.dtype(), DType::F16);
        let expect = w.narrow(0, 1, 2).unwrap().to_dtype(DType::F16).unwrap();
        let d = (half.to_dtype(DType::F32).unwrap() - expect.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 32), &Device::Cpu).unwrap();
        let path = write(dir.path(), vec![("w".into(), QTensor::quantize(&w, GgmlDType::Q4_0).unwrap())]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("t.gguf") && err.contains("truncated"), "{err}");

        let other = dir.path().join("x.gguf");
        std::fs::write(&other, b"PK\x03\x04not gguf").unwrap();
        let err = GgufFile::open(&other).unwrap_err().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
        assert!(!GgufFile::is_gguf(&other) && GgufFile::is_gguf(&path));
    }
}
