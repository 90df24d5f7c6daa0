//! The engine's error type. Every error a user can cause names the input and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the engine needs is not there.
    #[error("missing file {path}: {hint}")]
    MissingFile { path: PathBuf, hint: String },

    /// A file exists but its contents are unusable (bad JSON, bad safetensors header, ...).
    #[error("invalid file {path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },

    /// A configuration value the engine does not support or that is out of range.
    #[error("unsupported configuration: {0}")]
    Unsupported(String),

    /// A request parameter that is out of range; `param` names the flag or field.
    #[error("invalid {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },

    /// The caller asked the pipeline to stop.
    #[error("cancelled")]
    Cancelled,

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidFile { path: path.into(), reason: reason.into() }
    }
    pub fn missing_file(path: impl Into<PathBuf>, hint: impl Into<String>) -> Self {
        Error::MissingFile { path: path.into(), hint: hint.into() }
    }
    pub fn param(param: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParam { param, reason: reason.into() }
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
