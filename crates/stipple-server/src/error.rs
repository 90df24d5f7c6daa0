//! Errors: [`StartError`] for what stops the server from starting, [`ApiError`] for what a request
//! gets back, always as `{"error": {"message", "type", "param", "code"}}` (the OpenAI shape).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("database {url}: {source}")]
    Database { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("model {path}: {source}")]
    Model { path: String, source: stipple_core::Error },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("image store: {0}")]
    Blob(#[from] object_store::Error),
}

/// An error answered to an HTTP request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Tell OpenAI SDKs not to retry (spent quota will not come back by retrying).
    pub no_retry: bool,
    pub retry_after_secs: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None, no_retry: false, retry_after_secs: None }
    }
    /// A request field out of range or malformed; `param` names it.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = message.into();
        let message = if message.contains(&format!("`{param}`")) { message } else { format!("`{param}` {message}") };
        ApiError { param: Some(param), code: Some("invalid_value"), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn not_found(what: &str) -> Self {
        ApiError { code: Some("not_found"), ..Self::new(StatusCode::NOT_FOUND, "not_found_error", format!("{what} not found")) }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError { code: Some("unauthorized"), ..Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message) }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError { code: Some("forbidden"), ..Self::new(StatusCode::FORBIDDEN, "permission_error", message) }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError { code: Some("conflict"), ..Self::new(StatusCode::CONFLICT, "invalid_request_error", message) }
    }
    pub fn quota_exhausted(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("insufficient_quota"),
            no_retry: true,
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
        }
    }
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError {
            code: Some("rate_limit_exceeded"),
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!("too many requests from this address; retry in {retry_after_secs} s"))
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("internal error while {context}"))
    }
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal("accessing the database", e)
    }
}

impl From<object_store::Error> for ApiError {
    fn from(e: object_store::Error) -> Self {
        ApiError::internal("accessing the image store", e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        let h = resp.headers_mut();
        if self.no_retry {
            h.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Some(s) = self.retry_after_secs {
            h.insert("retry-after", HeaderValue::from(s));
        }
        resp
    }
}

/// Map an engine parameter error to the API field it concerns.
pub fn from_engine(e: stipple_core::Error) -> ApiError {
    match e {
        stipple_core::Error::InvalidParam { param, reason } => ApiError::invalid(api_field(param), reason),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// The engine names parameters as command-line flags; the API uses snake_case fields.
pub fn api_field(engine_param: &str) -> String {
    engine_param.replace('-', "_")
}
