//! The JSON API of the page: generations (queue, status, events, cancel), price, models, me,
//! accounts, history, images and share links.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::app::AppState;
use crate::auth::{self, Caller, Credentials};
use crate::clock::{now_ms, rfc3339};
use crate::crypto::random_token;
use crate::error::{ApiError, ApiResult};
use crate::events::JobEvent;
use crate::jobs::{self, Job, JobStatus, NewJob};
use crate::params::{JsonBody, parse_json, resolve, GenerationInput};
use crate::quota;

type St = State<Arc<AppState>>;

// ---------------------------------------------------------------- generations

pub async fn create_generation(State(state): St, Extension(caller): Extension<Caller>, headers: HeaderMap, JsonBody(body): JsonBody) -> ApiResult<Response> {
    let input: GenerationInput = parse_json(&body)?;
    let (params, cost) = resolve(&input, &state.models, &state.config)?;
    let idempotency_key = idempotency_key(&headers)?;
    let requested = params.clone();
    let job = NewJob { owner: caller.owner(), idempotency_key, params, cost };
    let job = jobs::enqueue(&state.db, &caller.payer(&state), vec![job], now_ms()).await?.remove(0);
    // A key reused for a different request is a client bug, not a retry (the seed differs
    // between retries when it was left to the server).
    let seed_given = input.seed.is_some();
    let expected = crate::params::GenerationParams { seed: if seed_given { requested.seed } else { job.params.seed }, ..requested };
    if job.params != expected {
        return Err(ApiError::conflict("this Idempotency-Key was used for a different request; use a new key").with_param("Idempotency-Key"));
    }
    state.queue_signal.notify_one();
    let position = jobs::queue_position(&state.db, &job).await?;
    let body = json!({"id": job.id, "status": job.status, "cost": job.cost, "queue_position": position});
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/generations/{}", job.id)) {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255);
    key.map(|k| Some(k.to_string()))
        .ok_or_else(|| ApiError::invalid("Idempotency-Key", "header must be 1 to 255 visible ASCII characters"))
}

pub async fn price(State(state): St, JsonBody(body): JsonBody) -> ApiResult<Json<Value>> {
    let input: GenerationInput = parse_json(&body)?;
    let (_, cost) = resolve(&input, &state.models, &state.config)?;
    Ok(Json(json!({"cost": cost})))
}

/// The public view of a job.
pub async fn generation_view(state: &AppState, job: &Job) -> ApiResult<Value> {
    let (mut image_url, mut expires_at) = (None, None);
    if let Some(image_id) = &job.image_id {
        let row: Option<(Option<i64>,)> = sqlx::query_as("SELECT expires_at FROM images WHERE id = $1").bind(image_id).fetch_optional(&state.db).await?;
        if let Some((exp,)) = row {
            image_url = Some(format!("/api/images/{image_id}/png"));
            expires_at = exp.map(rfc3339);
        }
    }
    let position = jobs::queue_position(&state.db, job).await?;
    Ok(json!({
        "id": job.id,
        "status": job.status,
        "progress": {"step": job.step, "steps": job.steps},
        "params": job.params,
        "cost": job.cost,
        "queue_position": position,
        "image_id": job.image_id.as_ref().filter(|_| image_url.is_some()),
        "image_url": image_url,
        "expires_at": expires_at,
        "error": job.error,
        "created_at": rfc3339(job.created_at),
    }))
}

pub async fn get_generation(State(state): St, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = jobs::get_owned(&state.db, &id, &caller.owner()).await?;
    Ok(Json(generation_view(&state, &job).await?))
}

pub async fn cancel_generation(State(state): St, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = jobs::cancel(&state.db, &id, &caller.owner(), now_ms()).await?;
    state.hub.cancel_local(&id);
    if job.status == JobStatus::Canceled {
        state.hub.finish(&id);
    }
    Ok(Json(generation_view(&state, &job).await?))
}

/// Server-Sent Events: `progress` per step (with a preview data URL every few steps), then one
/// `done` (succeeded: the generation's view) or `error` (failed or canceled).
pub async fn generation_events(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let owner = caller.owner();
    jobs::get_owned(&state.db, &id, &owner).await?;
    let rx = state.hub.subscribe(&id);
    let stopping = state.stopping.subscribe();
    let watch = EventWatch { state, id, rx, stopping, last_step: 0, ended: false };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        let ev = w.next().await?;
        Some((Ok(ev), w))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct EventWatch {
    state: Arc<AppState>,
    id: String,
    rx: tokio::sync::broadcast::Receiver<JobEvent>,
    /// The process is stopping: end the stream (the browser reconnects to the next one).
    stopping: tokio::sync::watch::Receiver<bool>,
    last_step: i64,
    ended: bool,
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        // Our own receiver is still alive here.
        self.state.hub.release(&self.id, 1);
    }
}

impl EventWatch {
    async fn next(&mut self) -> Option<Event> {
        if self.ended || *self.stopping.borrow() {
            return None;
        }
        loop {
            // The database is the truth: read it first (and whenever the hub is quiet), so a
            // job that ended, or is run by another process, is still reported.
            let job = match jobs::get(&self.state.db, &self.id).await {
                Ok(Some(job)) => job,
                Ok(None) => return self.end(Event::default().event("error").data(json!({"status": "failed", "message": "the generation no longer exists"}).to_string())),
                Err(e) => {
                    tracing::warn!("event stream: {e}");
                    return self.end(Event::default().event("error").data(json!({"status": "failed", "message": "internal error"}).to_string()));
                }
            };
            if job.status.is_terminal() {
                return Some(self.final_event(&job).await);
            }
            if job.step > self.last_step && job.status == JobStatus::Running {
                self.last_step = job.step;
                return Some(progress_event(job.step as usize, job.steps as usize, None));
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Ok(JobEvent::Progress { step, steps, preview }) => {
                        if (step as i64) <= self.last_step { continue; }
                        self.last_step = step as i64;
                        return Some(progress_event(step, steps, preview.as_deref().map(String::as_str)));
                    }
                    Ok(JobEvent::Finished) | Err(RecvError::Closed) => {
                        self.rx = self.state.hub.subscribe(&self.id);
                        // Give the worker's final write a moment, then re-read.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(RecvError::Lagged(_)) => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.stopping.changed() => return None,
            }
        }
    }

    fn end(&mut self, ev: Event) -> Option<Event> {
        self.ended = true;
        Some(ev)
    }

    async fn final_event(&mut self, job: &Job) -> Event {
        self.ended = true;
        if job.status == JobStatus::Succeeded {
            let view = generation_view(&self.state, job).await.unwrap_or_else(|e| e.body());
            Event::default().event("done").data(view.to_string())
        } else {
            let message = job.error.clone().unwrap_or_else(|| job.status.as_str().to_string());
            Event::default().event("error").data(json!({"id": job.id, "status": job.status, "message": message}).to_string())
        }
    }
}

fn progress_event(step: usize, steps: usize, preview: Option<&str>) -> Event {
    Event::default().event("progress").data(json!({"step": step, "steps": steps, "preview": preview}).to_string())
}

// ---------------------------------------------------------------- models, me

pub async fn models(State(state): St) -> Json<Value> {
    let samplers: Vec<&str> = stipple_core::sampler::SamplerKind::ALL.iter().map(|k| k.name()).collect();
    let c = &state.config;
    Json(json!({
        "models": state.models.infos(),
        "samplers": samplers,
        "limits": {"max_side": c.max_side, "max_steps": c.max_steps, "max_prompt_chars": c.max_prompt_chars, "max_cfg_scale": crate::params::MAX_CFG,
                   "retention_secs": c.retention_secs},
    }))
}

pub async fn me(State(state): St, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    let balance = quota::balance(&state.db, &caller.payer(&state), now_ms()).await?;
    Ok(Json(json!({
        "account": caller.account.as_ref().map(|a| json!({"id": a.id, "email": a.email})),
        "tokens": balance,
        "csrf_token": caller.csrf_token(&state),
        "checkout_url": state.config.checkout_url.as_ref().zip(caller.account.as_ref()).map(|(url, a)| {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}client_reference_id={}", a.id)
        }),
    })))
}

// ---------------------------------------------------------------- accounts

pub async fn signup(State(state): St, Extension(caller): Extension<Caller>, JsonBody(body): JsonBody) -> ApiResult<Response> {
    let (email, password) = auth::check_credentials(&parse_json::<Credentials>(&body)?)?;
    let hash = auth::hash_password(password).await?;
    let id = format!("u_{}", random_token(12));
    let now = now_ms();
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO accounts (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING",
    )
    .bind(&id)
    .bind(&email)
    .bind(&hash)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::conflict("an account with this email exists; log in instead").with_param("email"));
    }
    // Each account brings its own daily allowance: bound how many one address can make.
    if auth::count_signup(&mut tx, caller.addr, now).await? > state.config.max_signups_per_address_per_day {
        drop(tx); // the account is not created
        let wait = (crate::clock::utc_day(now) + 1) * crate::clock::DAY_MS - now;
        return Err(ApiError { code: Some("too_many_signups"), ..ApiError::rate_limited((wait / 1000).max(1) as u64) }
            .with_message("too many accounts were made from this address today; log in, or try again tomorrow"));
    }
    tx.commit().await?;
    session_response(&state, &caller, StatusCode::CREATED, &id, &email).await
}

pub async fn login(State(state): St, Extension(caller): Extension<Caller>, JsonBody(body): JsonBody) -> ApiResult<Response> {
    let creds: Credentials = parse_json(&body)?;
    let email = creds.email.as_deref().map(|e| e.trim().to_lowercase()).unwrap_or_default();
    let row: Option<(String, String)> = sqlx::query_as("SELECT id, password_hash FROM accounts WHERE email = $1")
        .bind(&email)
        .fetch_optional(&state.db)
        .await?;
    let (id, stored) = match row {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    let ok = auth::verify_password(creds.password.unwrap_or_default(), stored).await?;
    match (ok, id) {
        (true, Some(id)) => session_response(&state, &caller, StatusCode::OK, &id, &email).await,
        _ => Err(ApiError::unauthorized("wrong email or password").with_param("password")),
    }
}

async fn session_response(state: &AppState, caller: &Caller, status: StatusCode, account_id: &str, email: &str) -> ApiResult<Response> {
    let token = auth::create_session(state, account_id).await?;
    if caller.account.is_none() {
        adopt_anonymous_results(state, &caller.owner(), &format!("acct:{account_id}")).await?;
    }
    let csrf = state.signer.sign("csrf", &token);
    let mut resp = (status, Json(json!({"account": {"id": account_id, "email": email}, "csrf_token": csrf}))).into_response();
    resp.headers_mut().append(SET_COOKIE, auth::session_cookie(state, &token));
    Ok(resp)
}

/// What a visitor made before signing in becomes the account's (their history, Save on the
/// result still on screen). Their tokens stay charged to the anonymous allowance that paid.
async fn adopt_anonymous_results(state: &AppState, anon: &str, account: &str) -> sqlx::Result<()> {
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE images SET owner = $2 WHERE owner = $1").bind(anon).bind(account).execute(&mut *tx).await?;
    // Jobs keep their idempotency keys unless the account already used the same key.
    sqlx::query(
        "UPDATE jobs SET owner = $2 WHERE owner = $1 AND (idempotency_key IS NULL OR NOT EXISTS \
         (SELECT 1 FROM jobs j2 WHERE j2.owner = $2 AND j2.idempotency_key = jobs.idempotency_key))",
    )
    .bind(anon)
    .bind(account)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

pub async fn logout(State(state): St, headers: HeaderMap) -> ApiResult<Response> {
    auth::end_session(&state, &headers).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().append(SET_COOKIE, auth::clear_session_cookie(&state));
    Ok(resp)
}

// ---------------------------------------------------------------- images

struct ImageRow {
    id: String,
    owner: String,
    blob_key: String,
    params: Value,
    saved: bool,
    share_token: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
}

type ImageTuple = (String, String, String, String, i64, Option<String>, i64, Option<i64>);
const IMAGE_COLUMNS: &str = "id, owner, blob_key, params, saved, share_token, created_at, expires_at";

fn image_from(t: ImageTuple) -> ImageRow {
    ImageRow {
        id: t.0,
        owner: t.1,
        blob_key: t.2,
        params: serde_json::from_str(&t.3).unwrap_or(Value::Null),
        saved: t.4 != 0,
        share_token: t.5,
        created_at: t.6,
        expires_at: t.7,
    }
}

impl ImageRow {
    fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

async fn image_by(state: &AppState, column: &str, value: &str) -> sqlx::Result<Option<ImageRow>> {
    let row: Option<ImageTuple> = sqlx::query_as(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE {column} = $1"))
        .bind(value)
        .fetch_optional(&state.db)
        .await?;
    Ok(row.map(image_from))
}

/// An image of the caller, or 404.
async fn owned_image(state: &AppState, caller: &Caller, id: &str) -> ApiResult<ImageRow> {
    match image_by(state, "id", id).await? {
        Some(img) if img.owner == caller.owner() && img.live(now_ms()) => Ok(img),
        _ => Err(ApiError::not_found("image")),
    }
}

fn share_url(state: &AppState, headers: &HeaderMap, token: &str) -> String {
    format!("{}/s/{token}", state.base_url(headers))
}

fn image_json(state: &AppState, headers: &HeaderMap, img: &ImageRow) -> Value {
    json!({
        "id": img.id,
        "image_url": format!("/api/images/{}/png", img.id),
        "params": img.params,
        "saved": img.saved,
        "share_url": img.share_token.as_deref().map(|t| share_url(state, headers, t)),
        "created_at": rfc3339(img.created_at),
        "expires_at": img.expires_at.map(rfc3339),
    })
}

#[derive(Deserialize)]
pub struct ImageQuery {
    expires: Option<i64>,
    sig: Option<String>,
}

/// The PNG of an image: for its owner, or for anyone holding a signed URL (OpenAI `url` results).
pub async fn image_png(State(state): St, Extension(caller): Extension<Caller>, Path(id): Path<String>, Query(q): Query<ImageQuery>) -> ApiResult<Response> {
    let now = now_ms();
    let img = match (q.expires, q.sig) {
        (Some(exp), Some(sig)) if exp > now && state.signer.verify("image", &format!("{id}|{exp}"), &sig) => {
            image_by(&state, "id", &id).await?.filter(|i| i.live(now)).ok_or_else(|| ApiError::not_found("image"))?
        }
        _ => owned_image(&state, &caller, &id).await?,
    };
    png_response(&state, &img, "private, max-age=3600").await
}

async fn png_response(state: &AppState, img: &ImageRow, cache: &'static str) -> ApiResult<Response> {
    let bytes = state.blobs.get(&img.blob_key).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => ApiError::not_found("image"),
        other => other.into(),
    })?;
    let seed = img.params.get("seed").and_then(Value::as_u64).unwrap_or(0);
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"stipple-{seed}.png\"")) {
        h.insert("content-disposition", v);
    }
    Ok(resp)
}

/// A URL anyone can fetch until `expires` (milliseconds), for API clients without cookies.
pub fn signed_image_url(state: &AppState, headers: &HeaderMap, image_id: &str, expires: i64) -> String {
    let sig = state.signer.sign("image", &format!("{image_id}|{expires}"));
    format!("{}/api/images/{image_id}/png?expires={expires}&sig={sig}", state.base_url(headers))
}

pub async fn save_image(State(state): St, Extension(caller): Extension<Caller>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if caller.account.is_none() {
        return Err(ApiError::unauthorized("sign in to save images (unsaved results are deleted after a while)"));
    }
    owned_image(&state, &caller, &id).await?;
    sqlx::query("UPDATE images SET saved = 1, expires_at = NULL WHERE id = $1 AND owner = $2")
        .bind(&id)
        .bind(caller.owner())
        .execute(&state.db)
        .await?;
    let img = owned_image(&state, &caller, &id).await?;
    Ok(Json(image_json(&state, &headers, &img)))
}

pub async fn delete_image(State(state): St, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let img = owned_image(&state, &caller, &id).await?;
    state.blobs.delete(&img.blob_key).await?;
    sqlx::query("DELETE FROM images WHERE id = $1 AND owner = $2").bind(&id).bind(caller.owner()).execute(&state.db).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn share_image(State(state): St, Extension(caller): Extension<Caller>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let img = owned_image(&state, &caller, &id).await?;
    let token = match img.share_token {
        Some(t) => t,
        None => {
            // 144 random bits: share links cannot be guessed.
            let t = random_token(18);
            sqlx::query("UPDATE images SET share_token = $1 WHERE id = $2 AND owner = $3 AND share_token IS NULL")
                .bind(&t)
                .bind(&id)
                .bind(caller.owner())
                .execute(&state.db)
                .await?;
            owned_image(&state, &caller, &id).await?.share_token.unwrap_or(t)
        }
    };
    Ok(Json(json!({"url": share_url(&state, &headers, &token), "expires_at": img.expires_at.map(rfc3339)})))
}

pub async fn unshare_image(State(state): St, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    owned_image(&state, &caller, &id).await?;
    sqlx::query("UPDATE images SET share_token = NULL WHERE id = $1 AND owner = $2").bind(&id).bind(caller.owner()).execute(&state.db).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The shared image of a share token, or 404 (revoked, expired or never existed).
pub async fn shared_image(state: &AppState, token: &str) -> ApiResult<(Value, String)> {
    match image_by(state, "share_token", token).await? {
        Some(img) if img.live(now_ms()) => Ok((img.params.clone(), img.id)),
        _ => Err(ApiError::not_found("shared image")),
    }
}

pub async fn shared_png(state: &AppState, token: &str) -> ApiResult<Response> {
    match image_by(state, "share_token", token).await? {
        Some(img) if img.live(now_ms()) => png_response(state, &img, "public, max-age=300").await,
        _ => Err(ApiError::not_found("shared image")),
    }
}

// ---------------------------------------------------------------- history

#[derive(Deserialize)]
pub struct HistoryQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

/// The caller's images, newest first, `limit` (1–100, default 20) at a time; pass `next_cursor`
/// back as `cursor` for the next page.
pub async fn history(State(state): St, Extension(caller): Extension<Caller>, headers: HeaderMap, Query(q): Query<HistoryQuery>) -> ApiResult<Json<Value>> {
    if caller.account.is_none() {
        return Err(ApiError::unauthorized("sign in to see your history"));
    }
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(s) => s.parse::<i64>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| ApiError::invalid("limit", format!("must be 1 to 100, got `{s}`")))?,
    };
    // Without a cursor every row is "before" (i64::MAX), whatever the id.
    let (before_at, before_id) = match q.cursor.as_deref() {
        None => (i64::MAX, String::new()),
        Some(c) => decode_cursor(c).ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this server returned"))?,
    };
    let rows: Vec<ImageTuple> = sqlx::query_as(&format!(
        "SELECT {IMAGE_COLUMNS} FROM images WHERE owner = $1 AND (expires_at IS NULL OR expires_at > $2) \
         AND (created_at < $3 OR (created_at = $3 AND id < $4)) ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(caller.owner())
    .bind(now_ms())
    .bind(before_at)
    .bind(before_id)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let mut items: Vec<ImageRow> = rows.into_iter().map(image_from).collect();
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|i| URL_SAFE_NO_PAD.encode(format!("{}:{}", i.created_at, i.id)))
    } else {
        None
    };
    let items: Vec<Value> = items.iter().map(|i| image_json(&state, &headers, i)).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let (at, id) = text.split_once(':')?;
    Some((at.parse().ok()?, id.to_string()))
}
