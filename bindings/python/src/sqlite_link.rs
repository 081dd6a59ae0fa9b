//! One SQLite library per process. The app's `sqlite3` module and the core must use the same SQLite library:
//! two copies in one process do not see each other's locks (POSIX locks are per process, and each copy
//! keeps its own table of them) and corrupt the database. So this module links the system's
//! `libsqlite3.so.0` (the one Python's `sqlite3` links; see `.cargo/config.toml`) instead of the core's
//! bundled copy, and the package checks at the first open that both really are one library.

use pyo3::prelude::*;
#[cfg(system_sqlite)]
use std::ffi::{c_char, c_int, c_void};

use crate::errors::core_error;

/// rusqlite 0.43 calls `sqlite3_set_clientdata` (SQLite 3.44+) from `busy_timeout`, and only ever with no
/// data, to clear a busy-handler closure the core never installs. SQLite older than 3.44 (Debian 12 ships
/// 3.40) lacks the symbol, so the module would not load; this stands in for it. Storing data (a closure for
/// a hook) is refused with SQLITE_MISUSE rather than leaked, so a future core use fails loudly.
#[cfg(system_sqlite)]
#[allow(unsafe_code)] // `no_mangle` is the only unsafe part; the body touches no pointer.
#[no_mangle]
pub extern "C" fn sqlite3_set_clientdata(
    _db: *mut c_void,
    _name: *const c_char,
    data: *mut c_void,
    _destructor: Option<extern "C" fn(*mut c_void)>,
) -> c_int {
    const SQLITE_OK: c_int = 0;
    const SQLITE_MISUSE: c_int = 21;
    if data.is_null() {
        SQLITE_OK
    } else {
        SQLITE_MISUSE
    }
}

/// The SQLite library the core uses: its version and its process-wide `PRAGMA soft_heap_limit`, which the
/// package sets through Python's `sqlite3` and reads back here to prove both are the same library.
#[pyfunction]
pub fn sqlite_library() -> PyResult<(String, i64)> {
    let probe = || -> rusqlite::Result<i64> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.query_row("PRAGMA soft_heap_limit", [], |row| row.get(0))
    };
    let limit = probe().map_err(|err| {
        core_error(harmonylite::Error::Internal(format!(
            "cannot query the SQLite library: {err}"
        )))
    })?;
    Ok((rusqlite::version().to_string(), limit))
}
