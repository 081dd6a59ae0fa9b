//! `NativeReplica`: the core `Replica` behind the Swift `Replica` class. Releasing the last reference closes
//! it in the background (as `close()` would), so a forgotten replica stops cleanly instead of leaking.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::conflicts::NativeConflictListener;
use crate::errors::NativeError;
use crate::events::{NativeChangeListener, NativeListener};
use crate::records::{Conflict, Status};
use crate::status::{SnapshotManifest, Token};

/// Native replicas not yet released: alive, or closing in the background after their last reference went.
static LIVE_REPLICAS: AtomicU64 = AtomicU64::new(0);

struct LiveGuard;

impl LiveGuard {
    fn new() -> LiveGuard {
        LIVE_REPLICAS.fetch_add(1, Ordering::SeqCst);
        LiveGuard
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE_REPLICAS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many replicas this process holds that are not fully released yet (for leak checks).
#[uniffi::export(name = "native_live_replica_count")]
pub fn live_replica_count() -> u64 {
    LIVE_REPLICAS.load(Ordering::SeqCst)
}

/// Opens `db` for replication with a configuration given as JSON (the Swift `Config`).
#[uniffi::export(name = "native_open_replicated")]
pub async fn open_replicated(
    db: String,
    config_json: String,
) -> Result<Arc<NativeReplica>, NativeError> {
    let config = harmonylite::Config::from_json_str(&config_json)?;
    let replica = harmonylite::open_replicated(db, config).await?;
    Ok(Arc::new(NativeReplica {
        replica,
        closed: watch::channel(false).0,
        live: Some(LiveGuard::new()),
    }))
}

#[derive(uniffi::Object)]
pub struct NativeReplica {
    replica: harmonylite::Replica,
    /// Turns true once `close()` finished; listeners end then (the core keeps its event channel open
    /// while the replica object exists).
    closed: watch::Sender<bool>,
    live: Option<LiveGuard>,
}

fn core_json(json: serde_json::Result<String>) -> Result<String, NativeError> {
    json.map_err(|err| harmonylite::Error::Internal(format!("does not serialize: {err}")).into())
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[uniffi::export]
impl NativeReplica {
    pub fn node_id(&self) -> u64 {
        self.replica.node_id()
    }

    pub fn db_path(&self) -> String {
        self.replica.db_path().display().to_string()
    }

    pub fn nats_urls(&self) -> Vec<String> {
        self.replica.nats_urls().to_vec()
    }

    /// Publishes everything committed so far, waits for JetStream's acknowledgement, returns the token.
    pub async fn sync(&self, timeout_ms: u64) -> Result<Token, NativeError> {
        Ok(self.replica.sync(millis(timeout_ms)).await?.into())
    }

    /// Waits until this node applied everything up to `token`.
    pub async fn wait_for(&self, token: Token, timeout_ms: u64) -> Result<(), NativeError> {
        Ok(self
            .replica
            .wait_for(&token.into(), millis(timeout_ms))
            .await?)
    }

    /// Waits until NATS is connected and the streams exist.
    pub async fn wait_ready(&self, timeout_ms: u64) -> Result<(), NativeError> {
        Ok(self.replica.wait_ready(millis(timeout_ms)).await?)
    }

    /// The positions this node has applied.
    pub fn applied(&self) -> Token {
        self.replica.applied().into()
    }

    pub async fn status(&self) -> Result<Status, NativeError> {
        Ok(self.replica.status().await?.into())
    }

    /// The node's metrics as Prometheus/OpenMetrics text, every series labelled `node_id`.
    pub async fn metrics(&self) -> Result<String, NativeError> {
        Ok(self.replica.metrics().await?)
    }

    /// Saves a snapshot now; `None` when another node holds the upload lease.
    pub async fn save_snapshot(&self) -> Result<Option<SnapshotManifest>, NativeError> {
        Ok(self.replica.save_snapshot().await?.map(Into::into))
    }

    /// Delivers change events (from now on) to `listener` until cancelled, closed or released.
    pub fn subscribe(&self, listener: Box<dyn NativeChangeListener>) -> Arc<NativeListener> {
        Arc::new(NativeListener::start(
            self.replica.subscribe(),
            self.closed.subscribe(),
            listener,
        ))
    }

    /// The conflict log, oldest first: up to `limit` of the newest entries with an id above `after`.
    pub async fn conflicts(&self, after: i64, limit: u64) -> Result<Vec<Conflict>, NativeError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self
            .replica
            .conflicts(after, limit)
            .await?
            .into_iter()
            .map(Conflict::from)
            .collect())
    }

    /// Delivers conflicts (recorded from now on) to `listener` until cancelled, closed or released.
    pub fn subscribe_conflicts(
        &self,
        listener: Box<dyn NativeConflictListener>,
    ) -> Arc<NativeListener> {
        Arc::new(NativeListener::start_conflicts(
            self.replica.subscribe_conflicts(),
            self.closed.subscribe(),
            listener,
        ))
    }

    /// The core's `status()` as it serializes it (JSON), for the field-drift test. Not public API.
    pub async fn core_status_json(&self) -> Result<String, NativeError> {
        let status = self.replica.status().await?;
        core_json(serde_json::to_string(&status))
    }

    /// The core's conflict log as it serializes it (JSON), for the field-drift test. Not public API.
    pub async fn core_conflicts_json(&self) -> Result<String, NativeError> {
        let conflicts = self.replica.conflicts(0, 1000).await?;
        core_json(serde_json::to_string(&conflicts))
    }

    /// Stops replication (idempotent); listeners end once it finished.
    pub async fn close(&self) -> Result<(), NativeError> {
        let outcome = self.replica.close().await;
        self.closed.send_replace(true);
        Ok(outcome?)
    }

    /// Closes and removes capture (triggers and the library's tables); returns how many objects it removed.
    pub async fn cleanup(&self) -> Result<u64, NativeError> {
        let outcome = self.replica.cleanup().await;
        self.closed.send_replace(true);
        Ok(outcome? as u64)
    }
}

impl Drop for NativeReplica {
    fn drop(&mut self) {
        let replica = self.replica.clone();
        let closed = std::mem::replace(&mut self.closed, watch::channel(true).0);
        let live = self.live.take();
        harmonylite::runtime().spawn(async move {
            if let Err(err) = replica.close().await {
                warn!(error = %err, "closing a released replica failed");
            }
            closed.send_replace(true);
            drop(replica);
            drop(live);
        });
    }
}

/// The content type of the text `metrics()` returns (the core's value), for the app's own metrics endpoint.
#[uniffi::export(name = "native_metrics_content_type")]
pub fn metrics_content_type() -> String {
    harmonylite::METRICS_CONTENT_TYPE.to_string()
}
