//! Makes the engine's SQLite and the app's better-sqlite3 (each its own copy of SQLite, in one process)
//! exclude each other: see `sqlite_locks.c` for why and how. Without it, concurrent writes from the app
//! and the applier corrupt the database.

#[cfg(target_os = "linux")]
mod linux {
    use std::os::raw::c_int;

    // Links the same bundled SQLite as rusqlite (one copy in the addon); the shim calls into it.
    use libsqlite3_sys as _;

    #[allow(unsafe_code)]
    extern "C" {
        fn harmonylite_use_ofd_locks() -> c_int;
    }

    pub(crate) fn use_ofd_locks() -> Result<(), String> {
        // SAFETY: a C function without arguments that registers a system-call override in the addon's
        // own SQLite; it runs at module load, before the engine opens any connection.
        #[allow(unsafe_code)]
        let rc = unsafe { harmonylite_use_ofd_locks() };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "cannot switch the addon's SQLite to open-file-description locks (SQLite code {rc})"
            ))
        }
    }
}

/// Called once at module load, before any database is opened.
pub(crate) fn use_ofd_locks() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    return linux::use_ofd_locks();
    #[cfg(not(target_os = "linux"))]
    Ok(())
}
