//! JSON as diffusers writes it: Python's `json` emits bare `Infinity`, `-Infinity` and `NaN`,
//! which strict parsers reject.

/// Replace bare non-finite number tokens (outside strings) with quoted strings, so a strict JSON
/// parser reads the file; fields that need the value parse the string.
pub fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            rest = &rest[1..];
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push('"');
            out.push_str(t);
            out.push('"');
            rest = &rest[t.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_only_bare_tokens() {
        let s = super::quote_non_finite(r#"{"a": -Infinity, "b": "NaN in a string", "c": [Infinity, NaN]}"#);
        assert_eq!(s, r#"{"a": "-Infinity", "b": "NaN in a string", "c": ["Infinity", "NaN"]}"#);
    }
}
