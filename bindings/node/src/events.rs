//! Change events in JavaScript: the `ChangeEvent` object, `onChange` callbacks (a [`Subscription`]) and
//! the `changes()` async iterator (a [`ChangeStream`]). `onConflict` callbacks use the same plumbing. The
//! `ChangeEvent` object is expanded from the core's list in `records.rs`.
//!
//! Callbacks run through an unref'd threadsafe function, so a live subscription never keeps the
//! process alive; `close()` also ends every subscription of its replica (the core's event channel
//! outlives `close()` while a handle exists, so the binding ends them itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{
    BigInt, Buffer, Either5, Function, JsObjectValue, JsValue, JsValuesTupleIntoVec, Null, Object,
    PromiseRaw, Unknown,
};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::{Env, Status};
use napi_derive::napi;
use tokio::sync::watch;

use crate::promise::spawn_promise;
use crate::records::{ChangeEvent, Conflict};

/// A SQLite value: INTEGER as `bigint` (all of 64 bits), REAL as `number`, TEXT as `string`, BLOB as
/// `Buffer`, NULL as `null`.
pub type SqlValue = Either5<Null, BigInt, f64, String, Buffer>;

pub(crate) fn sql_value(value: harmonylite::Value) -> SqlValue {
    match value {
        harmonylite::Value::Null => Either5::A(Null),
        harmonylite::Value::Integer(v) => Either5::B(BigInt::from(v)),
        harmonylite::Value::Real(v) => Either5::C(v),
        harmonylite::Value::Text(v) => Either5::D(v),
        harmonylite::Value::Blob(v) => Either5::E(Buffer::from(v)),
    }
}

/// The live subscriptions of one replica, ended together by `close()`.
#[derive(Default)]
pub(crate) struct Subscriptions {
    listeners: Mutex<HashMap<u64, harmonylite::Listener>>,
    next_id: AtomicU64,
    closed: watch::Sender<bool>,
}

impl Subscriptions {
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Ends every callback subscription and every `changes()` iterator.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
        let listeners: Vec<_> = match self.listeners.lock() {
            Ok(mut listeners) => listeners.drain().map(|(_, l)| l).collect(),
            Err(_) => Vec::new(),
        };
        // Dropping a listener stops its task and releases its threadsafe function.
        drop(listeners);
    }

    /// Keeps `listener` until its subscription is cancelled or the replica closes.
    fn subscription(self: &Arc<Self>, listener: harmonylite::Listener) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.insert(id, listener);
        }
        Subscription {
            id,
            subscriptions: self.clone(),
        }
    }

    fn remove(&self, id: u64) {
        let listener = self.listeners.lock().ok().and_then(|mut l| l.remove(&id));
        drop(listener);
    }
}

/// Registers `callback` for every change event of `replica`.
pub(crate) fn on_change(
    replica: &harmonylite::Replica,
    subscriptions: &Arc<Subscriptions>,
    callback: Function<ChangeEvent, Unknown<'static>>,
) -> napi::Result<Subscription> {
    let listener = listen(callback, ChangeEvent::from, "change-event", |deliver| {
        replica.on_change(deliver)
    })?;
    Ok(subscriptions.subscription(listener))
}

/// Registers `callback` for every conflict `replica` records.
pub(crate) fn on_conflict(
    replica: &harmonylite::Replica,
    subscriptions: &Arc<Subscriptions>,
    callback: Function<Conflict, Unknown<'static>>,
) -> napi::Result<Subscription> {
    let listener = listen(callback, Conflict::from, "conflict", |deliver| {
        replica.on_conflict(deliver)
    })?;
    Ok(subscriptions.subscription(listener))
}

/// Wraps `callback` in an unref'd threadsafe function and hands the core `register` a closure that calls
/// it with each record converted by `convert`; what the callback throws or rejects is reported (`what`
/// names the kind of callback in the warning).
fn listen<T, J>(
    callback: Function<J, Unknown<'static>>,
    convert: fn(T) -> J,
    what: &'static str,
    register: impl FnOnce(Box<dyn Fn(T) + Send + Sync + 'static>) -> harmonylite::Listener,
) -> napi::Result<harmonylite::Listener>
where
    T: Send + 'static,
    J: JsValuesTupleIntoVec + 'static,
{
    let function = callback
        .build_threadsafe_function::<T>()
        .weak::<true>()
        .build_callback(move |context| Ok(convert(context.value)))?;
    Ok(register(Box::new(move |record| {
        function.call_with_return_value(
            record,
            ThreadsafeFunctionCallMode::NonBlocking,
            move |outcome, env| {
                match outcome {
                    Err(thrown) => report_callback_error(&env, what, thrown),
                    Ok(returned) => catch_rejection(&env, what, returned),
                }
                // Never an error here: that would end the process.
                Ok(())
            },
        );
    })))
}

/// An async callback's rejected promise is reported like a thrown exception.
fn catch_rejection(env: &Env, what: &'static str, returned: Unknown) {
    if !returned.is_promise().unwrap_or(false) {
        return;
    }
    let promise = PromiseRaw::<Unknown>::new(env.raw(), returned.raw());
    let caught = promise.catch(
        move |context: napi::bindgen_prelude::CallbackContext<Unknown>| {
            report_callback_error(&context.env, what, napi::Error::from(context.value));
            Ok(())
        },
    );
    if let Err(err) = caught {
        report_callback_error(env, what, err);
    }
}

/// Reports an exception thrown by a user callback as a process warning (`process.on('warning')`,
/// printed on stderr by default) named `HarmonyLiteCallbackError`, whose `cause` is what was thrown.
fn report_callback_error(env: &Env, what: &str, thrown: napi::Error) {
    let reported = (|| -> napi::Result<()> {
        let thrown = env.create_error(thrown)?;
        let message = format!(
            "a {what} callback threw (later ones are still delivered): {}",
            crate::error::describe(&thrown)
        );
        let mut warning = env.create_error(napi::Error::new(Status::GenericFailure, message))?;
        warning.delete_named_property("code")?;
        warning.set_named_property("name", "HarmonyLiteCallbackError")?;
        warning.set_named_property("cause", thrown)?;
        let process: Object = env.get_global()?.get_named_property("process")?;
        let emit_warning: Function<Object, Unknown> = process.get_named_property("emitWarning")?;
        emit_warning.bind(process)?.call(warning)?;
        Ok(())
    })();
    if let Err(err) = reported {
        eprintln!("harmonylite: a {what} callback threw, and reporting it failed: {err}");
    }
}

/// A callback registered with `replica.onChange(cb)` or `replica.onConflict(cb)`. Ends on
/// `unsubscribe()` or when the replica closes.
#[napi]
pub struct Subscription {
    id: u64,
    subscriptions: Arc<Subscriptions>,
}

#[napi]
impl Subscription {
    /// Stops calling the callback. Idempotent.
    #[napi]
    pub fn unsubscribe(&self) {
        self.subscriptions.remove(self.id);
    }
}

/// The async iterator `replica.changes()` returns: every change event from the call on, until
/// `return()` (a `break` out of `for await`) or the replica closes.
#[napi]
pub struct ChangeStream {
    subscription: Arc<tokio::sync::Mutex<Option<harmonylite::Subscription>>>,
    /// Set by `return()`.
    ended: Arc<watch::Sender<bool>>,
    /// Set by the replica's `close()`.
    replica_closed: watch::Receiver<bool>,
}

impl ChangeStream {
    pub(crate) fn new(
        replica: &harmonylite::Replica,
        subscriptions: &Subscriptions,
    ) -> ChangeStream {
        ChangeStream {
            subscription: Arc::new(tokio::sync::Mutex::new(Some(replica.subscribe()))),
            ended: Arc::new(watch::Sender::new(false)),
            replica_closed: subscriptions.closed.subscribe(),
        }
    }
}

#[napi]
impl ChangeStream {
    /// The next change event; `done` once the stream ended.
    #[napi(ts_return_type = "Promise<IteratorResult<ChangeEvent, undefined>>")]
    pub fn next<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ChangeStreamResult>> {
        let subscription = self.subscription.clone();
        let mut ended = self.ended.subscribe();
        let mut replica_closed = self.replica_closed.clone();
        spawn_promise(
            env,
            async move {
                let mut guard = subscription.lock().await;
                let Some(receiver) = guard.as_mut() else {
                    return Ok(None);
                };
                let event = tokio::select! {
                    event = receiver.recv() => event,
                    _ = ended.wait_for(|ended| *ended) => None,
                    _ = replica_closed.wait_for(|closed| *closed) => None,
                };
                if event.is_none() {
                    guard.take();
                }
                Ok(event)
            },
            |event| ChangeStreamResult {
                done: event.is_none(),
                value: event.map(ChangeEvent::from),
            },
        )
    }

    /// Ends the stream (called by `break` in `for await`).
    #[napi(
        js_name = "return",
        ts_return_type = "Promise<IteratorResult<ChangeEvent, undefined>>"
    )]
    pub fn finish<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, ChangeStreamResult>> {
        self.ended.send_replace(true);
        let subscription = self.subscription.clone();
        spawn_promise(
            env,
            async move {
                subscription.lock().await.take();
                Ok(())
            },
            |()| ChangeStreamResult {
                done: true,
                value: None,
            },
        )
    }
}

/// What `ChangeStream.next()` resolves to (an `IteratorResult`).
#[napi(object, object_from_js = false)]
pub struct ChangeStreamResult {
    /// True once the stream ended.
    pub done: bool,
    /// The event, unless `done`.
    pub value: Option<ChangeEvent>,
}
