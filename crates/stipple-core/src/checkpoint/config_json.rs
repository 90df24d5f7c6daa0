//! Reading model configs as diffusers writes them.
//!
//! Python's `json` module writes non-finite floats as the bare tokens `NaN`, `Infinity` and
//! `-Infinity`, which are not JSON; diffusers' `scheduler_config.json` files contain them (for
//! instance `"lambda_min_clipped": -Infinity`). Before parsing, such tokens outside strings are
//! replaced by the strings `"NaN"`, `"Infinity"`, `"-Infinity"` — the convention the reference
//! vectors' manifest uses too — and [`number`] reads a value written either way.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// Read and parse a config file, accepting Python's non-finite tokens.
pub fn read_config(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::missing_file(path, "the model's config file is not there"),
        _ => Error::io(format!("reading {}", path.display()), e),
    })?;
    parse_config(&text).map_err(|reason| Error::invalid_file(path, reason))
}

/// Parse config text, accepting Python's non-finite tokens; the error says where the JSON is broken.
pub fn parse_config(text: &str) -> std::result::Result<Value, String> {
    serde_json::from_str(&quote_non_finite(text)).map_err(|e| format!("not valid JSON: {e}"))
}

/// Replace the bare tokens `NaN`, `Infinity` and `-Infinity` outside strings by quoted strings.
pub fn quote_non_finite(text: &str) -> String {
    const TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = TOKENS.iter().find(|t| rest.starts_with(**t)) {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A number from a config value: a JSON number, or one of the strings `"NaN"`, `"Infinity"`,
/// `"-Infinity"` that [`quote_non_finite`] produces.
pub fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_python_non_finite_tokens_outside_strings_only() {
        let text = r#"{"lambda_min_clipped": -Infinity, "s": "NaN and -Infinity \" Infinity", "l": [Infinity, NaN, 1.5]}"#;
        let v = parse_config(text).unwrap();
        assert_eq!(number(&v["lambda_min_clipped"]), Some(f64::NEG_INFINITY));
        assert_eq!(v["s"], "NaN and -Infinity \" Infinity");
        assert_eq!(number(&v["l"][0]), Some(f64::INFINITY));
        assert!(number(&v["l"][1]).unwrap().is_nan());
        assert_eq!(number(&v["l"][2]), Some(1.5));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{\"a\": }").unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("not valid JSON"), "{err}");
        let err = read_config(&dir.path().join("none.json")).unwrap_err().to_string();
        assert!(err.contains("missing file") && err.contains("none.json"), "{err}");
    }

    #[test]
    fn reads_the_reference_scheduler_config() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/models/sd_tiny");
        let v = read_config(&root.join("scheduler/scheduler_config.json")).unwrap();
        assert_eq!(v["_class_name"], "DDIMScheduler");
    }
}
