//! Putting the service together: shared state, routes, background tasks, start and stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{middleware, Router};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::blobs::Blobs;
use crate::config::Config;
use crate::crypto::{random_token, Signer};
use crate::db::{self, Db};
use crate::error::{ApiError, StartError};
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::models::ModelRegistry;
use crate::ratelimit::RateLimiter;
use crate::{api, auth, billing, openai, retention, web, worker};

/// Largest request body: above the longest valid prompt, so an over-long prompt is reported
/// as such rather than as an over-large body.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Everything the handlers and workers share.
pub struct AppState {
    pub config: Config,
    pub db: Db,
    pub blobs: Blobs,
    pub models: ModelRegistry,
    pub hub: EventHub,
    pub metrics: Metrics,
    pub signer: Signer,
    pub limiter: RateLimiter,
    /// Wakes a waiting worker when a job is queued.
    pub queue_signal: Notify,
    /// Turns true when the process stops: workers, event streams and waiting requests end.
    pub stopping: watch::Sender<bool>,
}

impl AppState {
    /// Open the store, the image folder and the models.
    pub async fn open(config: Config) -> Result<Arc<AppState>, StartError> {
        config.validate()?;
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::Io { context: format!("creating data folder {}", dir.display()), source })?;
        let key = match &config.secret {
            Some(s) if s.len() >= 16 => s.as_bytes().to_vec(),
            Some(_) => return Err(StartError::Config("setting `secret` must be at least 16 characters".into())),
            None => load_or_create_secret(&dir.join("secret.key"))?,
        };
        let db = db::connect(&config.database_url()).await?;
        let blobs = Blobs::local(&dir.join("images"))?;
        let model_configs = config.resolved_models();
        let default_model = config.default_model.clone();
        let models = tokio::task::spawn_blocking(move || ModelRegistry::load(&model_configs, default_model.as_deref()))
            .await
            .map_err(|e| StartError::Config(format!("loading models panicked: {e}")))??;
        let limiter = RateLimiter::new(config.rate_limit_per_minute, config.rate_limit_burst);
        Ok(Arc::new(AppState {
            config,
            db,
            blobs,
            models,
            hub: EventHub::default(),
            metrics: Metrics::default(),
            signer: Signer::new(key),
            limiter,
            queue_signal: Notify::new(),
            stopping: watch::channel(false).0,
        }))
    }

    /// Stop workers (their running jobs go back to the queue) and end event streams.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
        self.hub.cancel_all();
    }

    pub fn lease_ms(&self) -> i64 {
        self.config.lease_secs as i64 * 1000
    }

    /// The public base URL: configured, else from the request's Host header.
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.config.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let host = headers.get("host").and_then(|h| h.to_str().ok()).filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)));
        format!("http://{}", host.unwrap_or(&self.config.addr))
    }
}

fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, StartError> {
    let io = |context: String| move |source| StartError::Io { context, source };
    if path.exists() {
        return std::fs::read(path).map_err(io(format!("reading {}", path.display())));
    }
    let secret = random_token(32);
    write_private(path, secret.as_bytes()).map_err(io(format!("writing {}", path.display())))?;
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(data)
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/style.css", get(web::style_css))
        .route("/s/{token}", get(web::shared))
        .route("/healthz", get(web::healthz))
        .route("/metrics", get(web::metrics))
        .route("/api/generations", post(api::create_generation))
        .route("/api/generations/{id}", get(api::get_generation))
        .route("/api/generations/{id}/events", get(api::generation_events))
        .route("/api/generations/{id}/cancel", post(api::cancel_generation))
        .route("/api/price", post(api::price))
        .route("/api/models", get(api::models))
        .route("/api/me", get(api::me))
        .route("/api/auth/signup", post(api::signup))
        .route("/api/auth/login", post(api::login))
        .route("/api/auth/logout", post(api::logout))
        .route("/api/history", get(api::history))
        .route("/api/images/{id}", delete(api::delete_image))
        .route("/api/images/{id}/png", get(api::image_png))
        .route("/api/images/{id}/save", post(api::save_image))
        .route("/api/images/{id}/share", post(api::share_image).delete(api::unshare_image))
        .route("/api/billing/webhook", post(billing::webhook))
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/models", get(openai::models))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth::identify))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::not_found("route").into_response()
}

/// A running service: HTTP server, workers, reaper and purger.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    tasks: Vec<JoinHandle<()>>,
}

/// Longest a graceful stop waits for open connections.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

impl Server {
    /// Open everything and start serving on `config.addr` (port 0 picks a free port).
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let addr = config.addr.clone();
        let state = AppState::open(config).await?;
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Io { context: format!("listening on {addr} (set --addr or STIPPLE_ADDR)"), source })?;
        let local = listener.local_addr().map_err(|source| StartError::Io { context: "reading the bound address".into(), source })?;
        let rx = state.stopping.subscribe();
        let mut tasks = background(&state, &rx, state.config.workers);
        let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut stop = rx.clone();
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server: {e}");
            }
        }));
        tracing::info!("serving on http://{local}");
        Ok(Server { addr: local, state, tasks })
    }

    /// Stop accepting, stop the workers (their running jobs go back to the queue), wait.
    pub async fn shutdown(self) {
        self.state.stop();
        for mut t in self.tasks {
            if tokio::time::timeout(DRAIN, &mut t).await.is_err() {
                t.abort();
            }
        }
    }

    /// Serve until Ctrl-C / SIGTERM, then shut down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Only workers, reaper and purger on the configured store, no HTTP (`stipple worker`): scale
/// out by running several against one database (and one image store).
pub struct Workers {
    pub state: Arc<AppState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    pub async fn start(config: Config) -> Result<Workers, StartError> {
        let workers = config.workers.max(1);
        let state = AppState::open(config).await?;
        let tasks = background(&state, &state.stopping.subscribe(), workers);
        Ok(Workers { state, tasks })
    }

    /// Stop; running jobs go back to the queue.
    pub async fn shutdown(self) {
        self.state.stop();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// `stipple worker`: run workers until Ctrl-C / SIGTERM.
pub async fn run_workers(config: Config) -> Result<(), StartError> {
    let workers = Workers::start(config).await?;
    wait_for_signal().await;
    workers.shutdown().await;
    Ok(())
}

fn background(state: &Arc<AppState>, rx: &watch::Receiver<bool>, workers: usize) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let instance = random_token(6);
    for i in 0..workers {
        tasks.push(tokio::spawn(worker::run(state.clone(), format!("w-{instance}-{i}"), rx.clone())));
    }
    tasks.push(tokio::spawn(worker::reaper(state.clone(), rx.clone())));
    tasks.push(tokio::spawn(retention::run(state.clone(), rx.clone())));
    tasks
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
