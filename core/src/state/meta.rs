//! `__harmonylite__meta`: node id, the clock's high-water mark, capture and format markers.

use rusqlite::{Connection, OptionalExtension};

use crate::clock::Clock;
use crate::error::{Result, SqlContext};

pub fn get(conn: &Connection, key: &str) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT value FROM __harmonylite__meta WHERE key = ?1")
        .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
        .ctx("reading library metadata")
}

pub fn set(conn: &Connection, key: &str, value: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO __harmonylite__meta(key, value) VALUES (?1, ?2)")
        .and_then(|mut stmt| stmt.execute(rusqlite::params![key, value]))
        .ctx("writing library metadata")?;
    Ok(())
}

/// The node id kept in the file, if any.
pub fn node_id(conn: &Connection) -> Result<Option<u64>> {
    Ok(get(conn, "node_id")?
        .filter(|id| *id > 0)
        .map(|id| id as u64))
}

pub fn set_node_id(conn: &Connection, node_id: u64) -> Result<()> {
    set(conn, "node_id", node_id as i64)
}

/// This database's publisher instance (see `log::Publisher`), drawn at the first call and kept in the
/// file; a restored snapshot gets a new one (`forget_instance`), so its copy of another database's messages
/// is not mistaken for its own.
pub fn instance(conn: &Connection) -> Result<u64> {
    if let Some(stored) = get(conn, "instance")?.filter(|i| *i > 0) {
        return Ok(stored as u64);
    }
    let drawn = (rand::random::<u64>() >> 1).max(1);
    set(conn, "instance", drawn as i64)?;
    Ok(drawn)
}

pub fn forget_instance(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM __harmonylite__meta WHERE key = 'instance'", [])
        .ctx("writing library metadata")?;
    Ok(())
}

/// The persisted clock: no stamp this node issues will be at or below it.
pub fn clock(conn: &Connection) -> Result<Clock> {
    Ok(Clock::resume(get(conn, "hlc")?.unwrap_or(0).max(0) as u64))
}

pub fn save_clock(conn: &Connection, clock: &Clock) -> Result<()> {
    set(conn, "hlc", clock.last() as i64)
}

/// Whether capture was installed before (tables seen later were created while the app ran).
pub fn capture_installed(conn: &Connection) -> Result<bool> {
    Ok(get(conn, "capture_installed")?.is_some())
}

pub fn mark_capture_installed(conn: &Connection) -> Result<()> {
    set(conn, "capture_installed", 1)
}
