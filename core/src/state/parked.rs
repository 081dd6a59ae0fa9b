//! `__harmonylite__deferred`: received changes that cannot be applied yet, each with its kind and reason,
//! retried when the schema changes, when the table they wait on changes, at open, and periodically.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{Result, SqlContext};
use crate::log::{pk_key, RowChange};

/// Why a change waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkKind {
    /// The local schema lacks the table or a column, or needs a column the change does not carry.
    Schema,
    /// A local UNIQUE / NOT NULL / CHECK constraint refuses it (for UNIQUE: another row holds the value
    /// and was created first); it applies once the blocking data changes.
    Constraint,
    /// Its values cannot be stored here at all (a type the column refuses, a malformed key): it waits for
    /// a schema change that accepts it.
    Invalid,
    /// Stamped too far in the future by the sender's clock; it applies when this node's clock gets there.
    Clock,
    /// A later change of a row that already waits: it waits behind it, in order.
    Queued,
}

impl ParkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkKind::Schema => "schema",
            ParkKind::Constraint => "constraint",
            ParkKind::Invalid => "invalid",
            ParkKind::Clock => "clock",
            ParkKind::Queued => "queued",
        }
    }

    fn parse(text: &str) -> ParkKind {
        match text {
            "constraint" => ParkKind::Constraint,
            "invalid" => ParkKind::Invalid,
            "clock" => ParkKind::Clock,
            "queued" => ParkKind::Queued,
            _ => ParkKind::Schema,
        }
    }
}

pub struct Parked {
    pub id: i64,
    pub origin: u64,
    pub change: RowChange,
    pub kind: ParkKind,
}

pub fn park(
    conn: &Connection,
    origin: u64,
    change: &RowChange,
    kind: ParkKind,
    reason: &str,
) -> Result<()> {
    // Serializing our own types cannot fail.
    let blob = rmp_serde::to_vec(&(origin, change)).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO __harmonylite__deferred(tbl, reason, change, kind, at, pk) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            change.table,
            reason,
            blob,
            kind.as_str(),
            crate::clock::wall_millis() as i64,
            pk_key(&change.pk)
        ])
    })
    .ctx("parking a change")?;
    Ok(())
}

/// Parked changes, oldest first, of one table or of all (at most `limit`).
pub fn waiting(conn: &Connection, table: Option<&str>, limit: usize) -> Result<Vec<Parked>> {
    let rows: Vec<(i64, Vec<u8>, String)> = conn
        .prepare_cached(
            "SELECT id, change, kind FROM __harmonylite__deferred WHERE ?1 IS NULL OR tbl = ?1
             ORDER BY id LIMIT ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![table, limit as i64], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading parked changes")?;
    let mut parked = Vec::with_capacity(rows.len());
    for (id, blob, kind) in rows {
        match rmp_serde::from_slice::<(u64, RowChange)>(&blob) {
            Ok((origin, change)) => parked.push(Parked {
                id,
                origin,
                change,
                kind: ParkKind::parse(&kind),
            }),
            Err(err) => {
                warn!(id, error = %err, "unreadable parked change dropped");
                remove(conn, id)?;
            }
        }
    }
    Ok(parked)
}

pub fn update_reason(conn: &Connection, id: i64, kind: ParkKind, reason: &str) -> Result<()> {
    conn.prepare_cached("UPDATE __harmonylite__deferred SET kind = ?2, reason = ?3 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id, kind.as_str(), reason]))
        .ctx("updating a parked change")?;
    Ok(())
}

pub fn remove(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM __harmonylite__deferred WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id]))
        .ctx("clearing a parked change")?;
    Ok(())
}

/// True when a change of this row already waits (later changes of the row must wait behind it).
pub fn has_row(conn: &Connection, table: &str, pk: &[u8]) -> Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM __harmonylite__deferred WHERE tbl = ?1 AND pk = ?2)",
    )
    .and_then(|mut stmt| stmt.query_row(params![table, pk], |row| row.get(0)))
    .ctx("reading parked changes")
}

/// Tables with parked changes.
pub fn tables(conn: &Connection) -> Result<BTreeSet<String>> {
    conn.prepare_cached("SELECT DISTINCT tbl FROM __harmonylite__deferred")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<BTreeSet<String>>>()
        })
        .ctx("reading parked changes")
}

/// Per table: how many changes wait, and the reason of the oldest, for `status()`.
pub fn summary(conn: &Connection) -> Result<BTreeMap<String, (u64, String, String)>> {
    let rows: Vec<(String, i64, String, String)> = conn
        .prepare_cached(
            "SELECT tbl, count(*), (SELECT reason FROM __harmonylite__deferred d2 WHERE d2.tbl = d.tbl ORDER BY id LIMIT 1),
                    (SELECT kind FROM __harmonylite__deferred d3 WHERE d3.tbl = d.tbl ORDER BY id LIMIT 1)
             FROM __harmonylite__deferred d GROUP BY tbl",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading status")?;
    Ok(rows
        .into_iter()
        .map(|(table, count, reason, kind)| (table, (count.max(0) as u64, reason, kind)))
        .collect())
}
