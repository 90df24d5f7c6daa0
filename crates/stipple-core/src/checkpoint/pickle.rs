//! Refusing PyTorch pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`).
//!
//! Unpickling runs whatever code the file asks for, so a downloaded pickle is a program, not
//! data. Stipple never opens one; it recognises them by extension and, for files renamed to
//! `.safetensors`, by content: `torch.save` writes a zip archive (`PK\x03\x04`), older versions a
//! bare pickle stream (`0x80` followed by the protocol number).

use std::path::Path;

use crate::Error;

/// File extensions of pickle-based checkpoints.
const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

/// Whether `path` has a pickle checkpoint's extension.
pub fn has_pickle_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.iter().any(|p| p.eq_ignore_ascii_case(e)))
}

/// Whether the first bytes of a file are a zip archive or a pickle stream (protocol 2 to 5).
pub fn looks_like_pickle(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || matches!(head, [0x80, 2..=5, ..])
}

/// The error for a pickle checkpoint; `why` says how it was recognised.
pub fn refusal(path: &Path, why: &str) -> Error {
    Error::invalid_file(
        path,
        format!(
            "this is a PyTorch pickle checkpoint ({why}). Stipple does not load pickles: loading one can run \
             arbitrary code hidden in the file. Download the .safetensors version of the model (most repositories \
             publish one), or convert this file once, in an environment you trust, to .safetensors (for example \
             with diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py --to_safetensors, or the \
             safetensors project's convert script)"
        ),
    )
}

/// Refuse `path` if its extension is a pickle checkpoint's.
pub fn refuse_by_extension(path: &Path) -> crate::Result<()> {
    if has_pickle_extension(path) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        return Err(refusal(path, &format!("`.{ext}` extension")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SafetensorsFile;

    #[test]
    fn refuses_pickles_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["model.ckpt", "model.PT", "weights.pth", "pytorch_model.bin"] {
            let path = dir.path().join(name);
            // The extension alone is enough: the file need not exist or be a pickle.
            let err = SafetensorsFile::open(&path).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("arbitrary code") && err.contains(".safetensors"), "{err}");
        }
        assert!(!has_pickle_extension(Path::new("model.safetensors")));
    }

    #[test]
    fn refuses_pickles_by_content() {
        let dir = tempfile::tempdir().unwrap();
        // A torch.save zip archive and a legacy protocol-2 pickle, both renamed to .safetensors.
        let zip = dir.path().join("zip.safetensors");
        std::fs::write(&zip, b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl").unwrap();
        let legacy = dir.path().join("legacy.safetensors");
        std::fs::write(&legacy, b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.").unwrap();
        for path in [zip, legacy] {
            let err = SafetensorsFile::open(&path).unwrap_err().to_string();
            assert!(err.contains("pickle") && err.contains("arbitrary code"), "{err}");
        }
    }

    #[test]
    fn a_header_length_that_starts_with_0x80_is_not_a_pickle() {
        // Header length 0x280 = 640 bytes begins with the bytes 0x80 0x02, like a pickle stream.
        let dir = tempfile::tempdir().unwrap();
        let mut header = String::from("{}");
        header.push_str(&" ".repeat(640 - 2));
        let path = crate::checkpoint::safetensors_file::test_files::write_raw(dir.path(), "ok.safetensors", &header, &[]);
        assert_eq!(std::fs::read(&path).unwrap()[..2], [0x80, 0x02]);
        SafetensorsFile::open(&path).unwrap();
    }
}
