//! The page (embedded assets, no build step), the public share page, health and metrics.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::{shared_image, shared_png};
use crate::app::AppState;
use crate::error::ApiResult;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Scripts and styles only from this origin; images also as data URLs (previews) and blobs.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

pub async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}
pub async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}
pub async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

/// `GET /s/{token}`: a public page for a shared image (with Open Graph tags), and
/// `GET /s/{token}.png`: the image itself.
pub async fn shared(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(token): Path<String>) -> ApiResult<Response> {
    if let Some(t) = token.strip_suffix(".png") {
        return shared_png(&state, t).await;
    }
    let (params, _) = match shared_image(&state, &token).await {
        Ok(found) => found,
        Err(_) => return Ok((StatusCode::NOT_FOUND, Html(not_found_page())).into_response()),
    };
    let prompt = params.get("prompt").and_then(Value::as_str).unwrap_or("");
    let title: String = prompt.chars().take(120).collect();
    let base = state.base_url(&headers);
    let image = format!("{base}/s/{token}.png");
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · Stipple</title>
<meta property="og:type" content="website"><meta property="og:title" content="{t}">
<meta property="og:description" content="Made with Stipple"><meta property="og:image" content="{img}">
<meta property="og:url" content="{base}/s/{tok}"><meta name="twitter:card" content="summary_large_image">
<link rel="stylesheet" href="/assets/style.css"></head>
<body><main class="share"><h1>{t}</h1><img src="/s/{tok}.png" alt="{t}" class="result-img">
<p><a href="/s/{tok}.png" download>Download</a> · <a href="/">Make your own with Stipple</a></p></main></body></html>"#,
        t = escape(&title),
        img = escape(&image),
        base = escape(&base),
        tok = escape(&token),
    );
    let mut resp = Html(page).into_response();
    resp.headers_mut().insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    Ok(resp)
}

fn not_found_page() -> String {
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found · Stipple</title>\
     <link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body><main class=\"share\"><h1>This link does not exist</h1>\
     <p>It was revoked, or the image expired. <a href=\"/\">Make an image</a></p></main></body></html>"
        .into()
}

/// HTML-escape text for element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.db).await {
        Ok(_) => Json(json!({"status": "ok", "models": state.models.entries().len()})).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "error": e.to_string()}))).into_response(),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let counts = crate::jobs::counts(&state.db).await.unwrap_or_default();
    let mut resp = state.metrics.render(&counts).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(super::escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
