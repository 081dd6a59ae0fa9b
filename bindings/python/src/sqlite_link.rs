//! The engine's SQLite: the copy bundled into the native module, next to whichever SQLite the app's
//! `sqlite3`, `apsw` or other modules load. Two copies in one process are safe because the core's lock
//! shim (installed when this module loads) makes the engine's copy lock like another process would
//! (ADR 0012).

use pyo3::prelude::*;

use crate::errors::core_error;

/// Installs the core's SQLite lock shim; called at module load, before the engine opens any database.
pub fn install() -> PyResult<()> {
    harmonylite::sqlite_locks::install().map_err(core_error)?;
    Ok(())
}

/// The engine's SQLite version and how its copy locks files: `"open-file-description"` (the bundled copy
/// beside any other, Linux) or `"posix"`.
#[pyfunction]
pub fn sqlite_library() -> PyResult<(String, &'static str)> {
    let locking = match harmonylite::sqlite_locks::install().map_err(core_error)? {
        harmonylite::sqlite_locks::SqliteLocking::OpenFileDescription => "open-file-description",
        harmonylite::sqlite_locks::SqliteLocking::Posix => "posix",
    };
    Ok((rusqlite::version().to_string(), locking))
}
