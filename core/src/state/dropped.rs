//! `__harmonylite__dropped`: replicated tables that a node dropped, and when (ADR 0016). This node's own
//! entries say which drops it has announced; the others let it stop keeping a node's changes of a table it
//! lacks waiting for a table that will not come.

use rusqlite::{params, Connection, OptionalExtension};

use crate::clock::Hlc;
use crate::error::{Result, SqlContext};

/// Records that `node` dropped `table` at `hlc` (the newest drop of each node counts).
pub fn record(conn: &Connection, table: &str, node: u64, hlc: Hlc) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO __harmonylite__dropped(tbl, node, hlc) VALUES (?1, ?2, ?3)
         ON CONFLICT(tbl, node) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
    )
    .and_then(|mut stmt| stmt.execute(params![table, node as i64, hlc as i64]))
    .ctx("recording a dropped table")?;
    Ok(())
}

/// When `node` dropped `table`, if it did.
pub fn dropped_at(conn: &Connection, table: &str, node: u64) -> Result<Option<Hlc>> {
    conn.prepare_cached("SELECT hlc FROM __harmonylite__dropped WHERE tbl = ?1 AND node = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![table, node as i64], |row| row.get::<_, i64>(0))
                .optional()
        })
        .ctx("reading dropped tables")
        .map(|hlc| hlc.map(|h| h.max(0) as Hlc))
}

/// Forgets `node`'s drop of `table` (this node created the table again: a later drop is announced anew).
pub fn forget(conn: &Connection, table: &str, node: u64) -> Result<()> {
    conn.prepare_cached("DELETE FROM __harmonylite__dropped WHERE tbl = ?1 AND node = ?2")
        .and_then(|mut stmt| stmt.execute(params![table, node as i64]))
        .ctx("forgetting a dropped table")?;
    Ok(())
}

/// The tables `node` has dropped.
pub fn tables_of(conn: &Connection, node: u64) -> Result<Vec<(String, Hlc)>> {
    conn.prepare_cached("SELECT tbl, hlc FROM __harmonylite__dropped WHERE node = ?1 ORDER BY tbl")
        .and_then(|mut stmt| {
            stmt.query_map([node as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?.max(0) as Hlc,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading dropped tables")
}
