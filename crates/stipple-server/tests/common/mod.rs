//! Test harness: a real server (HTTP on 127.0.0.1:0, SQLite in a temp folder, real workers
//! running the tiny test pipeline) and a cookie-keeping client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use stipple_server::config::ModelConfig;
use stipple_server::{Config, Server};

pub fn sd_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/models/sd_tiny")
}

/// With `STIPPLE_TEST_DATABASE_URL=postgres://user@host:port` set, a fresh PostgreSQL database
/// for one test (the same tests then check the PostgreSQL path); else `None` (SQLite).
pub async fn fresh_database() -> Option<String> {
    let server = std::env::var("STIPPLE_TEST_DATABASE_URL").ok().filter(|s| !s.is_empty())?;
    let server = server.trim_end_matches('/');
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&format!("{server}/postgres")).await.expect("PostgreSQL reachable");
    let name = format!("stipple_test_{}", stipple_server::crypto::random_token(9).to_lowercase().replace(['-', '_'], "x"));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("CREATE DATABASE");
    admin.close().await;
    Some(format!("{server}/{name}"))
}

/// Settings for tests: the tiny model, short leases, no rate limit unless asked.
pub fn config(dir: &Path) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        default_model_dir: PathBuf::new(),
        models: vec![ModelConfig::Path(sd_tiny())],
        workers: 1,
        lease_secs: 2,
        rate_limit_per_minute: 1_000_000,
        rate_limit_burst: 1_000_000,
        ..Config::default()
    }
}

pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.database_url = fresh_database().await;
        adjust(&mut c);
        let server = Server::start(c).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        TestServer { server, base, dir }
    }

    pub async fn client(&self) -> Client {
        Client::new(&self.base).await
    }
}

/// A browser-like client: keeps cookies, sends the CSRF token.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    cookies: Mutex<Vec<(String, String)>>,
    csrf: Mutex<Option<String>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, String::from_utf8_lossy(&self.bytes)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    /// The `param` of an error body.
    pub fn param(&self) -> Option<String> {
        self.json()["error"]["param"].as_str().map(str::to_string)
    }
}

impl Client {
    pub async fn new(base: &str) -> Client {
        let c = Client { http: reqwest::Client::new(), base: base.to_string(), cookies: Mutex::new(Vec::new()), csrf: Mutex::new(None) };
        c.refresh_csrf().await;
        c
    }

    /// Read the CSRF token for the current cookies (as the page does on load).
    pub async fn refresh_csrf(&self) {
        let me = self.get("/api/me").await.json();
        *self.csrf.lock().unwrap() = me["csrf_token"].as_str().map(str::to_string);
    }

    /// The same visitor (cookies, CSRF token) talking to another server address.
    pub fn with_base(self, base: &str) -> Client {
        Client { http: reqwest::Client::new(), base: base.to_string(), cookies: self.cookies, csrf: self.csrf }
    }

    pub fn set_csrf(&self, token: &str) {
        *self.csrf.lock().unwrap() = Some(token.to_string());
    }

    pub fn cookie_header(&self) -> String {
        self.cookies.lock().unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub fn forget_cookies(&self) {
        self.cookies.lock().unwrap().clear();
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>, extra: &[(&str, &str)]) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        let cookie = self.cookies.lock().unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        if let Some(t) = self.csrf.lock().unwrap().clone() {
            req = req.header("x-csrf-token", t);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request sent");
        self.keep_cookies(resp.headers());
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body").to_vec();
        Reply { status, headers, bytes }
    }

    fn keep_cookies(&self, headers: &reqwest::header::HeaderMap) {
        let mut jar = self.cookies.lock().unwrap();
        for v in headers.get_all("set-cookie") {
            let Some((name, value)) = v.to_str().ok().and_then(|s| s.split(';').next()).and_then(|kv| kv.split_once('=')) else { continue };
            jar.retain(|(k, _)| k != name);
            if !value.is_empty() && !v.to_str().unwrap_or("").contains("Max-Age=0") {
                jar.push((name.to_string(), value.to_string()));
            }
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.request(Method::POST, path, Some(serde_json::to_vec(body).unwrap()), &[]).await
    }
    pub async fn post_raw(&self, path: &str, body: &[u8]) -> Reply {
        self.request(Method::POST, path, Some(body.to_vec()), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.request(Method::DELETE, path, None, &[]).await
    }

    /// Queue a generation; panics unless 202.
    pub async fn generate(&self, body: Value) -> Value {
        let r = self.post("/api/generations", &body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        r.json()
    }

    /// Poll until the generation ends (or panic after `secs`).
    pub async fn wait(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let g = self.get(&format!("/api/generations/{id}")).await.json();
            if ["succeeded", "failed", "canceled"].contains(&g["status"].as_str().unwrap_or("")) {
                return g;
            }
            assert!(Instant::now() < deadline, "generation {id} did not end in {secs} s: {g}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll until the generation reports at least one finished step.
    pub async fn wait_running(&self, id: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let g = self.get(&format!("/api/generations/{id}")).await.json();
            if g["status"] == "running" && g["progress"]["step"].as_i64().unwrap_or(0) >= 1 {
                return;
            }
            assert!(Instant::now() < deadline, "generation {id} did not start in {secs} s: {g}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn me(&self) -> Value {
        self.get("/api/me").await.json()
    }

    pub async fn signup(&self, email: &str) -> Value {
        let r = self.post("/api/auth/signup", &json!({"email": email, "password": "correct horse battery"})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let v = r.json();
        self.set_csrf(v["csrf_token"].as_str().unwrap());
        v
    }
}

/// Read an SSE stream until `done` or `error`; returns (event name, data) pairs.
pub async fn read_events(client: &Client, id: &str) -> Vec<(String, Value)> {
    let mut req = client.http.get(format!("{}/api/generations/{id}/events", client.base));
    let cookie = client.cookies.lock().unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    req = req.header("cookie", cookie);
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), resp.chunk()).await.expect("event within 30 s").unwrap() else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            let last = name == "done" || name == "error";
            events.push((name, serde_json::from_str(&data).unwrap()));
            if last {
                return events;
            }
        }
    }
    panic!("event stream ended without done/error: {events:?}");
}
