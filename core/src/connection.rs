//! The library's own SQLite connections: how they are opened, how they wait for the app's locks, and how
//! they start a write transaction.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tracing::warn;

use crate::error::{Error, Result, SqlContext};
use crate::retry::Backoff;

pub(crate) fn open_connection(db: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        // NO_MUTEX: rusqlite's connections are `!Sync`, so SQLite's per-call mutex only costs time.
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| Error::Sqlite {
        context: format!("opening {}", db.display()),
        source,
    })?;
    set_busy_timeout(&conn, busy_timeout).ctx("setting busy_timeout")?;
    // WAL lets the app read while the library writes; the mode is stored in the file.
    // Switching to WAL needs a moment without other writers; the app may be mid-transaction.
    let mode: String = with_busy_retry(busy_timeout.max(Duration::from_secs(1)), || {
        conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .ctx("enabling WAL")
    })?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(db = %db.display(), mode = %mode, "database is not in WAL mode; the app may see SQLITE_BUSY more often");
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")
        .ctx("setting pragmas")?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// `PRAGMA busy_timeout` rather than rusqlite's `busy_timeout()`, which needs SQLite 3.44
/// (`sqlite3_set_clientdata`): the Swift binding links the system SQLite, which may be older (Debian 12: 3.40).
pub(crate) fn set_busy_timeout(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("PRAGMA busy_timeout = {}", timeout.as_millis()))
}

/// Starts a write transaction (`BEGIN IMMEDIATE`), retrying every few tens of microseconds while another
/// connection holds the write lock, for up to `limit`. SQLite's own busy handler first sleeps a whole
/// millisecond, then 2, then 5, while an app's transaction holds the lock for tens of microseconds: a
/// collision cost the replication path 1–3 ms (about 2 % of stamps at 1,000–5,000 rows/s in bench W2).
pub(crate) fn begin_write<'c>(
    conn: &'c Connection,
    limit: Duration,
    context: &str,
) -> Result<Transaction<'c>> {
    set_busy_timeout(conn, Duration::ZERO).ctx(context)?;
    let started = Instant::now();
    // Made on the first collision only: most transactions start at once.
    let mut pause: Option<Backoff> = None;
    let outcome = loop {
        match Transaction::new_unchecked(conn, TransactionBehavior::Immediate).ctx(context) {
            Err(Error::SqliteBusy { .. }) if started.elapsed() < limit => {
                let pause = pause.get_or_insert_with(|| {
                    Backoff::new(Duration::from_micros(20), Duration::from_micros(500))
                });
                std::thread::sleep(pause.next_pause());
            }
            other => break other,
        }
    };
    // Statements inside the transaction (and every other use of the connection) wait as configured.
    set_busy_timeout(conn, limit).ctx(context)?;
    outcome
}

/// Retries an operation while the database is locked, with backoff, up to `limit`.
pub(crate) fn with_busy_retry<T>(limit: Duration, mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let mut pause = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
    loop {
        match op() {
            Err(Error::SqliteBusy { context }) => {
                if started.elapsed() >= limit {
                    return Err(Error::SqliteBusy { context });
                }
                std::thread::sleep(pause.next_pause());
            }
            other => return other,
        }
    }
}
