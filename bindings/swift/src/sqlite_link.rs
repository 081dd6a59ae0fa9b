//! One SQLite library per process. The app's SQLite (the system `libsqlite3` that Swift code uses through
//! the C API) and the core must be the same library: two copies in one process do not see each other's
//! POSIX locks (the locks are per process, each copy keeps its own table of them) and corrupt the
//! database. So `test.sh` builds this library against the system SQLite (`LIBSQLITE3_SYS_USE_PKG_CONFIG`),
//! and the Swift tests prove it with [`sqlite_library`].

/// The SQLite library the core uses: its version and the process-wide soft heap limit, which a test sets
/// through the C API and reads back here to prove both sides share one library.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SqliteLibrary {
    pub version: String,
    pub soft_heap_limit: i64,
}

#[uniffi::export(name = "native_sqlite_library")]
pub fn sqlite_library() -> Result<SqliteLibrary, crate::errors::NativeError> {
    let probe = || -> rusqlite::Result<i64> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.query_row("PRAGMA soft_heap_limit", [], |row| row.get(0))
    };
    let soft_heap_limit = probe().map_err(|source| harmonylite::Error::Sqlite {
        context: "probing the SQLite library".into(),
        source,
    })?;
    Ok(SqliteLibrary {
        version: rusqlite::version().to_string(),
        soft_heap_limit,
    })
}
