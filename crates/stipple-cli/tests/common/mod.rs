//! Helpers shared by the CLI's end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository's root (tests run from the crate folder).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn vectors() -> PathBuf {
    repo().join("testdata/vectors")
}

/// The whole-pipeline reference runs of the diffusion transformers (testdata/pipelines/README.md).
pub fn pipelines() -> PathBuf {
    repo().join("testdata/pipelines")
}

/// Run the `stipple` binary built for this test run.
pub fn stipple(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stipple")).args(args).output().expect("run stipple")
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Decode a PNG: (width, height, RGB bytes, text chunks).
pub fn read_png(path: &std::path::Path) -> (u32, u32, Vec<u8>, Vec<(String, String)>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("open png")));
    let mut reader = dec.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    let texts = reader
        .info()
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap_or_default()))
        .collect();
    (info.width, info.height, buf, texts)
}

/// The prompt of the whole-pipeline reference runs in testdata/pipelines.
pub const PIPELINE_PROMPT: &str = "a painting of a squirrel eating a burger";

/// `stipple generate PIPELINE_PROMPT --model model -W width -H height args...`: the PNG's RGB
/// pixels and text chunks (asserting success and the size).
pub fn generate_pixels(model: &std::path::Path, (width, height): (u32, u32), args: &[&str]) -> (Vec<u8>, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("out.png");
    let (w_arg, h_arg) = (width.to_string(), height.to_string());
    let mut all = vec!["generate", PIPELINE_PROMPT, "--model", model.to_str().unwrap()];
    all.extend_from_slice(&["-W", &w_arg, "-H", &h_arg, "-o", png.to_str().unwrap()]);
    all.extend_from_slice(args);
    let out = stipple(&all);
    assert!(out.status.success(), "{}", text(&out));
    let (w, h, pixels, texts) = read_png(&png);
    assert_eq!((w, h), (width, height));
    (pixels, texts)
}
