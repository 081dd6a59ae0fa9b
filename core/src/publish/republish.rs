//! Republishing after broker data loss: the server lost messages that some nodes had not applied yet, so
//! every node publishes each row it holds again, with the versions it stored (ADR 0013). The merge keeps the
//! newest version of every column on every node, so the cluster converges whatever each node had applied;
//! a node that already holds a version skips it like any duplicate.
//!
//! A change carries one version, its stamp with the batch's node: a row whose columns were written by
//! several nodes goes out as several changes, in batches named after each version's node and published by
//! this one (the message id says so, see `log::Publisher`). The row's life travels as an insert of its whole
//! current image at the life's version, so that a node that never saw the row can create it (NOT NULL
//! columns included), and each column written later as an update at its own version, right behind: a node
//! holding a newer version keeps it, one holding an older one ends with the newest, and the image's values
//! at the life's version never outlive the updates that follow them. A deleted row travels as its delete.
//! Inserts and deletes are queued before updates, so a node that never saw the row meets its creation
//! first.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Transaction;

use super::stamp::{read_row, split_by_size, StampSettings};
use super::OutboxEntry;
use crate::capture::{Schema, TableInfo};
use crate::clock::Version;
use crate::error::Result;
use crate::log::{encode_as, pk_from_key, shard_of, Batch, Op, RowChange, Value};
use crate::state::rows::{self, RowState};

/// What a republish queued.
#[derive(Debug, Default)]
pub struct Republished {
    pub outbox: Vec<OutboxEntry>,
    /// Rows republished (a row written by several nodes counts once).
    pub rows: u64,
}

/// Queues every row of `shard` this node holds state for, with its stored versions, into the outbox.
/// Call inside a write transaction. Cost: one pass over the row states and one read per live row.
pub fn republish_shard(
    tx: &Transaction<'_>,
    schema: &Schema,
    settings: &StampSettings,
    shard: u32,
) -> Result<Republished> {
    republish(tx, schema, settings, Some(shard), None)
}

/// Queues every row of the named tables this node holds state for, on every shard (the repair of a
/// divergence, ADR 0017: only the tables found different travel). Call inside a write transaction.
pub fn republish_tables(
    tx: &Transaction<'_>,
    schema: &Schema,
    settings: &StampSettings,
    tables: &BTreeSet<String>,
) -> Result<Republished> {
    republish(tx, schema, settings, None, Some(tables))
}

fn republish(
    tx: &Transaction<'_>,
    schema: &Schema,
    settings: &StampSettings,
    only_shard: Option<u32>,
    only_tables: Option<&BTreeSet<String>>,
) -> Result<Republished> {
    // Per (shard, version node): creations and deletes first, then updates.
    let mut first: BTreeMap<(u32, u64), Vec<RowChange>> = BTreeMap::new();
    let mut then: BTreeMap<(u32, u64), Vec<RowChange>> = BTreeMap::new();
    let mut republished = Republished::default();
    for info in schema.tables.values() {
        if only_tables.is_some_and(|tables| !tables.contains(&info.name)) {
            continue;
        }
        for (pk_bytes, state) in rows::for_table(tx, &info.name)? {
            let shard = shard_of(&info.name, &pk_bytes, settings.shards);
            if only_shard.is_some_and(|only| only != shard) {
                continue;
            }
            let Some(pk) = pk_from_key(&pk_bytes).filter(|pk| pk.len() == info.pk.len()) else {
                continue;
            };
            let changes = row_changes(tx, info, pk, &state)?;
            if changes.is_empty() {
                continue;
            }
            republished.rows += 1;
            for (node, change) in changes {
                let queue = if change.op == Op::Update {
                    &mut then
                } else {
                    &mut first
                };
                queue.entry((shard, node)).or_default().push(change);
            }
        }
    }
    for ((shard, node), changes) in first.into_iter().chain(then) {
        for batch in split_by_size(changes, settings.max_message_bytes) {
            let rows = batch.len() as u32;
            let newest = batch.iter().map(|c| c.hlc).max().unwrap_or_default();
            let payload = encode_as(
                &Batch::of_changes(node, batch),
                settings.message_format,
                settings.compress,
            );
            let publisher = settings.publisher();
            republished.outbox.push(OutboxEntry::queue(
                tx, publisher, shard, rows, newest, payload,
            )?);
        }
    }
    Ok(republished)
}

/// The changes that carry one row's stored state, each with the node of its version.
fn row_changes(
    tx: &Transaction<'_>,
    info: &TableInfo,
    pk: Vec<Value>,
    state: &RowState,
) -> Result<Vec<(u64, RowChange)>> {
    let change = |op: Op, version: Version, columns: Vec<(String, Value)>| RowChange {
        table: info.name.clone(),
        op,
        hlc: version.hlc,
        cl: state.cl,
        born: state.born,
        born_hash: state.born_hash,
        life: state.life,
        // The writer saw what it wrote: a republished version overwriting an older one is no conflict.
        seen: Some(version),
        pk: pk.clone(),
        columns,
    };
    if state.cl == 0 {
        // A key kept for a row that waits (parked): nothing of it was applied, nothing to carry.
        return Ok(Vec::new());
    }
    if !state.exists() {
        return Ok(vec![(
            state.last.node,
            change(Op::Delete, state.last, Vec::new()),
        )]);
    }
    // A live state without its row: the app deleted it and the delete is not stamped yet; it goes out
    // with the next stamp.
    let Some(image) = read_row(tx, info, &pk)? else {
        return Ok(Vec::new());
    };
    let mut by_version: BTreeMap<Version, Vec<(String, Value)>> = BTreeMap::new();
    let mut creation = Vec::new();
    for (name, value) in info.columns.iter().zip(image) {
        let version = state.column_version(name);
        if version == Version::default() && !info.is_key_column(name) {
            continue; // no change wrote it here (added by a migration, holding its default)
        }
        if version != state.life && !info.is_key_column(name) {
            by_version
                .entry(version)
                .or_default()
                .push((name.clone(), value.clone()));
        }
        creation.push((name.clone(), value));
    }
    let mut changes = vec![(state.life.node, change(Op::Insert, state.life, creation))];
    for (version, columns) in by_version {
        changes.push((version.node, change(Op::Update, version, columns)));
    }
    Ok(changes)
}
