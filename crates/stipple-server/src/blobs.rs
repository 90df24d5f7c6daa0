//! Image bytes, through `object_store`: a local folder by default; any other `ObjectStore`
//! (S3-compatible for scale-out) plugs in behind the same three calls.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use crate::error::StartError;

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// A store in `dir` (created if missing).
    pub fn local(dir: &Path) -> Result<Blobs, StartError> {
        std::fs::create_dir_all(dir).map_err(|source| StartError::Io { context: format!("creating {}", dir.display()), source })?;
        let fs = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Blobs { store: Arc::new(fs) })
    }

    pub fn new(store: Arc<dyn ObjectStore>) -> Blobs {
        Blobs { store }
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> object_store::Result<()> {
        self.store.put(&ObjectPath::from(key), PutPayload::from(bytes)).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> object_store::Result<Bytes> {
        self.store.get(&ObjectPath::from(key)).await?.bytes().await
    }

    /// Delete; a blob already gone is not an error.
    pub async fn delete(&self, key: &str) -> object_store::Result<()> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
