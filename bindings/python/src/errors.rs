//! The one place where core errors become Python exceptions. The class is chosen from the stable
//! `ErrorCode` string by `harmonylite.errors._from_native`; never from the message text.

use harmonylite::{Error, ErrorCode};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::BoundObject;

/// Builds the Python exception for a core error (needs the GIL).
pub fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    build(py, &err).unwrap_or_else(|failure| failure)
}

/// Like [`to_py_err`], from code that holds the GIL but has no `Python` token at hand.
pub fn core_error(err: Error) -> PyErr {
    Python::attach(|py| to_py_err(py, err))
}

fn build(py: Python<'_>, err: &Error) -> PyResult<PyErr> {
    let details = PyDict::new(py);
    match err {
        Error::Config { field, .. } => details.set_item("key", field)?,
        Error::SchemaMismatch { table, .. } | Error::NoPrimaryKey { table } => {
            details.set_item("table", table)?
        }
        _ => {}
    }
    let exception = py
        .import("harmonylite.errors")?
        .getattr("_from_native")?
        .call1((err.code().as_str(), err.to_string(), details))?;
    Ok(PyErr::from_value(exception))
}

/// A core result that becomes a Python value or raises when converted (under the GIL). Async results use
/// it so the exception is built by pyo3-async-runtimes' converter thread, never on a core worker.
pub struct Answer<T>(pub harmonylite::Result<T>);

impl<'py, T: IntoPyObject<'py>> IntoPyObject<'py> for Answer<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        match self.0 {
            Ok(value) => value
                .into_pyobject(py)
                .map(|object| object.into_any().into_bound())
                .map_err(Into::into),
            Err(err) => Err(to_py_err(py, err)),
        }
    }
}

/// A "bad argument" error with code `CONFIG`, naming the argument.
pub fn bad_argument(name: &str, reason: impl Into<String>) -> PyErr {
    core_error(Error::Config {
        field: name.to_string(),
        reason: reason.into(),
    })
}

/// Raises the exception the binding maps `code` to, built from a real core error of that code, so the
/// tests can check that every code reaches Python with its class. Not part of the public API.
#[pyfunction]
pub fn raise_error_for_test(code: &str) -> PyResult<()> {
    let err = match ErrorCode::ALL.iter().find(|c| c.as_str() == code) {
        None => {
            return Err(bad_argument(
                "code",
                format!("`{code}` is not an error code"),
            ))
        }
        Some(ErrorCode::Config) => Error::Config {
            field: "nats.urls".into(),
            reason: "example".into(),
        },
        Some(ErrorCode::SqliteBusy) => Error::SqliteBusy {
            context: "example".into(),
        },
        Some(ErrorCode::Sqlite) => Error::Sqlite {
            context: "example".into(),
            source: harmonylite_sqlite_error(),
        },
        Some(ErrorCode::Transport) => Error::Transport {
            context: "example".into(),
            reason: "example".into(),
        },
        Some(ErrorCode::Timeout) => Error::Timeout {
            what: "example".into(),
            millis: 1,
        },
        Some(ErrorCode::SchemaMismatch) => Error::SchemaMismatch {
            table: "t".into(),
            reason: "example".into(),
        },
        Some(ErrorCode::Snapshot) => Error::Snapshot("example".into()),
        Some(ErrorCode::Closed) => Error::Closed,
        Some(ErrorCode::Io) => Error::Io {
            path: "example".into(),
            source: std::io::Error::other("example"),
        },
        Some(ErrorCode::NoPrimaryKey) => Error::NoPrimaryKey { table: "t".into() },
        Some(ErrorCode::NatsServerNotFound) => Error::NatsServerNotFound,
        Some(ErrorCode::Internal) => Error::Internal("example".into()),
    };
    Err(core_error(err))
}

/// A real rusqlite error (the core's `Error::Sqlite` wraps one).
fn harmonylite_sqlite_error() -> rusqlite::Error {
    rusqlite::Error::InvalidQuery
}
