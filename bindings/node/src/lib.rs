//! Node binding of HarmonyLite (napi-rs): `await openReplicated(db, cfg)` next to the app's own SQLite
//! handle.
//!
//! Rules of this crate: it converts types, maps errors (on `ErrorCode`, in `error.rs`) and plumbs
//! callbacks; replication behaviour lives in `core/`. Every asynchronous method runs on the core's
//! tokio runtime and settles a JavaScript promise from there (`promise.rs`), so no call blocks the
//! event loop and napi starts no runtime of its own.

// The records of `records.rs` are expanded field by field (a few macro levels per field of `Status`).
#![recursion_limit = "256"]

mod config;
mod conflicts;
mod error;
mod events;
mod promise;
mod records;
mod replica;

use napi::bindgen_prelude::{Function, JsObjectValue, Object, Unknown};
use napi::{Env, ValueType};
use napi_derive::napi;

pub use conflicts::ConflictsOptions;
pub use error::ErrorCode;
pub use events::{ChangeStream, Subscription};
pub use records::{
    BrokerDataLoss, ChangeEvent, Conflict, ConflictSide, Divergence, PausedTable, ShardStatus,
    SnapshotProgress, Status,
};
pub use replica::{open_replicated, Replica};

/// The content type of the text `replica.metrics()` returns, for an app that serves it on its own metrics
/// endpoint (the core's value, so the two cannot differ).
#[napi]
pub const METRICS_CONTENT_TYPE: &str = harmonylite::METRICS_CONTENT_TYPE;

/// Module load: logging, the core's SQLite lock shim (before the engine opens any database, so its copy of
/// SQLite and better-sqlite3's exclude each other: ADR 0012), and the symbol-keyed
/// methods napi-rs cannot declare: `ChangeStream.prototype[Symbol.asyncIterator]` and
/// `Replica.prototype[Symbol.asyncDispose]` (for `await using`), whose types are in the `.d.ts` header.
#[napi(module_exports)]
pub fn init(exports: Object, env: Env) -> napi::Result<()> {
    init_logging();
    harmonylite::sqlite_locks::install()
        .map_err(|err| napi::Error::new(napi::Status::GenericFailure, err.to_string()))?;
    let symbol: Function = env.get_global()?.get_named_property("Symbol")?;

    let async_iterator: Unknown = symbol.get_named_property("asyncIterator")?;
    let mut stream_prototype = prototype(&exports, "ChangeStream")?;
    let returns_this = env
        .create_function_from_closure::<(), Unknown, _>("[Symbol.asyncIterator]", |context| {
            context.this::<Unknown>()
        })?;
    stream_prototype.set_property(async_iterator, returns_this)?;

    // Node 20 defines Symbol.asyncDispose; older runtimes simply do not get the method.
    let async_dispose: Unknown = symbol.get_named_property("asyncDispose")?;
    if async_dispose.get_type()? == ValueType::Symbol {
        let mut replica_prototype = prototype(&exports, "Replica")?;
        let closes = env.create_function_from_closure::<(), Unknown, _>(
            "[Symbol.asyncDispose]",
            |context| {
                let this: Object = context.this()?;
                let close: Function<(), Unknown> = this.get_named_property("close")?;
                close.apply(this, ())
            },
        )?;
        replica_prototype.set_property(async_dispose, closes)?;
    }
    Ok(())
}

fn prototype<'env>(exports: &Object<'env>, class: &str) -> napi::Result<Object<'env>> {
    let constructor: Function = exports.get_named_property(class)?;
    constructor.get_named_property("prototype")
}

/// The engine logs through `tracing`; `HARMONYLITE_LOG=info` (or `debug`, or a filter such as
/// `harmonylite=debug`) prints it on stderr. Nothing is printed when it is unset.
fn init_logging() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("HARMONYLITE_LOG") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
