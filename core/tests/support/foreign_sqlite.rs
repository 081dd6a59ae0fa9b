//! A second, different copy of SQLite in the test process: the system `libsqlite3.so.0` (Debian's
//! `libsqlite3-0`, which `python3` depends on), loaded at run time with its own lock tables — what an app's
//! `apsw`, better-sqlite3 or a statically linked Python `sqlite3` is next to the engine's bundled copy.
#![allow(unsafe_code)] // FFI into the loaded library; each call's contract is SQLite's C API.
#![allow(dead_code)] // each test binary uses part of it

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::OnceLock;

type Db = *mut c_void;
type Stmt = *mut c_void;

pub const SQLITE_OK: c_int = 0;
pub const SQLITE_BUSY: c_int = 5;
const SQLITE_ROW: c_int = 100;
const SQLITE_OPEN_READWRITE: c_int = 0x2;
const SQLITE_OPEN_CREATE: c_int = 0x4;
const SQLITE_OPEN_FULLMUTEX: c_int = 0x10000;

pub struct ForeignSqlite {
    _lib: libloading::Library,
    libversion: unsafe extern "C" fn() -> *const c_char,
    open_v2: unsafe extern "C" fn(*const c_char, *mut Db, c_int, *const c_char) -> c_int,
    close_v2: unsafe extern "C" fn(Db) -> c_int,
    exec: unsafe extern "C" fn(
        Db,
        *const c_char,
        *const c_void,
        *mut c_void,
        *mut *mut c_char,
    ) -> c_int,
    free: unsafe extern "C" fn(*mut c_void),
    errmsg: unsafe extern "C" fn(Db) -> *const c_char,
    busy_timeout: unsafe extern "C" fn(Db, c_int) -> c_int,
    prepare_v2:
        unsafe extern "C" fn(Db, *const c_char, c_int, *mut Stmt, *mut *const c_char) -> c_int,
    step: unsafe extern "C" fn(Stmt) -> c_int,
    column_text: unsafe extern "C" fn(Stmt, c_int) -> *const c_char,
    finalize: unsafe extern "C" fn(Stmt) -> c_int,
    soft_heap_limit64: unsafe extern "C" fn(i64) -> i64,
}

// SAFETY: the loaded library is built threadsafe (SQLITE_THREADSAFE=1, Debian's default); the struct holds
// only function pointers into it.
unsafe impl Send for ForeignSqlite {}
unsafe impl Sync for ForeignSqlite {}

/// The system SQLite, loaded once per test process. Panics with how to get it when it is missing.
pub fn foreign_sqlite() -> &'static ForeignSqlite {
    static LIB: OnceLock<ForeignSqlite> = OnceLock::new();
    LIB.get_or_init(|| {
        // SAFETY: loading a C library whose initialisers have no preconditions.
        let lib = unsafe { libloading::Library::new("libsqlite3.so.0") }.unwrap_or_else(|err| {
            panic!("the coexistence tests need the system SQLite (apt-get install libsqlite3-0): {err}")
        });
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol has the C signature of the field it is stored in (sqlite3.h).
                *unsafe { lib.get($name) }.unwrap_or_else(|err| panic!("{}: {err}", stringify!($name)))
            };
        }
        let foreign = ForeignSqlite {
            libversion: sym!(b"sqlite3_libversion\0"),
            open_v2: sym!(b"sqlite3_open_v2\0"),
            close_v2: sym!(b"sqlite3_close_v2\0"),
            exec: sym!(b"sqlite3_exec\0"),
            free: sym!(b"sqlite3_free\0"),
            errmsg: sym!(b"sqlite3_errmsg\0"),
            busy_timeout: sym!(b"sqlite3_busy_timeout\0"),
            prepare_v2: sym!(b"sqlite3_prepare_v2\0"),
            step: sym!(b"sqlite3_step\0"),
            column_text: sym!(b"sqlite3_column_text\0"),
            finalize: sym!(b"sqlite3_finalize\0"),
            soft_heap_limit64: sym!(b"sqlite3_soft_heap_limit64\0"),
            _lib: lib,
        };
        foreign.assert_separate_copy();
        foreign
    })
}

impl ForeignSqlite {
    pub fn version(&self) -> String {
        // SAFETY: returns a static NUL-terminated string.
        unsafe { CStr::from_ptr((self.libversion)()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Proves the loaded library is not the engine's copy: a process-wide setting changed through one is
    /// not seen by the other.
    fn assert_separate_copy(&self) {
        let engine = rusqlite::Connection::open_in_memory().expect("engine copy");
        let engine_limit = |conn: &rusqlite::Connection| -> i64 {
            conn.query_row("PRAGMA soft_heap_limit", [], |r| r.get(0))
                .expect("soft_heap_limit")
        };
        let before = engine_limit(&engine);
        // SAFETY: plain integer API.
        let old = unsafe { (self.soft_heap_limit64)(before + 40_961) };
        let seen = engine_limit(&engine);
        // SAFETY: as above.
        unsafe { (self.soft_heap_limit64)(old) };
        assert_eq!(
            seen,
            before,
            "libsqlite3.so.0 ({}) is the engine's SQLite copy, not a second one",
            self.version()
        );
    }

    pub fn open(&'static self, path: &Path) -> Result<ForeignConn, String> {
        let c_path = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL in path");
        let mut db: Db = std::ptr::null_mut();
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
        // SAFETY: valid NUL-terminated path, out pointer to a local; the handle is closed on drop.
        let rc = unsafe { (self.open_v2)(c_path.as_ptr(), &mut db, flags, std::ptr::null()) };
        let conn = ForeignConn { lib: self, db };
        if rc != SQLITE_OK {
            return Err(format!("open {}: {}", path.display(), conn.errmsg()));
        }
        // SAFETY: open handle.
        unsafe { (self.busy_timeout)(db, 30_000) };
        Ok(conn)
    }
}

/// A connection of the foreign copy. Closed on drop.
pub struct ForeignConn {
    lib: &'static ForeignSqlite,
    db: Db,
}

// SAFETY: opened with SQLITE_OPEN_FULLMUTEX (serialized), so any thread may use it.
unsafe impl Send for ForeignConn {}

impl ForeignConn {
    fn errmsg(&self) -> String {
        if self.db.is_null() {
            return "out of memory".into();
        }
        // SAFETY: the handle is open; the message is NUL-terminated and copied at once.
        unsafe { CStr::from_ptr((self.lib.errmsg)(self.db)) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn busy_timeout(&self, millis: i32) {
        // SAFETY: open handle.
        unsafe { (self.lib.busy_timeout)(self.db, millis) };
    }

    /// Runs SQL; on failure the SQLite result code and message.
    pub fn exec(&self, sql: &str) -> Result<(), (i32, String)> {
        let c_sql = CString::new(sql).expect("no NUL in SQL");
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: open handle, NUL-terminated SQL, no callback; the error string is freed with sqlite3_free.
        let rc = unsafe {
            (self.lib.exec)(
                self.db,
                c_sql.as_ptr(),
                std::ptr::null(),
                std::ptr::null_mut(),
                &mut err,
            )
        };
        if rc == SQLITE_OK {
            return Ok(());
        }
        let message = if err.is_null() {
            self.errmsg()
        } else {
            // SAFETY: SQLite allocated a NUL-terminated message for us to free.
            let text = unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned();
            unsafe { (self.lib.free)(err.cast()) };
            text
        };
        Err((rc & 0xff, message))
    }

    /// The first column of every row, as text (NULL as "NULL").
    pub fn column(&self, sql: &str) -> Result<Vec<String>, (i32, String)> {
        let c_sql = CString::new(sql).expect("no NUL in SQL");
        let mut stmt: Stmt = std::ptr::null_mut();
        // SAFETY: open handle, NUL-terminated SQL (-1: read to the NUL), out pointer to a local.
        let rc = unsafe {
            (self.lib.prepare_v2)(self.db, c_sql.as_ptr(), -1, &mut stmt, std::ptr::null_mut())
        };
        if rc != SQLITE_OK {
            return Err((rc & 0xff, self.errmsg()));
        }
        let mut out = Vec::new();
        let rc = loop {
            // SAFETY: a prepared statement, finalized below.
            let rc = unsafe { (self.lib.step)(stmt) };
            if rc != SQLITE_ROW {
                break rc;
            }
            // SAFETY: column 0 of the current row; the text is copied before the next step.
            let text = unsafe { (self.lib.column_text)(stmt, 0) };
            out.push(if text.is_null() {
                "NULL".to_string()
            } else {
                unsafe { CStr::from_ptr(text) }
                    .to_string_lossy()
                    .into_owned()
            });
        };
        // SAFETY: finalizing the statement prepared above, once.
        let finalized = unsafe { (self.lib.finalize)(stmt) };
        if rc != 101 || finalized != SQLITE_OK {
            return Err((finalized & 0xff, self.errmsg()));
        }
        Ok(out)
    }
}

impl Drop for ForeignConn {
    fn drop(&mut self) {
        if !self.db.is_null() {
            // SAFETY: the handle is open and not used after this.
            unsafe { (self.lib.close_v2)(self.db) };
        }
    }
}
