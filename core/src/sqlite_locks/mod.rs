//! The engine's SQLite copy beside any other SQLite copy in the process (ADR 0012).
//!
//! The core links SQLite through rusqlite's `bundled` feature: inside a Python, Node or Swift app that is a
//! second copy of SQLite next to the app's own (`sqlite3`, `apsw`, better-sqlite3, the system library). SQLite
//! locks with POSIX `fcntl` locks, which belong to the process, so two copies never exclude each other, and
//! closing any descriptor of a file drops every POSIX lock the process holds on it: together they corrupt
//! the database. [`install`] switches the engine's copy (on Linux) to open-file-description locks routed
//! through one descriptor per file, and keeps the descriptors it closes (`ofd_locks.c` has the details):
//! the copy then excludes the others as another process would.
//!
//! When the core is built against a system SQLite instead (`LIBSQLITE3_SYS_USE_PKG_CONFIG`, as the Swift
//! binding does to share the app's library), the library is shared, not a second copy, and nothing is
//! installed.

use std::sync::OnceLock;

use crate::{Error, Result};

/// How the engine's SQLite copy locks files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteLocking {
    /// The bundled copy takes open-file-description locks through one descriptor per file and keeps the
    /// descriptors it closes: safe beside any other SQLite copy in the process.
    OpenFileDescription,
    /// The core links the system SQLite (shared with the host app, so there is no second copy), or the
    /// platform has no open-file-description locks: POSIX locks as SQLite takes them.
    Posix,
}

#[cfg(harmonylite_ofd_locks)]
mod ffi {
    use std::os::raw::c_int;

    // Links the bundled SQLite whose system calls the shim replaces (rusqlite's copy: same crate, one copy).
    use libsqlite3_sys as _;

    #[allow(unsafe_code)]
    extern "C" {
        pub(super) fn harmonylite_sqlite_use_ofd_locks() -> c_int;
        pub(super) fn harmonylite_sqlite_fd_counts(
            kept: *mut c_int,
            lock_fds: *mut c_int,
            live: *mut c_int,
        );
    }
}

/// Installs the lock shim in the engine's SQLite copy, once per process; later calls return the first
/// result. `open_replicated` calls it; the bindings call it when their module loads. It must run before the
/// copy opens its first database file: a lock taken with a POSIX lock before would be released as an
/// open-file-description lock, which does not release it. A Rust app that shares the bundled copy (its own
/// rusqlite `bundled`) should call it before opening its own connections.
pub fn install() -> Result<SqliteLocking> {
    static INSTALLED: OnceLock<std::result::Result<SqliteLocking, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(install_once)
        .clone()
        .map_err(Error::Internal)
}

#[cfg(harmonylite_ofd_locks)]
fn install_once() -> std::result::Result<SqliteLocking, String> {
    // SAFETY: a C function without arguments; it registers system-call replacements in the bundled SQLite's
    // unix VFS through `xSetSystemCall`, which SQLite documents as safe before the VFS opens files, and
    // `install` runs it once (OnceLock).
    #[allow(unsafe_code)]
    let rc = unsafe { ffi::harmonylite_sqlite_use_ofd_locks() };
    if rc == 0 {
        Ok(SqliteLocking::OpenFileDescription)
    } else {
        Err(format!(
            "cannot switch the engine's SQLite to open-file-description locks (SQLite code {rc})"
        ))
    }
}

#[cfg(not(harmonylite_ofd_locks))]
fn install_once() -> std::result::Result<SqliteLocking, String> {
    Ok(SqliteLocking::Posix)
}

/// Descriptors the shim holds for the process: kept after SQLite closed them, its own lock descriptors
/// (one per file the copy has locked), and SQLite's descriptors in use. For tests of the bound on kept
/// descriptors; all zero without the shim.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorCounts {
    pub kept: usize,
    pub lock: usize,
    pub live: usize,
}

#[doc(hidden)]
pub fn descriptor_counts() -> DescriptorCounts {
    #[cfg(harmonylite_ofd_locks)]
    {
        let (mut kept, mut lock, mut live) = (0, 0, 0);
        // SAFETY: the C function writes three ints through the pointers, which point to live locals.
        #[allow(unsafe_code)]
        unsafe {
            ffi::harmonylite_sqlite_fd_counts(&mut kept, &mut lock, &mut live)
        };
        let count = |n: std::os::raw::c_int| usize::try_from(n).unwrap_or(0);
        DescriptorCounts {
            kept: count(kept),
            lock: count(lock),
            live: count(live),
        }
    }
    #[cfg(not(harmonylite_ofd_locks))]
    DescriptorCounts::default()
}
