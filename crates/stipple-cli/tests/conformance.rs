//! `stipple conformance` on the repository's copy of the diffusers reference vectors.

mod common;
use common::*;

/// Every case of the manifest matches diffusers within its tolerance: the Stable Diffusion family,
/// the schedulers, the diffusion transformers and T5.
#[test]
fn every_reference_case_passes() {
    let out = stipple(&["conformance", vectors().to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("33 passed, 0 failed"), "{t}");
}

/// A kind the engine does not implement fails (it is never skipped), and the exit code says so.
#[test]
fn unsupported_cases_fail_and_set_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"{"format_version": 1, "cases": [{"id": "x", "kind": "no_such_kind", "model": null,
        "files": {"tensors": "cases/x.safetensors"}, "compare": ["y"], "tolerance": {"abs": 1e-6, "rel": 0}}]}"#;
    std::fs::write(dir.path().join("manifest.json"), manifest).unwrap();
    let out = stipple(&["conformance", dir.path().to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("0 passed, 1 failed"), "{t}");
}

#[test]
fn other_format_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), r#"{"format_version": 2, "cases": []}"#).unwrap();
    let out = stipple(&["conformance", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("format_version 2"), "{}", text(&out));
}
