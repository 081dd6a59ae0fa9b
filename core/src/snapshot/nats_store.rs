//! Snapshots in a NATS JetStream object store (the default store), and the upload lease in NATS KV.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::store::{SnapshotStore, StoreFuture};
use crate::error::{Error, Result};

pub struct NatsObjectStore {
    bucket: String,
    store: object_store::ObjectStore,
}

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
        })
    }
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
