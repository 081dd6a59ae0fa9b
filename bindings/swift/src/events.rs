//! Change events and their delivery to Swift: a callback interface that the Swift layer implements by
//! yielding into an `AsyncStream` (user closures then run on Swift's executors, never on the core runtime).
//! Conflicts (`conflicts.rs`) are delivered the same way; the `ChangeEvent` record is expanded from the core's
//! list in `records.rs`.

use std::sync::Mutex;

use harmonylite::events::Feed;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conflicts::NativeConflictListener;
use crate::records::ChangeEvent;

/// One SQLite value; every storage class round-trips exactly.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<harmonylite::Value> for Value {
    fn from(value: harmonylite::Value) -> Value {
        match value {
            harmonylite::Value::Null => Value::Null,
            harmonylite::Value::Integer(v) => Value::Integer(v),
            harmonylite::Value::Real(v) => Value::Real(v),
            harmonylite::Value::Text(v) => Value::Text(v),
            harmonylite::Value::Blob(v) => Value::Blob(v),
        }
    }
}

/// Implemented in Swift. Called on a core runtime thread, one event at a time, so it must return quickly.
#[uniffi::export(callback_interface)]
pub trait NativeChangeListener: Send + Sync {
    fn on_change(&self, event: ChangeEvent);
    /// No more events: the replica was closed or released.
    fn on_end(&self);
}

/// A running delivery to one [`NativeChangeListener`]; stops on `cancel()` or when released.
#[derive(uniffi::Object)]
pub struct NativeListener {
    task: Mutex<Option<JoinHandle<()>>>,
}

impl NativeListener {
    /// Delivers every event of `subscription` until it ends, the replica closes (`closed` turns true or its
    /// sender goes away), or the listener is cancelled.
    pub(crate) fn start(
        subscription: harmonylite::Subscription,
        closed: watch::Receiver<bool>,
        listener: Box<dyn NativeChangeListener>,
    ) -> NativeListener {
        let listener = std::sync::Arc::new(listener);
        let ends = listener.clone();
        NativeListener::start_feed(
            subscription,
            closed,
            move |event| listener.on_change(event.into()),
            move || ends.on_end(),
        )
    }

    /// Delivers every conflict of `subscription` as `start` delivers events.
    pub(crate) fn start_conflicts(
        subscription: harmonylite::ConflictSubscription,
        closed: watch::Receiver<bool>,
        listener: Box<dyn NativeConflictListener>,
    ) -> NativeListener {
        let listener = std::sync::Arc::new(listener);
        let ends = listener.clone();
        NativeListener::start_feed(
            subscription,
            closed,
            move |conflict| listener.on_conflict(conflict.into()),
            move || ends.on_end(),
        )
    }

    fn start_feed<T: Clone + Send + 'static>(
        mut subscription: Feed<T>,
        mut closed: watch::Receiver<bool>,
        deliver: impl Fn(T) + Send + 'static,
        end: impl FnOnce() + Send + 'static,
    ) -> NativeListener {
        let task = harmonylite::runtime().spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    record = subscription.recv() => match record {
                        Some(record) => deliver(record),
                        None => break,
                    },
                    _ = closed.wait_for(|closed| *closed) => break,
                }
            }
            end();
        });
        NativeListener {
            task: Mutex::new(Some(task)),
        }
    }
}

#[uniffi::export]
impl NativeListener {
    /// Stops delivery (idempotent). A callback already running finishes; the Swift layer ignores it.
    pub fn cancel(&self) {
        let task = match self.task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl Drop for NativeListener {
    fn drop(&mut self) {
        self.cancel();
    }
}
