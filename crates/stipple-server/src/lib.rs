//! Stipple's web service: the page, the JSON API (and an OpenAI-compatible one), the job queue
//! with its workers, quotas and tokens, accounts, and storage (SQL through sqlx, images through
//! `object_store`). The server knows nothing of tensors beyond "run this request with this
//! progress callback".

pub mod api;
pub mod app;
pub mod auth;
pub mod billing;
pub mod blobs;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod events;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod params;
pub mod preview;
pub mod pricing;
pub mod quota;
pub mod ratelimit;
pub mod retention;
pub mod web;
pub mod worker;

pub use app::{run_workers, AppState, Server, Workers};
pub use config::Config;
pub use error::StartError;
