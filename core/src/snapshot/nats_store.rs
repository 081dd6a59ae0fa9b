//! Snapshots in a NATS JetStream object store (the default store), and the upload lease in NATS KV.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::store::{SnapshotStore, StoreFuture};
use crate::error::{Error, Result};

pub struct NatsObjectStore {
    bucket: String,
    store: object_store::ObjectStore,
    js: jetstream::Context,
}

/// Chunks asked for per pull: with the object store's 128 KiB chunks, about 1 MiB in flight.
const PULL_BATCH: usize = 8;
/// The longest wait for the next chunk of a download before it fails.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

impl NatsObjectStore {
    /// Opens the bucket, creating it if missing.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<NatsObjectStore> {
        let store = match js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_string(),
                    description: Some("HarmonyLite snapshots".into()),
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|err| {
                    Error::Snapshot(format!("cannot open object store bucket `{bucket}`: {err}"))
                })?,
        };
        Ok(NatsObjectStore {
            bucket: bucket.to_string(),
            store,
            js: js.clone(),
        })
    }

    fn error(&self, key: &str, what: impl std::fmt::Display) -> Error {
        Error::Snapshot(format!(
            "downloading `{key}` from bucket `{}`: {what}",
            self.bucket
        ))
    }

    /// Streams an object's chunks into `dest` through a pull consumer on the bucket's stream. Not through
    /// `ObjectStore::get`: its push consumer is fed as fast as the server can send, and the client queues
    /// what the disk has not taken yet — memory that grew with the object in tests. Pulls of a few chunks
    /// keep at most a couple of MiB in flight.
    async fn download(&self, key: &str, dest: &Path) -> Result<bool> {
        let info = match self.store.info(key).await {
            Ok(info) if !info.deleted => info,
            Ok(_) => return Ok(false),
            Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(self.error(key, err)),
        };
        if info
            .options
            .as_ref()
            .is_some_and(|options| options.link.is_some())
        {
            return Err(self.error(key, "the object is a link, which snapshots never use"));
        }
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(|err| Error::io(dest.display(), err))?;
        // A tokio file write is a blocking-pool round trip: batch chunks into large writes.
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut received: usize = 0;
        let mut chunks: usize = 0;
        if info.chunks > 0 {
            let stream = self
                .js
                .get_stream(format!("OBJ_{}", self.bucket))
                .await
                .map_err(|err| self.error(key, format!("opening the bucket's stream: {err}")))?;
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: format!("$O.{}.C.{}", self.bucket, info.nuid),
                    ack_policy: AckPolicy::None,
                    deliver_policy: DeliverPolicy::All,
                    // Removed by the server if this node dies mid-download.
                    inactive_threshold: Duration::from_secs(60),
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .map_err(|err| self.error(key, format!("creating a consumer: {err}")))?;
            let name = consumer.cached_info().name.clone();
            let copied = async {
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(PULL_BATCH)
                    .messages()
                    .await
                    .map_err(|err| self.error(key, err))?;
                while chunks < info.chunks {
                    let message = match tokio::time::timeout(CHUNK_TIMEOUT, messages.next()).await {
                        Ok(Some(Ok(message))) => message,
                        Ok(Some(Err(err))) => return Err(self.error(key, err)),
                        Ok(None) => return Err(self.error(key, "the chunk stream ended early")),
                        Err(_) => {
                            return Err(self.error(
                                key,
                                format!(
                                    "no chunk for {CHUNK_TIMEOUT:?} after {chunks} of {}",
                                    info.chunks
                                ),
                            ))
                        }
                    };
                    // Without acks nothing is redelivered; a skipped consumer sequence is a lost chunk.
                    let sequence = message.info().map(|i| i.consumer_sequence).unwrap_or(0);
                    if sequence != chunks as u64 + 1 {
                        return Err(self.error(
                            key,
                            format!("chunk {} arrived as number {sequence}", chunks + 1),
                        ));
                    }
                    hasher.update(&message.payload);
                    writer
                        .write_all(&message.payload)
                        .await
                        .map_err(|err| Error::io(dest.display(), err))?;
                    received += message.payload.len();
                    chunks += 1;
                }
                Ok(())
            }
            .await;
            let _ = stream.delete_consumer(&name).await;
            copied?;
        }
        writer
            .flush()
            .await
            .map_err(|err| Error::io(dest.display(), err))?;
        if received != info.size {
            return Err(self.error(
                key,
                format!("got {received} bytes, the object has {}", info.size),
            ));
        }
        let digest = base64_url(&hasher.finalize());
        match info
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("SHA-256="))
        {
            Some(expected) if expected.trim_end_matches('=') != digest => Err(self.error(
                key,
                format!("digest mismatch: the object says {expected}, the data is {digest}"),
            )),
            _ => Ok(true),
        }
    }
}

/// Unpadded URL-safe base64, the encoding of the object store's SHA-256 digests (compared without padding).
fn base64_url(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=group.len() {
            out.push(char::from(DIGITS[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

impl SnapshotStore for NatsObjectStore {
    fn describe(&self) -> String {
        format!("nats-object-store:{}", self.bucket)
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut reader = bytes.as_slice();
            self.store
                .put(key, &mut reader)
                .await
                .map(|_| ())
                .map_err(|err| {
                    Error::Snapshot(format!(
                        "uploading `{key}` to bucket `{}`: {err}",
                        self.bucket
                    ))
                })
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut object = match self.store.get(key).await {
                Ok(object) => object,
                Err(err) if err.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(err) => {
                    return Err(Error::Snapshot(format!(
                        "downloading `{key}` from bucket `{}`: {err}",
                        self.bucket
                    )))
                }
            };
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await.map_err(|err| {
                Error::Snapshot(format!(
                    "reading `{key}` from bucket `{}`: {err}",
                    self.bucket
                ))
            })?;
            Ok(Some(bytes))
        })
    }

    fn put_file<'a>(&'a self, key: &'a str, path: &'a Path) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|err| Error::io(path.display(), err))?;
            // The object store reads one chunk at a time and publishes it (waiting for its ack) before
            // reading the next, so memory stays at a chunk whatever the file size. Its name becomes visible
            // only with the metadata message, after the last chunk.
            self.store
                .put(key, &mut file)
                .await
                .map(|_| ())
                .map_err(|err| {
                    Error::Snapshot(format!(
                        "uploading `{key}` from {} to bucket `{}`: {err}",
                        path.display(),
                        self.bucket
                    ))
                })
        })
    }

    fn get_file<'a>(&'a self, key: &'a str, dest: &'a Path) -> StoreFuture<'a, bool> {
        Box::pin(self.download(key, dest))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut listing = self.store.list().await.map_err(|err| {
                Error::Snapshot(format!("listing bucket `{}`: {err}", self.bucket))
            })?;
            let mut keys = Vec::new();
            // The listing is an ordered consumer that ends when it has caught up.
            while let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_secs(10), listing.next()).await
            {
                match item {
                    Ok(info) if !info.deleted && info.name.starts_with(prefix) => {
                        keys.push(info.name)
                    }
                    Ok(_) => {}
                    Err(err) => {
                        return Err(Error::Snapshot(format!(
                            "listing bucket `{}`: {err}",
                            self.bucket
                        )))
                    }
                }
            }
            Ok(keys)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            match self.store.delete(key).await {
                Ok(()) => Ok(()),
                Err(err) if err.to_string().contains("not found") => Ok(()),
                Err(err) => Err(Error::Snapshot(format!(
                    "deleting `{key}` from bucket `{}`: {err}",
                    self.bucket
                ))),
            }
        })
    }
}

/// The right to upload snapshots: a key in a KV bucket whose entries expire after `leader_ttl`. The holder
/// may renew it; other nodes skip while it is held, so two nodes never upload at once.
pub struct Lease {
    kv: kv::Store,
}

const LEASE_KEY: &str = "leader";

impl Lease {
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Lease> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    history: 1,
                    max_age: ttl.max(Duration::from_secs(1)),
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|err| {
                    Error::Snapshot(format!("cannot open lease bucket `{bucket}`: {err}"))
                })?,
        };
        Ok(Lease { kv })
    }

    /// Takes or renews the lease for `node_id`; `Ok(false)` when another node holds it.
    pub async fn acquire(&self, node_id: u64) -> Result<bool> {
        let me = node_id.to_string();
        let current = self
            .kv
            .entry(LEASE_KEY)
            .await
            .map_err(|err| Error::Snapshot(format!("reading the snapshot lease: {err}")))?;
        match current {
            Some(entry) if entry.operation == kv::Operation::Put => {
                if entry.value.as_ref() != me.as_bytes() {
                    return Ok(false);
                }
                Ok(self
                    .kv
                    .update(LEASE_KEY, me.into_bytes().into(), entry.revision)
                    .await
                    .is_ok())
            }
            _ => match self.kv.create(LEASE_KEY, me.into_bytes().into()).await {
                Ok(_) => Ok(true),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(err) => Err(Error::Snapshot(format!("taking the snapshot lease: {err}"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::base64_url;

    #[test]
    fn base64_url_matches_rfc_4648_without_padding() {
        assert_eq!(base64_url(b""), "");
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }
}
