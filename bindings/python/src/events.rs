//! Change events: the `ChangeEvent` value, callback listeners (one dispatcher thread each; conflict
//! callbacks use the same dispatcher) and async streams. Both end when cancelled, when the replica
//! closes, or when they are dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use harmonylite::events::Feed;
use harmonylite::{ChangeEvent as CoreEvent, Subscription, Value};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::{watch, Mutex as AsyncMutex};

use crate::errors::{core_error, Answer};
use crate::fork;

/// One row change, local or remote (its getters, `to_dict`, `__eq__` and `__repr__` are expanded from the
/// core's list in `records.rs`).
#[pyclass(frozen, module = "harmonylite._native")]
pub struct ChangeEvent {
    pub(crate) event: CoreEvent,
}

pub fn value_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Integer(v) => v.into_pyobject(py)?.into_any(),
        Value::Real(v) => v.into_pyobject(py)?.into_any(),
        Value::Text(v) => v.into_pyobject(py)?.into_any(),
        Value::Blob(v) => PyBytes::new(py, v).into_any(),
    })
}

/// Waits for the next record; `None` once cancelled, the replica closed, or the replica is gone.
async fn next_event<T: Clone>(
    subscription: &mut Feed<T>,
    closed: &mut watch::Receiver<bool>,
    cancelled: &mut watch::Receiver<bool>,
) -> Option<T> {
    if *closed.borrow() || *cancelled.borrow() {
        return None;
    }
    tokio::select! {
        event = subscription.recv() => event,
        _ = closed.wait_for(|c| *c) => None,
        _ = cancelled.wait_for(|c| *c) => None,
    }
}

/// A running `on_change` / `on_conflict` callback (use `harmonylite.Subscription`, which wraps this).
#[pyclass(frozen, module = "harmonylite._native")]
pub struct Listener {
    cancel: watch::Sender<bool>,
    running: Arc<AtomicBool>,
}

impl Listener {
    /// Starts a dispatcher thread that calls `callback(event)` with the GIL, one event at a time, in order.
    pub fn start(
        subscription: Subscription,
        closed: watch::Receiver<bool>,
        callback: Py<PyAny>,
    ) -> PyResult<Listener> {
        Listener::start_feed(subscription, closed, callback, |py, event| {
            Py::new(py, ChangeEvent { event }).map(Py::into_any)
        })
    }

    /// Starts a dispatcher thread that calls `callback(to_py(record))` with the GIL, one record at a
    /// time, in order.
    pub fn start_feed<T: Clone + Send + 'static>(
        mut subscription: Feed<T>,
        mut closed: watch::Receiver<bool>,
        callback: Py<PyAny>,
        to_py: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
    ) -> PyResult<Listener> {
        let (cancel, mut cancelled) = watch::channel(false);
        let running = Arc::new(AtomicBool::new(true));
        let still_running = running.clone();
        let mut callback = Some(callback);
        std::thread::Builder::new()
            .name("harmonylite-cb".into())
            .spawn(move || {
                // Waiting needs no runtime: broadcast and watch receivers work on any executor.
                while let Some(event) = futures::executor::block_on(next_event(
                    &mut subscription,
                    &mut closed,
                    &mut cancelled,
                )) {
                    let Some(target) = callback.as_ref() else {
                        break;
                    };
                    let attached = Python::try_attach(|py| {
                        let outcome = to_py(py, event).and_then(|event| target.call1(py, (event,)));
                        // The package's wrapper logs exceptions itself; this is the last resort.
                        if let Err(err) = outcome {
                            err.write_unraisable(py, Some(target.bind(py)));
                        }
                    });
                    if attached.is_none() {
                        break; // the interpreter is shutting down
                    }
                }
                if let Some(target) = callback.take() {
                    // Release the callback under the GIL when possible (else pyo3 defers the decref).
                    let _ = Python::try_attach(move |_py| drop(target));
                }
                still_running.store(false, Ordering::SeqCst);
            })
            .map_err(|err| {
                core_error(harmonylite::Error::Internal(format!(
                    "cannot start the callback thread: {err}"
                )))
            })?;
        Ok(Listener { cancel, running })
    }
}

#[pymethods]
impl Listener {
    /// Stops delivering events (idempotent). A callback already running finishes first.
    fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// False once cancelled and the dispatcher has stopped, or the replica closed.
    #[getter]
    fn active(&self) -> bool {
        !*self.cancel.borrow() && self.running.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if !fork::is_forked_child() {
            self.cancel.send_replace(true);
        }
    }
}

/// Change events as an async stream (use `harmonylite.ChangeStream`, which wraps this).
#[pyclass(frozen, module = "harmonylite._native")]
pub struct EventStream {
    subscription: Arc<AsyncMutex<Option<Subscription>>>,
    closed: watch::Receiver<bool>,
    cancel: watch::Sender<bool>,
}

impl EventStream {
    pub fn new(subscription: Subscription, closed: watch::Receiver<bool>) -> EventStream {
        EventStream {
            subscription: Arc::new(AsyncMutex::new(Some(subscription))),
            closed,
            cancel: watch::channel(false).0,
        }
    }
}

#[pymethods]
impl EventStream {
    /// An awaitable of the next event, or `None` when the stream has ended.
    fn next_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let subscription = self.subscription.clone();
        let mut closed = self.closed.clone();
        let mut cancelled = self.cancel.subscribe();
        crate::replica::awaitable(py, async move {
            let mut guard = subscription.lock().await;
            let Some(subscription) = guard.as_mut() else {
                return Answer(Ok(None));
            };
            let event = next_event(subscription, &mut closed, &mut cancelled).await;
            if event.is_none() {
                guard.take(); // unsubscribe now rather than when Python collects the stream
            }
            Answer(Ok(event.map(|event| ChangeEvent { event })))
        })
    }

    /// Ends the stream: a pending `next_async` resolves to `None` (idempotent).
    fn close(&self) {
        self.cancel.send_replace(true);
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if fork::is_forked_child() {
            // The subscription's channel lock may have been held by a parent thread at the fork.
            if let Ok(mut guard) = self.subscription.try_lock() {
                std::mem::forget(guard.take());
            }
        }
    }
}
