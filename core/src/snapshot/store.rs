//! Where snapshots live. A store keeps opaque objects by key; the snapshot logic above it makes uploads
//! atomic (object first, then its manifest, then the `latest` pointer) and keeps the last N.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use crate::error::Result;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A snapshot store: the NATS object store, or one of `snapshot::stores` (S3, GCS, Azure, WebDAV, a
/// directory).
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
