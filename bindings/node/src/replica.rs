//! `openReplicated(db, cfg)` and the `Replica` handle: argument conversion around the core's `Replica`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::{BigInt, Either, Function, JsObjectValue, Object, PromiseRaw, Unknown};
use napi::Env;
use napi_derive::napi;

use crate::config::JsConfig;
use crate::conflicts::ConflictsOptions;
use crate::error::{bad_argument, to_js};
use crate::events::{ChangeStream, Subscription, Subscriptions};
use crate::promise::{rejected, spawn_promise};
use crate::records::{ChangeEvent, Conflict, Status};

/// How long `sync`, `waitFor` and `waitReady` wait when no `timeoutMs` is given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `close()` waits for the engine. The core's close flushes the NATS client last, which
/// never returns while the server is unreachable (reported for `core/`); by then the database work is
/// done, so the binding stops waiting rather than keep a Node process alive forever.
const CLOSE_LIMIT: Duration = Duration::from_secs(20);

/// The core's `close()`, bounded by [`CLOSE_LIMIT`].
async fn close_bounded(replica: &harmonylite::Replica) -> harmonylite::Result<()> {
    match tokio::time::timeout(CLOSE_LIMIT, replica.close()).await {
        Ok(closed) => closed,
        Err(_) => Err(harmonylite::Error::Timeout {
            what: "the replica to close (NATS may be unreachable; committed changes stay in the \
                   database and go out on the next open)"
                .into(),
            millis: CLOSE_LIMIT.as_millis() as u64,
        }),
    }
}

/// Starts replicating a SQLite database and resolves once capture is installed (NATS may still be
/// connecting: changes are kept and sent when it is up).
///
/// `db` is the database file's path, or an open database handle such as a better-sqlite3 `Database`
/// (its file is used; the app keeps using its handle as before). `cfg` is a plain object with the
/// TOML keys in camelCase (`{ nodeId: 1, nats: { urls: ['nats://127.0.0.1:4222'] } }`), the path of
/// a TOML file, or omitted for the defaults: an embedded `nats-server` (see the README for how to
/// get one).
///
/// Rejects with an `Error` whose `code` is an {@link ErrorCode}: `CONFIG` (with `field` naming the
/// key), `NATS_SERVER_NOT_FOUND`, `NO_PRIMARY_KEY`, `IO`, `SQLITE`, ...
#[napi(
    ts_args_type = "db: string | DatabaseHandle, cfg?: Config | string",
    ts_return_type = "Promise<Replica>"
)]
pub fn open_replicated<'env>(
    env: &'env Env,
    db: Either<String, Object>,
    cfg: Option<Unknown>,
) -> napi::Result<PromiseRaw<'env, Replica>> {
    let db = match db {
        Either::A(path) => PathBuf::from(path),
        Either::B(handle) => match database_file(&handle) {
            Ok(path) => path,
            Err(err) => return rejected(env, err),
        },
    };
    let config = match cfg.map(|cfg| env.from_js_value::<serde_json::Value, _>(cfg)) {
        None | Some(Ok(serde_json::Value::Null)) => JsConfig::Default,
        Some(Ok(serde_json::Value::String(path))) => JsConfig::TomlFile(path),
        Some(Ok(object @ serde_json::Value::Object(_))) => JsConfig::Object(object),
        Some(Ok(_)) => {
            let reason = "expected a config object or the path of a TOML file";
            return rejected(env, bad_argument("cfg", reason));
        }
        Some(Err(err)) => return rejected(env, bad_argument("cfg", err.reason)),
    };
    spawn_promise(
        env,
        async move {
            // A TOML file is read here, off the JavaScript thread.
            let (config, names) = tokio::task::spawn_blocking(move || config.load())
                .await
                .map_err(|err| harmonylite::Error::Internal(format!("config task: {err}")))??;
            harmonylite::open_replicated(db, config)
                .await
                .map_err(|err| names.rename(err))
        },
        |replica| Replica {
            inner: replica,
            subscriptions: Arc::new(Subscriptions::default()),
        },
    )
}

/// The file behind an open handle: `SELECT file FROM pragma_database_list` through the handle itself
/// (exact even after `process.chdir`), else its `name` property.
fn database_file(handle: &Object) -> harmonylite::Result<PathBuf> {
    let file = match handle.get_named_property::<Function<String, Object>>("prepare") {
        Ok(prepare) => main_database_file(handle, &prepare).map_err(|err| {
            bad_argument(
                "db",
                format!(
                    "cannot read the database's file from the handle: {}",
                    err.reason
                ),
            )
        })?,
        Err(_) => handle.get_named_property::<String>("name").map_err(|_| {
            bad_argument(
                "db",
                "expected a path or an open database handle (such as a better-sqlite3 Database)",
            )
        })?,
    };
    if file.is_empty() || file == ":memory:" {
        return Err(bad_argument(
            "db",
            "an in-memory or temporary database cannot be replicated; open a file",
        ));
    }
    Ok(PathBuf::from(file))
}

/// `bind` then `call`: unlike `apply`, `call` takes a thrown exception back from JavaScript (the
/// handle may be closed), so it becomes an error here instead of escaping to the caller.
fn main_database_file(handle: &Object, prepare: &Function<String, Object>) -> napi::Result<String> {
    let statement = prepare
        .bind(handle)?
        .call("SELECT file FROM pragma_database_list WHERE name = ?".to_string())?;
    let get: Function<String, Object> = statement.get_named_property("get")?;
    let row = get.bind(statement)?.call("main".to_string())?;
    row.get_named_property::<String>("file")
}

fn timeout(timeout_ms: Option<f64>) -> harmonylite::Result<Duration> {
    match timeout_ms {
        None => Ok(DEFAULT_TIMEOUT),
        Some(ms) => Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| {
            bad_argument(
                "timeoutMs",
                format!("{ms} is not a number of milliseconds (0 or more)"),
            )
        }),
    }
}

/// A database being replicated. Get one from {@link openReplicated}; end it with `await close()` (or
/// `await using replica = await openReplicated(...)`).
#[napi]
pub struct Replica {
    inner: harmonylite::Replica,
    subscriptions: Arc<Subscriptions>,
}

#[napi]
impl Replica {
    /// This node's id (in messages and NATS names).
    #[napi(getter)]
    pub fn node_id(&self) -> BigInt {
        BigInt::from(self.inner.node_id())
    }

    /// The replicated database file.
    #[napi(getter)]
    pub fn db_path(&self) -> String {
        self.inner.db_path().display().to_string()
    }

    /// The NATS servers in use (the embedded server's URL when it is the default).
    #[napi(getter)]
    pub fn nats_urls(&self) -> Vec<String> {
        self.inner.nats_urls().to_vec()
    }

    /// Connection, positions, pending and unsent changes, paused tables, counters.
    #[napi]
    pub fn status<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Status>> {
        let replica = self.inner.clone();
        spawn_promise(env, async move { replica.status().await }, Status::from)
    }

    /// The node's metrics as Prometheus/OpenMetrics text, every series labelled `node_id`
    /// (`harmonylite_changes_applied_total{node_id="1"} 5`, ..., ending with `# EOF`), for the app's
    /// own metrics endpoint: serve it with the content type `METRICS_CONTENT_TYPE`
    /// (`application/openmetrics-text; version=1.0.0; charset=utf-8`). Counters are read as they are;
    /// gauges come from a status at most a second old.
    #[napi]
    pub fn metrics<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, String>> {
        let replica = self.inner.clone();
        spawn_promise(env, async move { replica.metrics().await }, |text| text)
    }

    /// Publishes everything committed to the database before this call, waits until JetStream
    /// acknowledged it, and resolves with a token that other nodes can pass to `waitFor` to read
    /// these writes. Rejects with `TIMEOUT` after `timeoutMs` (default 30000).
    #[napi]
    pub fn sync<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<f64>,
    ) -> napi::Result<PromiseRaw<'env, String>> {
        let timeout = match timeout(timeout_ms) {
            Ok(timeout) => timeout,
            Err(err) => return rejected(env, err),
        };
        let replica = self.inner.clone();
        spawn_promise(env, async move { replica.sync(timeout).await }, |token| {
            token.to_string()
        })
    }

    /// Waits until this node has applied everything a token (from `sync()`, here or on another node)
    /// covers; an array of tokens waits for all of them. Rejects with `TIMEOUT` after `timeoutMs`
    /// (default 30000), with `CONFIG` when a token is malformed.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn wait_for<'env>(
        &self,
        env: &'env Env,
        token: Either<String, Vec<String>>,
        timeout_ms: Option<f64>,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let texts = match token {
            Either::A(text) => vec![text],
            Either::B(texts) => texts,
        };
        let mut merged = harmonylite::Token::default();
        for text in &texts {
            match harmonylite::Token::from_str(text) {
                Ok(token) => merged.merge(&token),
                Err(err) => return rejected(env, err),
            }
        }
        let timeout = match timeout(timeout_ms) {
            Ok(timeout) => timeout,
            Err(err) => return rejected(env, err),
        };
        let replica = self.inner.clone();
        spawn_promise(
            env,
            async move { replica.wait_for(&merged, timeout).await },
            |()| (),
        )
    }

    /// Waits until NATS is connected and the streams exist. Rejects with `TIMEOUT` after `timeoutMs`
    /// (default 30000).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn wait_ready<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<f64>,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let timeout = match timeout(timeout_ms) {
            Ok(timeout) => timeout,
            Err(err) => return rejected(env, err),
        };
        let replica = self.inner.clone();
        spawn_promise(
            env,
            async move { replica.wait_ready(timeout).await },
            |()| (),
        )
    }

    /// The positions this node has applied, as a token.
    #[napi]
    pub fn applied(&self) -> String {
        self.inner.applied().to_string()
    }

    /// The conflict log, oldest first: up to `limit` (default 1000) of the newest entries whose `id` is
    /// above `after` (default 0; pass the last `id` seen to read only newer ones). The log keeps the
    /// newest 10,000 entries.
    #[napi(ts_return_type = "Promise<Conflict[]>")]
    pub fn conflicts<'env>(
        &self,
        env: &'env Env,
        options: Option<ConflictsOptions>,
    ) -> napi::Result<PromiseRaw<'env, Vec<Conflict>>> {
        let (after, limit) = options.map_or((None, None), |o| (o.after, o.limit));
        let after = after.unwrap_or(0);
        let limit = limit.unwrap_or(1000) as usize;
        let replica = self.inner.clone();
        spawn_promise(
            env,
            async move { replica.conflicts(after, limit).await },
            |conflicts| conflicts.into_iter().map(Conflict::from).collect(),
        )
    }

    /// Calls `callback` with every conflict this node records from now on (a received change that
    /// lost, values a newer change overwrote, a row moved off a colliding key, a constraint clash), until
    /// `unsubscribe()` or `close()`. Errors are reported as for `onChange`; a subscription does not keep
    /// the process alive.
    #[napi(ts_args_type = "callback: (conflict: Conflict) => void | Promise<void>")]
    pub fn on_conflict(
        &self,
        env: &Env,
        callback: Function<Conflict, Unknown<'static>>,
    ) -> napi::Result<Subscription> {
        if self.subscriptions.is_closed() {
            return Err(to_js(env, &harmonylite::Error::Closed));
        }
        crate::events::on_conflict(&self.inner, &self.subscriptions, callback)
    }

    /// The core's `status()` as it serializes it (JSON), for the field-drift test. Not public API.
    #[napi(js_name = "_coreStatusJson", skip_typescript)]
    pub fn core_status_json<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, String>> {
        let replica = self.inner.clone();
        spawn_promise(
            env,
            async move { core_json(serde_json::to_string(&replica.status().await?)) },
            |json| json,
        )
    }

    /// The core's conflict log as it serializes it (JSON), for the field-drift test. Not public API.
    #[napi(js_name = "_coreConflictsJson", skip_typescript)]
    pub fn core_conflicts_json<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, String>> {
        let replica = self.inner.clone();
        spawn_promise(
            env,
            async move { core_json(serde_json::to_string(&replica.conflicts(0, 1000).await?)) },
            |json| json,
        )
    }

    /// Calls `callback` with every change event (local and remote) from now on, until
    /// `unsubscribe()` or `close()`. A callback that throws (or returns a rejected promise) is
    /// reported as a process warning named `HarmonyLiteCallbackError`; later events still arrive.
    /// A subscription does not keep the process alive.
    #[napi(ts_args_type = "callback: (event: ChangeEvent) => void | Promise<void>")]
    pub fn on_change(
        &self,
        env: &Env,
        callback: Function<ChangeEvent, Unknown<'static>>,
    ) -> napi::Result<Subscription> {
        if self.subscriptions.is_closed() {
            return Err(to_js(env, &harmonylite::Error::Closed));
        }
        crate::events::on_change(&self.inner, &self.subscriptions, callback)
    }

    /// Every change event (local and remote) from this call on, as an async iterator:
    /// `for await (const event of replica.changes()) { ... }`. It ends on `break` or `close()`.
    #[napi]
    pub fn changes(&self, env: &Env) -> napi::Result<ChangeStream> {
        if self.subscriptions.is_closed() {
            return Err(to_js(env, &harmonylite::Error::Closed));
        }
        Ok(ChangeStream::new(&self.inner, &self.subscriptions))
    }

    /// Publishes what was committed, then saves a snapshot of the database to the snapshot store.
    /// Resolves with the snapshot's manifest, or `null` when another node holds the upload lease and
    /// this one skipped. Rejects with `SNAPSHOT` when the store fails.
    #[napi(ts_return_type = "Promise<SnapshotManifest | null>")]
    pub fn save_snapshot<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Option<SnapshotManifest>>> {
        let replica = self.inner.clone();
        spawn_promise(
            env,
            async move { replica.save_snapshot().await },
            |manifest| manifest.map(SnapshotManifest::from),
        )
    }

    /// Closes the replica, then removes capture (triggers and HarmonyLite's own tables) from the
    /// database; the app's tables and rows are untouched. Resolves with the number of objects removed.
    #[napi]
    pub fn cleanup<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, u32>> {
        let replica = self.inner.clone();
        let subscriptions = self.subscriptions.clone();
        spawn_promise(
            env,
            async move {
                let closed = close_bounded(&replica).await;
                subscriptions.close();
                closed?;
                replica.cleanup().await
            },
            |removed| u32::try_from(removed).unwrap_or(u32::MAX),
        )
    }

    /// Stops replicating: in-flight work is finished, local changes get a few seconds to go out (what
    /// is left is sent on the next open), subscriptions and `changes()` iterators end. Idempotent.
    /// Rejects with `TIMEOUT` if the engine has not finished within 20 s (NATS unreachable); the
    /// replica is closed all the same.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let replica = self.inner.clone();
        let subscriptions = self.subscriptions.clone();
        spawn_promise(
            env,
            async move {
                let closed = close_bounded(&replica).await;
                subscriptions.close();
                closed
            },
            |()| (),
        )
    }
}

/// What `saveSnapshot()` resolves to: what the snapshot covers and where it is.
#[napi(object, object_from_js = false)]
pub struct SnapshotManifest {
    /// Key of the compressed database in the snapshot store.
    pub object: String,
    /// The node that made it.
    pub node_id: BigInt,
    /// Its clock when the snapshot was taken.
    pub hlc: BigInt,
    /// The stream positions the data includes, as a token (`"0:15,1:20"`).
    pub positions: String,
    /// Compressed size in bytes.
    pub bytes: f64,
    /// SHA-256 of the compressed bytes (hex).
    pub sha256: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: f64,
}

impl From<harmonylite::snapshot::Manifest> for SnapshotManifest {
    fn from(manifest: harmonylite::snapshot::Manifest) -> Self {
        SnapshotManifest {
            positions: harmonylite::Token {
                positions: manifest.positions.clone(),
            }
            .to_string(),
            object: manifest.object,
            node_id: BigInt::from(manifest.node_id),
            hlc: BigInt::from(manifest.hlc),
            bytes: manifest.bytes as f64,
            sha256: manifest.sha256,
            created_ms: manifest.created_ms as f64,
        }
    }
}

/// The core's own serialization (serde) of what it returned, for the field-drift tests.
fn core_json(json: serde_json::Result<String>) -> harmonylite::Result<String> {
    json.map_err(|err| harmonylite::Error::Internal(format!("does not serialize: {err}")))
}

#[cfg(test)]
mod tests {
    use super::timeout;

    #[test]
    fn timeouts_are_checked() {
        assert_eq!(timeout(None).expect("default"), super::DEFAULT_TIMEOUT);
        assert_eq!(timeout(Some(1500.0)).expect("1.5 s").as_millis(), 1500);
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(timeout(Some(bad)).is_err(), "{bad} accepted");
        }
    }
}
