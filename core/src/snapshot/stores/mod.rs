//! Snapshot stores built on the `object_store` crate: S3-compatible services, Google Cloud Storage, Azure
//! Blob Storage, WebDAV servers and local directories, behind the one [`SnapshotStore`] trait.
//!
//! Each store is one file here that turns its configuration section into an `Arc<dyn ObjectStore>` plus a
//! [`StoreDetails`] value (how it names itself in logs and errors); [`ObjectSnapshotStore`] is the single
//! adapter from any object_store to [`SnapshotStore`]. Adding a store is its file plus one arm in
//! [`open`] and in [`crate::config::StoreKind`].
//!
//! The NATS object store is not an object_store backend and stays in `snapshot::nats_store`.

pub mod azure;
pub mod dir;
pub mod gcs;
pub mod s3;
pub(crate) mod transport;
pub mod webdav;

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::store::{SnapshotStore, StoreFuture};
use crate::config::{SnapshotConfig, StoreKind};
use crate::error::{Error, Result};
pub use transport::HttpOptions;

/// Opens the object_store-based store that `snapshot.store` names; `None` for `nats`, which the snapshot
/// service opens itself (it needs the JetStream context).
pub fn open(snapshot: &SnapshotConfig) -> Result<Option<Arc<dyn SnapshotStore>>> {
    let store: Arc<dyn SnapshotStore> = match snapshot.store {
        StoreKind::Nats => return Ok(None),
        StoreKind::Dir => Arc::new(dir::DirStore::new(&snapshot.dir.path)?),
        StoreKind::S3 => Arc::new(s3::S3Store::from_config(&snapshot.s3)?),
        StoreKind::Gcs => Arc::new(gcs::GcsStore::from_config(&snapshot.gcs)?),
        StoreKind::Azure => Arc::new(azure::AzureStore::from_config(&snapshot.azure)?),
        StoreKind::Webdav => Arc::new(webdav::WebDavStore::from_config(&snapshot.webdav)?),
    };
    Ok(Some(store))
}

/// What a store needs to tell about itself beyond the object_store it wraps.
pub trait StoreDetails: Send + Sync + 'static {
    /// The store for logs and errors, e.g. `s3://bucket/prefix/ (http://host:9000)`.
    fn describe(&self) -> String;
    /// One object for errors, e.g. `s3://bucket/prefix/key at http://host:9000`; `full_key` includes the
    /// store's prefix.
    fn target(&self, full_key: &str) -> String;
    /// Extra words for an error, e.g. that no credentials were found when the server refused access.
    fn hint(&self, _err: &object_store::Error) -> Option<String> {
        None
    }
    /// Whether `err` from an upload means the bucket or container does not exist yet, and
    /// [`StoreDetails::create_container`] can make it.
    fn is_missing_container(&self, _err: &object_store::Error) -> bool {
        false
    }
    /// Creates the bucket or container; called once after an upload failed because it was missing.
    fn create_container(&self) -> Option<BoxFuture<'_, Result<()>>> {
        None
    }
    /// Uploads the local file `source` (`size` bytes) to `path` with its body streamed from the file,
    /// for a backend without multipart uploads; `None` when it has no such way. The error is the
    /// reason only; the caller names the object.
    fn upload_file<'a>(
        &'a self,
        _path: &'a Path,
        _source: &'a FsPath,
        _size: u64,
    ) -> Option<BoxFuture<'a, std::result::Result<(), String>>> {
        None
    }
}

/// How an upload of one object becomes visible atomically on this backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// A single PUT or a completed multipart upload replaces the object in one step (S3, GCS, Azure, and
    /// object_store's local files, which are written aside and renamed).
    Atomic,
    /// A PUT may be seen half-written (WebDAV writes into the file as it arrives): upload under a hidden
    /// temporary name, then copy over the key on the server and delete the temporary object.
    ViaTemporary,
}

/// Temporary objects start with this, and listings leave them out.
const PARTIAL_MARK: &str = ".hl-partial-";

/// Any object_store as a [`SnapshotStore`]: keys live under an optional prefix; large files go up in
/// parts and come down as streams, so memory does not grow with the snapshot.
pub struct ObjectSnapshotStore<D> {
    store: Arc<dyn ObjectStore>,
    details: D,
    /// Empty, or ends with `/`.
    prefix: String,
    part_size: usize,
    visibility: Visibility,
    /// Whether `put_multipart` works here (object_store's HTTP store has none).
    multipart: bool,
}

impl<D: StoreDetails> ObjectSnapshotStore<D> {
    pub(crate) fn wrap(
        store: Arc<dyn ObjectStore>,
        details: D,
        prefix: &str,
        part_size: u64,
        visibility: Visibility,
        multipart: bool,
    ) -> Self {
        ObjectSnapshotStore {
            store,
            details,
            prefix: normalize_prefix(prefix),
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            visibility,
            multipart,
        }
    }

    /// What the store said about itself (bucket, region, credentials source, ...).
    pub fn details(&self) -> &D {
        &self.details
    }

    /// The key prefix inside the bucket or container: empty, or ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object_store path for a store key, refusing keys that would not round-trip.
    fn path(&self, key: &str) -> Result<(String, Path)> {
        let invalid = |why: &str| {
            Error::Snapshot(format!(
                "invalid snapshot object key `{}` for {}: {why}",
                key.escape_debug(),
                self.details.describe()
            ))
        };
        if key.is_empty() {
            return Err(invalid("it is empty"));
        }
        if key.starts_with('/') || key.ends_with('/') || key.contains("//") {
            return Err(invalid("it has an empty path segment"));
        }
        if key.split('/').any(|part| part == "." || part == "..") {
            return Err(invalid("it has a `.` or `..` path segment"));
        }
        if key.chars().any(char::is_control) {
            return Err(invalid("it has a control character"));
        }
        let full = format!("{}{key}", self.prefix);
        let path = Path::parse(&full).map_err(|err| invalid(&err.to_string()))?;
        Ok((full, path))
    }

    fn failure(&self, op: &str, full_key: &str, err: &object_store::Error) -> Error {
        let chain = error_chain(err);
        let mut text = format!("{op} {} failed", self.details.target(full_key));
        if let Some(retries) = retries_in(&chain) {
            text.push_str(&format!(" after {} attempts", retries + 1));
        }
        text.push_str(": ");
        text.push_str(&chain);
        if let Some(hint) = self.details.hint(err) {
            text.push_str(" (");
            text.push_str(&hint);
            text.push(')');
        }
        Error::Snapshot(text)
    }

    /// Runs an upload; when it fails because the bucket is missing, creates the bucket and runs it again.
    async fn with_container<T, F, Fut>(&self, upload: F) -> std::result::Result<T, UploadError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, UploadError>>,
    {
        match upload().await {
            Err(UploadError::Store(err)) if self.details.is_missing_container(&err) => {
                match self.details.create_container() {
                    Some(create) => {
                        create.await.map_err(UploadError::Other)?;
                        upload().await
                    }
                    None => Err(UploadError::Store(err)),
                }
            }
            other => other,
        }
    }

    /// Uploads `payload` under `path` so that it becomes visible in one step.
    async fn put_payload(&self, full: &str, path: &Path, payload: PutPayload) -> Result<()> {
        let result = self
            .with_container(|| async {
                match self.visibility {
                    Visibility::Atomic => self
                        .store
                        .put(path, payload.clone())
                        .await
                        .map(drop)
                        .map_err(UploadError::Store),
                    Visibility::ViaTemporary => {
                        let temp = self.temporary(path)?;
                        let copied = async {
                            self.store.put(&temp, payload.clone()).await?;
                            self.store.copy(&temp, path).await
                        }
                        .await;
                        let _ = self.store.delete(&temp).await;
                        copied.map_err(UploadError::Store)
                    }
                }
            })
            .await;
        result.map_err(|err| err.into_error(self, "PUT", full))
    }

    /// A hidden name beside `path` for an upload in progress.
    fn temporary(&self, path: &Path) -> std::result::Result<Path, UploadError> {
        let full = path.as_ref();
        let (dir, name) = match full.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), full),
        };
        Path::parse(format!(
            "{dir}{PARTIAL_MARK}{}-{}-{name}",
            std::process::id(),
            rand::random::<u32>()
        ))
        .map_err(|err| UploadError::Other(Error::Snapshot(err.to_string())))
    }

    /// Streams a file to a hidden temporary object, then copies it over `path` on the server; `None`
    /// when the backend cannot stream an upload.
    async fn stream_via_temporary(
        &self,
        path: &Path,
        source: &FsPath,
        size: u64,
    ) -> Option<std::result::Result<(), UploadError>> {
        let temp = match self.temporary(path) {
            Ok(temp) => temp,
            Err(err) => return Some(Err(err)),
        };
        // Announced before the first byte is read: a backend without the capability changes nothing.
        let upload = self.details.upload_file(&temp, source, size)?;
        let result = async {
            // An empty object first: object_store creates the parent folders (MKCOL) on the way.
            self.store.put(&temp, PutPayload::default()).await?;
            upload
                .await
                .map_err(|why| UploadError::Other(Error::Snapshot(why)))?;
            self.store.copy(&temp, path).await?;
            Ok(())
        }
        .await;
        let _ = self.store.delete(&temp).await;
        Some(result)
    }

    /// Streams the file at `source` into a multipart upload, one part at a time (two in flight).
    async fn put_parts(
        &self,
        path: &Path,
        source: &FsPath,
    ) -> std::result::Result<(), UploadError> {
        let mut file = tokio::fs::File::open(source)
            .await
            .map_err(|err| UploadError::Other(Error::io(source.display(), err)))?;
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(UploadError::Store)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut buffer = vec![0u8; self.part_size.min(8 << 20)];
        let streamed = async {
            loop {
                let n = file
                    .read(&mut buffer)
                    .await
                    .map_err(|err| UploadError::Other(Error::io(source.display(), err)))?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(UploadError::Store)?;
                writer.write(&buffer[..n]);
            }
        }
        .await;
        match streamed {
            // An unfinished upload is never visible; aborting frees the parts the service kept.
            Err(err) => {
                let _ = writer.abort().await;
                Err(err)
            }
            Ok(()) => writer.finish().await.map(drop).map_err(UploadError::Store),
        }
    }

    /// Reads a whole local file into a payload (files up to one part, or stores without multipart).
    async fn read_payload(&self, source: &FsPath) -> Result<PutPayload> {
        let mut file = tokio::fs::File::open(source)
            .await
            .map_err(|err| Error::io(source.display(), err))?;
        let mut chunks = Vec::new();
        loop {
            let mut chunk = vec![0u8; self.part_size.min(8 << 20)];
            let mut filled = 0;
            while filled < chunk.len() {
                let n = file
                    .read(&mut chunk[filled..])
                    .await
                    .map_err(|err| Error::io(source.display(), err))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            chunk.truncate(filled);
            if filled == 0 {
                break;
            }
            chunks.push(Bytes::from(chunk));
        }
        Ok(chunks.into_iter().collect())
    }
}

/// Shows where the store is, never its credentials.
impl<D: StoreDetails> std::fmt::Debug for ObjectSnapshotStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSnapshotStore")
            .field("store", &self.details.describe())
            .field("part_size", &self.part_size)
            .field("visibility", &self.visibility)
            .finish()
    }
}

/// An upload's failure: from the store (may mean a missing bucket), or anything else (already an
/// [`Error`] naming what failed).
enum UploadError {
    Store(object_store::Error),
    Other(Error),
}

impl From<object_store::Error> for UploadError {
    fn from(err: object_store::Error) -> Self {
        UploadError::Store(err)
    }
}

impl UploadError {
    fn into_error<D: StoreDetails>(
        self,
        store: &ObjectSnapshotStore<D>,
        op: &str,
        full: &str,
    ) -> Error {
        match self {
            UploadError::Store(err) => store.failure(op, full, &err),
            UploadError::Other(Error::Io { path, source }) => Error::Snapshot(format!(
                "{op} {}: reading {path}: {source}",
                store.details.target(full)
            )),
            UploadError::Other(Error::Snapshot(why)) => {
                Error::Snapshot(format!("{op} {} failed: {why}", store.details.target(full)))
            }
            UploadError::Other(err) => err,
        }
    }
}

impl<D: StoreDetails> SnapshotStore for ObjectSnapshotStore<D> {
    fn describe(&self) -> String {
        self.details.describe()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (full, path) = self.path(key)?;
            self.put_payload(&full, &path, PutPayload::from(bytes))
                .await
        })
    }

    fn put_file<'a>(&'a self, key: &'a str, source: &'a FsPath) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (full, path) = self.path(key)?;
            let size = tokio::fs::metadata(source)
                .await
                .map_err(|err| {
                    UploadError::Other(Error::io(source.display(), err))
                        .into_error(self, "PUT", &full)
                })?
                .len();
            let streamed = self.multipart && self.visibility == Visibility::Atomic;
            if streamed && size > self.part_size as u64 {
                return self
                    .with_container(|| self.put_parts(&path, source))
                    .await
                    .map_err(|err| err.into_error(self, "PUT", &full));
            }
            if self.visibility == Visibility::ViaTemporary && size > self.part_size as u64 {
                if let Some(result) = self.stream_via_temporary(&path, source, size).await {
                    return result.map_err(|err| err.into_error(self, "PUT", &full));
                }
            }
            // One request: small files (or a backend with no streamed upload at all).
            let payload = self
                .read_payload(source)
                .await
                .map_err(|err| UploadError::Other(err).into_error(self, "PUT", &full))?;
            self.put_payload(&full, &path, payload).await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let (full, path) = self.path(key)?;
            let fetched = async { self.store.get(&path).await?.bytes().await }.await;
            match fetched {
                Ok(bytes) => Ok(Some(bytes.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(self.failure("GET", &full, &err)),
            }
        })
    }

    fn get_file<'a>(&'a self, key: &'a str, dest: &'a FsPath) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let (full, path) = self.path(key)?;
            let result = match self.store.get(&path).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(err) => return Err(self.failure("GET", &full, &err)),
            };
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(|err| Error::io(dest.display(), err))?;
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|err| self.failure("GET", &full, &err))?;
                file.write_all(&chunk)
                    .await
                    .map_err(|err| Error::io(dest.display(), err))?;
            }
            file.flush()
                .await
                .map_err(|err| Error::io(dest.display(), err))?;
            Ok(true)
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            // object_store lists whole path segments; a key prefix may end mid-segment, so list the
            // folder it is in and filter.
            let full = format!("{}{prefix}", self.prefix);
            let folder = match full.rsplit_once('/') {
                Some((folder, _)) => Some(Path::parse(folder).map_err(|err| {
                    Error::Snapshot(format!(
                        "invalid snapshot key prefix `{}` for {}: {err}",
                        prefix.escape_debug(),
                        self.details.describe()
                    ))
                })?),
                None => None,
            };
            let listed: std::result::Result<Vec<_>, _> =
                self.store.list(folder.as_ref()).try_collect().await;
            let listed = match listed {
                Ok(listed) => listed,
                // No bucket (or folder) yet: nothing stored.
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(err) if self.details.is_missing_container(&err) => Vec::new(),
                Err(err) => return Err(self.failure("LIST", &full, &err)),
            };
            Ok(listed
                .into_iter()
                .filter_map(|meta| {
                    let key = meta.location.as_ref().strip_prefix(&full)?;
                    let name = meta.location.filename().unwrap_or_default();
                    (!name.starts_with(PARTIAL_MARK)).then(|| format!("{prefix}{key}"))
                })
                .collect())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (full, path) = self.path(key)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(err) if self.details.is_missing_container(&err) => Ok(()),
                Err(err) => Err(self.failure("DELETE", &full, &err)),
            }
        })
    }
}

/// `""` for no prefix, else the prefix without leading slashes and with exactly one trailing slash.
pub(crate) fn normalize_prefix(path: &str) -> String {
    let trimmed = path.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The error and its causes on one line (servers put whole HTML or XML documents in them), each cause
/// once.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How often object_store retried, from its error text (`..., after 2 retries, ...`): the count is not
/// exposed otherwise, and an operator wants to know a failure was not a single blip.
fn retries_in(chain: &str) -> Option<u32> {
    let (_, rest) = chain.split_once(", after ")?;
    let (count, rest) = rest.split_once(' ')?;
    rest.starts_with("retries").then(|| count.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_counts_come_from_object_store_errors() {
        assert_eq!(
            retries_in("Error performing PUT http://x/k in 1s, after 2 retries, max_retries: 2"),
            Some(2)
        );
        assert_eq!(
            retries_in("Error performing PUT http://x/k in 1s - boom"),
            None
        );
    }

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
        assert_eq!(normalize_prefix("a"), "a/");
    }
}
