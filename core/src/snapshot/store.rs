//! Where snapshots live. A store keeps opaque objects by key; the snapshot logic above it makes uploads
//! atomic (object first, then its manifest, then the `latest` pointer) and keeps the last N.

use std::future::Future;
use std::path::{Path, PathBuf};
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
    /// Stores the contents of the local file `path` under `key`, like [`SnapshotStore::put`] (same
    /// atomicity), but streamed: a snapshot can be larger than the memory of the node that saves it.
    fn put_file<'a>(&'a self, key: &'a str, path: &'a Path) -> StoreFuture<'a, ()>;
    /// Downloads the object under `key` into `dest` (created or truncated), streamed; `false` (and `dest`
    /// untouched) when there is no such object. After an error `dest` may hold part of the object: the
    /// caller owns `dest` and deletes it.
    fn get_file<'a>(&'a self, key: &'a str, dest: &'a Path) -> StoreFuture<'a, bool>;
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

    /// A temporary name in the store directory: a rename from it into place is atomic, and the leading dot
    /// keeps it out of listings.
    fn partial(&self, key: &str) -> PathBuf {
        self.root.join(format!(
            ".{key}.{}-{}.partial",
            std::process::id(),
            rand::random::<u32>()
        ))
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

impl DirStore {
    /// Makes a fully written temporary file durable, then renames it to `path`: readers see the old object
    /// or the whole new one.
    async fn commit(&self, temp: &Path, path: &Path) -> Result<()> {
        let file = tokio::fs::File::open(temp)
            .await
            .map_err(|err| Error::io(temp.display(), err))?;
        file.sync_all()
            .await
            .map_err(|err| Error::io(temp.display(), err))?;
        tokio::fs::rename(temp, path)
            .await
            .map_err(|err| Error::io(path.display(), err))
    }
}

impl SnapshotStore for DirStore {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key)?;
            let temp = self.partial(key);
            let written = async {
                tokio::fs::write(&temp, &bytes)
                    .await
                    .map_err(|err| Error::io(temp.display(), err))?;
                self.commit(&temp, &path).await
            };
            let result = written.await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&temp).await;
            }
            result
        })
    }

    fn put_file<'a>(&'a self, key: &'a str, source: &'a Path) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key)?;
            let temp = self.partial(key);
            let written = async {
                // A kernel-side copy (copy_file_range where available): no file content in our memory.
                tokio::fs::copy(source, &temp).await.map_err(|err| {
                    Error::Snapshot(format!(
                        "copying {} to {} in {}: {err}",
                        source.display(),
                        temp.display(),
                        self.describe()
                    ))
                })?;
                self.commit(&temp, &path).await
            };
            let result = written.await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&temp).await;
            }
            result
        })
    }

    fn get_file<'a>(&'a self, key: &'a str, dest: &'a Path) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::copy(&path, dest).await {
                Ok(_) => Ok(true),
                // Only a missing source means "no object"; a copy error names both ends.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    match tokio::fs::metadata(&path).await {
                        Err(meta) if meta.kind() == std::io::ErrorKind::NotFound => Ok(false),
                        _ => Err(Error::Snapshot(format!(
                            "copying {} to {}: {err}",
                            path.display(),
                            dest.display()
                        ))),
                    }
                }
                Err(err) => Err(Error::Snapshot(format!(
                    "copying {} to {}: {err}",
                    path.display(),
                    dest.display()
                ))),
            }
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
