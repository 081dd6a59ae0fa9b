//! Stamping: turns captured change-log entries into outbox messages, in one write transaction.
//!
//! For every changed row (entries for the same row coalesce) it compares the row as it is now with the
//! row's replication state (`state::rows`): a row that appeared is an insert (its full image), a row that
//! is gone is a delete, and a row that is still there sends only the columns whose value hash changed
//! (none changed: nothing is sent). Each change is stamped from the commit time its trigger recorded
//! ([`crate::clock::commit_stamp`]), above everything the app could have seen, and the new state is stored.
//! Changes are packed per shard into messages of at most `max_message_bytes`. The change-log entries go in
//! the same transaction, so a change is either still in the log or already in the outbox: never neither.

use std::collections::HashMap;

use rusqlite::types::ValueRef;
use rusqlite::Transaction;
use tracing::{error, warn};

use super::OutboxEntry;
use crate::capture::schema::MergeMode;
use crate::capture::triggers::OP_DELETE;
use crate::capture::{Schema, TableInfo, CHANGE_LOG, MAX_PK_COLUMNS, TABLES};
use crate::clock::{commit_stamp, wall_millis, Clock, ClockHistory, Version};
use crate::error::{Result, SqlContext};
use crate::events::{ChangeEvent, ChangeOp};
use crate::log::{
    encode_as, image_hash, pk_key, shard_of, value_hash, Batch, Op, Publisher, RowChange,
    TableDropped, Value,
};
use crate::state::rows::{self, RowState};
use crate::state::{dropped, meta};

#[derive(Debug, Clone)]
pub struct StampSettings {
    pub node_id: u64,
    /// This database's publisher instance (`state::meta::instance`).
    pub instance: u64,
    pub shards: u32,
    pub compress: bool,
    /// `replication_log.message_format`.
    pub message_format: u8,
    pub max_message_bytes: usize,
    pub max_changes: u32,
}

impl StampSettings {
    pub fn publisher(&self) -> Publisher {
        Publisher {
            node: self.node_id,
            instance: self.instance,
        }
    }

    pub fn from_config(
        config: &crate::config::Config,
        node_id: u64,
        instance: u64,
    ) -> StampSettings {
        StampSettings {
            node_id,
            instance,
            shards: config.replication_log.shards,
            compress: config.replication_log.compress,
            message_format: config.replication_log.message_format,
            max_message_bytes: config.replication_log.max_message_bytes,
            max_changes: config.scan_max_changes,
        }
    }
}

#[derive(Default)]
pub struct Stamped {
    pub outbox: Vec<OutboxEntry>,
    pub events: Vec<ChangeEvent>,
    /// Change-log entries consumed (0 means there was nothing to do).
    pub log_entries: usize,
    /// Tables that got a local change (parked changes of theirs may apply now).
    pub tables: Vec<String>,
}

struct PendingRow {
    table: String,
    pk: Vec<Value>,
    /// `pk_key(&pk)`, computed once (the log read needs it to coalesce entries).
    pk_bytes: Vec<u8>,
    /// Newest commit time among the row's entries (None: logged by an older library).
    committed_at: Option<i64>,
    /// A delete was logged: if the row is there now, it was created again (a new life, not an update).
    deleted: bool,
}

/// Stamps up to `max_changes` change-log entries. Call inside a write transaction.
pub fn stamp_pending(
    tx: &Transaction<'_>,
    schema: &Schema,
    clock: &mut Clock,
    history: &ClockHistory,
    settings: &StampSettings,
) -> Result<Stamped> {
    let (rows, last_seq, entries) = read_log(tx, schema, settings.max_changes)?;
    let Some(last_seq) = last_seq else {
        return Ok(Stamped::default());
    };
    let mut stamped = stamp_rows(tx, schema, clock, history, settings, rows)?;
    tx.prepare_cached(&format!("DELETE FROM {CHANGE_LOG} WHERE seq <= ?1"))
        .and_then(|mut stmt| stmt.execute([last_seq]))
        .ctx("trimming the change log")?;
    stamped.log_entries = entries;
    Ok(stamped)
}

/// Stamps, right away, rows the library itself just wrote for the app (a row moved off a colliding key,
/// the rows that follow it): they get their state in the same transaction, so whatever else that
/// transaction applies merges with them like with any other row of this node.
pub fn stamp_now(
    tx: &Transaction<'_>,
    schema: &Schema,
    clock: &mut Clock,
    history: &ClockHistory,
    settings: &StampSettings,
    keys: &[(String, Vec<Value>)],
) -> Result<Stamped> {
    let rows = keys
        .iter()
        .map(|(table, pk)| PendingRow {
            table: table.clone(),
            pk: pk.clone(),
            pk_bytes: pk_key(pk),
            committed_at: None,
            deleted: false,
        })
        .collect();
    stamp_rows(tx, schema, clock, history, settings, rows)
}

fn stamp_rows(
    tx: &Transaction<'_>,
    schema: &Schema,
    clock: &mut Clock,
    history: &ClockHistory,
    settings: &StampSettings,
    rows: Vec<PendingRow>,
) -> Result<Stamped> {
    let now = wall_millis();
    let mut per_shard: Vec<Vec<RowChange>> = vec![Vec::new(); settings.shards.max(1) as usize];
    let mut events = Vec::with_capacity(rows.len());
    let mut tables: Vec<String> = Vec::new();
    for mut pending in rows {
        let Some(info) = schema.tables.get(&pending.table) else {
            continue;
        };
        let pk_bytes = std::mem::take(&mut pending.pk_bytes);
        if pending.pk.contains(&Value::Null) {
            // The triggers refuse NULL keys; an entry with one predates that (or came from a backfill).
            error!(table = %info.name, "a row whose primary key holds NULL cannot be replicated; it stays on this node");
            crate::state::record_rejected(
                tx,
                &info.name,
                &pk_bytes,
                "NULL in a primary-key column: such a key cannot identify the row on other nodes",
            )?;
            continue;
        }
        let stored = rows::read(tx, &info.name, &pk_bytes)?;
        let image = read_row(tx, info, &pending.pk)?;
        let committed = pending
            .committed_at
            .map(|at| at.max(0) as u64)
            .unwrap_or(now)
            .min(now);
        let floor = history
            .floor_at(committed)
            .max(stored.as_ref().map(|s| s.newest().hlc).unwrap_or(0));
        let hlc = commit_stamp(committed, floor);
        let version = Version {
            hlc,
            node: settings.node_id,
        };
        let Some((change, state, event_op)) =
            diff(info, &pending.pk, stored, image, version, pending.deleted)
        else {
            continue;
        };
        clock.note(hlc);
        rows::write(tx, &info.name, &pk_bytes, &state)?;
        events.push(ChangeEvent {
            table: info.name.clone(),
            op: event_op,
            pk: pending.pk.clone(),
            origin_node: settings.node_id,
            hlc,
            local: true,
        });
        if !tables.contains(&info.name) {
            tables.push(info.name.clone());
        }
        let shard = shard_of(&info.name, &pk_bytes, settings.shards);
        per_shard[shard as usize].push(change);
    }

    let queued = queue(tx, settings, per_shard)?;
    meta::save_clock(tx, clock)?;
    Ok(Stamped {
        outbox: queued,
        events,
        log_entries: 0,
        tables,
    })
}

/// Packs changes, already sorted by shard, into outbox messages.
fn queue(
    tx: &Transaction<'_>,
    settings: &StampSettings,
    per_shard: Vec<Vec<RowChange>>,
) -> Result<Vec<OutboxEntry>> {
    let mut queued = Vec::new();
    for (shard, changes) in per_shard.into_iter().enumerate() {
        for batch in split_by_size(changes, settings.max_message_bytes) {
            let rows = batch.len() as u32;
            let newest = batch.iter().map(|c| c.hlc).max().unwrap_or_default();
            let payload = encode_as(
                &Batch::of_changes(settings.node_id, batch),
                settings.message_format,
                settings.compress,
            );
            let publisher = settings.publisher();
            queued.push(OutboxEntry::queue(
                tx,
                publisher,
                shard as u32,
                rows,
                newest,
                payload,
            )?);
        }
    }
    Ok(queued)
}

/// Queues changes the library made to rows of this node that are not in their tables: rows waiting whole
/// (parked) that move to a fresh key, or whose reference to a moved row follows it. The stamper cannot
/// see them (it compares tables with states), so the applier builds them, stamped by `clock` after
/// everything so far; every other node then holds the same waiting rows.
pub fn queue_changes(
    tx: &Transaction<'_>,
    clock: &Clock,
    settings: &StampSettings,
    changes: Vec<RowChange>,
) -> Result<Vec<OutboxEntry>> {
    let mut per_shard: Vec<Vec<RowChange>> = vec![Vec::new(); settings.shards.max(1) as usize];
    for change in changes {
        let shard = shard_of(&change.table, &pk_key(&change.pk), settings.shards);
        per_shard[shard as usize].push(change);
    }
    let queued = queue(tx, settings, per_shard)?;
    meta::save_clock(tx, clock)?;
    Ok(queued)
}

/// Announces tables this node dropped (ADR 0016): each is stamped after everything this node wrote (the
/// clock ticks past every stamp so far), recorded as announced, and queued as one message on the shard its
/// name routes to. Call inside a write transaction.
pub fn stamp_dropped_tables(
    tx: &Transaction<'_>,
    clock: &mut Clock,
    settings: &StampSettings,
    tables: &[String],
) -> Result<Vec<OutboxEntry>> {
    let mut per_shard: Vec<Vec<TableDropped>> = vec![Vec::new(); settings.shards.max(1) as usize];
    for table in tables {
        let hlc = clock.tick(wall_millis());
        dropped::record(tx, table, settings.node_id, hlc)?;
        per_shard[shard_of(table, &[], settings.shards) as usize].push(TableDropped {
            table: table.clone(),
            hlc,
        });
    }
    let mut queued = Vec::new();
    for (shard, drops) in per_shard.into_iter().enumerate() {
        let Some(max_hlc) = drops.iter().map(|d| d.hlc).max() else {
            continue;
        };
        let payload = encode_as(
            &Batch {
                node_id: settings.node_id,
                changes: Vec::new(),
                dropped: drops,
            },
            settings.message_format,
            settings.compress,
        );
        let publisher = settings.publisher();
        queued.push(OutboxEntry::queue(
            tx,
            publisher,
            shard as u32,
            0,
            max_hlc,
            payload,
        )?);
    }
    meta::save_clock(tx, clock)?;
    Ok(queued)
}

type LogRead = (Vec<PendingRow>, Option<i64>, usize);

/// The oldest `max_changes` change-log entries, coalesced by row.
fn read_log(tx: &Transaction<'_>, schema: &Schema, max_changes: u32) -> Result<LogRead> {
    let key_columns: String = (0..MAX_PK_COLUMNS).map(|i| format!(", k{i}")).collect();
    let mut rows: Vec<PendingRow> = Vec::new();
    let mut index: HashMap<(i64, Vec<u8>), usize> = HashMap::new();
    let mut last_seq: Option<i64> = None;
    let mut entries = 0usize;
    let mut table_names: HashMap<i64, Option<String>> = HashMap::new();
    let mut select = tx
        .prepare_cached(&format!(
            "SELECT seq, tbl, at, op{key_columns} FROM {CHANGE_LOG} ORDER BY seq LIMIT ?1"
        ))
        .ctx("reading the change log")?;
    let mut result = select.query([max_changes]).ctx("reading the change log")?;
    while let Some(row) = result.next().ctx("reading the change log")? {
        entries += 1;
        let seq: i64 = row.get(0).ctx("reading the change log")?;
        let table_id: i64 = row.get(1).ctx("reading the change log")?;
        let committed_at: Option<i64> = row.get(2).ctx("reading the change log")?;
        let deleted = row.get::<_, i64>(3).ctx("reading the change log")? == OP_DELETE;
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
            let value: ValueRef<'_> = row.get_ref(4 + slot).ctx("reading the change log")?;
            pk.push(Value::from(value));
        }
        let pk_bytes = pk_key(&pk);
        match index.entry((table_id, pk_bytes.clone())) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(rows.len());
                rows.push(PendingRow {
                    table: info.name.clone(),
                    pk,
                    pk_bytes,
                    committed_at,
                    deleted,
                });
            }
            std::collections::hash_map::Entry::Occupied(slot) => {
                let pending = &mut rows[*slot.get()];
                pending.committed_at = pending.committed_at.max(committed_at);
                pending.deleted |= deleted;
            }
        }
    }
    Ok((rows, last_seq, entries))
}

/// What changed between the row's replication state and the row as it is: the change to send, the new
/// state and the event to report, or None when nothing a peer does not already have changed.
fn diff(
    table: &TableInfo,
    pk: &[Value],
    stored: Option<RowState>,
    image: Option<Vec<Value>>,
    version: Version,
    deleted_since: bool,
) -> Option<(RowChange, RowState, ChangeOp)> {
    let change = |op, cl, born: Version, born_hash, life, seen, columns| RowChange {
        table: table.name.clone(),
        op,
        hlc: version.hlc,
        cl,
        born,
        born_hash,
        life,
        seen,
        pk: pk.to_vec(),
        columns,
    };
    // Deleted and created again before this stamp: the row starts a new life (as if its delete had been
    // stamped on its own), so a concurrent delete elsewhere does not remove the new row.
    let stored = match stored {
        Some(mut alive) if alive.exists() && deleted_since && image.is_some() => {
            alive.cl += 1;
            Some(alive)
        }
        other => other,
    };
    let alive = stored.as_ref().filter(|s| s.exists());
    match (alive, image) {
        (None, None) => None, // created and deleted before it was stamped, or deleted twice
        (None, Some(values)) => {
            let hashes: Vec<u64> = values.iter().map(value_hash).collect();
            let born_hash = image_hash(
                table
                    .columns
                    .iter()
                    .map(String::as_str)
                    .zip(hashes.iter().copied()),
            );
            // A key created again after a delete continues its lineage (`born` stays; see apply::merge).
            // A key reserved for a lineage that waits here (causal length 0: nothing of it applied yet)
            // is free in the table, and SQLite may hand it to the app's next insert: that row is a new
            // lineage, which the rule of the earliest creation then settles like any key collision.
            let (cl, born, born_hash) = match &stored {
                Some(dead) if dead.cl > 0 => (dead.cl + 1, dead.born, dead.born_hash),
                _ => (1, version, born_hash),
            };
            let mut state = RowState {
                cl,
                born,
                born_hash,
                life: version,
                last: version,
                columns: Vec::with_capacity(values.len()),
            };
            for (name, hash) in table.columns.iter().zip(&hashes) {
                state.set_column(name, version, *hash);
            }
            let columns = table.columns.iter().cloned().zip(values).collect();
            Some((
                change(Op::Insert, cl, born, born_hash, version, None, columns),
                state,
                ChangeOp::Insert,
            ))
        }
        (Some(alive), None) => {
            let state = RowState {
                cl: alive.cl + 1,
                born: alive.born,
                born_hash: alive.born_hash,
                life: alive.life,
                last: version,
                columns: Vec::new(),
            };
            Some((
                change(
                    Op::Delete,
                    state.cl,
                    alive.born,
                    alive.born_hash,
                    alive.life,
                    Some(alive.newest()),
                    Vec::new(),
                ),
                state,
                ChangeOp::Delete,
            ))
        }
        (Some(alive), Some(values)) => {
            let hashes: Vec<u64> = values.iter().map(value_hash).collect();
            // A column the state does not know yet (added by a migration) changed only if it holds
            // something other than its default: a node that adds a column must not reset it elsewhere.
            let changed: Vec<bool> = table
                .columns
                .iter()
                .zip(&hashes)
                .enumerate()
                .map(|(i, (name, hash))| match alive.column(name) {
                    Some(known) => known.hash != *hash,
                    None => table.default_hashes.get(i) != Some(hash),
                })
                .collect();
            if !changed.contains(&true) {
                return None; // an UPDATE that wrote the values the row already had
            }
            // A row-merged table sends its whole image; the others only what changed.
            let send_all = table.merge == MergeMode::Row;
            let mut state = alive.clone();
            let mut columns = Vec::new();
            let mut seen: Option<Version> = None;
            for (i, (name, value)) in table.columns.iter().zip(values).enumerate() {
                if !(send_all || changed[i]) {
                    continue;
                }
                let previous = alive.column_version(name);
                seen = Some(seen.map_or(previous, |s| s.max(previous)));
                state.set_column(name, version, hashes[i]);
                columns.push((name.clone(), value));
            }
            state.last = version;
            Some((
                change(
                    Op::Update,
                    alive.cl,
                    alive.born,
                    alive.born_hash,
                    alive.life,
                    seen,
                    columns,
                ),
                state,
                ChangeOp::Update,
            ))
        }
    }
}

/// The row's values in the table's column order, or None when the row is gone.
pub fn read_row(
    tx: &Transaction<'_>,
    table: &TableInfo,
    pk: &[Value],
) -> Result<Option<Vec<Value>>> {
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
    for i in 0..table.columns.len() {
        let value = row.get_ref(i).ctx("reading a changed row")?;
        image.push(Value::from(value));
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
        + 64
        + change.pk.iter().map(value_size).sum::<usize>()
        + change
            .columns
            .iter()
            .map(|(name, value)| name.len() + 2 + value_size(value))
            .sum::<usize>()
}

/// Packs changes into batches of at most `limit` estimated bytes; a change larger than `limit` travels alone.
pub(crate) fn split_by_size(changes: Vec<RowChange>, limit: usize) -> Vec<Vec<RowChange>> {
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
