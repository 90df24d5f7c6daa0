//! Generation requests: parsing JSON bodies (errors name the field), bounding every input, and
//! resolving defaults into the exact parameters a job runs with.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stipple_core::pipeline::Request;
use stipple_core::sampler::SamplerKind;

use crate::config::Config;
use crate::error::{from_engine, ApiError, ApiResult};
use crate::models::{ModelEntry, ModelRegistry};
use crate::pricing::{cost, PriceInputs};

/// Largest seed accepted: integers above 2^53 do not survive JavaScript's numbers.
pub const MAX_SEED: u64 = (1 << 53) - 1;
/// Largest CFG scale accepted (beyond this images are saturated noise).
pub const MAX_CFG: f64 = 30.0;

/// The body of `POST /api/generations` and `POST /api/price`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationInput {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub model: Option<String>,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub steps: Option<u64>,
    pub cfg_scale: Option<f64>,
    pub seed: Option<u64>,
    pub sampler: Option<String>,
}

/// Everything a job runs with, defaults filled in and the seed chosen; stored with the job and
/// the image, and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub cfg_scale: f32,
    pub seed: u64,
    pub sampler: String,
}

impl GenerationParams {
    pub fn engine_request(&self) -> ApiResult<Request> {
        Ok(Request {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.parse::<SamplerKind>().map_err(from_engine)?,
            eta: 0.0,
            init: None,
        })
    }
}

/// A request body as bytes, with a JSON error (naming `body`) when it is too large or unreadable.
pub struct JsonBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => Ok(JsonBody(b)),
            Err(e) => Err(ApiError { status: e.status(), ..ApiError::invalid("body", e.body_text()) }),
        }
    }
}

/// Parse a JSON body into `T`; invalid UTF-8, invalid JSON and wrong types are 400s that name
/// the field (or `body` when no field can be named).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if let Err(e) = std::str::from_utf8(body) {
        let at = e.valid_up_to();
        let param = last_key_before(&body[..at]).unwrap_or_else(|| "body".into());
        return Err(ApiError::invalid(param.clone(), format!("`{param}` is not valid UTF-8 (bad byte at offset {at} of the body)")));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("body", "the request body is empty; send a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." || path.starts_with('?') {
            let unknown = inner.to_string();
            // Unknown fields are reported at the top level; name them.
            let param = unknown.split('`').nth(1).filter(|_| unknown.starts_with("unknown field")).unwrap_or("body");
            ApiError::invalid(param, format!("invalid request body: {unknown}"))
        } else {
            ApiError::invalid(path.clone(), format!("`{path}` is invalid: {inner}"))
        }
    })
}

/// The last `"key":` in a JSON prefix: the field a bad byte sits in.
fn last_key_before(prefix: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(prefix).ok()?;
    let colon = text.rfind(':')?;
    let before = text[..colon].trim_end().strip_suffix('"')?;
    let start = before.rfind('"')?;
    Some(before[start + 1..].to_string()).filter(|k| !k.is_empty() && k.len() < 64)
}

/// Check every field against the server's bounds and the model, fill in defaults.
pub fn resolve(input: &GenerationInput, models: &ModelRegistry, config: &Config) -> ApiResult<(GenerationParams, i64)> {
    let prompt = input.prompt.clone().ok_or_else(|| ApiError::invalid("prompt", "is required"))?;
    check_text("prompt", &prompt, config.max_prompt_chars)?;
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    let negative_prompt = input.negative_prompt.clone().unwrap_or_default();
    check_text("negative_prompt", &negative_prompt, config.max_prompt_chars)?;
    let model: &ModelEntry = match &input.model {
        Some(name) => models
            .get(name)
            .ok_or_else(|| ApiError::invalid("model", format!("`{name}` is not a model here; choose one of {}", models.names())))?,
        None => models.default_model(),
    };
    let d = model.defaults;
    let width = side("width", input.width, d.width, model.size_multiple, config.max_side)?;
    let height = side("height", input.height, d.height, model.size_multiple, config.max_side)?;
    let steps = match input.steps {
        None => d.steps.min(config.max_steps),
        Some(s) if s >= 1 && s <= config.max_steps as u64 => s as usize,
        Some(s) => return Err(ApiError::invalid("steps", format!("must be between 1 and {}, got {s}", config.max_steps))),
    };
    let cfg_scale = match input.cfg_scale {
        None => d.cfg_scale,
        Some(c) if c.is_finite() && (0.0..=MAX_CFG).contains(&c) => c as f32,
        Some(c) => return Err(ApiError::invalid("cfg_scale", format!("must be a number between 0 and {MAX_CFG}, got {c}"))),
    };
    let seed = match input.seed {
        None => random_seed(),
        Some(s) if s <= MAX_SEED => s,
        Some(s) => return Err(ApiError::invalid("seed", format!("must be between 0 and {MAX_SEED}, got {s}"))),
    };
    let sampler = match &input.sampler {
        None => d.sampler,
        Some(s) => s.parse::<SamplerKind>().map_err(from_engine)?,
    };
    let params = GenerationParams {
        prompt,
        negative_prompt,
        model: model.name.clone(),
        width,
        height,
        steps,
        cfg_scale,
        seed,
        sampler: sampler.name().to_string(),
    };
    // The engine's own checks (model-specific constraints) with the same field names.
    model.loaded.pipeline.validate(&params.engine_request()?).map_err(from_engine)?;
    let price = cost(PriceInputs {
        cost_factor: model.cost_factor,
        width,
        height,
        steps,
        default_width: d.width,
        default_height: d.height,
        default_steps: d.steps,
    });
    Ok((params, price))
}

fn check_text(field: &str, text: &str, max_chars: usize) -> ApiResult<()> {
    // Count cheaply first: a 1 MB body must not cost a full char walk per check.
    if text.len() > max_chars * 4 || text.chars().count() > max_chars {
        return Err(ApiError::invalid(field, format!("is too long: at most {max_chars} characters")));
    }
    if text.contains('\0') {
        return Err(ApiError::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

fn side(field: &str, value: Option<u64>, default: usize, multiple: usize, max: usize) -> ApiResult<usize> {
    let v = match value {
        None => return Ok(default),
        Some(v) => v,
    };
    let step = multiple.max(8);
    if v < step as u64 || v > max as u64 {
        return Err(ApiError::invalid(field, format!("must be between {step} and {max} pixels, got {v}")));
    }
    if v % 8 != 0 {
        return Err(ApiError::invalid(field, format!("must be a multiple of 8, got {v}")));
    }
    if v % multiple as u64 != 0 {
        return Err(ApiError::invalid(field, format!("must be a multiple of {multiple} for this model, got {v}")));
    }
    Ok(v as usize)
}

/// A fresh 32-bit seed (torch seeds are used through their low 32 bits in the reference tools).
pub fn random_seed() -> u64 {
    rand::random::<u32>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<GenerationInput>(br#"{"prompt": "x", "steps": "many"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("steps"));
        let e = parse_json::<GenerationInput>(br#"{"prompt": "x", "cfg_scale": NaN}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("cfg_scale"), "{}", e.message);
        let e = parse_json::<GenerationInput>(br#"{"prompt": "x", "width": -64}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("width"));
        let e = parse_json::<GenerationInput>(br#"{"prompt": "x", "colour": 1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("colour"), "{}", e.message);
        let e = parse_json::<GenerationInput>(b"{\"prompt\": \"\xff\xfe\"}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = parse_json::<GenerationInput>(b"{not json").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("body"));
        let e = parse_json::<GenerationInput>(b"").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("body"));
    }

    #[test]
    fn sides_are_bounded_and_aligned() {
        assert_eq!(side("width", None, 128, 8, 1024).unwrap(), 128);
        assert_eq!(side("width", Some(64), 128, 8, 1024).unwrap(), 64);
        assert!(side("width", Some(100), 128, 8, 1024).unwrap_err().message.contains("multiple of 8"));
        assert!(side("width", Some(100_000), 128, 8, 1024).unwrap_err().message.contains("between"));
        assert!(side("height", Some(0), 128, 8, 1024).unwrap_err().param.as_deref() == Some("height"));
        assert!(side("width", Some(72), 128, 16, 1024).unwrap_err().message.contains("multiple of 16"));
    }

    #[test]
    fn long_prompts_are_refused_by_characters_not_bytes() {
        assert!(check_text("prompt", &"é".repeat(2000), 2000).is_ok());
        assert!(check_text("prompt", &"é".repeat(2001), 2000).is_err());
        assert!(check_text("prompt", &"x".repeat(1 << 20), 2000).is_err());
    }
}
