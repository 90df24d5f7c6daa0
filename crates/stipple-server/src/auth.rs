//! Who is calling: accounts (argon2id passwords, random session tokens in HttpOnly SameSite=Lax
//! cookies), anonymous visitors (a signed cookie plus the client address), and API clients
//! (any bearer key). Also the per-address rate limit and CSRF protection: a state-changing
//! request that carries one of our cookies must send `X-CSRF-Token`, a signature of that cookie
//! (read from `GET /api/me`), which a cross-site page cannot know.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::clock::now_ms;
use crate::crypto::{random_token, sha256_hex};
use crate::error::{ApiError, ApiResult};
use crate::quota::Payer;

pub const SESSION_COOKIE: &str = "stipple_session";
pub const ANON_COOKIE: &str = "stipple_anon";
pub const CSRF_HEADER: &str = "x-csrf-token";
const SESSION_DAYS: i64 = 30;

#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub id: String,
    pub email: String,
}

/// The identity of a request, put in its extensions by [`identify`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: Option<Account>,
    /// Anonymous identity: the signed cookie's id, or `key_<hash>` for a bearer key.
    pub anon_id: String,
    pub addr: IpAddr,
    /// The cookie value CSRF tokens are bound to.
    pub csrf_basis: Option<String>,
}

impl Caller {
    /// The owner of this caller's jobs and images.
    pub fn owner(&self) -> String {
        match &self.account {
            Some(a) => format!("acct:{}", a.id),
            None => format!("anon:{}", self.anon_id),
        }
    }

    pub fn payer(&self, state: &AppState) -> Payer {
        match &self.account {
            Some(a) => Payer { primary: format!("acct:{}", a.id), secondary: None, daily_limit: state.config.account_daily_tokens },
            None => Payer {
                primary: format!("anon:{}", self.anon_id),
                secondary: Some(format!("addr:{}", self.addr)),
                daily_limit: state.config.anonymous_daily_tokens,
            },
        }
    }

    pub fn csrf_token(&self, state: &AppState) -> Option<String> {
        self.csrf_basis.as_ref().map(|b| state.signer.sign("csrf", b))
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value with the server's attributes.
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if state.config.cookies_secure() { "; Secure" } else { "" };
    let v = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

fn client_addr(state: &AppState, req: &Request) -> IpAddr {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if state.config.trust_forwarded_for {
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        if let Some(ip) = forwarded.and_then(|v| v.rsplit(',').next()).and_then(|s| s.trim().parse().ok()) {
            return ip;
        }
    }
    peer
}

async fn session_account(state: &AppState, token: &str) -> sqlx::Result<Option<Account>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT a.id, a.email FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE s.token_hash = $1 AND s.expires_at > $2",
    )
    .bind(sha256_hex(token.as_bytes()))
    .bind(now_ms())
    .fetch_optional(&state.db)
    .await?;
    Ok(row.map(|(id, email)| Account { id, email }))
}

/// Middleware: rate limit, resolve the caller, enforce CSRF, and set a new anonymous cookie.
pub async fn identify(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let addr = client_addr(&state, &req);
    let path = req.uri().path().to_string();
    if !(path.starts_with("/api/") || path.starts_with("/v1/")) {
        // The page, its assets, share pages, health and metrics need no identity.
        return next.run(req).await;
    }
    if path != "/api/billing/webhook" {
        if let Err(wait) = state.limiter.check(addr, Instant::now()) {
            state.metrics.rate_limited();
            return ApiError::rate_limited(wait).into_response();
        }
    }

    let headers = req.headers();
    let mut new_anon_cookie = None;
    let caller = if path.starts_with("/v1/") {
        // OpenAI-style clients: any bearer key names an anonymous identity (its address still
        // bounds the allowance).
        let key = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return ApiError::unauthorized("send an API key as `Authorization: Bearer <key>`; any key works").into_response();
        };
        Caller { account: None, anon_id: format!("key_{}", &sha256_hex(key.as_bytes())[..32]), addr, csrf_basis: None }
    } else {
        let session = match cookie(headers, SESSION_COOKIE) {
            Some(token) => match session_account(&state, token).await {
                Ok(acct) => acct.map(|a| (a, token.to_string())),
                Err(e) => return ApiError::from(e).into_response(),
            },
            None => None,
        };
        let anon = cookie(headers, ANON_COOKIE).and_then(|c| state.signer.unseal("anon", c).map(|id| (id.to_string(), c.to_string())));
        let had_cookie = session.is_some() || anon.is_some();
        let (anon_id, anon_cookie) = anon.unwrap_or_else(|| {
            let id = random_token(16);
            let sealed = state.signer.seal("anon", &id);
            new_anon_cookie = Some(sealed.clone());
            (id, sealed)
        });
        let csrf_basis = session.as_ref().map(|(_, t)| t.clone()).unwrap_or(anon_cookie);
        let caller = Caller { account: session.map(|(a, _)| a), anon_id, addr, csrf_basis: Some(csrf_basis) };
        let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if changes_state && had_cookie && path.starts_with("/api/") && path != "/api/billing/webhook" {
            let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            let basis = caller.csrf_basis.as_deref().unwrap_or("");
            if !state.signer.verify("csrf", basis, sent) {
                return ApiError::forbidden("missing or wrong X-CSRF-Token header; send the csrf_token from GET /api/me")
                    .with_param(CSRF_HEADER)
                    .into_response();
            }
        }
        caller
    };
    req.extensions_mut().insert(caller);
    let mut resp = next.run(req).await;
    if let Some(sealed) = new_anon_cookie {
        resp.headers_mut().append(SET_COOKIE, set_cookie(&state, ANON_COOKIE, &sealed, 365 * 86_400));
    }
    resp
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: Option<String>,
    pub password: Option<String>,
}

/// Validated, normalised credentials.
pub fn check_credentials(c: &Credentials) -> ApiResult<(String, String)> {
    let email = c.email.as_deref().map(|e| e.trim().to_lowercase()).unwrap_or_default();
    if email.is_empty() {
        return Err(ApiError::invalid("email", "is required"));
    }
    let valid = email.len() <= 254
        && !email.chars().any(|ch| ch.is_whitespace() || ch.is_control())
        && matches!(email.split_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@'));
    if !valid {
        return Err(ApiError::invalid("email", "is not an email address"));
    }
    let password = c.password.clone().unwrap_or_default();
    let n = password.chars().count();
    if !(8..=256).contains(&n) {
        return Err(ApiError::invalid("password", format!("must be 8 to 256 characters, got {n}")));
    }
    Ok((email, password))
}

/// Count a sign-up from `addr` in the caller's transaction; returns today's count with it.
pub async fn count_signup(tx: &mut crate::db::Tx<'_>, addr: IpAddr, now: i64) -> sqlx::Result<i64> {
    let key = format!("signup:{addr}");
    let day = crate::clock::utc_day(now);
    sqlx::query("INSERT INTO address_counters (counter_key, day, count) VALUES ($1, $2, 0) ON CONFLICT (counter_key) DO NOTHING")
        .bind(&key)
        .bind(day)
        .execute(&mut **tx)
        .await?;
    let (count,): (i64,) = sqlx::query_as(
        "UPDATE address_counters SET count = CASE WHEN day = $2 THEN count + 1 ELSE 1 END, day = $2 WHERE counter_key = $1 RETURNING count",
    )
    .bind(&key)
    .bind(day)
    .fetch_one(&mut **tx)
    .await?;
    Ok(count)
}

pub async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|e| ApiError::internal("hashing a password", e))?
    .map_err(|e| ApiError::internal("hashing a password", e))
}

/// Check a password against a stored hash (or against a dummy, so unknown emails take as long).
pub async fn verify_password(password: String, stored: Option<String>) -> ApiResult<bool> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let dummy = DUMMY.get_or_init(|| {
            Argon2::default().hash_password(b"not a password", &SaltString::generate(&mut OsRng)).map(|h| h.to_string()).unwrap_or_default()
        });
        let known = stored.is_some();
        let hash_text = stored.unwrap_or_else(|| dummy.clone());
        let ok = PasswordHash::new(&hash_text).map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()).unwrap_or(false);
        known && ok
    })
    .await
    .map_err(|e| ApiError::internal("checking a password", e))
}

/// Start a session: returns the cookie token (stored only as its hash).
pub async fn create_session(state: &AppState, account_id: &str) -> sqlx::Result<String> {
    let token = random_token(32);
    let now = now_ms();
    sqlx::query("INSERT INTO sessions (token_hash, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(sha256_hex(token.as_bytes()))
        .bind(account_id)
        .bind(now)
        .bind(now + SESSION_DAYS * 86_400_000)
        .execute(&state.db)
        .await?;
    Ok(token)
}

pub fn session_cookie(state: &AppState, token: &str) -> HeaderValue {
    set_cookie(state, SESSION_COOKIE, token, SESSION_DAYS * 86_400)
}

pub fn clear_session_cookie(state: &AppState) -> HeaderValue {
    set_cookie(state, SESSION_COOKIE, "", 0)
}

pub async fn end_session(state: &AppState, headers: &HeaderMap) -> sqlx::Result<()> {
    if let Some(token) = cookie(headers, SESSION_COOKIE) {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(sha256_hex(token.as_bytes())).execute(&state.db).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(email: &str, password: &str) -> Credentials {
        Credentials { email: Some(email.into()), password: Some(password.into()) }
    }

    #[test]
    fn credentials_are_checked_and_normalised() {
        assert_eq!(check_credentials(&creds(" A@Example.org ", "correct horse")).unwrap().0, "a@example.org");
        assert_eq!(check_credentials(&creds("nope", "correct horse")).unwrap_err().param.as_deref(), Some("email"));
        assert_eq!(check_credentials(&creds("a@b", "correct horse")).unwrap_err().param.as_deref(), Some("email"));
        assert_eq!(check_credentials(&creds("a@b.c", "short")).unwrap_err().param.as_deref(), Some("password"));
    }

    #[test]
    fn cookies_are_found_among_several() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; stipple_anon=x.y; b=2"));
        assert_eq!(cookie(&h, ANON_COOKIE), Some("x.y"));
        assert_eq!(cookie(&h, SESSION_COOKIE), None);
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_hash() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(h.clone())).await.unwrap());
        assert!(!verify_password("wrong horse".into(), Some(h)).await.unwrap());
        assert!(!verify_password("not a password".into(), None).await.unwrap());
    }
}
