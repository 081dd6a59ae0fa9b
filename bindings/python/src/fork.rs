//! After `fork()` the child inherits the core's runtime handle but none of its threads: waiting on it would
//! hang forever, and dropping core objects could take locks a parent thread held at the fork. Every entry
//! point checks first and raises `ClosedError`; drops in a forked child leak instead of touching the core.
//! The bookkeeping (which process started the runtime) is the core's.

use pyo3::PyResult;

pub fn is_forked_child() -> bool {
    harmonylite::is_forked_child()
}

/// The core's own "used after fork" error (code `CLOSED`) when this process is a forked child.
pub fn check() -> PyResult<()> {
    harmonylite::check_not_forked().map_err(crate::errors::core_error)
}
