//! The service end to end, over real HTTP, with a real SQLite store and real workers running the
//! tiny test pipeline (few steps, so the suite stays quick on two cores).

mod common;

use std::time::{Duration, Instant};

use common::{read_events, Client, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use stipple_server::crypto::{hex, hmac_sha256};

fn png_text(bytes: &[u8], key: &str) -> Option<String> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().ok()?;
    let info = reader.info();
    info.utf8_text.iter().find(|c| c.keyword == key).and_then(|c| c.get_text().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_watch_download_share_and_revoke() {
    let ts = TestServer::start(|c| c.preview_every = 2).await;
    let c = ts.client().await;
    assert_eq!(c.get("/healthz").await.json()["status"], "ok");
    let page = c.get("/").await;
    assert!(page.text().contains("<html") && page.headers["content-type"].to_str().unwrap().starts_with("text/html"));

    let body = json!({"prompt": "a lighthouse at dusk", "steps": 4, "seed": 1234});
    let price = c.post("/api/price", &body).await.json()["cost"].as_i64().unwrap();
    let queued = c.generate(body).await;
    assert_eq!(queued["cost"].as_i64(), Some(price));
    assert_eq!(queued["status"], "queued");
    let id = queued["id"].as_str().unwrap();

    let events = read_events(&c, id).await;
    let (last, rest) = events.split_last().unwrap();
    assert_eq!(last.0, "done", "{events:?}");
    let steps: Vec<i64> = rest.iter().map(|(n, d)| {
        assert_eq!(n, "progress");
        d["step"].as_i64().unwrap()
    }).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]) && steps.last() == Some(&4), "steps {steps:?}");
    // Events published while the stream watched carry previews every 2 steps and at the end.
    assert!(rest.iter().any(|(_, d)| d["preview"].as_str().is_some_and(|p| p.starts_with("data:image/png;base64,"))), "{events:?}");

    let g = c.get(&format!("/api/generations/{id}")).await.json();
    assert_eq!(g["status"], "succeeded");
    assert_eq!(g["params"]["seed"], 1234);
    assert_eq!(g["progress"]["step"], 4);
    assert!(g["expires_at"].is_string());
    let png = c.get(g["image_url"].as_str().unwrap()).await;
    assert_eq!(png.status, StatusCode::OK);
    let params = png_text(&png.bytes, "parameters").expect("PNG carries its parameters");
    assert!(params.starts_with("a lighthouse at dusk\nSteps: 4") && params.contains("Seed: 1234"), "{params}");

    // The same seed gives the same image.
    let again = c.generate(json!({"prompt": "a lighthouse at dusk", "steps": 4, "seed": 1234})).await;
    let g2 = c.wait(again["id"].as_str().unwrap(), 60).await;
    assert_eq!(c.get(g2["image_url"].as_str().unwrap()).await.bytes, png.bytes);

    // Share: public page with Open Graph tags and the PNG, for anyone; revoking ends both.
    let image_id = g["image_id"].as_str().unwrap();
    let share = c.post(&format!("/api/images/{image_id}/share"), &json!({})).await.json();
    let url = share["url"].as_str().unwrap();
    let token = url.rsplit('/').next().unwrap();
    assert!(token.len() >= 22, "share token carries >= 128 bits: {token}");
    let stranger = Client::new(&ts.base).await;
    let page = stranger.get(&format!("/s/{token}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("og:image") && page.text().contains("a lighthouse at dusk"));
    assert_eq!(stranger.get(&format!("/s/{token}.png")).await.bytes, png.bytes);
    assert_eq!(c.delete(&format!("/api/images/{image_id}/share")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(stranger.get(&format!("/s/{token}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(stranger.get(&format!("/s/{token}.png")).await.status, StatusCode::NOT_FOUND);

    let metrics = c.get("/metrics").await.text();
    assert!(metrics.contains("stipple_jobs{status=\"succeeded\"} 2"), "{metrics}");
    assert!(metrics.contains("stipple_tokens_spent_total 200"));
    assert!(metrics.contains("stipple_step_seconds_count 8"));
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_never_overspent_under_100_concurrent_requests() {
    // No workers: jobs stay queued, so only the reservations are measured.
    let ts = TestServer::start(|c| c.workers = 0).await;
    let c = std::sync::Arc::new(ts.client().await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.post("/api/generations", &json!({"prompt": format!("p{i}"), "steps": 2})).await }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.json()["error"]["code"], "insufficient_quota");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!((accepted, refused), (25, 75), "2,500 tokens at 100 each");
    let tokens = c.me().await["tokens"].clone();
    assert_eq!(tokens["used_today"], 2500);
    assert_eq!(tokens["remaining"], 0);

    // Clearing cookies does not mint a new allowance: the address is spent too.
    c.forget_cookies();
    c.refresh_csrf().await;
    assert_eq!(c.me().await["tokens"]["remaining"], 0);
    let r = c.post("/api/generations", &json!({"prompt": "again", "steps": 2})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_charged_once() {
    let ts = TestServer::start(|c| c.workers = 0).await;
    let c = std::sync::Arc::new(ts.client().await);
    let body = serde_json::to_vec(&json!({"prompt": "retry me", "steps": 2})).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, body) = (c.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            c.request(reqwest::Method::POST, "/api/generations", Some(body), &[("idempotency-key", "key-1")]).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry answers with the same job");
    assert_eq!(c.me().await["tokens"]["used_today"], 100);
    // A different key is a different job.
    let r = c.request(reqwest::Method::POST, "/api/generations", Some(body), &[("idempotency-key", "key-2")]).await;
    assert_ne!(r.json()["id"].as_str().unwrap(), ids[0]);
    assert_eq!(c.me().await["tokens"]["used_today"], 200);
    // The same key for a different request is refused, not silently answered.
    let other = serde_json::to_vec(&json!({"prompt": "something else", "steps": 2})).unwrap();
    let r = c.request(reqwest::Method::POST, "/api/generations", Some(other), &[("idempotency-key", "key-1")]).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.param().as_deref(), Some("Idempotency-Key"));
    assert_eq!(c.me().await["tokens"]["used_today"], 200);
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_queued_reservations_and_stops_running_jobs() {
    let ts = TestServer::start(|_| {}).await;
    let c = ts.client().await;
    let running = c.generate(json!({"prompt": "long", "steps": 100, "width": 64, "height": 64})).await;
    let running_id = running["id"].as_str().unwrap();
    let cost_running = running["cost"].as_i64().unwrap();
    let queued = c.generate(json!({"prompt": "waits", "steps": 2})).await;
    let queued_id = queued["id"].as_str().unwrap();
    c.wait_running(running_id, 30).await;
    assert_eq!(c.get(&format!("/api/generations/{queued_id}")).await.json()["queue_position"], 0);
    let used_before = c.me().await["tokens"]["used_today"].as_i64().unwrap();
    assert_eq!(used_before, cost_running + 100);

    // Cancelled before it started: released.
    let r = c.post(&format!("/api/generations/{queued_id}/cancel"), &json!({})).await.json();
    assert_eq!(r["status"], "canceled");
    assert_eq!(c.me().await["tokens"]["used_today"].as_i64().unwrap(), cost_running);

    // Cancelled while running: it stops at the next step and pays only for the steps it ran.
    let t0 = Instant::now();
    c.post(&format!("/api/generations/{running_id}/cancel"), &json!({})).await;
    let events = read_events(&c, running_id).await;
    assert_eq!(events.last().unwrap().0, "error");
    assert_eq!(events.last().unwrap().1["status"], "canceled");
    assert!(t0.elapsed() < Duration::from_secs(10), "stopped promptly");
    let g = c.get(&format!("/api/generations/{running_id}")).await.json();
    assert_eq!(g["status"], "canceled");
    let done = g["progress"]["step"].as_i64().unwrap();
    assert!(done < 100);
    let charged = ((cost_running * done) as f64 / 100.0).ceil().max(100.0) as i64;
    assert_eq!(g["cost"].as_i64().unwrap(), charged, "{g}");
    assert_eq!(c.me().await["tokens"]["used_today"].as_i64().unwrap(), charged);

    // Another visitor cannot cancel (or see) it.
    let other = Client::new(&ts.base).await;
    assert_eq!(other.post(&format!("/api/generations/{running_id}/cancel"), &json!({})).await.status, StatusCode::NOT_FOUND);
    ts.server.shutdown().await;
}

#[test]
fn a_job_running_when_the_process_dies_is_requeued_and_finished_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let database_url = tokio::runtime::Runtime::new().unwrap().block_on(common::fresh_database());

    // First process: its own runtime, dropped mid-job to simulate a crash (no graceful stop).
    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let (base, cookie_client_id) = rt1.block_on(async {
        let mut cfg = common::config(&data);
        cfg.lease_secs = 1;
        cfg.database_url = database_url.clone();
        let server = stipple_server::Server::start(cfg).await.unwrap();
        let base = format!("http://{}", server.addr);
        let c = Client::new(&base).await;
        let g = c.generate(json!({"prompt": "survives a crash", "steps": 12, "seed": 7})).await;
        let id = g["id"].as_str().unwrap().to_string();
        c.wait_running(&id, 30).await;
        std::mem::forget(server); // no shutdown: the process "dies"
        (base, (c, id))
    });
    let (client, id) = cookie_client_id;
    rt1.shutdown_background();
    drop(base);

    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let mut cfg = common::config(&data);
        cfg.lease_secs = 1;
        cfg.database_url = database_url;
        let server = stipple_server::Server::start(cfg).await.unwrap();
        let c = client.with_base(&format!("http://{}", server.addr));
        let g = c.wait(&id, 60).await;
        assert_eq!(g["status"], "succeeded", "{g}");
        assert_eq!(g["params"]["seed"], 7);
        assert_eq!(c.me().await["tokens"]["used_today"], 100, "charged once");
        let png = c.get(g["image_url"].as_str().unwrap()).await;
        assert_eq!(png.status, StatusCode::OK);
        server.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsaved_results_expire_and_are_purged() {
    let ts = TestServer::start(|c| {
        c.retention_secs = 1;
        c.purge_interval_secs = 1;
    })
    .await;
    let c = ts.client().await;
    let g = c.generate(json!({"prompt": "ephemeral", "steps": 2})).await;
    let g = c.wait(g["id"].as_str().unwrap(), 60).await;
    let image_url = g["image_url"].as_str().unwrap().to_string();
    let image_id = g["image_id"].as_str().unwrap();
    let blob = ts.dir.path().join("images").join(format!("{image_id}.png"));
    assert!(blob.exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while blob.exists() {
        assert!(Instant::now() < deadline, "the image file was not purged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get(&image_url).await.status, StatusCode::NOT_FOUND);
    // The job row (with the prompt) goes too, once past retention.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(&format!("/api/generations/{}", g["id"].as_str().unwrap())).await.status != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "the job row was not purged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_only_see_their_own_images() {
    let ts = TestServer::start(|_| {}).await;
    let alice = ts.client().await;
    let bob = ts.client().await;
    // What Alice made before signing up becomes hers.
    let before = alice.generate(json!({"prompt": "before signing up", "steps": 2})).await;
    let before = alice.wait(before["id"].as_str().unwrap(), 60).await;
    alice.signup("alice@example.org").await;
    let adopted = before["image_id"].as_str().unwrap();
    assert_eq!(alice.post(&format!("/api/images/{adopted}/save"), &json!({})).await.status, StatusCode::OK);
    assert_eq!(alice.delete(&format!("/api/images/{adopted}")).await.status, StatusCode::NO_CONTENT);
    bob.signup("bob@example.org").await;
    assert_eq!(alice.me().await["account"]["email"], "alice@example.org");
    assert_eq!(alice.me().await["tokens"]["daily_limit"], 5000);

    let mut ids = Vec::new();
    for i in 0..3 {
        let g = alice.generate(json!({"prompt": format!("alice {i}"), "steps": 2})).await;
        ids.push(g["id"].as_str().unwrap().to_string());
    }
    let mut images = Vec::new();
    for id in &ids {
        images.push(alice.wait(id, 60).await["image_id"].as_str().unwrap().to_string());
    }
    let img = &images[0];
    for (path, method) in [
        (format!("/api/generations/{}", ids[0]), "GET"),
        (format!("/api/images/{img}/png"), "GET"),
        (format!("/api/images/{img}/save"), "POST"),
        (format!("/api/images/{img}/share"), "POST"),
        (format!("/api/images/{img}"), "DELETE"),
        (format!("/api/generations/{}/cancel", ids[0]), "POST"),
    ] {
        let r = bob.request(method.parse().unwrap(), &path, Some(b"{}".to_vec()), &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {}", r.text());
    }
    assert_eq!(bob.get("/api/history").await.json()["items"].as_array().unwrap().len(), 0);

    // Alice pages through her history, newest first.
    let p1 = alice.get("/api/history?limit=2").await.json();
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = alice.get(&format!("/api/history?limit=2&cursor={cursor}")).await.json();
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert!(p2["next_cursor"].is_null());
    let listed: Vec<Value> = p1["items"].as_array().unwrap().iter().chain(p2["items"].as_array().unwrap()).cloned().collect();
    let mut listed_ids: Vec<&str> = listed.iter().map(|i| i["id"].as_str().unwrap()).collect();
    let created: Vec<&str> = listed.iter().map(|i| i["created_at"].as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first: {created:?}");
    listed_ids.sort();
    let mut expected: Vec<&str> = images.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(listed_ids, expected, "each image once across pages");

    // Save keeps an image past retention; delete removes it.
    let saved = alice.post(&format!("/api/images/{img}/save"), &json!({})).await.json();
    assert_eq!(saved["saved"], true);
    assert!(saved["expires_at"].is_null());
    assert_eq!(alice.delete(&format!("/api/images/{}", images[1])).await.status, StatusCode::NO_CONTENT);
    assert_eq!(alice.get(&format!("/api/images/{}/png", images[1])).await.status, StatusCode::NOT_FOUND);

    // Anonymous visitors cannot save; logged-out sessions are gone; bad passwords fail.
    let anon = ts.client().await;
    assert_eq!(anon.get("/api/history").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(alice.post("/api/auth/logout", &json!({})).await.status, StatusCode::NO_CONTENT);
    alice.refresh_csrf().await;
    assert!(alice.me().await["account"].is_null());
    assert_eq!(alice.get("/api/history").await.status, StatusCode::UNAUTHORIZED);
    let r = alice.post("/api/auth/login", &json!({"email": "alice@example.org", "password": "wrong horse battery"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = alice.post("/api/auth/login", &json!({"email": "ALICE@example.org", "password": "correct horse battery"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    alice.set_csrf(r.json()["csrf_token"].as_str().unwrap());
    assert_eq!(alice.get("/api/history").await.json()["items"].as_array().unwrap().len(), 2);
    let r = bob.post("/api/auth/signup", &json!({"email": "alice@example.org", "password": "another password"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Three sign-ups from one address a day (two made above, one refused as a duplicate).
    let carol = ts.client().await;
    carol.signup("carol@example.org").await;
    let r = ts.client().await.post("/api/auth/signup", &json!({"email": "dave@example.org", "password": "correct horse battery"})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_many_signups");

    // State-changing requests without the CSRF token are refused.
    alice.set_csrf("forged");
    let r = alice.post(&format!("/api/images/{img}/share"), &json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    ts.server.shutdown().await;
}

fn signed(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", hex(&hmac_sha256(secret.as_bytes(), &[t.to_string().as_bytes(), b".", body.as_bytes()])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_checks_signatures_refuses_replays_and_credits_once() {
    let ts = TestServer::start(|c| {
        c.workers = 0;
        c.webhook_secret = Some("whsec_test".into());
        c.account_daily_tokens = 100;
    })
    .await;
    let c = ts.client().await;
    let account_id = c.signup("buyer@example.org").await["account"]["id"].as_str().unwrap().to_string();
    let event = json!({"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {"client_reference_id": account_id}}}).to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let hook = Client::new(&ts.base).await;
    let send = |sig: String, body: String| {
        let hook = &hook;
        async move { hook.request(reqwest::Method::POST, "/api/billing/webhook", Some(body.into_bytes()), &[("stripe-signature", &sig)]).await }
    };

    let r = send(signed("wrong secret", now, &event), event.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.param().as_deref(), Some("Stripe-Signature"));
    let r = send(signed("whsec_test", now - 3600, &event), event.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "an old signature is a replay");
    let r = send(signed("whsec_test", now, &event), event.replace("evt_1", "evt_x")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "the signature covers the body");
    assert_eq!(c.me().await["tokens"]["purchased"], 0);

    let r = send(signed("whsec_test", now, &event), event.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["credited"], 200_000);
    let r = send(signed("whsec_test", now + 1, &event), event.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["duplicate"], true);
    assert_eq!(c.me().await["tokens"]["purchased"], 200_000, "credited exactly once");

    // Purchased tokens pay once the daily allowance is spent, and do not reset.
    c.generate(json!({"prompt": "daily", "steps": 2})).await;
    c.generate(json!({"prompt": "bought", "steps": 2})).await;
    let tokens = c.me().await["tokens"].clone();
    assert_eq!((tokens["used_today"].as_i64(), tokens["purchased"].as_i64()), (Some(100), Some(199_900)));
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_errors_naming_the_field() {
    let ts = TestServer::start(|c| c.workers = 0).await;
    let c = ts.client().await;
    let long_prompt = "x".repeat(1 << 20);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (br#"{"prompt": "p", "steps": 0}"#.to_vec(), "steps"),
        (br#"{"prompt": "p", "steps": 1000000000}"#.to_vec(), "steps"),
        (br#"{"prompt": "p", "cfg_scale": NaN}"#.to_vec(), "cfg_scale"),
        (br#"{"prompt": "p", "cfg_scale": "NaN"}"#.to_vec(), "cfg_scale"),
        (br#"{"prompt": "p", "cfg_scale": -1}"#.to_vec(), "cfg_scale"),
        (br#"{"prompt": "p", "width": 100000}"#.to_vec(), "width"),
        (br#"{"prompt": "p", "height": 100000}"#.to_vec(), "height"),
        (br#"{"prompt": "p", "width": 100}"#.to_vec(), "width"),
        (br#"{"prompt": "p", "height": 60}"#.to_vec(), "height"),
        (br#"{"prompt": "p", "seed": -1}"#.to_vec(), "seed"),
        (br#"{"prompt": "p", "sampler": "magic"}"#.to_vec(), "sampler"),
        (br#"{"prompt": "p", "model": "nope"}"#.to_vec(), "model"),
        (format!(r#"{{"prompt": "{long_prompt}"}}"#).into_bytes(), "prompt"),
        (br#"{"prompt": ""}"#.to_vec(), "prompt"),
        (br#"{"steps": 4}"#.to_vec(), "prompt"),
        (b"{\"prompt\": \"caf\xe9\"}".to_vec(), "prompt"),
        (br#"{"prompt": "p""#.to_vec(), "body"),
        (b"not json".to_vec(), "body"),
        (br#"{"prompt": "p", "colour": "red"}"#.to_vec(), "colour"),
    ];
    for (body, field) in &cases {
        for path in ["/api/generations", "/api/price"] {
            let r = c.post_raw(path, body).await;
            assert!(r.status.is_client_error(), "{path} {}: {}", String::from_utf8_lossy(&body[..body.len().min(80)]), r.status);
            let err = r.json()["error"].clone();
            assert_eq!(err["param"].as_str(), Some(*field), "{path} {}: {err}", String::from_utf8_lossy(&body[..body.len().min(80)]));
            assert!(err["message"].as_str().unwrap().contains(field), "{err}");
            assert!(err["type"].is_string());
        }
    }
    // OpenAI-style request fields.
    let key = [("authorization", "Bearer sk-test")];
    for (body, field) in [
        (json!({"prompt": "p", "n": 0}), "n"),
        (json!({"prompt": "p", "size": "huge"}), "size"),
        (json!({"prompt": "p", "size": "100000x64"}), "size"),
        (json!({"prompt": "p", "response_format": "gif"}), "response_format"),
    ] {
        let r = c.request(reqwest::Method::POST, "/v1/images/generations", Some(body.to_string().into_bytes()), &key).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.param().as_deref(), Some(field), "{}", r.text());
    }
    assert_eq!(c.me().await["tokens"]["used_today"], 0, "nothing was charged");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_api_generates_and_refuses_without_retry_when_spent() {
    let ts = TestServer::start(|c| c.anonymous_daily_tokens = 300).await;
    let c = ts.client().await;
    let key = [("authorization", "Bearer sk-anything")];
    let models = c.request(reqwest::Method::GET, "/v1/models", None, &key).await.json();
    assert_eq!(models["data"][0]["id"], "sd_tiny");
    let post = |body: Value| {
        let c = &c;
        async move { c.request(reqwest::Method::POST, "/v1/images/generations", Some(body.to_string().into_bytes()), &key).await }
    };
    let r = post(json!({"model": "sd_tiny", "prompt": "a boat", "size": "64x64", "response_format": "b64_json", "steps": 2})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b64 = r.json()["data"][0]["b64_json"].as_str().unwrap().to_string();
    assert!(b64.starts_with("iVBORw0KGgo"), "a PNG");
    let r = post(json!({"model": "dall-e-3", "prompt": "a boat", "steps": 2})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let url = r.json()["data"][0]["url"].as_str().unwrap().to_string();
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK, "signed URLs work without cookies");
    assert!(reqwest::get(url.replace("sig=", "sig=x")).await.unwrap().status() == StatusCode::NOT_FOUND);

    let r = post(json!({"prompt": "too many", "n": 2, "steps": 2})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["x-should-retry"], "false");
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    let r = c.request(reqwest::Method::POST, "/v1/images/generations", Some(b"{}".to_vec()), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a bearer key is required (any will do)");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_address_rate_limit_get_429() {
    let ts = TestServer::start(|c| {
        c.workers = 0;
        c.rate_limit_burst = 5;
        c.rate_limit_per_minute = 6;
    })
    .await;
    let c = Client::new(&ts.base).await; // 1 request
    for _ in 0..4 {
        assert_eq!(c.get("/api/models").await.status, StatusCode::OK);
    }
    let r = c.get("/api/models").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(c.get("/").await.status, StatusCode::OK, "the page itself is not limited");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_worker_process_runs_the_queue_of_an_api_only_server() {
    // The API server runs no engine; a worker (as `stipple worker` would) shares its store.
    let ts = TestServer::start(|c| c.workers = 0).await;
    let mut worker_config = common::config(ts.dir.path());
    worker_config.database_url = ts.server.state.config.database_url.clone();
    let workers = stipple_server::Workers::start(worker_config).await.unwrap();
    let c = ts.client().await;
    let g = c.generate(json!({"prompt": "made elsewhere", "steps": 5})).await;
    let id = g["id"].as_str().unwrap();
    // Progress reaches the server's event stream through the store (no previews across processes).
    let events = read_events(&c, id).await;
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");
    let g = c.get(&format!("/api/generations/{id}")).await.json();
    assert_eq!(g["status"], "succeeded");
    assert_eq!(c.get(g["image_url"].as_str().unwrap()).await.status, StatusCode::OK);
    workers.shutdown().await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_event_streams_and_puts_running_jobs_back_in_the_queue() {
    let ts = TestServer::start(|_| {}).await;
    let c = ts.client().await;
    let g = c.generate(json!({"prompt": "interrupted", "steps": 100})).await;
    let id = g["id"].as_str().unwrap().to_string();
    c.wait_running(&id, 30).await;
    // A watcher that stays connected must not keep the server from stopping.
    let mut stream = c.http.get(format!("{}/api/generations/{id}/events", ts.base)).header("cookie", c.cookie_header()).send().await.unwrap();
    let _ = stream.chunk().await;
    let TestServer { server, dir, .. } = ts;
    let data = dir.path().to_path_buf();
    let database_url = server.state.config.database_url.clone();
    tokio::time::timeout(Duration::from_secs(15), server.shutdown()).await.expect("stops within 15 s");

    let mut cfg = common::config(&data);
    cfg.workers = 0;
    cfg.database_url = database_url;
    let again = stipple_server::Server::start(cfg).await.unwrap();
    let c = c.with_base(&format!("http://{}", again.addr));
    let g = c.get(&format!("/api/generations/{id}")).await.json();
    assert_eq!(g["status"], "queued", "{g}");
    assert_eq!(g["progress"]["step"], 0);
    again.shutdown().await;
}
