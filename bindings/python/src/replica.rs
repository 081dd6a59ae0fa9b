//! `Replica` and `Token`, and the two ways to wait on the core: blocking (GIL released) and awaitable.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Once;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::sync::watch;

use crate::config::Config;
use crate::conflicts::{conflict_object, conflict_to_py, conflicts_json, Conflicts};
use crate::errors::{bad_argument, to_py_err, Answer};
use crate::events::{EventStream, Listener};
use crate::fork;

/// How often a blocking call wakes (with the GIL) to let Python handle signals such as Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// Runs a core future to completion on the core runtime with the GIL released. The main thread wakes every
/// `SIGNAL_CHECK` to run Python's signal handlers: a `KeyboardInterrupt` cancels the wait and is raised.
fn blocking<T: Send + 'static>(
    py: Python<'_>,
    future: impl Future<Output = harmonylite::Result<T>> + Send + 'static,
) -> PyResult<T> {
    fork::check()?;
    let (done, mut outcome) = std::sync::mpsc::sync_channel(1);
    let task = harmonylite::runtime().spawn(async move {
        let _ = done.send(future.await);
    });
    loop {
        // The receiver moves in and out: it is Send but not Sync.
        let (receiver, received) = py.detach(move || {
            let received = outcome.recv_timeout(SIGNAL_CHECK);
            (outcome, received)
        });
        outcome = receiver;
        match received {
            Ok(result) => return result.map_err(|err| to_py_err(py, err)),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupted) = py.check_signals() {
                    task.abort();
                    return Err(interrupted);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(to_py_err(
                    py,
                    harmonylite::Error::Internal("a harmonylite task failed".into()),
                ))
            }
        }
    }
}

/// Turns a core future into a Python awaitable running on the core's runtime.
pub fn awaitable<'py, T>(
    py: Python<'py>,
    future: impl Future<Output = Answer<T>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    fork::check()?;
    static BRIDGE: Once = Once::new();
    // Lazily, so a process that only imports the module can still fork freely.
    BRIDGE.call_once(|| {
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(harmonylite::runtime());
    });
    pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(future.await) })
}

fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        bad_argument(
            "timeout",
            format!("{seconds} is not a number of seconds (0 or more)"),
        )
    })
}

/// A read-your-writes token: per shard, the stream position a node must have applied. Its text form
/// (`"0:15,1:20"`) travels between processes and languages.
#[pyclass(frozen, eq, hash, module = "harmonylite._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token {
    text: String,
    positions: BTreeMap<u32, u64>,
}

impl Token {
    fn from_core(token: harmonylite::Token) -> Token {
        Token {
            text: token.to_string(),
            positions: token.positions,
        }
    }

    fn to_core(&self) -> harmonylite::Token {
        harmonylite::Token {
            positions: self.positions.clone(),
        }
    }
}

#[pymethods]
impl Token {
    /// Parses the text form `"shard:seq,shard:seq"` (empty = nothing to wait for).
    #[new]
    #[pyo3(signature = (text = ""))]
    fn new(py: Python<'_>, text: &str) -> PyResult<Token> {
        harmonylite::Token::from_str(text)
            .map(Token::from_core)
            .map_err(|err| to_py_err(py, err))
    }

    /// Shard number to stream position.
    #[getter]
    fn positions(&self) -> BTreeMap<u32, u64> {
        self.positions.clone()
    }

    /// A token that waits for both this one and `other`.
    fn merge(&self, other: &Token) -> Token {
        let mut merged = self.to_core();
        merged.merge(&other.to_core());
        Token::from_core(merged)
    }

    fn __str__(&self) -> String {
        self.text.clone()
    }

    fn __repr__(&self) -> String {
        format!("Token({:?})", self.text)
    }
}

/// An open replica (use `harmonylite.Replica` / `harmonylite.aio.Replica`, which wrap this).
#[pyclass(frozen, module = "harmonylite._native")]
pub struct Replica {
    core: Option<harmonylite::Replica>,
    /// Set when this handle closes; ends its listeners and streams.
    closed: watch::Sender<bool>,
}

impl Replica {
    fn new(core: harmonylite::Replica) -> Replica {
        Replica {
            core: Some(core),
            closed: watch::channel(false).0,
        }
    }

    fn core(&self) -> PyResult<harmonylite::Replica> {
        fork::check()?;
        self.core
            .clone()
            .ok_or_else(|| crate::errors::core_error(harmonylite::Error::Closed))
    }

    fn open_core(&self) -> PyResult<harmonylite::Replica> {
        let core = self.core()?;
        if *self.closed.borrow() {
            return Err(crate::errors::core_error(harmonylite::Error::Closed));
        }
        Ok(core)
    }
}

#[pymethods]
impl Replica {
    /// This node's id.
    #[getter]
    fn node_id(&self) -> PyResult<u64> {
        Ok(self.core()?.node_id())
    }

    /// The replicated database file.
    #[getter]
    fn db_path(&self) -> PyResult<PathBuf> {
        Ok(self.core()?.db_path().to_path_buf())
    }

    /// URLs of the NATS servers in use (the embedded server's when it is the default).
    #[getter]
    fn nats_urls(&self) -> PyResult<Vec<String>> {
        Ok(self.core()?.nats_urls().to_vec())
    }

    /// True once `close()` or `cleanup()` was called on this handle.
    #[getter]
    fn closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// The status as JSON (blocking).
    fn status_json(&self, py: Python<'_>) -> PyResult<String> {
        let core = self.core()?;
        blocking(py, async move { status_text(core).await })
    }

    /// The status as JSON (awaitable).
    fn status_json_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        awaitable(py, async move { Answer(status_text(core).await) })
    }

    /// The metrics as OpenMetrics text (blocking).
    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        let core = self.core()?;
        blocking(py, async move { core.metrics().await })
    }

    /// Awaitable `metrics`.
    fn metrics_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        awaitable(py, async move { Answer(core.metrics().await) })
    }

    /// Saves a snapshot (blocking); the manifest as JSON, or `None` when another node holds the lease.
    fn save_snapshot_json(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let core = self.core()?;
        blocking(
            py,
            async move { manifest_text(core.save_snapshot().await?) },
        )
    }

    /// Awaitable `save_snapshot_json`.
    fn save_snapshot_json_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        awaitable(py, async move {
            Answer(async { manifest_text(core.save_snapshot().await?) }.await)
        })
    }

    /// Publishes everything committed so far and waits for JetStream's acknowledgement (blocking).
    fn sync(&self, py: Python<'_>, timeout: f64) -> PyResult<Token> {
        let core = self.core()?;
        let timeout = duration(timeout)?;
        blocking(py, async move { core.sync(timeout).await }).map(Token::from_core)
    }

    /// Awaitable `sync`.
    fn sync_async<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        let timeout = duration(timeout)?;
        awaitable(py, async move {
            Answer(core.sync(timeout).await.map(Token::from_core))
        })
    }

    /// Waits until this node has applied everything up to `token` (blocking).
    fn wait_for(&self, py: Python<'_>, token: &Token, timeout: f64) -> PyResult<()> {
        let core = self.core()?;
        let timeout = duration(timeout)?;
        let token = token.to_core();
        blocking(py, async move { core.wait_for(&token, timeout).await })
    }

    /// Awaitable `wait_for`.
    fn wait_for_async<'py>(
        &self,
        py: Python<'py>,
        token: &Token,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        let timeout = duration(timeout)?;
        let token = token.to_core();
        awaitable(
            py,
            async move { Answer(core.wait_for(&token, timeout).await) },
        )
    }

    /// Waits until NATS is connected and the streams exist (blocking).
    fn wait_ready(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let core = self.core()?;
        let timeout = duration(timeout)?;
        blocking(py, async move { core.wait_ready(timeout).await })
    }

    /// Awaitable `wait_ready`.
    fn wait_ready_async<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        let timeout = duration(timeout)?;
        awaitable(py, async move { Answer(core.wait_ready(timeout).await) })
    }

    /// The positions this node has applied, as a token.
    fn applied(&self) -> PyResult<Token> {
        Ok(Token::from_core(self.open_core()?.applied()))
    }

    /// Calls `callback(event)` for every change event on a dispatcher thread until cancelled.
    fn on_change(&self, callback: Py<PyAny>) -> PyResult<Listener> {
        let core = self.open_core()?;
        Listener::start(core.subscribe(), self.closed.subscribe(), callback)
    }

    /// Calls `callback(conflict)` (a dict) for every conflict recorded from now on, on a dispatcher
    /// thread, until cancelled.
    fn on_conflict(&self, callback: Py<PyAny>) -> PyResult<Listener> {
        let core = self.open_core()?;
        Listener::start_feed(
            core.subscribe_conflicts(),
            self.closed.subscribe(),
            callback,
            conflict_object,
        )
    }

    /// The conflict log: up to `limit` of the newest entries with an id above `after`, oldest first
    /// (blocking).
    fn conflicts<'py>(
        &self,
        py: Python<'py>,
        after: i64,
        limit: usize,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let core = self.core()?;
        let conflicts = blocking(py, async move { core.conflicts(after, limit).await })?;
        conflicts
            .iter()
            .map(|conflict| conflict_to_py(py, conflict))
            .collect()
    }

    /// Awaitable `conflicts`.
    fn conflicts_async<'py>(
        &self,
        py: Python<'py>,
        after: i64,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        awaitable(py, async move {
            Answer(core.conflicts(after, limit).await.map(Conflicts))
        })
    }

    /// The conflict log as the core serializes it (JSON), for the field-drift test. Not public API.
    fn conflicts_json(&self, py: Python<'_>, after: i64, limit: usize) -> PyResult<String> {
        let core = self.core()?;
        blocking(py, async move {
            conflicts_json(&core.conflicts(after, limit).await?)
        })
    }

    /// Change events from now on, as an async stream.
    fn subscribe(&self) -> PyResult<EventStream> {
        let core = self.open_core()?;
        Ok(EventStream::new(core.subscribe(), self.closed.subscribe()))
    }

    /// Stops replication (blocking, idempotent).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core()?;
        self.closed.send_replace(true);
        blocking(py, async move { core.close().await })
    }

    /// Awaitable `close`.
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        self.closed.send_replace(true);
        awaitable(py, async move { Answer(core.close().await) })
    }

    /// Closes, then removes capture from the database; returns how many objects were removed (blocking).
    fn cleanup(&self, py: Python<'_>) -> PyResult<usize> {
        let core = self.core()?;
        self.closed.send_replace(true);
        blocking(py, async move { core.cleanup().await })
    }

    /// Awaitable `cleanup`.
    fn cleanup_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        self.closed.send_replace(true);
        awaitable(py, async move { Answer(core.cleanup().await) })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if fork::is_forked_child() {
            // The parent owns the replica (and its embedded nats-server): leave everything alone.
            std::mem::forget(self.core.take());
        }
    }
}

fn manifest_text(
    manifest: Option<harmonylite::snapshot::Manifest>,
) -> harmonylite::Result<Option<String>> {
    manifest
        .map(|m| {
            serde_json::to_string(&m).map_err(|err| {
                harmonylite::Error::Internal(format!("manifest does not serialize: {err}"))
            })
        })
        .transpose()
}

async fn status_text(core: harmonylite::Replica) -> harmonylite::Result<String> {
    let status = core.status().await?;
    serde_json::to_string(&status)
        .map_err(|err| harmonylite::Error::Internal(format!("status does not serialize: {err}")))
}

/// Opens `path` for replication (blocking; the GIL is released while capture installs and NATS starts).
#[pyfunction]
pub fn open_replicated(py: Python<'_>, path: PathBuf, config: &Config) -> PyResult<Replica> {
    fork::check()?;
    let config = config.inner.clone();
    blocking(py, async move {
        harmonylite::open_replicated(path, config).await
    })
    .map(Replica::new)
}

/// Awaitable `open_replicated`.
#[pyfunction]
pub fn open_replicated_async<'py>(
    py: Python<'py>,
    path: PathBuf,
    config: &Config,
) -> PyResult<Bound<'py, PyAny>> {
    let config = config.inner.clone();
    awaitable(py, async move {
        Answer(
            harmonylite::open_replicated(path, config)
                .await
                .map(Replica::new),
        )
    })
}
