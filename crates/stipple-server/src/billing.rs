//! Purchased tokens: the payment provider's webhook (Stripe's scheme) credits token packs.
//!
//! The `Stripe-Signature` header is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! (several `v1` allowed, during secret rotation). Events older than the tolerance are refused
//! (replay protection), and each event id is credited once: a repeated delivery answers 200
//! without crediting again. A `checkout.session.completed` event credits
//! `tokens_per_pack × metadata.packs` (default one pack) to the account whose id is the
//! session's `client_reference_id` (the page's buy link carries it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::clock::now_ms;
use crate::crypto::{hex, hmac_sha256};
use crate::error::{ApiError, ApiResult};
use crate::params::JsonBody;
use crate::quota;

/// Check a `Stripe-Signature` header against the payload. `now_secs` bounds the timestamp.
pub fn verify_signature(secret: &str, header: &str, payload: &[u8], now_secs: i64, tolerance_secs: i64) -> Result<(), String> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v.to_ascii_lowercase()),
            _ => {}
        }
    }
    let t = timestamp.ok_or("the Stripe-Signature header has no t=<timestamp>")?;
    if signatures.is_empty() {
        return Err("the Stripe-Signature header has no v1 signature".into());
    }
    let expected = hex(&hmac_sha256(secret.as_bytes(), &[t.to_string().as_bytes(), b".", payload]));
    // Compare in constant time per candidate.
    let matches = signatures.iter().any(|s| s.len() == expected.len() && s.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
    if !matches {
        return Err("signature mismatch: check the webhook secret".into());
    }
    if (now_secs - t).abs() > tolerance_secs {
        return Err(format!("timestamp {t} is outside the {tolerance_secs} s tolerance (replayed or clock skew)"));
    }
    Ok(())
}

pub async fn webhook(State(state): State<Arc<AppState>>, headers: HeaderMap, JsonBody(body): JsonBody) -> ApiResult<Json<Value>> {
    let Some(secret) = state.config.webhook_secret.as_deref() else {
        return Err(ApiError::not_found("billing webhook (set `webhook_secret` to enable it)"));
    };
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    verify_signature(secret, header, &body, now_ms() / 1000, state.config.webhook_tolerance_secs as i64)
        .map_err(|m| ApiError::invalid("Stripe-Signature", m))?;
    let event: Value = serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", format!("is not JSON: {e}")))?;
    let event_id = event.get("id").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("id", "the event has no id"))?;
    if event.get("type").and_then(Value::as_str) != Some("checkout.session.completed") {
        return Ok(Json(json!({"received": true, "ignored": true})));
    }
    let object = event.pointer("/data/object").cloned().unwrap_or(Value::Null);
    let account_id = object
        .get("client_reference_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("data.object.client_reference_id", "is missing: the buy link must carry the account id"))?;
    let packs = match object.pointer("/metadata/packs") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|p| (1..=1000).contains(p))
            .ok_or_else(|| ApiError::invalid("data.object.metadata.packs", format!("must be a whole number from 1 to 1000, got {v}")))?,
    };
    let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = $1").bind(account_id).fetch_optional(&state.db).await?;
    if exists.is_none() {
        return Err(ApiError::invalid("data.object.client_reference_id", format!("no account `{account_id}`")));
    }
    let tokens = packs * state.config.tokens_per_pack;
    let now = now_ms();
    let mut tx = state.db.begin().await?;
    let fresh = sqlx::query("INSERT INTO billing_events (event_id, account_id, tokens, received_at) VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING")
        .bind(event_id)
        .bind(account_id)
        .bind(tokens)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if fresh == 0 {
        return Ok(Json(json!({"received": true, "duplicate": true})));
    }
    quota::credit(&mut tx, &format!("acct:{account_id}"), tokens, now).await?;
    tx.commit().await?;
    tracing::info!(event = event_id, account = account_id, tokens, "credited purchased tokens");
    Ok(Json(json!({"received": true, "credited": tokens})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(secret: &str, t: i64, body: &[u8]) -> String {
        format!("t={t},v1={}", hex(&hmac_sha256(secret.as_bytes(), &[t.to_string().as_bytes(), b".", body])))
    }

    #[test]
    fn accepts_valid_and_refuses_forged_stale_or_malformed() {
        let body = br#"{"id":"evt_1"}"#;
        assert!(verify_signature("s", &header("s", 1000, body), body, 1010, 300).is_ok());
        assert!(verify_signature("s", &format!("v1=00,{}", header("s", 1000, body)), body, 1000, 300).is_ok(), "any v1 may match");
        assert!(verify_signature("other", &header("s", 1000, body), body, 1000, 300).unwrap_err().contains("mismatch"));
        assert!(verify_signature("s", &header("s", 1000, body), b"{}", 1000, 300).is_err(), "payload is covered");
        assert!(verify_signature("s", &header("s", 1000, body), body, 2000, 300).unwrap_err().contains("tolerance"));
        assert!(verify_signature("s", "v1=abc", body, 1000, 300).unwrap_err().contains("t="));
    }
}
