//! `__harmonylite__deferred`: received changes that cannot be applied yet, each with its kind and reason,
//! retried when the schema changes, when the table they wait on changes, at open, and periodically.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::clock::Version;
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
    /// A row of this node that was moved to a fresh key while it waited: once applied, it is published
    /// as this node's new row (nobody else has it).
    pub publish: bool,
    /// Per column, the version that wrote it (a row waiting whole; see [`ColumnVersions`]).
    pub column_versions: ColumnVersions,
}

/// The version that wrote each column of a row waiting whole (one that was here and was moved aside), so
/// that edits folded into it, and the row once it applies, merge column by column as they would have.
pub type ColumnVersions = Vec<(String, Version)>;

/// What a parked entry stores: (origin, change, publish, column versions). Entries written before column
/// versions existed hold the first three only.
type Stored = (u64, RowChange, bool, ColumnVersions);

fn encode(origin: u64, change: &RowChange, publish: bool, versions: &ColumnVersions) -> Vec<u8> {
    // Serializing our own types cannot fail.
    rmp_serde::to_vec(&(origin, change, publish, versions)).unwrap_or_default()
}

fn decode(blob: &[u8]) -> std::result::Result<Stored, rmp_serde::decode::Error> {
    rmp_serde::from_slice::<Stored>(blob).or_else(|_| {
        rmp_serde::from_slice::<(u64, RowChange, bool)>(blob)
            .map(|(origin, change, publish)| (origin, change, publish, Vec::new()))
    })
}

pub fn park(
    conn: &Connection,
    origin: u64,
    change: &RowChange,
    kind: ParkKind,
    reason: &str,
) -> Result<()> {
    park_whole(conn, origin, change, kind, reason, &Vec::new())
}

/// Parks a row that was here, whole, with the version of each of its columns.
pub fn park_whole(
    conn: &Connection,
    origin: u64,
    change: &RowChange,
    kind: ParkKind,
    reason: &str,
    versions: &ColumnVersions,
) -> Result<()> {
    let blob = encode(origin, change, false, versions);
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

/// Parks a row of this node that nobody else has yet: it is published once it applies.
pub fn park_own(conn: &Connection, node_id: u64, change: &RowChange, reason: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO __harmonylite__deferred(tbl, reason, change, kind, at, pk) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            change.table,
            reason,
            encode(node_id, change, true, &Vec::new()),
            ParkKind::Constraint.as_str(),
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
        match decode(&blob) {
            Ok((origin, change, publish, column_versions)) => parked.push(Parked {
                id,
                origin,
                change,
                kind: ParkKind::parse(&kind),
                publish,
                column_versions,
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

/// The lineages (creation versions) of the inserts and deletes of this row that wait: a later change of
/// the same lineage must wait behind them (an update of a row that is not there yet cannot apply first).
/// A waiting update holds nothing back: columns merge one by one, whatever the order.
pub fn lineages_waiting(
    conn: &Connection,
    table: &str,
    pk: &[u8],
) -> Result<Vec<crate::clock::Version>> {
    let blobs: Vec<Vec<u8>> = entries_of_row(conn, table, pk)?
        .into_iter()
        .map(|(_, blob, _)| blob)
        .collect();
    Ok(blobs
        .iter()
        .filter_map(|blob| decode(blob).ok())
        .filter(|(_, change, _, _)| change.op != crate::log::Op::Update)
        .map(|(_, change, _, _)| change.born)
        .collect())
}

/// Removes the waiting changes of earlier lives of `change`'s row (a smaller causal length: the row was
/// deleted since, and `change` starts a later life or deletes it), of its lineage when `same_lineage_only`
/// (a table whose keys are assigned: another lineage is another row). Returns how many were removed. A row
/// of this node waiting to be published is known nowhere else and is left alone.
pub fn remove_superseded(
    conn: &Connection,
    change: &RowChange,
    same_lineage_only: bool,
) -> Result<usize> {
    let entries = entries_of_row(conn, &change.table, &pk_key(&change.pk))?;
    let mut removed = 0;
    for (id, blob, _) in entries {
        let Ok((_, waiting, publish, _)) = decode(&blob) else {
            continue;
        };
        if publish || waiting.cl >= change.cl || (same_lineage_only && waiting.born != change.born)
        {
            continue;
        }
        remove(conn, id)?;
        removed += 1;
    }
    Ok(removed)
}

/// Gives a waiting row of this node a new key (its key went to a row created earlier elsewhere); it is
/// published under that key once it applies.
pub fn rekey(
    conn: &Connection,
    id: i64,
    origin: u64,
    change: &RowChange,
    reason: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE __harmonylite__deferred SET change = ?2, pk = ?3, reason = ?4 WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            id,
            encode(origin, change, true, &Vec::new()),
            pk_key(&change.pk),
            reason
        ])
    })
    .ctx("moving a parked row to a fresh key")?;
    Ok(())
}

/// Folds a later change of a row into that row's insert waiting on a constraint (the whole row waits as one
/// image, the same on every node, whichever node moved it aside and whatever it had received by then),
/// column by column: a column takes the change's value when the change's version (`origin`'s stamp) beats
/// the version that wrote the waiting value, as it would in the table. The change is an update of the
/// waiting row's life, or an insert of the same life of its lineage made on another node (the key deleted,
/// then created again on two nodes: one row that merges per column, ADR 0011) — queued behind the waiting
/// insert instead, that insert would wait for a UNIQUE value the merged row may no longer hold, here only,
/// while the node that merged them holds the row. Returns false when no such insert waits here. An insert
/// waiting on the schema is not folded into: the change waits behind it instead.
pub fn fold_into_waiting_insert(
    conn: &Connection,
    change: &RowChange,
    origin: u64,
) -> Result<bool> {
    let rows = entries_of_row(conn, &change.table, &pk_key(&change.pk))?
        .into_iter()
        .filter(|(_, _, kind)| kind == ParkKind::Constraint.as_str());
    for (id, blob, _) in rows {
        let Ok((from, mut waiting, publish, mut versions)) = decode(&blob) else {
            continue;
        };
        let same_row = match change.op {
            crate::log::Op::Update => waiting.life == change.life,
            crate::log::Op::Insert => waiting.cl == change.cl,
            crate::log::Op::Delete => false,
        };
        if waiting.op != crate::log::Op::Insert || waiting.born != change.born || !same_row {
            continue;
        }
        // Columns without a version of their own were written by the waiting change itself.
        let written_by_waiting = Version {
            hlc: waiting.hlc,
            node: from,
        };
        for (name, _) in &waiting.columns {
            if !versions.iter().any(|(n, _)| n == name) {
                versions.push((name.clone(), written_by_waiting));
            }
        }
        let incoming = Version {
            hlc: change.hlc,
            node: origin,
        };
        for (name, value) in &change.columns {
            let current = versions.iter_mut().find(|(n, _)| n == name);
            if current.as_ref().is_some_and(|(_, v)| *v >= incoming) {
                continue;
            }
            match current {
                Some(slot) => slot.1 = incoming,
                None => versions.push((name.clone(), incoming)),
            }
            match waiting.columns.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.clone(),
                None => waiting.columns.push((name.clone(), value.clone())),
            }
        }
        waiting.hlc = waiting.hlc.max(change.hlc);
        conn.prepare_cached("UPDATE __harmonylite__deferred SET change = ?2 WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.execute(params![id, encode(from, &waiting, publish, &versions)])
            })
            .ctx("updating a parked change")?;
        return Ok(true);
    }
    Ok(false)
}

/// Discards the changes of `table` from `origin` stamped at or before `until` (that node dropped the
/// table then, and this node lacks it: ADR 0016). Returns how many.
pub fn discard_from(
    conn: &Connection,
    table: &str,
    origin: u64,
    until: crate::clock::Hlc,
) -> Result<u64> {
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT id, change FROM __harmonylite__deferred WHERE tbl = ?1")
        .and_then(|mut stmt| {
            stmt.query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading parked changes")?;
    let mut discarded = 0;
    for (id, blob) in rows {
        let Ok((from, change, _, _)) = decode(&blob) else {
            continue;
        };
        if from == origin && change.hlc <= until {
            remove(conn, id)?;
            discarded += 1;
        }
    }
    Ok(discarded)
}

/// The parked entries of one row, oldest first: (id, stored change, kind).
fn entries_of_row(
    conn: &Connection,
    table: &str,
    pk: &[u8],
) -> Result<Vec<(i64, Vec<u8>, String)>> {
    conn.prepare_cached(
        "SELECT id, change, kind FROM __harmonylite__deferred WHERE tbl = ?1 AND pk = ?2 ORDER BY id",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![table, pk], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .ctx("reading parked changes")
}

pub fn has_key(conn: &Connection, table: &str, pk: &[u8]) -> Result<bool> {
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
