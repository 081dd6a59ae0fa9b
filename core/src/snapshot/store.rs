//! Where snapshots live. A store keeps opaque objects by key; the snapshot logic above it makes uploads
//! atomic (object first, then its manifest, then the `latest` pointer) and keeps the last N.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::error::{Error, Result};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A snapshot store: NATS object store, a directory, or S3-compatible storage.
pub trait SnapshotStore: Send + Sync {
    /// Human-readable location for logs and errors (`dir:/var/snapshots`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// Stores `bytes` under `key`, replacing any object with that key. Must not leave a partial object
    /// visible under `key` if it fails midway.
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()>;
    /// The object under `key`, or `None` if there is none.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;
    /// Keys that start with `prefix`, in any order.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;
    /// Removes `key`; removing a missing key is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
}

/// A directory (local or a shared mount). Writes go to a temporary file renamed into place.
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<DirStore> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|err| Error::io(root.display(), err))?;
        Ok(DirStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty() || key.contains('/') || key.contains('\\') || key.starts_with('.') {
            return Err(Error::Snapshot(format!(
                "invalid snapshot object key `{key}`"
            )));
        }
        Ok(self.root.join(key))
    }
}

impl SnapshotStore for DirStore {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key)?;
            let temp = self
                .root
                .join(format!(".{key}.{}.partial", std::process::id()));
            tokio::fs::write(&temp, &bytes)
                .await
                .map_err(|err| Error::io(temp.display(), err))?;
            let file = tokio::fs::File::open(&temp)
                .await
                .map_err(|err| Error::io(temp.display(), err))?;
            file.sync_all()
                .await
                .map_err(|err| Error::io(temp.display(), err))?;
            tokio::fs::rename(&temp, &path)
                .await
                .map_err(|err| Error::io(path.display(), err))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(Error::io(path.display(), err)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut keys = Vec::new();
            let mut entries = tokio::fs::read_dir(&self.root)
                .await
                .map_err(|err| Error::io(self.root.display(), err))?;
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|err| Error::io(self.root.display(), err))?
            {
                if let Some(name) = entry.file_name().to_str() {
                    if name.starts_with(prefix) && !name.starts_with('.') {
                        keys.push(name.to_string());
                    }
                }
            }
            Ok(keys)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(Error::io(path.display(), err)),
            }
        })
    }
}
