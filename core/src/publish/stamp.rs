//! Stamping: turns captured change-log entries into outbox messages, in one write transaction.
//!
//! For every changed row (entries for the same row coalesce) it reads the current row image, stamps it
//! with the node's clock, records the row's version, and packs the changes per shard into messages of at
//! most `max_message_bytes`. The change-log entries go in the same transaction, so a change is either still
//! in the log or already in the outbox: never neither. The clock's high-water mark is persisted with it.

use std::collections::HashMap;

use rusqlite::types::ValueRef;
use rusqlite::{params, Transaction};
use tracing::warn;

use super::OutboxEntry;
use crate::apply::applier::record_version;
use crate::apply::lww::Version;
use crate::capture::triggers::OP_INSERT;
use crate::capture::{Schema, TableInfo, CHANGE_LOG, MAX_PK_COLUMNS, TABLES};
use crate::clock::{wall_millis, Clock};
use crate::error::{Result, SqlContext};
use crate::events::{ChangeEvent, ChangeOp};
use crate::log::{encode, pk_key, shard_of, Batch, Op, RowChange, Value};

pub struct StampSettings {
    pub node_id: u64,
    pub shards: u32,
    pub compress: bool,
    pub max_message_bytes: usize,
    pub max_changes: u32,
}

#[derive(Default)]
pub struct Stamped {
    pub outbox: Vec<OutboxEntry>,
    pub events: Vec<ChangeEvent>,
    /// Change-log entries consumed (0 means there was nothing to do).
    pub log_entries: usize,
}

struct PendingRow {
    table: String,
    pk: Vec<Value>,
    first_op: i64,
}

/// Stamps up to `max_changes` change-log entries. Call inside a write transaction.
pub fn stamp_pending(
    tx: &Transaction<'_>,
    schema: &Schema,
    clock: &mut Clock,
    settings: &StampSettings,
) -> Result<Stamped> {
    let key_columns: String = (0..MAX_PK_COLUMNS).map(|i| format!(", k{i}")).collect();
    let mut rows: Vec<PendingRow> = Vec::new();
    let mut index: HashMap<(i64, Vec<u8>), usize> = HashMap::new();
    let mut last_seq: Option<i64> = None;
    let mut entries = 0usize;
    let mut table_names: HashMap<i64, Option<String>> = HashMap::new();
    {
        let mut select = tx
            .prepare_cached(&format!(
                "SELECT seq, tbl, op{key_columns} FROM {CHANGE_LOG} ORDER BY seq LIMIT ?1"
            ))
            .ctx("reading the change log")?;
        let mut result = select
            .query([settings.max_changes])
            .ctx("reading the change log")?;
        while let Some(row) = result.next().ctx("reading the change log")? {
            entries += 1;
            let seq: i64 = row.get(0).ctx("reading the change log")?;
            let table_id: i64 = row.get(1).ctx("reading the change log")?;
            let op: i64 = row.get(2).ctx("reading the change log")?;
            last_seq = Some(seq);
            let name = match table_names.get(&table_id) {
                Some(name) => name.clone(),
                None => {
                    let name: Option<String> = tx
                        .query_row(
                            &format!("SELECT name FROM {TABLES} WHERE id = ?1"),
                            [table_id],
                            |r| r.get(0),
                        )
                        .ok();
                    table_names.insert(table_id, name.clone());
                    name
                }
            };
            let Some(info) = name.as_ref().and_then(|n| schema.tables.get(n)) else {
                warn!(
                    table_id,
                    "change-log entry for a table that is no longer replicated; dropped"
                );
                continue;
            };
            let mut pk = Vec::with_capacity(info.pk.len());
            for slot in 0..info.pk.len() {
                let value: ValueRef<'_> = row.get_ref(3 + slot).ctx("reading the change log")?;
                pk.push(Value::from(value));
            }
            let key = (table_id, pk_key(&pk));
            if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(key) {
                slot.insert(rows.len());
                rows.push(PendingRow {
                    table: info.name.clone(),
                    pk,
                    first_op: op,
                });
            }
        }
    }
    let Some(last_seq) = last_seq else {
        return Ok(Stamped::default());
    };

    let mut per_shard: Vec<Vec<RowChange>> = vec![Vec::new(); settings.shards as usize];
    let mut events = Vec::with_capacity(rows.len());
    for pending in rows {
        let Some(info) = schema.tables.get(&pending.table) else {
            continue;
        };
        let image = read_row(tx, info, &pending.pk)?;
        let hlc = clock.tick(wall_millis());
        let pk_bytes = pk_key(&pending.pk);
        let (op, event_op) = match &image {
            Some(_) if pending.first_op == OP_INSERT => (Op::Upsert, ChangeOp::Insert),
            Some(_) => (Op::Upsert, ChangeOp::Update),
            None => (Op::Delete, ChangeOp::Delete),
        };
        let version = Version {
            hlc,
            node: settings.node_id,
        };
        record_version(tx, &pending.table, &pk_bytes, version, op == Op::Delete)?;
        events.push(ChangeEvent {
            table: pending.table.clone(),
            op: event_op,
            pk: pending.pk.clone(),
            origin_node: settings.node_id,
            hlc,
            local: true,
        });
        let shard = shard_of(&pending.table, &pk_bytes, settings.shards);
        per_shard[shard as usize].push(RowChange {
            table: pending.table,
            op,
            hlc,
            pk: pending.pk,
            columns: image.unwrap_or_default(),
        });
    }

    let mut outbox = Vec::new();
    for (shard, changes) in per_shard.into_iter().enumerate() {
        for batch in split_by_size(changes, settings.max_message_bytes) {
            let rows = batch.len() as u32;
            let max_hlc = batch.iter().map(|c| c.hlc).max().unwrap_or_default();
            let payload = encode(
                &Batch {
                    node_id: settings.node_id,
                    changes: batch,
                },
                settings.compress,
            );
            tx.prepare_cached(
                "INSERT INTO __harmonylite__outbox(shard, rows, payload) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut stmt| stmt.execute(params![shard as i64, rows, payload]))
            .ctx("writing the outbox")?;
            let id = tx.last_insert_rowid();
            outbox.push(OutboxEntry {
                id,
                shard: shard as u32,
                rows,
                msg_id: message_id(settings.node_id, id, max_hlc),
                payload: payload.into(),
            });
        }
    }
    tx.execute(
        &format!("DELETE FROM {CHANGE_LOG} WHERE seq <= ?1"),
        [last_seq],
    )
    .ctx("trimming the change log")?;
    save_clock(tx, clock)?;
    Ok(Stamped {
        outbox,
        events,
        log_entries: entries,
    })
}

/// The message id: node, outbox row and the batch's newest stamp, so it never repeats even if outbox ids do.
pub fn message_id(node_id: u64, outbox_id: i64, max_hlc: u64) -> String {
    format!("{node_id}-{outbox_id}-{max_hlc}")
}

pub fn save_clock(tx: &Transaction<'_>, clock: &Clock) -> Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO __harmonylite__meta(key, value) VALUES ('hlc', ?1)")
        .and_then(|mut stmt| stmt.execute([clock.last() as i64]))
        .ctx("persisting the clock")?;
    Ok(())
}

fn read_row(
    tx: &Transaction<'_>,
    table: &TableInfo,
    pk: &[Value],
) -> Result<Option<Vec<(String, Value)>>> {
    let mut stmt = tx
        .prepare_cached(&table.sql.select_row)
        .ctx("reading a changed row")?;
    let mut result = stmt
        .query(rusqlite::params_from_iter(pk.iter()))
        .ctx("reading a changed row")?;
    let Some(row) = result.next().ctx("reading a changed row")? else {
        return Ok(None);
    };
    let mut image = Vec::with_capacity(table.columns.len());
    for (i, column) in table.columns.iter().enumerate() {
        let value = row.get_ref(i).ctx("reading a changed row")?;
        image.push((column.clone(), Value::from(value)));
    }
    Ok(Some(image))
}

fn estimated_size(change: &RowChange) -> usize {
    let value_size = |v: &Value| match v {
        Value::Text(s) => s.len() + 5,
        Value::Blob(b) => b.len() + 5,
        _ => 9,
    };
    change.table.len()
        + 24
        + change.pk.iter().map(value_size).sum::<usize>()
        + change
            .columns
            .iter()
            .map(|(name, value)| name.len() + 2 + value_size(value))
            .sum::<usize>()
}

/// Packs changes into batches of at most `limit` estimated bytes; a change larger than `limit` travels alone.
fn split_by_size(changes: Vec<RowChange>, limit: usize) -> Vec<Vec<RowChange>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0usize;
    for change in changes {
        let change_size = estimated_size(&change);
        if !current.is_empty() && size + change_size > limit {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += change_size;
        current.push(change);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}
