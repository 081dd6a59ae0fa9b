//! The applier's database side: writes a run of received messages in one transaction, row by row under
//! the LWW rule, and stores each shard's stream position in the same transaction (exactly-once effect).
//!
//! The caller has already inserted the control row that mutes the capture triggers, and has stamped this
//! node's pending local changes in the same transaction, so every local change has a version to compare.

use rusqlite::{params, OptionalExtension, Transaction};
use tracing::warn;

use super::lww::{decide, Decision, Version};
use crate::capture::schema::upsert_sql;
use crate::capture::{Schema, TableInfo};
use crate::clock::Clock;
use crate::error::{Result, SqlContext};
use crate::events::{ChangeEvent, ChangeOp};
use crate::log::{decode, pk_key, Op, RowChange};

/// A message as received from a shard's stream.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub shard: u32,
    pub seq: u64,
    pub payload: bytes::Bytes,
}

#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub events: Vec<ChangeEvent>,
    /// (shard, stream sequence, reason) of messages that could not be decoded.
    pub dead_letters: Vec<(u32, u64, String)>,
    /// Newest stored position per shard after this transaction.
    pub positions: Vec<(u32, u64)>,
    pub applied: u64,
    pub kept: u64,
    pub deferred: u64,
}

enum RowResult {
    Applied(ChangeOp),
    Kept,
    Deferred(String),
}

/// Every shard's applied stream position.
pub fn read_positions(conn: &rusqlite::Connection) -> Result<std::collections::BTreeMap<u32, u64>> {
    conn.prepare("SELECT shard, seq FROM __harmonylite__positions")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u32,
                    row.get::<_, i64>(1)?.max(0) as u64,
                ))
            })?
            .collect::<rusqlite::Result<std::collections::BTreeMap<_, _>>>()
        })
        .ctx("reading stream positions")
}

pub fn stored_position(conn: &rusqlite::Connection, shard: u32) -> Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM __harmonylite__positions WHERE shard = ?1")
        .and_then(|mut stmt| stmt.query_row([shard], |row| row.get(0)).optional())
        .ctx("reading the stream position")?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

pub fn apply_messages(
    tx: &Transaction<'_>,
    schema: &Schema,
    clock: &mut Clock,
    node_id: u64,
    messages: &[Incoming],
) -> Result<ApplyOutcome> {
    let mut outcome = ApplyOutcome::default();
    let mut positions: Vec<(u32, u64)> = Vec::new();
    for message in messages {
        let position = match positions.iter().find(|(s, _)| *s == message.shard) {
            Some((_, seq)) => *seq,
            None => stored_position(tx, message.shard)?,
        };
        if message.seq <= position {
            continue; // Redelivery of something this transaction or an earlier one already applied.
        }
        match decode(&message.payload) {
            Err(err) => {
                warn!(shard = message.shard, seq = message.seq, error = %err, "malformed message parked on the dead-letter subject");
                tx.prepare_cached(
                    "INSERT INTO __harmonylite__dead_letters(shard, seq, reason, at) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        message.shard,
                        message.seq as i64,
                        err.to_string(),
                        crate::clock::wall_millis() as i64
                    ])
                })
                .ctx("recording a dead letter")?;
                outcome
                    .dead_letters
                    .push((message.shard, message.seq, err.to_string()));
            }
            Ok(batch) => {
                for change in &batch.changes {
                    clock.observe(change.hlc);
                }
                // Our own messages: the rows and versions are already here.
                if batch.node_id != node_id {
                    for change in batch.changes {
                        match apply_change(tx, schema, batch.node_id, &change)? {
                            RowResult::Applied(op) => {
                                outcome.applied += 1;
                                outcome.events.push(ChangeEvent {
                                    table: change.table,
                                    op,
                                    pk: change.pk,
                                    origin_node: batch.node_id,
                                    hlc: change.hlc,
                                    local: false,
                                });
                            }
                            RowResult::Kept => outcome.kept += 1,
                            RowResult::Deferred(reason) => {
                                outcome.deferred += 1;
                                defer(tx, batch.node_id, &change, &reason)?;
                            }
                        }
                    }
                }
            }
        }
        match positions.iter_mut().find(|(s, _)| *s == message.shard) {
            Some(entry) => entry.1 = message.seq,
            None => positions.push((message.shard, message.seq)),
        }
    }
    for (shard, seq) in &positions {
        store_position(tx, *shard, *seq)?;
    }
    outcome.positions = positions;
    Ok(outcome)
}

/// Records that a shard's stream has been applied up to `seq`.
pub fn store_position(conn: &rusqlite::Connection, shard: u32, seq: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO __harmonylite__positions(shard, seq) VALUES (?1, ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![shard, seq as i64]))
    .ctx("storing the stream position")?;
    Ok(())
}

/// Stores a row's winning version (a tombstone when `deleted`).
pub fn record_version(
    tx: &Transaction<'_>,
    table: &str,
    pk: &[u8],
    version: Version,
    deleted: bool,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO __harmonylite__versions(tbl, pk, hlc, node, deleted) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| stmt.execute(params![table, pk, version.hlc as i64, version.node as i64, deleted]))
    .ctx("recording a row version")?;
    Ok(())
}

/// Applies every change of a batch under the LWW rule, whoever made it (used to carry this node's
/// unpublished changes into a restored snapshot). Returns how many changes waited for the schema.
pub fn apply_batch_any_origin(
    tx: &Transaction<'_>,
    schema: &Schema,
    batch: &crate::log::Batch,
) -> Result<u64> {
    let mut deferred = 0;
    for change in &batch.changes {
        if let RowResult::Deferred(reason) = apply_change(tx, schema, batch.node_id, change)? {
            defer(tx, batch.node_id, change, &reason)?;
            deferred += 1;
        }
    }
    Ok(deferred)
}

/// Checks a change against the local schema; `Err(reason)` means it must wait for the schema to catch up.
fn check_schema<'a>(schema: &'a Schema, change: &RowChange) -> Result<&'a TableInfo, String> {
    let Some(table) = schema.tables.get(&change.table) else {
        return Err(format!(
            "table `{}` does not exist here (or is not replicated)",
            change.table
        ));
    };
    if change.pk.len() != table.pk.len() {
        return Err(format!(
            "primary key of `{}` has {} columns here, {} in the message",
            change.table,
            table.pk.len(),
            change.pk.len()
        ));
    }
    if let Some((missing, _)) = change
        .columns
        .iter()
        .find(|(name, _)| !table.columns.iter().any(|c| c == name))
    {
        return Err(format!(
            "column `{missing}` of table `{}` does not exist here",
            change.table
        ));
    }
    Ok(table)
}

fn apply_change(
    tx: &Transaction<'_>,
    schema: &Schema,
    origin: u64,
    change: &RowChange,
) -> Result<RowResult> {
    let table = match check_schema(schema, change) {
        Ok(table) => table,
        Err(reason) => return Ok(RowResult::Deferred(reason)),
    };
    let pk_bytes = pk_key(&change.pk);
    let stored: Option<(i64, i64, bool)> = tx
        .prepare_cached(
            "SELECT hlc, node, deleted FROM __harmonylite__versions WHERE tbl = ?1 AND pk = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![change.table, pk_bytes], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()
        })
        .ctx("reading a row version")?;
    let incoming = Version {
        hlc: change.hlc,
        node: origin,
    };
    let stored_version = stored.map(|(hlc, node, _)| Version {
        hlc: hlc as u64,
        node: node as u64,
    });
    if decide(incoming, stored_version) == Decision::Keep {
        return Ok(RowResult::Kept);
    }
    let write = match change.op {
        Op::Upsert => upsert(tx, table, change),
        Op::Delete => delete(tx, table, change),
    };
    if let Err(err) = write {
        // A constraint the local schema adds (UNIQUE, CHECK, NOT NULL) rolls back only this statement.
        if matches!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        ) {
            return Ok(RowResult::Deferred(format!(
                "constraint failed on `{}`: {err}",
                change.table
            )));
        }
        return Err(err).ctx("applying a remote change");
    }
    let version = Version {
        hlc: change.hlc,
        node: origin,
    };
    record_version(
        tx,
        &change.table,
        &pk_bytes,
        version,
        change.op == Op::Delete,
    )?;
    let op = match (change.op, stored) {
        (Op::Delete, _) => ChangeOp::Delete,
        (Op::Upsert, Some((_, _, false))) => ChangeOp::Update,
        (Op::Upsert, _) => ChangeOp::Insert,
    };
    Ok(RowResult::Applied(op))
}

fn upsert(tx: &Transaction<'_>, table: &TableInfo, change: &RowChange) -> rusqlite::Result<usize> {
    let values = rusqlite::params_from_iter(change.columns.iter().map(|(_, v)| v));
    if table.has_columns_in_order(change.columns.iter().map(|(n, _)| n.as_str())) {
        return tx
            .prepare_cached(&table.sql.upsert_all_columns)?
            .execute(values);
    }
    // A sender with another column set (a column added on one side first): its own statement.
    let names: Vec<&str> = change.columns.iter().map(|(n, _)| n.as_str()).collect();
    tx.prepare_cached(&upsert_sql(&table.name, &names, &table.pk))?
        .execute(values)
}

fn delete(tx: &Transaction<'_>, table: &TableInfo, change: &RowChange) -> rusqlite::Result<usize> {
    tx.prepare_cached(&table.sql.delete_row)?
        .execute(rusqlite::params_from_iter(change.pk.iter()))
}

fn defer(tx: &Transaction<'_>, origin: u64, change: &RowChange, reason: &str) -> Result<()> {
    let blob = rmp_serde::to_vec(&(origin, change)).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO __harmonylite__deferred(tbl, reason, change) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut stmt| stmt.execute(params![change.table, reason, blob]))
    .ctx("deferring a change")?;
    Ok(())
}

/// Retries deferred changes (after a schema change); returns the events of those that now applied.
pub fn retry_deferred(tx: &Transaction<'_>, schema: &Schema) -> Result<Vec<ChangeEvent>> {
    let waiting: Vec<(i64, Vec<u8>)> = tx
        .prepare("SELECT id, change FROM __harmonylite__deferred ORDER BY id")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading deferred changes")?;
    let mut events = Vec::new();
    for (id, blob) in waiting {
        let Ok((origin, change)) = rmp_serde::from_slice::<(u64, RowChange)>(&blob) else {
            warn!(id, "unreadable deferred change dropped");
            tx.execute("DELETE FROM __harmonylite__deferred WHERE id = ?1", [id])
                .ctx("dropping a deferred change")?;
            continue;
        };
        match apply_change(tx, schema, origin, &change)? {
            RowResult::Deferred(reason) => {
                tx.execute(
                    "UPDATE __harmonylite__deferred SET reason = ?2 WHERE id = ?1",
                    params![id, reason],
                )
                .ctx("updating a deferred change")?;
            }
            result => {
                if let RowResult::Applied(op) = result {
                    events.push(ChangeEvent {
                        table: change.table,
                        op,
                        pk: change.pk,
                        origin_node: origin,
                        hlc: change.hlc,
                        local: false,
                    });
                }
                tx.execute("DELETE FROM __harmonylite__deferred WHERE id = ?1", [id])
                    .ctx("clearing a deferred change")?;
            }
        }
    }
    Ok(events)
}
