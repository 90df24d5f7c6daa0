//! The OpenAI Images API (`POST /v1/images/generations`, `GET /v1/models`), synchronous, on the
//! same queue and quota as the page. Any bearer key is accepted; it names an anonymous identity.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::signed_image_url;
use crate::app::AppState;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{self, Job, JobStatus, NewJob};
use crate::params::{JsonBody, parse_json, resolve, GenerationInput, MAX_SEED};

/// OpenAI's request body plus Stipple's extra fields. Fields OpenAI defines that do not apply
/// here (quality, style, background, ...) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ImagesRequest {
    prompt: Option<String>,
    model: Option<String>,
    n: Option<u64>,
    size: Option<String>,
    response_format: Option<String>,
    #[allow(dead_code)]
    user: Option<String>,
    negative_prompt: Option<String>,
    steps: Option<u64>,
    cfg_scale: Option<f64>,
    seed: Option<u64>,
    sampler: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Url,
    B64Json,
}

pub async fn generations(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>, headers: HeaderMap, JsonBody(body): JsonBody) -> ApiResult<Json<Value>> {
    state.metrics.openai_image_request();
    let req: ImagesRequest = parse_json(&body)?;
    let n = match req.n {
        None => 1,
        Some(n) if n >= 1 && n <= state.config.max_images_per_request as u64 => n as usize,
        Some(n) => return Err(ApiError::invalid("n", format!("must be between 1 and {}, got {n}", state.config.max_images_per_request))),
    };
    let format = match req.response_format.as_deref() {
        None | Some("url") => Format::Url,
        Some("b64_json") => Format::B64Json,
        Some(other) => return Err(ApiError::invalid("response_format", format!("must be `url` or `b64_json`, got `{other}`"))),
    };
    let (width, height) = match req.size.as_deref() {
        None | Some("auto") => (None, None),
        Some(s) => {
            let (w, h) = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?)))
                .ok_or_else(|| ApiError::invalid("size", format!("must be `WIDTHxHEIGHT` (like `512x512`) or `auto`, got `{s}`")))?;
            (Some(w), Some(h))
        }
    };
    // OpenAI's own model names mean "the default model" here, so unmodified clients work.
    let model = req.model.filter(|m| !(m.starts_with("dall-e") || m.starts_with("gpt-image")));
    let input = GenerationInput {
        prompt: req.prompt,
        negative_prompt: req.negative_prompt,
        model,
        width,
        height,
        steps: req.steps,
        cfg_scale: req.cfg_scale,
        seed: req.seed,
        sampler: req.sampler,
    };
    let size_param = |e: ApiError| match e.param.as_deref() {
        Some("width") | Some("height") => ApiError { param: Some("size".into()), ..e },
        _ => e,
    };
    let (params, cost) = resolve(&input, &state.models, &state.config).map_err(size_param)?;
    let owner = caller.owner();
    let new: Vec<NewJob> = (0..n)
        .map(|i| {
            let mut p = params.clone();
            p.seed = if input.seed.is_some() { (params.seed + i as u64) & MAX_SEED } else if i == 0 { params.seed } else { crate::params::random_seed() };
            NewJob { owner: owner.clone(), idempotency_key: None, params: p, cost }
        })
        .collect();
    let queued = jobs::enqueue(&state.db, &caller.payer(&state), new, now_ms()).await?;
    for _ in &queued {
        state.queue_signal.notify_one();
    }
    let mut guard = CancelOnDrop { state: state.clone(), owner: owner.clone(), ids: queued.iter().map(|j| j.id.clone()).collect() };
    let deadline = Instant::now() + Duration::from_secs(state.config.sync_timeout_secs);
    let mut data = Vec::with_capacity(queued.len());
    for job in &queued {
        let done = wait_terminal(&state, &job.id, deadline).await?;
        if done.status != JobStatus::Succeeded {
            let message = done.error.clone().unwrap_or_else(|| done.status.as_str().into());
            return Err(ApiError { code: Some("generation_failed"), ..ApiError::unavailable(format!("generation failed: {message}")) });
        }
        let image_id = done.image_id.clone().ok_or_else(|| ApiError::internal("reading a result", "no image"))?;
        data.push(match format {
            Format::B64Json => {
                let (blob_key,): (String,) = sqlx::query_as("SELECT blob_key FROM images WHERE id = $1").bind(&image_id).fetch_one(&state.db).await?;
                let bytes = state.blobs.get(&blob_key).await?;
                json!({"b64_json": STANDARD.encode(&bytes), "revised_prompt": done.params.prompt})
            }
            Format::Url => {
                let expires = now_ms() + state.config.retention_secs as i64 * 1000;
                json!({"url": signed_image_url(&state, &headers, &image_id, expires), "revised_prompt": done.params.prompt})
            }
        });
    }
    guard.ids.clear();
    Ok(Json(json!({"created": now_ms() / 1000, "data": data})))
}

/// Wait until a job ends (events from this process's workers, else polling the store).
async fn wait_terminal(state: &AppState, id: &str, deadline: Instant) -> ApiResult<Job> {
    let result = wait_terminal_inner(state, id, deadline).await;
    state.hub.release(id, 0);
    result
}

async fn wait_terminal_inner(state: &AppState, id: &str, deadline: Instant) -> ApiResult<Job> {
    let mut rx = state.hub.subscribe(id);
    let mut stopping = state.stopping.subscribe();
    loop {
        let job = jobs::get(&state.db, id).await?.ok_or_else(|| ApiError::internal("waiting for a result", "job vanished"))?;
        if job.status.is_terminal() {
            return Ok(job);
        }
        if Instant::now() >= deadline {
            return Err(ApiError { code: Some("timeout"), ..ApiError::unavailable("the images took too long; the queue is busy, try again later") });
        }
        tokio::select! {
            r = rx.recv() => if r.is_err() { rx = state.hub.subscribe(id); },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopping.changed() => return Err(ApiError::unavailable("the server is restarting; try again shortly")),
        }
    }
}

/// Cancels the request's unfinished jobs when the client goes away before the answer.
struct CancelOnDrop {
    state: Arc<AppState>,
    owner: String,
    ids: Vec<String>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let (state, owner, ids) = (self.state.clone(), self.owner.clone(), std::mem::take(&mut self.ids));
        tokio::spawn(async move {
            for id in ids {
                if let Ok(job) = jobs::cancel(&state.db, &id, &owner, now_ms()).await {
                    if job.status == JobStatus::Running {
                        state.hub.cancel_local(&id);
                    }
                }
            }
        });
    }
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let created = 1_767_225_600; // 2026-01-01: the API wants a creation time; models have none.
    let data: Vec<Value> =
        state.models.infos().iter().map(|m| json!({"id": m.name, "object": "model", "created": created, "owned_by": "stipple"})).collect();
    Json(json!({"object": "list", "data": data}))
}
