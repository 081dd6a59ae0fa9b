//! After `fork()` the child inherits the core's runtime handle but none of its threads: waiting on it would
//! hang forever, and dropping core objects could take locks a parent thread held at the fork. Every entry
//! point checks first and raises `ClosedError`; drops in a forked child leak instead of touching the core.

use std::sync::OnceLock;

use pyo3::PyResult;

/// The process that first handed work to the core runtime through this module.
static STARTED_IN: OnceLock<u32> = OnceLock::new();

/// Records that this process now uses the core runtime (called before the first open).
pub fn mark_started() {
    STARTED_IN.get_or_init(std::process::id);
}

pub fn is_forked_child() -> bool {
    STARTED_IN
        .get()
        .is_some_and(|parent| *parent != std::process::id())
}

/// The core's own "used after fork" error (code `CLOSED`) when this process is a forked child.
pub fn check() -> PyResult<()> {
    match STARTED_IN.get() {
        Some(parent) if *parent != std::process::id() => Err(crate::errors::core_error(
            harmonylite::Error::UsedAfterFork {
                parent_pid: *parent,
            },
        )),
        _ => Ok(()),
    }
}
