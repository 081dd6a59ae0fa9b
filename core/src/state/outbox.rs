//! `__harmonylite__outbox`: stamped messages waiting for JetStream's acknowledgement.

use rusqlite::{params, Connection};

use crate::clock::Hlc;
use crate::error::{Result, SqlContext};

/// Queues a message; returns its outbox id (never reused: AUTOINCREMENT). `newest` is the newest clock in
/// the message (part of its message id); None when it is not known, as for a payload that cannot be read.
pub fn insert(
    conn: &Connection,
    shard: u32,
    rows: u32,
    newest: Option<Hlc>,
    payload: &[u8],
) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO __harmonylite__outbox(shard, rows, newest, payload) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            shard as i64,
            rows,
            newest.map(|hlc| hlc as i64),
            payload
        ])
    })
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

/// A queued message.
pub struct Queued {
    pub id: i64,
    pub shard: u32,
    pub rows: u32,
    /// The newest clock in the message; None for a message queued by a library older than state format 4.
    pub newest: Option<Hlc>,
    pub payload: Vec<u8>,
}

/// Every queued message, oldest first.
pub fn load(conn: &Connection) -> Result<Vec<Queued>> {
    conn.prepare("SELECT id, shard, rows, newest, payload FROM __harmonylite__outbox ORDER BY id")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| {
                Ok(Queued {
                    id: row.get(0)?,
                    shard: row.get::<_, i64>(1)?.max(0) as u32,
                    rows: row.get::<_, i64>(2)?.max(0) as u32,
                    newest: row.get::<_, Option<i64>>(3)?.map(|hlc| hlc as Hlc),
                    payload: row.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("loading the outbox")
}
