//! One `.safetensors` file, memory-mapped, with its header checked before any tensor is made.
//!
//! The format: 8 bytes little-endian `N`, then `N` bytes of UTF-8 JSON (the header), then the
//! data section. The header maps tensor names to `{"dtype", "shape", "data_offsets": [begin,
//! end]}` (offsets relative to the data section) and may hold `__metadata__`, a map of strings.
//! The header is parsed here, not by a library, so that every way a file can lie (sizes that do
//! not match the shape, ranges outside the file, overlapping or missing bytes) is refused with
//! a message that names the file, the tensor and the fix. Tensors are created on request from
//! the mapped bytes, so opening a 7 GB checkpoint costs only its header.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use serde_json::Value;

use super::pickle;
use crate::{Error, Result};

/// Largest header accepted. Real headers are kilobytes (SDXL in one file: ~0.3 MB; with
/// Stipple's embedded configs and tokenizers a few MB); a larger length means a corrupt file
/// or not a safetensors file at all, and is refused before anything is read or allocated.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// What the header says about one tensor (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub data_offsets: (usize, usize),
}

/// A validated, memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section in the file (8 + header length).
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("metadata", &self.metadata.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SafetensorsFile {
    /// Open, map and validate `path`. Pickle checkpoints are refused by extension and by content.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        pickle::refuse_by_extension(path)?;
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::missing_file(path, "the weights file does not exist; check the path"),
            _ => Error::io(format!("opening {}", path.display()), e),
        })?;
        let len = file.metadata().map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?.len();
        if len < 8 {
            return Err(Error::invalid_file(
                path,
                format!(
                    "the file is {len} bytes, too short for a safetensors file (which starts with an 8-byte header \
                     length): it is truncated or not a safetensors file; download it again"
                ),
            ));
        }
        // SAFETY: the map is read-only. Another process truncating or rewriting the file while it
        // is mapped would change what we read (as with any mmap-based loader); weight files are
        // not written while a model runs.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("memory-mapping {}", path.display()), e))?;
        Self::from_mmap(path, mmap)
    }

    fn from_mmap(path: &Path, mmap: Mmap) -> Result<SafetensorsFile> {
        let invalid = |reason: String| Error::invalid_file(path, reason);
        let file_len = mmap.len() as u64;
        let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("checked length >= 8"));
        // A safetensors header always starts with `{`; a pickle or a zip (torch.save) never does.
        let header_starts_like_json = mmap.get(8) == Some(&b'{');
        if !header_starts_like_json && pickle::looks_like_pickle(&mmap[..]) {
            return Err(pickle::refusal(path, "its content is a PyTorch pickle / zip archive, not safetensors"));
        }
        if header_len > MAX_HEADER_BYTES {
            return Err(invalid(format!(
                "the header length field says {header_len} bytes, more than the {MAX_HEADER_BYTES}-byte limit: \
                 the file is corrupt or not a safetensors file"
            )));
        }
        if header_len > file_len - 8 {
            return Err(invalid(format!(
                "the header length field says {header_len} bytes but only {} bytes follow it: the file is \
                 truncated; download it again",
                file_len - 8
            )));
        }
        let data_start = 8 + header_len as usize;
        let header = std::str::from_utf8(&mmap[8..data_start])
            .map_err(|e| invalid(format!("the header is not valid UTF-8 ({e}): the file is corrupt")))?;
        if !header.starts_with('{') {
            return Err(invalid("the header does not start with `{`: not a safetensors file".into()));
        }
        let header: Value = serde_json::from_str(header)
            .map_err(|e| invalid(format!("the header is not valid JSON ({e}): the file is corrupt")))?;
        let Value::Object(entries) = header else {
            return Err(invalid("the header is not a JSON object".into()));
        };
        let data_len = mmap.len() - data_start;
        let mut metadata = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                metadata = parse_metadata(&entry).map_err(invalid)?;
                continue;
            }
            let info = parse_tensor_entry(&name, &entry, data_len).map_err(invalid)?;
            tensors.insert(name, info);
        }
        check_coverage(&tensors, data_len).map_err(invalid)?;
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, data_start, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` map (empty when the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The tensors whose names start with `prefix`, in name order.
    pub fn tensors_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a TensorInfo)> {
        use std::ops::Bound;
        self.tensors
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(name, _)| name.starts_with(prefix))
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The stored bytes of a tensor (validated to lie inside the file).
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (begin, end) = info.data_offsets;
        &self.mmap[self.data_start + begin..self.data_start + end]
    }

    /// A tensor as stored (dtype and shape of the header) on `device`.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.info(name).ok_or_else(|| {
            Error::invalid_file(&self.path, format!("the file has no tensor `{name}`"))
        })?;
        Ok(Tensor::from_raw_buffer(self.bytes(info), info.dtype, &info.shape, device)?)
    }
}

/// The safetensors dtype names Stipple loads, with candle's dtype.
const SUPPORTED_DTYPES: &[(&str, DType)] = &[
    ("F64", DType::F64),
    ("F32", DType::F32),
    ("F16", DType::F16),
    ("BF16", DType::BF16),
    ("F8_E4M3", DType::F8E4M3),
    ("I64", DType::I64),
    ("I32", DType::I32),
    ("I16", DType::I16),
    ("U32", DType::U32),
    ("U8", DType::U8),
];

/// Dtypes of the safetensors spec that candle has no tensor type for.
const UNSUPPORTED_DTYPES: &[&str] =
    &["BOOL", "I8", "U16", "U64", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"];

/// The safetensors name of a candle dtype (for writing).
pub fn dtype_name(dtype: DType) -> Option<&'static str> {
    SUPPORTED_DTYPES.iter().find(|(_, d)| *d == dtype).map(|(n, _)| *n)
}

fn parse_dtype(tensor: &str, name: &str) -> std::result::Result<DType, String> {
    if let Some((_, dtype)) = SUPPORTED_DTYPES.iter().find(|(n, _)| *n == name) {
        return Ok(*dtype);
    }
    let supported: Vec<&str> = SUPPORTED_DTYPES.iter().map(|(n, _)| *n).collect();
    if UNSUPPORTED_DTYPES.contains(&name) {
        Err(format!(
            "tensor `{tensor}` has dtype {name}, which Stipple cannot load (supported: {}); convert the \
             weights to F16, BF16 or F32",
            supported.join(", ")
        ))
    } else {
        Err(format!(
            "tensor `{tensor}` has unknown dtype `{name}` (known: {}): the header is corrupt or the file \
             comes from a newer safetensors version",
            supported.join(", ")
        ))
    }
}

fn parse_metadata(entry: &Value) -> std::result::Result<BTreeMap<String, String>, String> {
    let Value::Object(map) = entry else {
        return Err("`__metadata__` is not a JSON object of strings".into());
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(format!("`__metadata__` entry `{k}` is not a string (it is `{other}`): the header is malformed")),
        })
        .collect()
}

fn parse_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

fn parse_tensor_entry(name: &str, entry: &Value, data_len: usize) -> std::result::Result<TensorInfo, String> {
    let malformed = |what: &str| format!("tensor `{name}`: {what}; the header is malformed");
    let Value::Object(fields) = entry else {
        return Err(malformed("its entry is not a JSON object"));
    };
    let dtype_name = fields.get("dtype").and_then(Value::as_str).ok_or_else(|| malformed("`dtype` is missing or not a string"))?;
    let dtype = parse_dtype(name, dtype_name)?;
    let shape = fields
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("`shape` is missing or not a list"))?
        .iter()
        .map(parse_usize)
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| malformed("`shape` holds something other than non-negative integers"))?;
    let offsets = fields
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("`data_offsets` is missing or not a list"))?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => (
            parse_usize(b).ok_or_else(|| malformed("`data_offsets` are not non-negative integers"))?,
            parse_usize(e).ok_or_else(|| malformed("`data_offsets` are not non-negative integers"))?,
        ),
        _ => return Err(malformed("`data_offsets` must be [begin, end]")),
    };
    if end < begin {
        return Err(format!("header says tensor `{name}` spans bytes {begin}..{end}, which ends before it begins: the header is corrupt"));
    }
    let byte_len = shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}` has shape {shape:?}, whose size in bytes overflows: the header is corrupt"))?;
    if byte_len != end - begin {
        return Err(format!(
            "header says tensor `{name}` is {dtype_name} with shape {shape:?} ({byte_len} bytes) but its data_offsets \
             {begin}..{end} span {} bytes: the header is corrupt",
            end - begin
        ));
    }
    if end > data_len {
        return Err(format!(
            "header says tensor `{name}` spans bytes {begin}..{end} but the file's data section is {data_len} bytes: \
             the file is truncated; download it again"
        ));
    }
    Ok(TensorInfo { dtype, shape, data_offsets: (begin, end) })
}

/// The spec requires the tensors to tile the data section exactly: no overlap, no gap, nothing after.
fn check_coverage(tensors: &BTreeMap<String, TensorInfo>, data_len: usize) -> std::result::Result<(), String> {
    let mut by_offset: Vec<(&String, (usize, usize))> = tensors.iter().map(|(n, i)| (n, i.data_offsets)).collect();
    by_offset.sort_by_key(|(name, range)| (*range, *name));
    let mut covered_to = 0usize;
    let mut previous: Option<(&String, (usize, usize))> = None;
    for &(name, (begin, end)) in &by_offset {
        if begin < covered_to {
            let (prev_name, (pb, pe)) = previous.expect("covered_to > 0 implies a previous tensor");
            return Err(format!(
                "tensors `{prev_name}` (bytes {pb}..{pe}) and `{name}` (bytes {begin}..{end}) overlap: the header is \
                 corrupt; download the file again"
            ));
        }
        if begin > covered_to {
            return Err(format!(
                "bytes {covered_to}..{begin} of the data section belong to no tensor (the next tensor, `{name}`, starts \
                 at {begin}): the header is corrupt; download the file again"
            ));
        }
        covered_to = end;
        if end > begin || previous.is_none() {
            previous = Some((name, (begin, end)));
        }
    }
    if covered_to != data_len {
        return Err(format!(
            "the data section is {data_len} bytes but its tensors end at byte {covered_to}: {} bytes belong to no tensor; \
             the file is corrupt",
            data_len - covered_to
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_files {
    //! Writing raw safetensors bytes, including malformed ones, for tests.

    use std::path::{Path, PathBuf};

    /// Write a file made of the given header JSON (length-prefixed) and data bytes.
    pub fn write_raw(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A well-formed file of F32 tensors `(name, shape, values)`, laid out in order.
    pub fn write_f32(dir: &Path, name: &str, tensors: &[(&str, &[usize], &[f32])], metadata: &[(&str, &str)]) -> PathBuf {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            let meta: serde_json::Map<String, serde_json::Value> =
                metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
            header.insert("__metadata__".into(), meta.into());
        }
        let mut data = Vec::new();
        for (tname, shape, values) in tensors {
            assert_eq!(shape.iter().product::<usize>(), values.len());
            let begin = data.len();
            for v in values.iter() {
                data.extend_from_slice(&v.to_le_bytes());
            }
            header.insert(
                tname.to_string(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        write_raw(dir, name, &serde_json::Value::Object(header).to_string(), &data)
    }
}

#[cfg(test)]
mod tests {
    use super::test_files::{write_f32, write_raw};
    use super::*;

    fn open_err(path: &Path) -> String {
        SafetensorsFile::open(path).unwrap_err().to_string()
    }

    #[test]
    fn loads_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_f32(dir.path(), "a.safetensors", &[("x", &[2, 2], &[1., 2., 3., 4.]), ("y", &[1], &[5.])], &[("k", "v")]);
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.metadata().get("k").map(String::as_str), Some("v"));
        let x = f.load("x", &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 2]);
        assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1., 2., 3., 4.]);
        assert_eq!(f.load("y", &Device::Cpu).unwrap().to_vec1::<f32>().unwrap(), vec![5.]);
    }

    #[test]
    fn reads_the_reference_model_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/models/sd_tiny");
        let f = SafetensorsFile::open(&root.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
        assert_eq!(f.info("decoder.conv_in.weight").unwrap().shape, vec![64, 4, 3, 3]);
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_err(&dir.path().join("nope.safetensors"));
        assert!(err.contains("missing file") && err.contains("nope.safetensors"), "{err}");
    }

    #[test]
    fn refuses_files_shorter_than_the_length_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.safetensors");
        std::fs::write(&path, [1u8, 2, 3]).unwrap();
        let err = open_err(&path);
        assert!(err.contains("short.safetensors") && err.contains("3 bytes"), "{err}");
    }

    #[test]
    fn refuses_a_huge_header_length_before_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.safetensors");
        let mut bytes = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, bytes).unwrap();
        let err = open_err(&path);
        assert!(err.contains("header length") && err.contains("limit"), "{err}");
    }

    #[test]
    fn refuses_a_header_longer_than_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.safetensors");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{\"a\":");
        std::fs::write(&path, bytes).unwrap();
        let err = open_err(&path);
        assert!(err.contains("truncated") && err.contains("1000"), "{err}");
    }

    #[test]
    fn refuses_a_truncated_data_section_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_f32(dir.path(), "good.safetensors", &[("w", &[4, 4], &[0.5; 16])], &[]);
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let err = open_err(&cut);
        assert!(err.contains("cut.safetensors") && err.contains("`w`") && err.contains("0..64"), "{err}");
        assert!(err.contains("54 bytes") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn refuses_sizes_that_do_not_match_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#;
        let err = open_err(&write_raw(dir.path(), "lie.safetensors", header, &[0; 20]));
        assert!(err.contains("`w`") && err.contains("24 bytes") && err.contains("20 bytes"), "{err}");
    }

    #[test]
    fn refuses_overflowing_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let header = format!(r#"{{"w":{{"dtype":"F32","shape":[{},{}],"data_offsets":[0,4]}}}}"#, u64::MAX / 2, 4);
        let err = open_err(&write_raw(dir.path(), "big.safetensors", &header, &[0; 4]));
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn refuses_overlapping_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
        let err = open_err(&write_raw(dir.path(), "overlap.safetensors", header, &[0; 24]));
        assert!(err.contains("`a` (bytes 0..16)") && err.contains("`b` (bytes 8..24)") && err.contains("overlap"), "{err}");
    }

    #[test]
    fn refuses_gaps_and_trailing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let err = open_err(&write_raw(dir.path(), "gap.safetensors", gap, &[0; 12]));
        assert!(err.contains("bytes 4..8") && err.contains("`b`"), "{err}");
        let tail = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let err = open_err(&write_raw(dir.path(), "tail.safetensors", tail, &[0; 10]));
        assert!(err.contains("6 bytes belong to no tensor"), "{err}");
    }

    #[test]
    fn refuses_unknown_and_unsupported_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}}"#;
        let err = open_err(&write_raw(dir.path(), "q7.safetensors", header, &[0; 1]));
        assert!(err.contains("`w`") && err.contains("unknown dtype `Q7`"), "{err}");
        let header = r#"{"m":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}"#;
        let err = open_err(&write_raw(dir.path(), "bool.safetensors", header, &[0; 1]));
        assert!(err.contains("`m`") && err.contains("BOOL") && err.contains("cannot load"), "{err}");
    }

    #[test]
    fn refuses_bad_json_and_bad_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_err(&write_raw(dir.path(), "j.safetensors", "{\"a\": ", &[]));
        assert!(err.contains("not valid JSON"), "{err}");
        let err = open_err(&write_raw(dir.path(), "m.safetensors", r#"{"__metadata__":{"k":3}}"#, &[]));
        assert!(err.contains("`k`") && err.contains("not a string"), "{err}");
        let err = open_err(&write_raw(dir.path(), "u.safetensors", "{\"\u{0}", &[]));
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn refuses_invalid_utf8_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin.safetensors");
        let mut bytes = 3u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[b'{', 0xff, b'}']);
        std::fs::write(&path, bytes).unwrap();
        assert!(open_err(&path).contains("UTF-8"));
    }

    #[test]
    fn empty_tensors_and_empty_files_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let f = SafetensorsFile::open(&write_raw(dir.path(), "e.safetensors", header, &[0; 4])).unwrap();
        assert_eq!(f.load("e", &Device::Cpu).unwrap().dims(), &[0, 3]);
        assert!(SafetensorsFile::open(&write_raw(dir.path(), "none.safetensors", "{}", &[])).unwrap().tensors().is_empty());
    }

    #[test]
    fn loads_half_precision_and_integers() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        for v in [1.5f32, -2.0] {
            data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        data.extend_from_slice(&7i64.to_le_bytes());
        let header = r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"i":{"dtype":"I64","shape":[1],"data_offsets":[4,12]}}"#;
        let f = SafetensorsFile::open(&write_raw(dir.path(), "h.safetensors", header, &data)).unwrap();
        let h = f.load("h", &Device::Cpu).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(h.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        assert_eq!(f.load("i", &Device::Cpu).unwrap().to_vec1::<i64>().unwrap(), vec![7]);
    }
}
