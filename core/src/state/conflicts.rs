//! `__harmonylite__conflicts`: a bounded log of everything a merge did not keep as it came — the loser of
//! each concurrent edit, rows moved off a colliding key, changes a local constraint refused — with both
//! sides, so nothing is lost silently. Oldest entries go first once `MAX_ENTRIES` is reached.

use rusqlite::{params, Connection};

use crate::error::{Result, SqlContext};
use crate::log::{pk_key, Value};

/// Entries kept; older ones are dropped as new ones arrive.
pub const MAX_ENTRIES: i64 = 10_000;

// Declared in `records` (the list the bindings expand too).
pub use crate::records::{Conflict, ConflictKind, ConflictSide};

impl Conflict {
    /// A conflict about one row, recorded now; the caller fills in what happened (struct update syntax).
    pub fn about(table: &str, pk: &[Value]) -> Conflict {
        Conflict {
            id: 0,
            at_ms: crate::clock::wall_millis(),
            table: table.to_string(),
            pk: pk.to_vec(),
            kind: ConflictKind::ChangeLost,
            columns: Vec::new(),
            winner: None,
            loser: None,
            moved_to: None,
            detail: String::new(),
        }
    }
}

/// Stores a conflict; returns it with its id.
pub fn record(conn: &Connection, mut conflict: Conflict) -> Result<Conflict> {
    let blob = rmp_serde::to_vec(&conflict).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO __harmonylite__conflicts(at, tbl, pk, kind, detail, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            conflict.at_ms as i64,
            conflict.table,
            pk_key(&conflict.pk),
            conflict.kind.as_str(),
            conflict.detail,
            blob
        ])
    })
    .ctx("recording a conflict")?;
    conflict.id = conn.last_insert_rowid();
    conn.prepare_cached("DELETE FROM __harmonylite__conflicts WHERE id <= ?1")
        .and_then(|mut stmt| stmt.execute([conflict.id - MAX_ENTRIES]))
        .ctx("trimming the conflict log")?;
    Ok(conflict)
}

/// The newest `limit` conflicts with an id above `after`, oldest first.
pub fn list(conn: &Connection, after: i64, limit: usize) -> Result<Vec<Conflict>> {
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT id, record FROM (SELECT id, record FROM __harmonylite__conflicts WHERE id > ?1
             ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![after, limit as i64], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading the conflict log")?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, blob)| {
            rmp_serde::from_slice::<Conflict>(&blob).ok().map(|mut c| {
                c.id = id;
                c
            })
        })
        .collect())
}
