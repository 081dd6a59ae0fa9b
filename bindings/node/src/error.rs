//! The one place where core errors become JavaScript errors: a plain `Error` whose `code` is the core's
//! stable [`harmonylite::ErrorCode`] string (and, for `CONFIG`, whose `field` names the key).
//! Mapping is on the code, never on message text.

use napi::bindgen_prelude::{JsObjectValue, JsValue, Object};
use napi::{Env, Status};
use napi_derive::napi;

/// The stable `code` of every error HarmonyLite throws or rejects with.
///
/// - `CONFIG`: a configuration value (or an argument such as a token or a timeout) is invalid; `err.field` names it.
/// - `SQLITE_BUSY`: the database stayed locked after retrying.
/// - `SQLITE`: any other SQLite error.
/// - `TRANSPORT`: NATS could not be reached or refused a request.
/// - `TIMEOUT`: a wait (`sync`, `waitFor`, `waitReady`) ran out of time.
/// - `SCHEMA_MISMATCH`: a table's schema differs between nodes.
/// - `SNAPSHOT`: creating or restoring a snapshot failed.
/// - `CLOSED`: the replica is closed.
/// - `IO`: a file could not be read or written.
/// - `NO_PRIMARY_KEY`: a replicated table has no declared primary key.
/// - `NATS_SERVER_NOT_FOUND`: the embedded default needs a `nats-server` binary and none was found.
/// - `INTERNAL`: a bug; please report it.
#[napi(string_enum)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    #[napi(value = "CONFIG")]
    Config,
    #[napi(value = "SQLITE_BUSY")]
    SqliteBusy,
    #[napi(value = "SQLITE")]
    Sqlite,
    #[napi(value = "TRANSPORT")]
    Transport,
    #[napi(value = "TIMEOUT")]
    Timeout,
    #[napi(value = "SCHEMA_MISMATCH")]
    SchemaMismatch,
    #[napi(value = "SNAPSHOT")]
    Snapshot,
    #[napi(value = "CLOSED")]
    Closed,
    #[napi(value = "IO")]
    Io,
    #[napi(value = "NO_PRIMARY_KEY")]
    NoPrimaryKey,
    #[napi(value = "NATS_SERVER_NOT_FOUND")]
    NatsServerNotFound,
    #[napi(value = "INTERNAL")]
    Internal,
}

impl ErrorCode {
    /// Exhaustive on purpose: a new core code does not compile until the `.d.ts` union has it too.
    fn of(code: harmonylite::ErrorCode) -> ErrorCode {
        use harmonylite::ErrorCode as Core;
        match code {
            Core::Config => ErrorCode::Config,
            Core::SqliteBusy => ErrorCode::SqliteBusy,
            Core::Sqlite => ErrorCode::Sqlite,
            Core::Transport => ErrorCode::Transport,
            Core::Timeout => ErrorCode::Timeout,
            Core::SchemaMismatch => ErrorCode::SchemaMismatch,
            Core::Snapshot => ErrorCode::Snapshot,
            Core::Closed => ErrorCode::Closed,
            Core::Io => ErrorCode::Io,
            Core::NoPrimaryKey => ErrorCode::NoPrimaryKey,
            Core::NatsServerNotFound => ErrorCode::NatsServerNotFound,
            Core::Internal => ErrorCode::Internal,
        }
    }

    /// The string JavaScript sees in `err.code` (the same as the `#[napi(value)]` above).
    fn as_str(self) -> &'static str {
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

/// A `CONFIG` error about an argument of a binding method (`timeoutMs`, `db`, ...).
pub(crate) fn bad_argument(field: &str, reason: impl Into<String>) -> harmonylite::Error {
    harmonylite::Error::Config {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Builds the JavaScript `Error` for a core error; the returned napi error carries that object, so
/// throwing or rejecting with it hands JavaScript exactly this object.
pub(crate) fn to_js(env: &Env, err: &harmonylite::Error) -> napi::Error {
    build(env, err).unwrap_or_else(|failure| failure)
}

fn build(env: &Env, err: &harmonylite::Error) -> napi::Result<napi::Error> {
    let code = ErrorCode::of(err.code()).as_str();
    let mut object = env.create_error(napi::Error::new(Status::GenericFailure, err.to_string()))?;
    object.set_named_property("code", code)?;
    if let harmonylite::Error::Config { field, .. } = err {
        object.set_named_property("field", field.as_str())?;
    }
    Ok(napi::Error::from(object.to_unknown()))
}

/// Reads an `Error`'s stack (or message) for a report, without running user code that could throw.
pub(crate) fn describe(error: &Object) -> String {
    for key in ["stack", "message"] {
        if let Ok(text) = error.get_named_property::<String>(key) {
            return text;
        }
    }
    "(no message)".to_string()
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_core_code_has_the_same_string_in_javascript() {
        for code in harmonylite::ErrorCode::ALL {
            assert_eq!(ErrorCode::of(code).as_str(), code.as_str());
        }
    }
}
