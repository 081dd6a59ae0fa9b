//! The replica's snapshot duties: bootstrap at open (restore when needed) and saving (on demand, on an
//! interval, or after the stream grew), with the store and the upload lease opened lazily.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::{
    build, fetch_newest_valid, install, local_need, peek_identity, upload, Lease, Manifest,
    NatsObjectStore, WorkFile,
};
use super::{ProgressHandle, SnapshotProgress, SnapshotStore};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::signing::ClusterKeys;
use crate::retry::Backoff;
use crate::transport::Names;

pub struct SnapshotService {
    config: Config,
    js: jetstream::Context,
    client: async_nats::Client,
    names: Names,
    replicas: usize,
    work_dir: PathBuf,
    store: OnceCell<Arc<dyn SnapshotStore>>,
    lease: OnceCell<Lease>,
    /// The cluster keys (`[signing]`): manifests are signed with them, and only signed ones restored.
    keys: Option<ClusterKeys>,
    pub progress: ProgressHandle,
}

impl SnapshotService {
    pub fn new(
        config: &Config,
        db: &Path,
        js: jetstream::Context,
        client: async_nats::Client,
        names: &Names,
        replicas: usize,
        keys: Option<ClusterKeys>,
    ) -> SnapshotService {
        SnapshotService {
            keys,
            config: config.clone(),
            js,
            client,
            names: names.clone(),
            replicas,
            work_dir: Config::state_dir_for(db).join("snapshots"),
            store: OnceCell::new(),
            lease: OnceCell::new(),
            progress: Arc::new(Mutex::new(SnapshotProgress {
                phase: "idle".into(),
                ..Default::default()
            })),
        }
    }

    pub fn progress(&self) -> SnapshotProgress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    async fn store(&self) -> Result<Arc<dyn SnapshotStore>> {
        let store = self
            .store
            .get_or_try_init(|| async {
                let snapshot = &self.config.snapshot;
                if let Some(store) = super::stores::open(snapshot)? {
                    return Ok::<_, Error>(store);
                }
                let bucket = if snapshot.nats.bucket.is_empty() {
                    format!("{}-snapshots", self.names.stream_prefix)
                } else {
                    snapshot.nats.bucket.clone()
                };
                let replicas = if snapshot.nats.replicas > 0 {
                    snapshot.nats.replicas as usize
                } else {
                    self.replicas
                };
                let store: Arc<dyn SnapshotStore> =
                    Arc::new(NatsObjectStore::open(&self.js, &bucket, replicas).await?);
                Ok::<_, Error>(store)
            })
            .await?;
        Ok(store.clone())
    }

    async fn lease(&self) -> Result<&Lease> {
        self.lease
            .get_or_try_init(|| async {
                let ttl = Duration::from_millis(self.config.snapshot.leader_ttl.max(1000));
                Lease::open(
                    &self.js,
                    &format!("{}-snapshot-lease", self.names.stream_prefix),
                    ttl,
                    self.replicas,
                )
                .await
            })
            .await
    }

    async fn wait_connected(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while self.client.connection_state() != async_nats::connection::State::Connected {
            if started.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Is this node's position older than the first message a shard's stream still holds?
    async fn behind_retention(&self, positions: &BTreeMap<u32, u64>) -> Option<String> {
        for shard in 0..self.config.replication_log.shards {
            let Ok(stream) = self.js.get_stream(self.names.stream(shard)).await else {
                continue;
            };
            let state = &stream.cached_info().state;
            let applied = positions.get(&shard).copied().unwrap_or(0);
            if state.messages > 0 && state.first_sequence > applied + 1 {
                return Some(format!(
                    "shard {shard}: applied up to {applied}, but the stream now starts at {}",
                    state.first_sequence
                ));
            }
        }
        None
    }

    /// Restores the newest valid snapshot when the database is missing, empty, corrupted or behind retention.
    pub async fn bootstrap(&self, db: &Path, config: &Config, node_id: u64) -> Result<()> {
        let db_owned = db.to_path_buf();
        let local = tokio::task::spawn_blocking(move || local_need(&db_owned))
            .await
            .map_err(|err| Error::Internal(err.to_string()))?;
        let corrupt = local
            .as_deref()
            .is_some_and(|r| r.contains("integrity") || r.contains("cannot be"));
        let reason = match local {
            Some(reason) => {
                if !self
                    .wait_connected(Duration::from_millis(self.config.snapshot.restore_timeout))
                    .await
                {
                    warn!(reason = %reason, "NATS unreachable: starting without a snapshot");
                    return if corrupt {
                        Err(Error::Snapshot(format!(
                            "{reason}, and no snapshot could be fetched (NATS unreachable)"
                        )))
                    } else {
                        Ok(())
                    };
                }
                reason
            }
            None => {
                // Only worth a short wait: a node with data can start offline and check next time.
                if !self.wait_connected(Duration::from_secs(3)).await {
                    return Ok(());
                }
                let db_owned = db.to_path_buf();
                let (_, positions) = tokio::task::spawn_blocking(move || peek_identity(&db_owned))
                    .await
                    .map_err(|err| Error::Internal(err.to_string()))?;
                match self.behind_retention(&positions).await {
                    Some(reason) => reason,
                    None => return Ok(()),
                }
            }
        };
        info!(reason = %reason, "this node needs a snapshot");
        let fetched = self.fetch_with_retry().await;
        let (manifest, staged) = match fetched {
            Ok(Some(found)) => found,
            Ok(None) => {
                info!("no snapshot in the store yet: starting from the stream");
                return if corrupt {
                    Err(Error::Snapshot(format!("{reason}, and no snapshot exists")))
                } else {
                    Ok(())
                };
            }
            Err(err) if !corrupt => {
                warn!(error = %err, "no usable snapshot: starting from the stream");
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let total = manifest.raw_bytes;
        super::set_phase(&self.progress, "installing", 0, total);
        let (db_owned, cfg, object) = (db.to_path_buf(), config.clone(), manifest.object.clone());
        // The staged file moves into the task, so it is deleted there whatever happens.
        tokio::task::spawn_blocking(move || {
            install(&db_owned, staged.path(), node_id, &cfg, corrupt)
        })
        .await
        .map_err(|err| Error::Internal(err.to_string()))??;
        super::set_phase(&self.progress, "idle", total, total);
        if let Ok(mut p) = self.progress.lock() {
            p.restored = Some(object.clone());
        }
        info!(object = %object, positions = ?manifest.positions, "snapshot restored; replaying the stream from its positions");
        Ok(())
    }

    /// JetStream may still be electing a leader right after start: retry the store for a while.
    async fn fetch_with_retry(&self) -> Result<Option<(Manifest, WorkFile)>> {
        let started = Instant::now();
        let limit = Duration::from_millis(self.config.snapshot.restore_timeout);
        let mut pause = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let attempt = async {
                let store = self.store().await?;
                fetch_newest_valid(
                    store.as_ref(),
                    &self.work_dir,
                    &self.progress,
                    self.keys.as_ref(),
                )
                .await
            };
            match attempt.await {
                Ok(found) => return Ok(found),
                Err(err @ Error::Snapshot(_)) if err.to_string().contains("no valid snapshot") => {
                    return Err(err)
                }
                Err(err) if started.elapsed() < limit => {
                    warn!(error = %err, "snapshot store not ready; retrying");
                    tokio::time::sleep(pause.next_pause()).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Saves a snapshot if this node holds (or takes) the upload lease; `None` when another node holds it.
    pub async fn save(&self, db: &Path, node_id: u64) -> Result<Option<Manifest>> {
        // The store first: a misconfigured store is an error on every node, lease or not.
        let store = self.store().await?;
        if !self.lease().await?.acquire(node_id).await? {
            info!("another node holds the snapshot lease; skipping");
            return Ok(None);
        }
        super::set_phase(&self.progress, "creating", 0, 0);
        let (db_owned, work) = (db.to_path_buf(), self.work_dir.clone());
        let built = tokio::task::spawn_blocking(move || build(&db_owned, &work, node_id))
            .await
            .map_err(|err| Error::Internal(err.to_string()));
        let (packed, manifest) = match built.and_then(|r| r) {
            Ok(built) => built,
            Err(err) => {
                super::set_phase(&self.progress, "idle", 0, 0);
                return Err(err);
            }
        };
        let result = upload(
            store.as_ref(),
            packed,
            &manifest,
            self.config.snapshot.keep,
            &self.progress,
            self.keys.as_ref(),
        )
        .await;
        if result.is_err() {
            super::set_phase(&self.progress, "idle", 0, 0);
        }
        result.map(Some)
    }

    /// The store, for tests and tools.
    pub async fn open_store(&self) -> Result<Arc<dyn SnapshotStore>> {
        self.store().await
    }
}
