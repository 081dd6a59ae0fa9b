//! The engine's SQLite copy beside another SQLite copy in one process (ADR 0012), at the level of locks:
//! the two copies exclude each other, closing an engine connection keeps the other copy's locks, several
//! engine connections on one file (read-only ones included) share one lock owner, and the descriptors the
//! shim keeps stay bounded. The other copy is the system libsqlite3 (support/foreign_sqlite.rs).

#[path = "support/foreign_sqlite.rs"]
mod foreign_sqlite;
mod support;

use std::path::Path;
use std::time::Duration;

use foreign_sqlite::{foreign_sqlite, SQLITE_BUSY};
use harmonylite::sqlite_locks::{install, SqliteLocking};
use rusqlite::{Connection, OpenFlags};

fn engine_connection(db: &Path) -> Connection {
    assert_eq!(install().expect("shim"), SqliteLocking::OpenFileDescription);
    let conn = Connection::open(db).expect("engine connection");
    conn.busy_timeout(Duration::ZERO).expect("busy timeout");
    conn
}

fn engine_read_only(db: &Path) -> Connection {
    assert_eq!(install().expect("shim"), SqliteLocking::OpenFileDescription);
    let conn =
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("read-only");
    conn.busy_timeout(Duration::ZERO).expect("busy timeout");
    conn
}

fn is_busy(result: rusqlite::Result<()>) -> bool {
    matches!(result, Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy)
}

fn wal_database(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("t.db");
    let conn = engine_connection(&db);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .expect("schema");
    db
}

#[test]
fn the_two_copies_exclude_each_other_on_one_file() {
    let dir = tempfile::tempdir().expect("dir");
    let db = wal_database(dir.path());
    let foreign = foreign_sqlite().open(&db).expect("foreign");
    foreign.busy_timeout(0);
    let engine = engine_connection(&db);

    foreign
        .exec("BEGIN IMMEDIATE; INSERT INTO t VALUES (1, 'foreign')")
        .expect("foreign writes");
    assert!(
        is_busy(engine.execute_batch("BEGIN IMMEDIATE")),
        "the engine waits for the other copy's writer"
    );
    foreign.exec("COMMIT").expect("commit");

    engine
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2, 'engine')")
        .expect("engine writes");
    let blocked = foreign.exec("BEGIN IMMEDIATE");
    assert_eq!(
        blocked.map_err(|e| e.0),
        Err(SQLITE_BUSY),
        "the other copy waits for the engine's writer"
    );
    engine.execute_batch("COMMIT").expect("commit");
    assert_eq!(
        foreign.column("SELECT count(*) FROM t").expect("count"),
        ["2"]
    );
}

#[test]
fn closing_an_engine_connection_keeps_the_other_copys_locks() {
    let dir = tempfile::tempdir().expect("dir");
    let db = wal_database(dir.path());
    let foreign = foreign_sqlite().open(&db).expect("foreign");
    foreign.busy_timeout(0);
    foreign
        .exec("BEGIN IMMEDIATE; INSERT INTO t VALUES (1, 'foreign')")
        .expect("foreign writes");

    // Engine connections come and go (each closes its database, -wal and -shm descriptors) ...
    for _ in 0..3 {
        let engine = engine_connection(&db);
        let _: i64 = engine
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
    }
    // ... and the other copy's write lock is still there: a POSIX close would have dropped it.
    let engine = engine_connection(&db);
    assert!(
        is_busy(engine.execute_batch("BEGIN IMMEDIATE")),
        "the other copy still holds the write lock"
    );
    foreign.exec("COMMIT").expect("commit");
    engine
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2, 'engine'); COMMIT")
        .expect("engine writes");
}

/// SQLite counts shared locks per file and issues the system call on whichever connection's descriptor
/// takes the first or releases the last; with one open-file-description lock per descriptor, a shared lock
/// taken through one and released through the other would stay (blocking every writer, the engine's own
/// included). The shim routes both through one descriptor.
#[test]
fn several_engine_connections_share_one_lock_owner() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("rollback.db");
    engine_connection(&db)
        .execute_batch(
            "PRAGMA journal_mode = DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
        )
        .expect("schema");
    let first = engine_connection(&db);
    let second = engine_connection(&db);
    let foreign = foreign_sqlite().open(&db).expect("foreign");
    foreign.busy_timeout(0);

    for round in 0..3 {
        // first takes the shared lock (the system call), second joins it (a count), first leaves (a count),
        // second leaves (the system call, through its own descriptor).
        first
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .expect("first reads");
        second
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .expect("second reads");
        first.execute_batch("COMMIT").expect("first ends");
        second.execute_batch("COMMIT").expect("second ends");
        // The other copy can take the exclusive lock: nothing is left behind.
        foreign
            .exec(&format!("INSERT INTO t VALUES ({}, 'foreign')", round * 10))
            .expect("the other copy writes (exclusive lock)");
        // And so can the engine's own connections, whichever took the shared lock first.
        first
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .expect("first reads");
        second
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .expect("second reads");
        first.execute_batch("COMMIT").expect("first ends");
        second
            .execute_batch(&format!(
                "INSERT INTO t VALUES ({}, 'engine'); COMMIT;",
                round * 10 + 1
            ))
            .expect(
                "second writes while the shared lock was first taken through the other descriptor",
            );
    }
    assert_eq!(
        foreign.column("PRAGMA integrity_check").expect("check"),
        ["ok"]
    );
    assert_eq!(
        foreign.column("SELECT count(*) FROM t").expect("count"),
        ["6"]
    );
}

/// A read-only connection (snapshot creation, integrity checks) may be the first to lock a file; the
/// read-write connections' write locks must still work through the shared lock descriptor.
#[test]
fn a_read_only_connection_locking_first_does_not_break_writers() {
    let dir = tempfile::tempdir().expect("dir");
    for mode in ["DELETE", "WAL"] {
        let db = dir.path().join(format!("{mode}.db"));
        engine_connection(&db)
            .execute_batch(&format!(
                "PRAGMA journal_mode = {mode}; CREATE TABLE t(id INTEGER PRIMARY KEY);"
            ))
            .expect("schema");
        let reader = engine_read_only(&db);
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .expect("read");
        let writer = engine_connection(&db);
        writer
            .busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .expect("reserve");
        reader.execute_batch("COMMIT").expect("reader ends");
        writer
            .execute_batch("COMMIT")
            .expect("commit takes the exclusive lock");
        let foreign = foreign_sqlite().open(&db).expect("foreign");
        foreign.busy_timeout(0);
        foreign
            .exec("INSERT INTO t VALUES (2)")
            .expect("the other copy writes");
        assert_eq!(
            foreign.column("SELECT count(*) FROM t").expect("count"),
            ["2"],
            "{mode}"
        );
    }
}

/// Descriptors of `dir`'s files this process holds, by /proc/self/fd.
fn descriptors_under(dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).expect("dir");
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[test]
fn kept_descriptors_are_reused_and_those_of_deleted_files_closed() {
    let dir = tempfile::tempdir().expect("dir");
    let db = wal_database(dir.path());
    // Another copy keeps the file open throughout, so the WAL file stays.
    let foreign = foreign_sqlite().open(&db).expect("foreign");
    foreign.exec("SELECT count(*) FROM t").expect("read");
    let open_close = |rounds: usize| {
        for i in 0..rounds {
            let engine = engine_connection(&db);
            engine
                .busy_timeout(Duration::from_secs(5))
                .expect("busy timeout");
            if i % 2 == 0 {
                engine
                    .execute("INSERT INTO t(v) VALUES ('x')", [])
                    .expect("write");
            } else {
                let _: i64 = engine
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .expect("read");
            }
            let reader = engine_read_only(&db);
            let _: i64 = reader
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .expect("read");
        }
    };
    open_close(20);
    let after_warmup = descriptors_under(dir.path());
    open_close(300);
    let after_many = descriptors_under(dir.path());
    assert_eq!(
        after_many, after_warmup,
        "300 more open/close rounds must reuse the kept descriptors"
    );
    // The foreign copy's 3 (database, -wal, -shm) plus, per file, a few kept and one lock descriptor.
    assert!(
        after_many <= 3 + 3 * 4,
        "{after_many} descriptors under the folder"
    );

    // Files deleted after use: their kept descriptors are closed at the next open or close.
    let scratch = tempfile::tempdir().expect("scratch");
    for i in 0..100 {
        let path = scratch.path().join(format!("{i}.db"));
        {
            let conn = engine_connection(&path);
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t(id INTEGER PRIMARY KEY);",
            )
            .expect("schema");
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    drop(engine_connection(&db));
    let deleted: usize = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|t| {
            t.to_string_lossy()
                .contains(&*scratch.path().to_string_lossy())
        })
        .count();
    assert_eq!(deleted, 0, "descriptors of deleted files are closed");
}
