//! `__harmonylite__outbox`: stamped messages waiting for JetStream's acknowledgement.

use rusqlite::{params, Connection};

use crate::error::{Result, SqlContext};

/// Queues a message; returns its outbox id (never reused: AUTOINCREMENT).
pub fn insert(conn: &Connection, shard: u32, rows: u32, payload: &[u8]) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO __harmonylite__outbox(shard, rows, payload) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut stmt| stmt.execute(params![shard as i64, rows, payload]))
    .ctx("writing the outbox")?;
    Ok(conn.last_insert_rowid())
}

pub fn delete(conn: &Connection, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached("DELETE FROM __harmonylite__outbox WHERE id = ?1")
        .ctx("deleting acknowledged outbox entries")?;
    for id in ids {
        stmt.execute([id])
            .ctx("deleting acknowledged outbox entries")?;
    }
    Ok(())
}

/// A queued message: (id, shard, rows, payload).
pub type Queued = (i64, u32, u32, Vec<u8>);

/// Every queued message, oldest first.
pub fn load(conn: &Connection) -> Result<Vec<Queued>> {
    conn.prepare("SELECT id, shard, rows, payload FROM __harmonylite__outbox ORDER BY id")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?.max(0) as u32,
                    row.get::<_, i64>(2)?.max(0) as u32,
                    row.get(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("loading the outbox")
}
