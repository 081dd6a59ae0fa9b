//! The one place core errors become Swift errors: by [`harmonylite::ErrorCode`], never by message text.
//! The Swift layer turns each case into the matching `HarmonyLiteError` case.

use harmonylite::{Error, ErrorCode};

/// A core error, one case per stable error code; `message` is the core's full text.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum NativeError {
    /// `key` names the configuration key, as written in TOML (`nats.urls`).
    #[error("{message}")]
    Config { key: String, message: String },
    #[error("{message}")]
    SqliteBusy { message: String },
    #[error("{message}")]
    Sqlite { message: String },
    #[error("{message}")]
    Transport { message: String },
    #[error("{message}")]
    Timeout { message: String },
    #[error("{message}")]
    SchemaMismatch { message: String },
    #[error("{message}")]
    Snapshot { message: String },
    #[error("{message}")]
    Closed { message: String },
    #[error("{message}")]
    Io { message: String },
    #[error("{message}")]
    NoPrimaryKey { message: String },
    #[error("{message}")]
    NatsServerNotFound { message: String },
    #[error("{message}")]
    Internal { message: String },
}

fn by_code(code: ErrorCode, message: String, key: Option<String>) -> NativeError {
    match code {
        ErrorCode::Config => NativeError::Config {
            key: key.unwrap_or_default(),
            message,
        },
        ErrorCode::SqliteBusy => NativeError::SqliteBusy { message },
        ErrorCode::Sqlite => NativeError::Sqlite { message },
        ErrorCode::Transport => NativeError::Transport { message },
        ErrorCode::Timeout => NativeError::Timeout { message },
        ErrorCode::SchemaMismatch => NativeError::SchemaMismatch { message },
        ErrorCode::Snapshot => NativeError::Snapshot { message },
        ErrorCode::Closed => NativeError::Closed { message },
        ErrorCode::Io => NativeError::Io { message },
        ErrorCode::NoPrimaryKey => NativeError::NoPrimaryKey { message },
        ErrorCode::NatsServerNotFound => NativeError::NatsServerNotFound { message },
        ErrorCode::Internal => NativeError::Internal { message },
    }
}

impl From<Error> for NativeError {
    fn from(err: Error) -> NativeError {
        let key = match &err {
            Error::Config { field, .. } => Some(field.clone()),
            _ => None,
        };
        by_code(err.code(), err.to_string(), key)
    }
}

/// The core's stable error code strings (`ErrorCode::ALL`), for the error-mapping test.
#[uniffi::export(name = "native_error_codes")]
pub fn error_codes() -> Vec<String> {
    ErrorCode::ALL
        .iter()
        .map(|code| code.as_str().to_string())
        .collect()
}

/// Fails with a core error of the given code, built and converted the way every real error is, so the
/// Swift tests can check the mapping of each code (most cannot be provoked on demand).
#[uniffi::export(name = "native_error_sample")]
pub fn error_sample(code: String) -> Result<(), NativeError> {
    let err = match ErrorCode::ALL.iter().find(|c| c.as_str() == code) {
        Some(ErrorCode::Config) => Error::Config {
            field: "nats.urls".into(),
            reason: "sample".into(),
        },
        Some(ErrorCode::SqliteBusy) => Error::SqliteBusy {
            context: "sample".into(),
        },
        Some(ErrorCode::Sqlite) => Error::Sqlite {
            context: "sample".into(),
            source: rusqlite::Error::InvalidQuery,
        },
        Some(ErrorCode::Transport) => Error::Transport {
            context: "sample".into(),
            reason: "sample".into(),
        },
        Some(ErrorCode::Timeout) => Error::Timeout {
            what: "sample".into(),
            millis: 1,
        },
        Some(ErrorCode::SchemaMismatch) => Error::SchemaMismatch {
            table: "sample".into(),
            reason: "sample".into(),
        },
        Some(ErrorCode::Snapshot) => Error::Snapshot("sample".into()),
        Some(ErrorCode::Closed) => Error::Closed,
        Some(ErrorCode::Io) => Error::Io {
            path: "sample".into(),
            source: std::io::Error::other("sample"),
        },
        Some(ErrorCode::NoPrimaryKey) => Error::NoPrimaryKey {
            table: "sample".into(),
        },
        Some(ErrorCode::NatsServerNotFound) => Error::NatsServerNotFound,
        Some(ErrorCode::Internal) => Error::Internal("sample".into()),
        None => Error::Config {
            field: "code".into(),
            reason: format!("`{code}` is not an error code"),
        },
    };
    Err(err.into())
}
