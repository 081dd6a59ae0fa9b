//! The applier's database side: writes a run of received messages in one transaction under the merge rules
//! (`merge.rs`, ADR 0011) and stores each shard's stream position in the same transaction (exactly-once
//! effect).
//!
//! The caller has stamped this node's pending local changes in the same transaction, so every local change
//! has a state to compare with, and it drops what this transaction's own writes logged before committing.
//! A change that cannot be applied for a reason of its own (the schema lacks something, a constraint
//! refuses it, a value the column cannot hold, a forged clock or key) is parked on its own with the reason
//! and the rest of the batch goes on; only an error of the database itself (busy, I/O) fails the batch.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params_from_iter, Transaction};
use tracing::{debug, info, warn};

use super::merge::{plan, Plan};
use crate::capture::schema::{insert_sql, update_sql};
use crate::capture::sql::quote;
use crate::capture::triggers::{OP_INSERT, OP_UPDATE};
use crate::capture::{Schema, TableInfo};
use crate::clock::{physical_millis, wall_millis, Clock, MAX_HLC};
use crate::error::{Error, Result, SqlContext};
use crate::events::{ChangeEvent, ChangeOp};
use crate::log::{decode, image_hash, pk_key, value_hash, Op, Origin, RowChange, Value};
use crate::publish::stamp::read_row;
use crate::state::conflicts::{self, Conflict, ConflictKind, ConflictSide};
use crate::state::parked::{self, ParkKind};
use crate::state::rows::{self, RowState};
use crate::state::{dropped, positions};

/// A stamp more than this far ahead of the local clock is parked until the local clock gets there: a
/// forged or broken clock would otherwise freeze the row (no later write could beat it).
pub const MAX_CLOCK_AHEAD_MS: u64 = 10 * 60 * 1000;

/// A message as received from a shard's stream.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub shard: u32,
    pub seq: u64,
    pub payload: bytes::Bytes,
    /// The publisher its message id names (None: no id, or not one of ours).
    pub published_by: Option<crate::log::PublishedBy>,
    /// Why the message may not be applied (its signature, `[signing]`): it goes to the dead letters whole.
    pub refused: Option<String>,
    /// A dead letter tried again (at a consumer's start): it is applied although the stored position is past
    /// it, leaves the position alone, and, refused again, keeps its one record.
    pub retry: bool,
}

#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub events: Vec<ChangeEvent>,
    /// (shard, stream sequence) of messages that claim this node's id but that this database did not
    /// publish (applied like any other; see `log::Origin::ClaimsThisNode`).
    pub claims_this_node: Vec<(u32, u64)>,
    pub conflicts: Vec<Conflict>,
    /// (shard, stream sequence, reason) of messages that could not be decoded.
    pub dead_letters: Vec<(u32, u64, String)>,
    /// Dead letters tried again that applied this time (their records are gone).
    pub recovered_dead_letters: u64,
    /// Newest stored position per shard after this transaction.
    pub positions: Vec<(u32, u64)>,
    pub applied: u64,
    pub kept: u64,
    pub deferred: u64,
    pub moved_keys: u64,
    /// Changes the library made for the app (a row moved off a colliding key, children that follow it):
    /// (table, op, key), to be logged — and so stamped and published — after the own-write discard.
    pub follow_ups: Vec<(String, i64, Vec<Value>)>,
    /// Tables this transaction wrote (changes parked behind their data may apply now).
    pub tables: BTreeSet<String>,
    /// Messages the library's own changes for the app were stamped into (see `flush_follow_ups`), and
    /// their events.
    pub stamped: Vec<crate::publish::OutboxEntry>,
    pub stamped_events: Vec<ChangeEvent>,
    /// Changes discarded because their node dropped their table, which this node lacks (ADR 0016), per
    /// (table, node); recorded as one conflict each by `record_discarded`.
    pub discarded: BTreeMap<(String, u64), u64>,
    /// How many changes were discarded so (the map above is emptied as it is recorded).
    pub discarded_changes: u64,
    /// Set while a change that already waited on a constraint is retried: if it still waits on a UNIQUE
    /// value it is not recorded again (a retry every few seconds would fill the bounded conflict log).
    pub retrying: bool,
}

impl ApplyOutcome {
    fn moved_keys_mut(&mut self) -> &mut u64 {
        &mut self.moved_keys
    }

    /// Adds a retry's outcome to this one.
    pub fn absorb(&mut self, more: ApplyOutcome) {
        self.events.extend(more.events);
        self.claims_this_node.extend(more.claims_this_node);
        self.conflicts.extend(more.conflicts);
        self.applied += more.applied;
        self.kept += more.kept;
        self.deferred += more.deferred;
        self.moved_keys += more.moved_keys;
        self.follow_ups.extend(more.follow_ups);
        self.tables.extend(more.tables);
        self.discarded_changes += more.discarded_changes;
        for (key, count) in more.discarded {
            *self.discarded.entry(key).or_default() += count;
        }
        self.stamped.extend(more.stamped);
        self.stamped_events.extend(more.stamped_events);
    }
}

/// What the applier needs besides the transaction.
pub struct ApplyContext<'a> {
    pub schema: &'a Schema,
    pub node_id: u64,
    /// This database's publisher instance (`state::meta::instance`): tells its own messages from others.
    pub instance: u64,
    /// Tables that have parked changes: a later change of a parked row waits behind it.
    pub parked_tables: &'a BTreeSet<String>,
    /// How to stamp the changes the library makes for the app at once (None on a node that publishes
    /// nothing: they are logged for later instead).
    pub stamp: Option<&'a crate::publish::stamp::StampSettings>,
    pub history: &'a crate::clock::ClockHistory,
}

/// Stamps what the library just changed for the app (a row moved to a fresh key, rows that follow it) in
/// the same transaction: those rows then have their state before anything else in the batch meets them.
fn flush_follow_ups(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    outcome: &mut ApplyOutcome,
) -> Result<()> {
    let Some(settings) = ctx.stamp else {
        return Ok(());
    };
    if outcome.follow_ups.is_empty() {
        return Ok(());
    }
    let keys: Vec<(String, Vec<Value>)> = outcome
        .follow_ups
        .drain(..)
        .map(|(table, _, key)| (table, key))
        .collect();
    let stamped =
        crate::publish::stamp::stamp_now(tx, ctx.schema, clock, ctx.history, settings, &keys)?;
    outcome.stamped.extend(stamped.outbox);
    outcome.stamped_events.extend(stamped.events);
    Ok(())
}

/// How one change ended.
enum Applied {
    Written,
    Kept,
    /// The change's row lost its auto-assigned key to a row created earlier elsewhere.
    Displaced,
    Park(ParkKind, String),
    /// A change of a table this node lacks, whose node has dropped the table since: it can never apply.
    Discarded,
}

pub fn apply_messages(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    messages: &[Incoming],
) -> Result<ApplyOutcome> {
    let mut outcome = ApplyOutcome::default();
    let mut positions: Vec<(u32, u64)> = Vec::new();
    for message in messages {
        let position = match positions.iter().find(|(s, _)| *s == message.shard) {
            Some((_, seq)) => *seq,
            None => positions::read(tx, message.shard)?,
        };
        if message.seq <= position && !message.retry {
            continue; // Redelivery of something this transaction or an earlier one already applied.
        }
        let decoded = match &message.refused {
            Some(reason) => Err(reason.clone()),
            None => decode(&message.payload).map_err(|err| err.to_string()),
        };
        match decoded {
            Err(reason) if message.retry => {
                debug!(shard = message.shard, seq = message.seq, error = %reason, "a dead letter tried again is still refused");
            }
            Err(reason) => {
                warn!(shard = message.shard, seq = message.seq, error = %reason, "message refused, parked on the dead-letter subject");
                crate::state::record_dead_letter(tx, message.shard, message.seq, &reason)?;
                outcome
                    .dead_letters
                    .push((message.shard, message.seq, reason));
            }
            Ok(batch) => {
                if message.retry {
                    crate::state::forget_dead_letter(tx, message.shard, message.seq)?;
                    outcome.recovered_dead_letters += 1;
                }
                let me = crate::log::Publisher {
                    node: ctx.node_id,
                    instance: ctx.instance,
                };
                match me.judge(batch.node_id, message.published_by) {
                    // Our own messages: the rows and their state are already here.
                    Origin::Own => {}
                    origin => {
                        if origin == Origin::ClaimsThisNode {
                            outcome.claims_this_node.push((message.shard, message.seq));
                        }
                        for change in &batch.changes {
                            apply_or_park(tx, ctx, clock, batch.node_id, change, &mut outcome)?;
                        }
                        for drop in &batch.dropped {
                            table_dropped_at(tx, ctx, batch.node_id, drop, &mut outcome)?;
                        }
                    }
                }
            }
        }
        if message.retry {
            continue; // Behind the stored position, which stays where it is.
        }
        match positions.iter_mut().find(|(s, _)| *s == message.shard) {
            Some(entry) => entry.1 = message.seq,
            None => positions.push((message.shard, message.seq)),
        }
    }
    for (shard, seq) in &positions {
        positions::store(tx, *shard, *seq)?;
    }
    outcome.positions = positions;
    record_discarded(tx, &mut outcome)?;
    Ok(outcome)
}

/// `origin` dropped a table (ADR 0016). Remembered, so that its older changes of the table arriving later
/// (on other shards) are not kept waiting; if this node lacks the table, those already waiting here are
/// discarded. A node that has the table keeps it and its rows: only the app's own migrations drop tables.
fn table_dropped_at(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    origin: u64,
    drop: &crate::log::TableDropped,
    outcome: &mut ApplyOutcome,
) -> Result<()> {
    dropped::record(tx, &drop.table, origin, drop.hlc)?;
    if ctx.schema.tables.contains_key(&drop.table) {
        return Ok(());
    }
    let discarded = parked::discard_from(tx, &drop.table, origin, drop.hlc)?;
    if discarded > 0 {
        *outcome
            .discarded
            .entry((drop.table.clone(), origin))
            .or_default() += discarded;
    }
    Ok(())
}

/// One conflict per (table, node) whose changes were discarded in this transaction.
fn record_discarded(tx: &Transaction<'_>, outcome: &mut ApplyOutcome) -> Result<()> {
    for ((table, origin), count) in std::mem::take(&mut outcome.discarded) {
        outcome.discarded_changes += count;
        let dropped_at = dropped::dropped_at(tx, &table, origin)?.unwrap_or_default();
        info!(%table, origin, changes = count, "changes of a table its node dropped, which this node lacks, discarded");
        record_conflict(
            tx,
            outcome,
            Conflict {
                kind: ConflictKind::TableDropped,
                loser: Some(ConflictSide {
                    node: origin,
                    hlc: dropped_at,
                    values: Vec::new(),
                }),
                detail: format!(
                    "{count} change(s) of table `{table}` from node {origin} discarded: this node does not \
                     have the table, and node {origin} has dropped it, so they could never apply"
                ),
                ..Conflict::about(&table, &[])
            },
        )?;
    }
    Ok(())
}

/// Applies every change of a batch under the merge rules, whoever made it (used to carry this node's
/// unpublished changes into a restored snapshot). Returns how many changes were parked.
pub fn apply_batch_any_origin(
    tx: &Transaction<'_>,
    schema: &Schema,
    node_id: u64,
    batch: &crate::log::Batch,
) -> Result<u64> {
    let parked_tables = parked::tables(tx)?;
    let history = crate::clock::ClockHistory::new(0);
    let ctx = ApplyContext {
        schema,
        node_id,
        instance: 0,
        parked_tables: &parked_tables,
        stamp: None,
        history: &history,
    };
    let mut clock = Clock::default();
    let mut outcome = ApplyOutcome::default();
    for change in &batch.changes {
        apply_or_park(tx, &ctx, &mut clock, batch.node_id, change, &mut outcome)?;
    }
    for (table, op, pk) in &outcome.follow_ups {
        crate::capture::log_local_change(tx, table, *op, pk)?;
    }
    Ok(outcome.deferred)
}

fn apply_or_park(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    origin: u64,
    change: &RowChange,
    outcome: &mut ApplyOutcome,
) -> Result<()> {
    // `parked_tables` is what waited before this transaction; once this transaction has parked something,
    // a later change of the same row (an edit of a row parked a moment ago) must find it too.
    let may_wait = ctx.parked_tables.contains(&change.table) || outcome.deferred > 0;
    if may_wait && change.op != Op::Update {
        // A later life of a row (or its delete) supersedes what waits of its earlier lives: the writer saw
        // that life deleted. Queued behind them it would wait as long as they do (forever, for a UNIQUE
        // value the row no longer holds at its origin).
        let movable = ctx
            .schema
            .tables
            .get(&change.table)
            .is_some_and(|t| t.auto_key);
        parked::remove_superseded(tx, change, movable)?;
    }
    if may_wait && waits_behind(tx, ctx, change)? {
        outcome.deferred += 1;
        if parked::fold_into_waiting_insert(tx, change, origin)? {
            return Ok(());
        }
        return parked::park(
            tx,
            origin,
            change,
            ParkKind::Queued,
            "waits behind an earlier change of the same row",
        );
    }
    let applied = apply_change(tx, ctx, clock, origin, change, outcome)?;
    flush_follow_ups(tx, ctx, clock, outcome)?;
    match applied {
        Applied::Written => {
            clock.observe(change.hlc);
            outcome.applied += 1;
        }
        Applied::Kept | Applied::Displaced => {
            clock.observe(change.hlc);
            outcome.kept += 1;
        }
        Applied::Park(kind, reason) => {
            outcome.deferred += 1;
            parked::park(tx, origin, change, kind, &reason)?;
            end_earlier_life(tx, ctx, change)?;
            children_wait_with(tx, ctx, change, outcome)?;
        }
        Applied::Discarded => {
            *outcome
                .discarded
                .entry((change.table.clone(), origin))
                .or_default() += 1;
        }
    }
    Ok(())
}

/// A waiting change of a later life of a row (a larger causal length: its writer deleted the life that is
/// here, then created the row again) ends the life that is here at once: the row is deleted and its state
/// says so, as on the nodes where that delete came first, and the later life applies when it can.
fn end_earlier_life(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    change: &RowChange,
) -> Result<()> {
    if change.op == Op::Delete {
        return Ok(());
    }
    let Some(table) = ctx.schema.tables.get(&change.table) else {
        return Ok(());
    };
    let key = pk_key(&change.pk);
    let Some(stored) = rows::read(tx, &table.name, &key)? else {
        return Ok(());
    };
    let same_lineage = stored.born == change.born || stored.born_hash == change.born_hash;
    let deleted_cl = change.cl - change.cl % 2; // the delete just before the change's (odd) life
    if !stored.exists() || stored.cl >= deleted_cl || (table.auto_key && !same_lineage) {
        return Ok(());
    }
    execute_row_sql(tx, &table.sql.delete_row, change.pk.iter())
        .ctx("ending a row's earlier life")?;
    rows::write(
        tx,
        &table.name,
        &key,
        &RowState {
            cl: deleted_cl,
            ..stored
        },
    )
}

/// Applies again the rows parked because they point at `parent`'s key (`move_children_aside`), once that
/// key no longer holds a waiting row of every node: they apply as they are on the nodes that never held it.
fn release_children(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    parent: &RowChange,
    outcome: &mut ApplyOutcome,
) -> Result<()> {
    let Some(table) = ctx.schema.tables.get(&parent.table) else {
        return Ok(());
    };
    let [parent_value] = parent.pk.as_slice() else {
        return Ok(());
    };
    for (child_name, column) in &table.referenced_by {
        for entry in parked::waiting(tx, Some(child_name), usize::MAX)? {
            let points_here = entry
                .change
                .columns
                .iter()
                .any(|(name, value)| name == column && value == parent_value);
            if entry.publish || entry.kind != ParkKind::Constraint || !points_here {
                continue;
            }
            match apply_change(tx, ctx, clock, entry.origin, &entry.change, outcome)? {
                Applied::Park(kind, reason) => parked::update_reason(tx, entry.id, kind, &reason)?,
                applied => {
                    parked::remove(tx, entry.id)?;
                    if matches!(applied, Applied::Written) {
                        outcome.applied += 1;
                        rows::restore_column_versions(
                            tx,
                            &entry.change.table,
                            &pk_key(&entry.change.pk),
                            &entry.column_versions,
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Rows here that point at a row whose change waits (parked) while its key holds no row: they arrived
/// first (on another shard, or while another lineage held the key), and wait with it as those arriving
/// after it do.
fn children_wait_with(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    change: &RowChange,
    outcome: &mut ApplyOutcome,
) -> Result<()> {
    let Some(table) = ctx.schema.tables.get(&change.table) else {
        return Ok(());
    };
    if table.referenced_by.is_empty()
        || change.op == Op::Delete
        || read_row(tx, table, &change.pk)?.is_some()
    {
        return Ok(());
    }
    move_children_aside(tx, ctx, table, &change.pk, outcome)
}

/// Whether an earlier change of the same row waits (then this one waits behind it, in order). On a table
/// with auto-assigned keys only the same lineage counts: another lineage is a different row.
fn waits_behind(tx: &Transaction<'_>, ctx: &ApplyContext<'_>, change: &RowChange) -> Result<bool> {
    let waiting = parked::lineages_waiting(tx, &change.table, &pk_key(&change.pk))?;
    let movable = ctx
        .schema
        .tables
        .get(&change.table)
        .is_some_and(|t| t.auto_key);
    Ok(if movable {
        waiting.contains(&change.born)
    } else {
        !waiting.is_empty()
    })
}

/// Retries parked changes (of one table, or all), oldest first, at most `limit`; returns the events of
/// those that applied now. A row's later changes stay parked while an earlier one still waits.
pub fn retry_parked(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    table: Option<&str>,
    limit: usize,
) -> Result<ApplyOutcome> {
    let mut outcome = ApplyOutcome::default();
    // Rows whose earlier insert or delete still waits: their later changes wait behind it. On a table with
    // auto-assigned keys a row is its key and lineage (another lineage under the key is another row).
    let mut still_blocked: BTreeSet<(String, Vec<u8>, Option<crate::clock::Version>)> =
        BTreeSet::new();
    for waiting in parked::waiting(tx, table, limit)? {
        let movable = ctx
            .schema
            .tables
            .get(&waiting.change.table)
            .is_some_and(|t| t.auto_key);
        let key = (
            waiting.change.table.clone(),
            pk_key(&waiting.change.pk),
            movable.then_some(waiting.change.born),
        );
        let holds_back = waiting.change.op != Op::Update;
        if still_blocked.contains(&key) {
            if waiting.kind != ParkKind::Queued {
                parked::update_reason(
                    tx,
                    waiting.id,
                    ParkKind::Queued,
                    "waits behind an earlier change of the same row",
                )?;
            }
            continue;
        }
        if waiting.publish && key_taken(tx, ctx, &waiting.change)? {
            // This node's waiting row, moved to a key that something else took since: nobody else has
            // the row yet, so it gives way again.
            rekey_parked(tx, ctx, &waiting, outcome.moved_keys_mut())?;
            if holds_back {
                still_blocked.insert(key);
            }
            continue;
        }
        // A change that already waited on a constraint was recorded then.
        outcome.retrying = waiting.kind == ParkKind::Constraint;
        let applied = apply_change(
            tx,
            ctx,
            clock,
            waiting.origin,
            &waiting.change,
            &mut outcome,
        );
        outcome.retrying = false;
        let applied = applied?;
        flush_follow_ups(tx, ctx, clock, &mut outcome)?;
        match applied {
            Applied::Park(kind, reason) => {
                parked::update_reason(tx, waiting.id, kind, &reason)?;
                // This node's own row waiting to be published is known nowhere else: rows pointing at
                // it stay, as they do on the other nodes.
                if !waiting.publish {
                    children_wait_with(tx, ctx, &waiting.change, &mut outcome)?;
                }
                if holds_back {
                    still_blocked.insert(key);
                }
            }
            Applied::Written => {
                clock.observe(waiting.change.hlc);
                outcome.applied += 1;
                parked::remove(tx, waiting.id)?;
                // A row that waited whole gets back the version of each column, as if it had stayed.
                rows::restore_column_versions(
                    tx,
                    &waiting.change.table,
                    &pk_key(&waiting.change.pk),
                    &waiting.column_versions,
                )?;
                if waiting.publish {
                    // This node's row, moved while it waited: published now as a new row of this node.
                    let table = &waiting.change.table;
                    rows::remove(tx, table, &pk_key(&waiting.change.pk))?;
                    outcome
                        .follow_ups
                        .push((table.clone(), OP_INSERT, waiting.change.pk.clone()));
                    flush_follow_ups(tx, ctx, clock, &mut outcome)?;
                }
            }
            // Only a row (its insert) moves to a fresh key. A waiting update of a row of this node that
            // left the key since belongs to the row that moved; given a key of its own it would apply there
            // as a row of its own, on this node only. It was recorded as lost (`resolve_collision`) and is
            // dropped below, as on every node.
            Applied::Displaced
                if waiting.change.life.node == ctx.node_id && waiting.change.op == Op::Insert =>
            {
                // A row of this node that waits lost its key meanwhile: it takes a fresh key and keeps
                // waiting (nobody else has it; it is published when it applies).
                rekey_parked(tx, ctx, &waiting, outcome.moved_keys_mut())?;
                if !waiting.publish
                    && !parked::has_key(tx, &waiting.change.table, &pk_key(&waiting.change.pk))?
                {
                    // It was waiting whole where every node held it; now it is known here only, and the
                    // rows that waited with it come back, as they are on the nodes that dropped it.
                    release_children(tx, ctx, clock, &waiting.change, &mut outcome)?;
                }
                if holds_back {
                    still_blocked.insert(key);
                }
            }
            Applied::Kept | Applied::Displaced => {
                clock.observe(waiting.change.hlc);
                outcome.kept += 1;
                parked::remove(tx, waiting.id)?;
                // Nothing waits under its key any more (dropped, or given a fresh key as this node's own
                // row): the rows that waited with it come back, as they are where it was dropped.
                if !waiting.publish
                    && !parked::has_key(tx, &waiting.change.table, &pk_key(&waiting.change.pk))?
                {
                    release_children(tx, ctx, clock, &waiting.change, &mut outcome)?;
                }
            }
            Applied::Discarded => {
                parked::remove(tx, waiting.id)?;
                *outcome
                    .discarded
                    .entry((waiting.change.table.clone(), waiting.origin))
                    .or_default() += 1;
            }
        }
    }
    record_discarded(tx, &mut outcome)?;
    Ok(outcome)
}

/// Whether a key holds a row, or a row's state, here.
fn key_taken(tx: &Transaction<'_>, ctx: &ApplyContext<'_>, change: &RowChange) -> Result<bool> {
    let Some(table) = ctx.schema.tables.get(&change.table) else {
        return Ok(false);
    };
    Ok(rows::read(tx, &table.name, &pk_key(&change.pk))?.is_some()
        || read_row(tx, table, &change.pk)?.is_some())
}

/// A fresh key for a row that moves off an auto-assigned key: above every key in the table, and held by no
/// lineage this node knows of (a deleted row's tombstone, a key reserved for a waiting row, a parked row).
/// A key known here as another lineage's would make the moved row collide again, under the same key, with
/// a row created earlier — and lose again, for ever. `None` for a table without a single-column key.
fn fresh_key(tx: &Transaction<'_>, table: &TableInfo) -> Result<Option<i64>> {
    let Some(next_key) = &table.sql.next_key else {
        return Ok(None);
    };
    let mut key: i64 = tx
        .prepare_cached(next_key)
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .ctx("choosing a fresh key")?;
    loop {
        let bytes = pk_key(&[Value::Integer(key)]);
        if !parked::has_key(tx, &table.name, &bytes)?
            && rows::read(tx, &table.name, &bytes)?.is_none()
        {
            return Ok(Some(key));
        }
        key += 1;
    }
}

fn rekey_parked(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    waiting: &parked::Parked,
    moved: &mut u64,
) -> Result<()> {
    let Some(table) = ctx.schema.tables.get(&waiting.change.table) else {
        return Ok(());
    };
    let Some(key) = fresh_key(tx, table)? else {
        return Ok(());
    };
    let mut change = waiting.change.clone();
    let old = describe_key(&change.pk);
    change.pk = vec![Value::Integer(key)];
    for (name, value) in change.columns.iter_mut() {
        if *name == table.pk[0] {
            *value = Value::Integer(key);
        }
    }
    *moved += 1;
    parked::rekey(
        tx,
        waiting.id,
        waiting.origin,
        &change,
        &format!(
            "moved from key {old} to {} (a row created earlier elsewhere took the key); waits to apply",
            describe_key(&change.pk)
        ),
    )
}

/// Checks a change against the local schema and its own consistency; `Err` says why it must wait.
fn validate<'a>(
    schema: &'a Schema,
    change: &RowChange,
) -> std::result::Result<&'a TableInfo, (ParkKind, String)> {
    let Some(table) = schema.tables.get(&change.table) else {
        return Err((
            ParkKind::Schema,
            format!(
                "table `{}` does not exist here (or is not replicated)",
                change.table
            ),
        ));
    };
    if change.pk.len() != table.pk.len() {
        return Err((
            ParkKind::Schema,
            format!(
                "the primary key of `{}` has {} columns here, {} in the change",
                change.table,
                table.pk.len(),
                change.pk.len()
            ),
        ));
    }
    if let Some((missing, _)) = change.columns.iter().find(|(name, _)| {
        !table.columns.iter().any(|c| c == name) && !table.dropped_columns.contains(name)
    }) {
        return Err((
            ParkKind::Schema,
            format!(
                "column `{missing}` of table `{}` does not exist here",
                change.table
            ),
        ));
    }
    let invalid = |why: String| Err((ParkKind::Invalid, why));
    if change.pk.contains(&Value::Null) {
        return invalid(format!(
            "a key of `{}` holds NULL, which cannot identify a row",
            change.table
        ));
    }
    for (i, key_column) in table.pk.iter().enumerate() {
        if let Some((_, value)) = change.columns.iter().find(|(n, _)| n == key_column) {
            if !value.same_as(&change.pk[i]) {
                return invalid(format!(
                    "the row image of `{}` disagrees with its key in column `{key_column}`",
                    change.table
                ));
            }
        }
    }
    let odd = change.cl % 2 == 1;
    if change.cl == 0 || odd == (change.op == Op::Delete) {
        return invalid(format!(
            "a change of `{}` carries an impossible causal length {} for a {:?}",
            change.table, change.cl, change.op
        ));
    }
    if change.hlc > MAX_HLC || change.born.hlc > MAX_HLC {
        return invalid(format!(
            "a change of `{}` carries a clock beyond the largest valid stamp",
            change.table
        ));
    }
    if physical_millis(change.hlc) > wall_millis().saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err((
            ParkKind::Clock,
            format!(
                "a change of `{}` is stamped {} s ahead of this node's clock; it applies when this clock gets there",
                change.table,
                (physical_millis(change.hlc) - wall_millis()) / 1000
            ),
        ));
    }
    Ok(table)
}

fn apply_change(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    origin: u64,
    change: &RowChange,
    outcome: &mut ApplyOutcome,
) -> Result<Applied> {
    let table = match validate(ctx.schema, change) {
        Ok(table) => table,
        Err(_)
            if !ctx.schema.tables.contains_key(&change.table)
                && dropped::dropped_at(tx, &change.table, origin)?
                    .is_some_and(|at| change.hlc <= at) =>
        {
            return Ok(Applied::Discarded);
        }
        Err((kind, reason)) => return Ok(Applied::Park(kind, reason)),
    };
    // Values for columns this node dropped (a node not migrated yet still sends them) go nowhere.
    let without_dropped;
    let change = if change
        .columns
        .iter()
        .any(|(name, _)| table.dropped_columns.contains(name))
    {
        without_dropped = RowChange {
            columns: change
                .columns
                .iter()
                .filter(|(name, _)| !table.dropped_columns.contains(name))
                .cloned()
                .collect(),
            ..change.clone()
        };
        if without_dropped.op == Op::Update && without_dropped.columns.is_empty() {
            return Ok(Applied::Kept);
        }
        &without_dropped
    } else {
        change
    };
    let pk_bytes = pk_key(&change.pk);
    let stored = rows::read(tx, &table.name, &pk_bytes)?;
    let hashes: Vec<u64> = change.columns.iter().map(|(_, v)| value_hash(v)).collect();
    let decided = plan(
        stored.as_ref(),
        change,
        origin,
        &hashes,
        table.merge,
        table.auto_key,
    );
    match decided {
        Plan::Keep { lost, stale } => {
            if !lost.is_empty() || (stale && change.op != Op::Delete) {
                let current = read_row(tx, table, &change.pk)?;
                let stored = stored.as_ref();
                let kind = if stale && stored.is_some_and(|s| !s.exists()) {
                    ConflictKind::DeletedWithEdits
                } else {
                    ConflictKind::ChangeLost
                };
                let indices: Vec<usize> = if lost.is_empty() {
                    (0..change.columns.len()).collect()
                } else {
                    lost
                };
                let columns: Vec<String> = indices
                    .iter()
                    .map(|i| change.columns[*i].0.clone())
                    .collect();
                let detail = match kind {
                    ConflictKind::DeletedWithEdits => format!(
                        "an edit from node {origin} arrived for a row deleted concurrently; the delete wins"
                    ),
                    _ => format!(
                        "an edit from node {origin} lost to newer values of {}",
                        columns.join(", ")
                    ),
                };
                record_conflict(
                    tx,
                    outcome,
                    Conflict {
                        kind,
                        winner: stored.map(|s| side_of(table, s, current.as_deref(), &columns)),
                        loser: Some(ConflictSide {
                            node: origin,
                            hlc: change.hlc,
                            values: indices.iter().map(|i| change.columns[*i].clone()).collect(),
                        }),
                        columns,
                        moved_to: None,
                        detail,
                        ..Conflict::about(&table.name, &change.pk)
                    },
                )?;
            }
            Ok(Applied::Kept)
        }
        Plan::Write {
            write,
            lost,
            overwritten,
            fresh,
            state,
        } => {
            let before = if overwritten.is_empty() && lost.is_empty() {
                None
            } else {
                read_row(tx, table, &change.pk)?
            };
            let existed = stored.as_ref().is_some_and(RowState::exists);
            if let Some(reason) = waits_for_parent(tx, ctx, table, change, &write)? {
                // An edit that points a row that is here at a waiting row: the row waits whole, with the
                // edit, as on its origin (which moved it aside with the row it points at), and the rows
                // pointing at it wait with it.
                if let (false, Some(stored_state), Some(image)) = (
                    fresh,
                    stored.as_ref(),
                    before.clone().or(read_row(tx, table, &change.pk)?),
                ) {
                    park_row_whole(
                        tx,
                        table,
                        &change.pk,
                        stored_state,
                        image,
                        Some((change, &write, origin)),
                        &reason,
                        outcome,
                    )?;
                    move_children_aside(tx, ctx, table, &change.pk, outcome)?;
                    return Ok(Applied::Kept);
                }
                return Ok(Applied::Park(ParkKind::Constraint, reason));
            }
            if let Some(parked) =
                write_change(tx, ctx, table, origin, change, &write, fresh, outcome)?
            {
                return Ok(parked);
            }
            rows::write(tx, &table.name, &pk_bytes, &state)?;
            if !overwritten.is_empty() {
                let values = named_values(table, before.as_deref(), &overwritten);
                let previous = stored.as_ref().map(|s| {
                    overwritten
                        .iter()
                        .map(|c| s.column_version(c))
                        .max()
                        .unwrap_or_default()
                });
                record_conflict(
                    tx,
                    outcome,
                    Conflict {
                        kind: ConflictKind::ValuesOverwritten,
                        winner: Some(ConflictSide {
                            node: origin,
                            hlc: change.hlc,
                            values: write
                                .iter()
                                .filter(|i| overwritten.contains(&change.columns[**i].0))
                                .map(|i| change.columns[*i].clone())
                                .collect(),
                        }),
                        loser: previous.map(|v| ConflictSide {
                            node: v.node,
                            hlc: v.hlc,
                            values,
                        }),
                        detail: format!(
                            "concurrent edits of {}: node {origin}'s newer values replaced ones it had not seen",
                            overwritten.join(", ")
                        ),
                        columns: overwritten,
                        moved_to: None,
                        ..Conflict::about(&table.name, &change.pk)
                    },
                )?;
            }
            if !lost.is_empty() {
                let columns: Vec<String> =
                    lost.iter().map(|i| change.columns[*i].0.clone()).collect();
                let stored_state = stored.as_ref();
                record_conflict(
                    tx,
                    outcome,
                    Conflict {
                        kind: ConflictKind::ChangeLost,
                        winner: stored_state
                            .map(|s| side_of(table, s, before.as_deref(), &columns)),
                        loser: Some(ConflictSide {
                            node: origin,
                            hlc: change.hlc,
                            values: lost.iter().map(|i| change.columns[*i].clone()).collect(),
                        }),
                        detail: format!(
                            "part of an edit from node {origin} lost to newer values of {}",
                            columns.join(", ")
                        ),
                        columns,
                        moved_to: None,
                        ..Conflict::about(&table.name, &change.pk)
                    },
                )?;
            }
            outcome.tables.insert(table.name.clone());
            outcome.events.push(event(
                table,
                change,
                origin,
                if fresh || !existed {
                    ChangeOp::Insert
                } else {
                    ChangeOp::Update
                },
            ));
            Ok(Applied::Written)
        }
        Plan::Delete {
            state,
            unseen_edits,
        } => {
            let before = if unseen_edits {
                read_row(tx, table, &change.pk)?
            } else {
                None
            };
            let existed = stored.as_ref().is_some_and(RowState::exists)
                || (stored.is_none() && read_row(tx, table, &change.pk)?.is_some());
            execute_row_sql(tx, &table.sql.delete_row, change.pk.iter())
                .ctx("applying a remote delete")?;
            rows::write(tx, &table.name, &pk_bytes, &state)?;
            if unseen_edits {
                if let Some(stored) = &stored {
                    let columns = table.columns.clone();
                    record_conflict(
                        tx,
                        outcome,
                        Conflict {
                            kind: ConflictKind::DeletedWithEdits,
                            winner: Some(ConflictSide {
                                node: origin,
                                hlc: change.hlc,
                                values: Vec::new(),
                            }),
                            loser: Some(side_of(table, stored, before.as_deref(), &columns)),
                            columns,
                            moved_to: None,
                            detail: format!(
                                "node {origin} deleted a row holding edits it had not seen; the delete wins"
                            ),
                            ..Conflict::about(&table.name, &change.pk)
                        },
                    )?;
                }
            }
            outcome.tables.insert(table.name.clone());
            if existed {
                outcome
                    .events
                    .push(event(table, change, origin, ChangeOp::Delete));
                Ok(Applied::Written)
            } else {
                Ok(Applied::Kept)
            }
        }
        Plan::Collision { incoming_wins } => {
            let Some(stored) = stored else {
                return Ok(Applied::Kept); // a collision needs a stored incarnation
            };
            let resolved = resolve_collision(
                tx,
                ctx,
                clock,
                table,
                origin,
                change,
                &stored,
                &hashes,
                incoming_wins,
                outcome,
            )?;
            Ok(resolved.unwrap_or(Applied::Written))
        }
    }
}

/// A row that points (by a declared foreign key) at a parent row this node does not hold, while that
/// parent's own change waits here (parked: its table lacks a column, a local NOT NULL column, ...), waits
/// too. Written now, it would leave a dangling reference that the app's checks refuse: Django runs
/// `PRAGMA foreign_key_check` after each migration, and a node migrating while another's rows arrive met
/// `auth_permission` rows whose `django_content_type` rows still waited for their table's new shape.
/// A parent that is simply missing (deleted, or never replicated) does not hold the row back.
fn waits_for_parent(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    table: &TableInfo,
    change: &RowChange,
    write: &[usize],
) -> Result<Option<String>> {
    for (column, parent) in &table.parents {
        let Some(value) = write
            .iter()
            .map(|i| &change.columns[*i])
            .find(|(name, _)| name == column)
            .map(|(_, value)| value)
        else {
            continue;
        };
        if matches!(value, Value::Null) {
            continue;
        }
        let Some(parent_table) = ctx.schema.tables.get(parent) else {
            continue;
        };
        let key = std::slice::from_ref(value);
        if read_row(tx, parent_table, key)?.is_some() {
            continue;
        }
        if parked::has_key(tx, parent, &pk_key(key))? {
            return Ok(Some(format!(
                "`{}`.{column} points at a row of `{parent}` that waits here too",
                table.name
            )));
        }
    }
    Ok(None)
}

/// Writes the change's winning columns. `fresh`: the row is replaced (a new life, or first seen here).
/// Returns `Some(park)` when the change cannot be written (after resolving what can be resolved).
#[allow(clippy::too_many_arguments)]
fn write_change(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    table: &TableInfo,
    origin: u64,
    change: &RowChange,
    write: &[usize],
    fresh: bool,
    outcome: &mut ApplyOutcome,
) -> Result<Option<Applied>> {
    let attempt = |tx: &Transaction<'_>| -> rusqlite::Result<()> {
        if fresh {
            execute_row_sql(tx, &table.sql.delete_row, change.pk.iter())?;
            insert_row(tx, table, change, write)
        } else {
            let updated = update_row(tx, table, change, write)?;
            if updated == 0 {
                // The state says the row exists but it is not here (removed behind the library's back):
                // bring back what the change carries.
                insert_row(tx, table, change, write)?;
            }
            Ok(())
        }
    };
    // A fresh row is almost never here (a new key, or one whose last life was deleted): insert it at
    // once, without a savepoint — one INSERT is atomic by itself: SQLite backs out a statement that fails
    // (the default conflict resolution, ABORT), so a failed insert left nothing to undo. Only when it does
    // not insert exactly one row (the key holds a row its state does not know, or the table refuses it) is
    // the full path taken, under a savepoint, which decides exactly as before. (A key declared
    // `ON CONFLICT REPLACE` has SQLite replace the row in the insert: the same row results. A table's own
    // trigger that made the insert a no-op with `RAISE(IGNORE)` keeps what it did before that.) The
    // savepoint cost about an eighth of the apply work per row (SAVEPOINT, RELEASE, and journaling every
    // page the change touched).
    if fresh {
        match insert_row(tx, table, change, write) {
            Ok(()) if tx.changes() == 1 => return Ok(None),
            Err(err) if is_transient(&err) => return Err(err).ctx("applying a remote change"),
            Err(err) if tx.is_autocommit() => {
                // A constraint declared `ON CONFLICT ROLLBACK` ended the whole transaction: nothing of
                // the batch stands, and nothing may be written outside it.
                return Err(err).ctx("applying a remote change (the transaction was rolled back)");
            }
            _ => {}
        }
    }
    savepoint(tx, "hl_write")?;
    let result = attempt(tx);
    match result {
        Ok(()) => {
            release(tx, "hl_write")?;
            Ok(None)
        }
        Err(err) => {
            rollback_to(tx, "hl_write")?;
            if is_transient(&err) {
                return Err(err).ctx("applying a remote change");
            }
            if err.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
                return resolve_constraint(
                    tx, ctx, table, origin, change, write, fresh, &err, outcome,
                );
            }
            Ok(Some(Applied::Park(
                ParkKind::Invalid,
                format!("`{}` cannot store this change here: {err}", table.name),
            )))
        }
    }
}

/// A local UNIQUE constraint refused the change: the row created first keeps the value. If that is the
/// incoming row, the local holder is parked (with its whole image) and removed; otherwise the incoming
/// change is parked. Both are recorded. NOT NULL and CHECK refusals park the change.
#[allow(clippy::too_many_arguments)]
fn resolve_constraint(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    table: &TableInfo,
    origin: u64,
    change: &RowChange,
    write: &[usize],
    fresh: bool,
    err: &rusqlite::Error,
    outcome: &mut ApplyOutcome,
) -> Result<Option<Applied>> {
    let reason = format!("a constraint of `{}` refuses the change: {err}", table.name);
    let Some((blocker_pk, columns)) = find_unique_holder(tx, table, change)? else {
        return Ok(Some(Applied::Park(ParkKind::Constraint, reason)));
    };
    let blocker_bytes = pk_key(&blocker_pk);
    let blocker_state = rows::read(tx, &table.name, &blocker_bytes)?;
    let blocker_image = read_row(tx, table, &blocker_pk)?.unwrap_or_default();
    // A holder without state is a row this transaction just moved off a colliding key: it is this node's
    // newest row, created after anything received.
    let blocker_born = blocker_state
        .as_ref()
        .map(|s| s.born)
        .unwrap_or(crate::clock::Version {
            hlc: MAX_HLC,
            node: u64::MAX,
        });
    // Rows one node created in one millisecond (or one transaction) share a stamp: the key breaks the
    // tie, so every node picks the same row.
    let incoming_first = (change.born, pk_key(&change.pk)) < (blocker_born, blocker_bytes.clone());
    let blocker_values: Vec<(String, Value)> = table
        .columns
        .iter()
        .cloned()
        .zip(blocker_image.iter().cloned())
        .collect();
    let key_text = describe_key(&blocker_pk);
    let detail;
    let mut incoming_image: Option<Vec<(String, Value)>> = None;
    let result = if incoming_first {
        // Evict the later row: it waits, whole, until the value is free again.
        let Some(blocker_state) = blocker_state.clone() else {
            // The row just moved here by this transaction: nobody has it yet; it waits here and is
            // published under its key once it applies.
            let now = crate::clock::from_millis(wall_millis());
            let waiting = RowChange {
                table: table.name.clone(),
                op: Op::Insert,
                hlc: now,
                cl: 1,
                born: crate::clock::Version {
                    hlc: now,
                    node: ctx.node_id,
                },
                born_hash: 0,
                life: crate::clock::Version {
                    hlc: now,
                    node: ctx.node_id,
                },
                seen: None,
                pk: blocker_pk.clone(),
                columns: blocker_values.clone(),
            };
            execute_row_sql(tx, &table.sql.delete_row, blocker_pk.iter())
                .ctx("moving a row aside")?;
            outcome
                .follow_ups
                .retain(|(t, _, key)| !(t == &table.name && *key == blocker_pk));
            parked::park_own(
                tx,
                ctx.node_id,
                &waiting,
                &format!(
                    "UNIQUE({}) of `{}`: the value is held by the row with key {}, created first",
                    columns.join(", "),
                    table.name,
                    describe_key(&change.pk)
                ),
            )?;
            outcome.deferred += 1;
            return write_change_again(tx, table, change, write, fresh);
        };
        let reason = format!(
            "UNIQUE({}) of `{}`: the value is held by the row with key {}, created first",
            columns.join(", "),
            table.name,
            describe_key(&change.pk)
        );
        park_row_whole(
            tx,
            table,
            &blocker_pk,
            &blocker_state,
            blocker_image.clone(),
            None,
            &reason,
            outcome,
        )?;
        move_children_aside(tx, ctx, table, &blocker_pk, outcome)?;
        detail = format!(
            "UNIQUE({}): the row with key {} (created first, on node {}) keeps the value; the row with key {key_text} waits until it is free",
            columns.join(", "),
            describe_key(&change.pk),
            change.born.node
        );
        // Now the change itself fits (unless another constraint refuses it too).
        savepoint(tx, "hl_write")?;
        let retried = if fresh {
            execute_row_sql(tx, &table.sql.delete_row, change.pk.iter())
                .and_then(|_| insert_row(tx, table, change, write))
        } else {
            update_row(tx, table, change, write).map(|_| ())
        };
        match retried {
            Ok(()) => {
                release(tx, "hl_write")?;
                None
            }
            Err(err) => {
                rollback_to(tx, "hl_write")?;
                if is_transient(&err) {
                    return Err(err).ctx("applying a remote change");
                }
                Some(Applied::Park(
                    ParkKind::Constraint,
                    format!("a constraint of `{}` refuses the change: {err}", table.name),
                ))
            }
        }
    } else {
        detail = format!(
            "UNIQUE({}): the row with key {key_text} (created first) keeps the value; the row with key {} waits, with node {origin}'s change, until it is free",
            columns.join(", "),
            describe_key(&change.pk)
        );
        let reason = format!(
            "UNIQUE({}) of `{}`: the value is held by the row with key {key_text}, created first",
            columns.join(", "),
            table.name
        );
        let own_bytes = pk_key(&change.pk);
        match (
            fresh,
            rows::read(tx, &table.name, &own_bytes)?,
            read_row(tx, table, &change.pk)?,
        ) {
            // An edit of a row that is here: the row waits whole, as it is on the node that made the edit
            // (which moved it aside the same way), so every node holds the same.
            (false, Some(own_state), Some(own_image)) => {
                incoming_image = Some(park_row_whole(
                    tx,
                    table,
                    &change.pk,
                    &own_state,
                    own_image,
                    Some((change, write, origin)),
                    &reason,
                    outcome,
                )?);
                move_children_aside(tx, ctx, table, &change.pk, outcome)?;
                Some(Applied::Kept)
            }
            _ => Some(Applied::Park(ParkKind::Constraint, reason)),
        }
    };
    // The side that waits is the whole row when it waits whole (an edit of a row that was here).
    let incoming_side = ConflictSide {
        node: origin,
        hlc: change.hlc,
        values: incoming_image.unwrap_or_else(|| change.columns.clone()),
    };
    let blocker_side = ConflictSide {
        node: blocker_born.node,
        hlc: blocker_state.map(|s| s.newest().hlc).unwrap_or(0),
        values: blocker_values,
    };
    let (winner, loser) = if incoming_first {
        (incoming_side, blocker_side)
    } else {
        (blocker_side, incoming_side)
    };
    if outcome.retrying && !incoming_first {
        return Ok(result); // recorded when it first waited
    }
    record_conflict(
        tx,
        outcome,
        Conflict {
            kind: ConflictKind::Constraint,
            columns,
            winner: Some(winner),
            loser: Some(loser),
            moved_to: None,
            detail,
            ..Conflict::about(&table.name, &change.pk)
        },
    )?;
    Ok(result)
}

/// Writes a change once more after its obstacle was moved aside; parks it if something else refuses it.
fn write_change_again(
    tx: &Transaction<'_>,
    table: &TableInfo,
    change: &RowChange,
    write: &[usize],
    fresh: bool,
) -> Result<Option<Applied>> {
    savepoint(tx, "hl_write")?;
    let retried = if fresh {
        execute_row_sql(tx, &table.sql.delete_row, change.pk.iter())
            .and_then(|_| insert_row(tx, table, change, write))
    } else {
        update_row(tx, table, change, write).map(|_| ())
    };
    match retried {
        Ok(()) => {
            release(tx, "hl_write")?;
            Ok(None)
        }
        Err(err) => {
            rollback_to(tx, "hl_write")?;
            if is_transient(&err) {
                return Err(err).ctx("applying a remote change");
            }
            Ok(Some(Applied::Park(
                ParkKind::Constraint,
                format!("a constraint of `{}` refuses the change: {err}", table.name),
            )))
        }
    }
}

/// The row (other than the change's own) that holds a value the change needs under a UNIQUE constraint.
fn find_unique_holder(
    tx: &Transaction<'_>,
    table: &TableInfo,
    change: &RowChange,
) -> Result<Option<(Vec<Value>, Vec<String>)>> {
    let current = read_row(tx, table, &change.pk)?;
    for set in &table.unique {
        let mut values = Vec::with_capacity(set.len());
        for column in set {
            let carried = change
                .columns
                .iter()
                .find(|(n, _)| n == column)
                .map(|(_, v)| v);
            let value = match carried {
                Some(v) => Some(v.clone()),
                None => table
                    .pk
                    .iter()
                    .position(|k| k == column)
                    .map(|i| change.pk[i].clone())
                    .or_else(|| {
                        let index = table.columns.iter().position(|c| c == column)?;
                        current.as_ref().map(|row| row[index].clone())
                    }),
            };
            match value {
                Some(v) if v != Value::Null => values.push(v),
                _ => break,
            }
        }
        if values.len() != set.len() {
            continue; // NULLs never collide under UNIQUE
        }
        let filter: Vec<String> = set
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", quote(c), i + 1))
            .collect();
        let not_self: Vec<String> = table
            .pk
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} IS ?{}", quote(c), set.len() + i + 1))
            .collect();
        let keys: Vec<String> = table.pk.iter().map(|c| quote(c)).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({}) LIMIT 1",
            keys.join(", "),
            quote(&table.name),
            filter.join(" AND "),
            not_self.join(" AND ")
        );
        let bound: Vec<&Value> = values.iter().chain(change.pk.iter()).collect();
        let found: Option<Vec<Value>> = tx
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                let mut rows = stmt.query(params_from_iter(bound))?;
                match rows.next()? {
                    Some(row) => {
                        let mut key = Vec::with_capacity(table.pk.len());
                        for i in 0..table.pk.len() {
                            key.push(Value::from(row.get_ref(i)?));
                        }
                        Ok(Some(key))
                    }
                    None => Ok(None),
                }
            })
            .ctx("finding the row that holds a unique value")?;
        if let Some(key) = found {
            return Ok(Some((key, set.clone())));
        }
    }
    Ok(None)
}

/// Two nodes created different rows under one auto-assigned key. The incarnation created first keeps the
/// key everywhere. The node that created the other one moves it (and the rows that reference it by a
/// declared foreign key and were written here) to a fresh key and publishes that as its own change; every
/// other node drops it when it arrives and gets it back under the new key.
#[allow(clippy::too_many_arguments)]
fn resolve_collision(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    table: &TableInfo,
    origin: u64,
    change: &RowChange,
    stored: &RowState,
    hashes: &[u64],
    incoming_wins: bool,
    outcome: &mut ApplyOutcome,
) -> Result<Option<Applied>> {
    let local = read_row(tx, table, &change.pk)?;
    let local_values: Vec<(String, Value)> = local
        .as_ref()
        .map(|row| {
            table
                .columns
                .iter()
                .cloned()
                .zip(row.iter().cloned())
                .collect()
        })
        .unwrap_or_default();
    let key_text = describe_key(&change.pk);
    if !incoming_wins {
        if change.op == Op::Delete {
            return Ok(Some(Applied::Displaced)); // a later lineage's row was deleted: nothing of it is here
        }
        if change.life.node == ctx.node_id && change.op == Op::Insert {
            // A row of this node's lineage, created again elsewhere, that lost the key: this node moves its
            // lineage's rows, so it gives this one a fresh key (as if it had held it when the key was lost).
            return rehome(
                tx,
                ctx,
                clock,
                table,
                origin,
                change,
                stored,
                local_values,
                outcome,
            );
        }
        record_conflict(
            tx,
            outcome,
            Conflict {
                kind: ConflictKind::KeyMoved,
                columns: table.pk.clone(),
                winner: Some(ConflictSide {
                    node: stored.life.node,
                    hlc: stored.born.hlc,
                    values: local_values,
                }),
                loser: Some(ConflictSide {
                    node: origin,
                    hlc: change.hlc,
                    values: change.columns.clone(),
                }),
                moved_to: None,
                detail: format!(
                    "node {} created a different row under key {key_text} later than node {}; node {} moves it to a fresh key",
                    change.life.node, stored.life.node, change.life.node
                ),
                ..Conflict::about(&table.name, &change.pk)
            },
        )?;
        return Ok(Some(Applied::Displaced));
    }
    let moved_to = if stored.life.node == ctx.node_id && local.is_some() {
        savepoint(tx, "hl_move")?;
        match move_row(tx, ctx, table, &change.pk, outcome) {
            Ok(new_key) => {
                release(tx, "hl_move")?;
                // Stamped at once, with the rows that followed it: every node then meets the moved row
                // as a row of this node, with its state. If the row that keeps the key takes one of its
                // UNIQUE values, the usual rule settles the value (the moved row, created later, waits
                // whole with the rows pointing at it) on every node alike. Unstamped, it would wait here
                // only, unknown elsewhere, while its children's new references went out.
                flush_follow_ups(tx, ctx, clock, outcome)?;
                Some(new_key)
            }
            Err(err) => {
                rollback_to(tx, "hl_move")?;
                return Err(err);
            }
        }
    } else {
        None
    };
    // The row that was here leaves the key, whether the incoming row can be written now or waits: the
    // record is made once, here (a retry of a waiting winner finds its own reserved key, no collision).
    let detail = match &moved_to {
        Some(new_key) => format!(
            "this node and node {} both created a row under key {key_text}; node {}'s was first and keeps it, this node's row moved to key {}",
            change.born.node, change.born.node, describe_key(new_key)
        ),
        None => format!(
            "node {} and node {} both created a row under key {key_text}; node {}'s was first and keeps it, node {} moves the other",
            stored.life.node, change.life.node, change.life.node, stored.life.node
        ),
    };
    if moved_to.is_some() {
        outcome.moved_keys += 1;
    }
    record_conflict(
        tx,
        outcome,
        Conflict {
            kind: ConflictKind::KeyMoved,
            columns: table.pk.clone(),
            winner: Some(ConflictSide {
                node: origin,
                hlc: change.hlc,
                values: change.columns.clone(),
            }),
            loser: Some(ConflictSide {
                node: stored.life.node,
                hlc: stored.newest().hlc,
                values: local_values,
            }),
            moved_to,
            detail,
            ..Conflict::about(&table.name, &change.pk)
        },
    )?;
    // The key now belongs to the incoming lineage: its row, or its tombstone.
    let all: Vec<usize> = (0..change.columns.len()).collect();
    let (fresh_state, deleted) = match plan(None, change, origin, hashes, table.merge, false) {
        Plan::Write { state, .. } => (state, false),
        Plan::Delete { state, .. } => (state, true),
        _ => return Ok(Some(Applied::Kept)),
    };
    // A row that points at a row waiting here waits too (`waits_for_parent`), with the key kept for it.
    let waits = if deleted {
        None
    } else {
        waits_for_parent(tx, ctx, table, change, &all)?
            .map(|reason| Applied::Park(ParkKind::Constraint, reason))
    };
    if deleted {
        execute_row_sql(tx, &table.sql.delete_row, change.pk.iter())
            .ctx("applying a remote delete")?;
    } else if let Some(parked) = match waits {
        Some(waiting) => Some(waiting),
        None => write_change(tx, ctx, table, origin, change, &all, true, outcome)?,
    } {
        // A constraint refuses the row that keeps the key (a row just moved off it may hold one of its
        // UNIQUE values until it is stamped): it waits, and the usual rule settles it when retried. The
        // other row leaves the key all the same — its creator moves it, every node alike — and the key is
        // reserved for the waiting lineage (causal length 0: known, nothing applied yet).
        execute_row_sql(tx, &table.sql.delete_row, change.pk.iter())
            .ctx("clearing a key for the row created first")?;
        let reserved = RowState {
            cl: 0,
            born: change.born,
            born_hash: change.born_hash,
            life: change.life,
            last: crate::clock::Version {
                hlc: change.hlc,
                node: origin,
            },
            columns: Vec::new(),
        };
        rows::write(tx, &table.name, &pk_key(&change.pk), &reserved)?;
        return Ok(Some(parked));
    }
    rows::write(tx, &table.name, &pk_key(&change.pk), &fresh_state)?;
    outcome.tables.insert(table.name.clone());
    let op = match (deleted, local.is_some()) {
        (true, _) => ChangeOp::Delete,
        (false, true) => ChangeOp::Update,
        (false, false) => ChangeOp::Insert,
    };
    if !(deleted && local.is_none()) {
        outcome.events.push(event(table, change, origin, op));
    }
    Ok(None)
}

/// Writes a displaced row of this node's lineage under a fresh key, as this node's new row.
#[allow(clippy::too_many_arguments)]
fn rehome(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    table: &TableInfo,
    origin: u64,
    change: &RowChange,
    stored: &RowState,
    holder: Vec<(String, Value)>,
    outcome: &mut ApplyOutcome,
) -> Result<Option<Applied>> {
    let Some(key) = fresh_key(tx, table)? else {
        return Ok(Some(Applied::Displaced));
    };
    let new_key = vec![Value::Integer(key)];
    let mut moved = change.clone();
    moved.pk = new_key.clone();
    for (name, value) in moved.columns.iter_mut() {
        if *name == table.pk[0] {
            *value = Value::Integer(key);
        }
    }
    let all: Vec<usize> = (0..moved.columns.len()).collect();
    let waits = match waits_for_parent(tx, ctx, table, &moved, &all)? {
        Some(reason) => Some(reason),
        None => match write_change(tx, ctx, table, origin, &moved, &all, true, outcome)? {
            None => None,
            Some(Applied::Park(_, reason)) => Some(reason),
            Some(other) => return Ok(Some(other)),
        },
    };
    if let Some(reason) = &waits {
        // It cannot apply yet (it points at a row that waits here, or a constraint refuses it): it waits
        // under its new key, published now, so that every node holds it waiting (the other nodes dropped
        // it under the old key and hold the conflict record below).
        if !wait_published(tx, ctx, clock, table, &change.pk, &moved, reason, outcome)? {
            // A node that publishes nothing keeps it as its own waiting row; a retry that ends here
            // releases the rows that waited with it under the old key (`retry_parked`).
            parked::park_own(tx, ctx.node_id, &moved, reason)?;
            outcome.deferred += 1;
        }
    } else {
        outcome
            .follow_ups
            .push((table.name.clone(), OP_INSERT, new_key.clone()));
        if let Some(settings) = ctx.stamp {
            let edits = follow_moved_row(tx, ctx, clock, table, &change.pk, &new_key, outcome)?;
            if !edits.is_empty() {
                let queued = crate::publish::stamp::queue_changes(tx, clock, settings, edits)?;
                outcome.stamped.extend(queued);
            }
        }
    }
    outcome.moved_keys += 1;
    record_conflict(
        tx,
        outcome,
        Conflict {
            kind: ConflictKind::KeyMoved,
            columns: table.pk.clone(),
            winner: Some(ConflictSide {
                node: stored.life.node,
                hlc: stored.born.hlc,
                values: holder,
            }),
            loser: Some(ConflictSide {
                node: origin,
                hlc: change.hlc,
                values: change.columns.clone(),
            }),
            moved_to: Some(new_key.clone()),
            detail: format!(
                "a row of this node's lineage under key {}, created again on node {origin}, lost the key to an earlier row; it moved to key {}",
                describe_key(&change.pk),
                describe_key(&new_key)
            ),
            ..Conflict::about(&table.name, &change.pk)
        },
    )?;
    // Kept, not Written, either way: the change did not apply under its own key (a retry must not give its
    // column versions to the row that kept the key).
    Ok(Some(Applied::Kept))
}

/// A row of this node that moved to a fresh key (`moved`, under the new key) and cannot apply there yet (it
/// points at a waiting row, or a constraint refuses it) waits as a new row of this node, published at
/// once: every node parks the same insert, and the rows pointing at it wait with it everywhere. Unpublished
/// it would wait here only, while the rows that follow it sent their new references out: elsewhere they
/// pointed at nothing, or at another node's row that chose the same fresh key. The rows that pointed at it
/// under `old_key` and were written here follow it, in the tables and parked alike. Returns false on a
/// node that publishes nothing.
#[allow(clippy::too_many_arguments)]
fn wait_published(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    table: &TableInfo,
    old_key: &[Value],
    moved: &RowChange,
    reason: &str,
    outcome: &mut ApplyOutcome,
) -> Result<bool> {
    let Some(settings) = ctx.stamp else {
        return Ok(false);
    };
    let version = crate::clock::Version {
        hlc: clock.tick(wall_millis()),
        node: ctx.node_id,
    };
    let born_hash = image_hash(
        moved
            .columns
            .iter()
            .map(|(name, value)| (name.as_str(), value_hash(value))),
    );
    let waiting = RowChange {
        op: Op::Insert,
        hlc: version.hlc,
        cl: 1,
        born: version,
        born_hash,
        life: version,
        seen: None,
        ..moved.clone()
    };
    // The key is kept for it (causal length 0: known, nothing applied yet), as on the nodes that park it.
    let reserved = RowState {
        cl: 0,
        born: version,
        born_hash,
        life: version,
        last: version,
        columns: Vec::new(),
    };
    rows::write(tx, &table.name, &pk_key(&waiting.pk), &reserved)?;
    let versions: parked::ColumnVersions = waiting
        .columns
        .iter()
        .map(|(name, _)| (name.clone(), version))
        .collect();
    parked::park_whole(
        tx,
        ctx.node_id,
        &waiting,
        ParkKind::Constraint,
        reason,
        &versions,
    )?;
    outcome.deferred += 1;
    let mut changes = vec![waiting.clone()];
    changes.extend(follow_moved_row(
        tx,
        ctx,
        clock,
        table,
        old_key,
        &waiting.pk,
        outcome,
    )?);
    flush_follow_ups(tx, ctx, clock, outcome)?;
    move_children_aside(tx, ctx, table, &waiting.pk, outcome)?;
    let queued = crate::publish::stamp::queue_changes(tx, clock, settings, changes)?;
    outcome.stamped.extend(queued);
    Ok(true)
}

/// The rows written here that pointed at a row of this node under `old_key`, which it just left for
/// `new_key`, follow it: those in their tables are pointed at the new key and logged for the stamper (as
/// `move_row` does); those parked (waiting with it) get an edit of the reference, folded into them here and
/// returned, to be sent (the stamper cannot see a parked row). A reference received from elsewhere points
/// at the row that keeps the key, and stays.
fn follow_moved_row(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    table: &TableInfo,
    old_key: &[Value],
    new_key: &[Value],
    outcome: &mut ApplyOutcome,
) -> Result<Vec<RowChange>> {
    let mut edits = Vec::new();
    let ([old_value], [new_value]) = (old_key, new_key) else {
        return Ok(edits); // declared single-column foreign keys only (`TableInfo::parents`)
    };
    for (child_name, column) in &table.referenced_by {
        let Some(child) = ctx.schema.tables.get(child_name) else {
            continue;
        };
        point_children_at(tx, ctx, child, column, old_value, new_value, outcome)?;
        for entry in parked::waiting(tx, Some(child_name), usize::MAX)? {
            let points_here = entry
                .change
                .columns
                .iter()
                .any(|(name, value)| name == column && value == old_value);
            let written_here = entry
                .column_versions
                .iter()
                .find(|(name, _)| name == column)
                .map_or(entry.origin == ctx.node_id, |(_, v)| v.node == ctx.node_id);
            if entry.publish || entry.change.op != Op::Insert || !points_here || !written_here {
                continue;
            }
            let edit = RowChange {
                op: Op::Update,
                hlc: clock.tick(wall_millis()),
                seen: None,
                columns: vec![(column.clone(), new_value.clone())],
                ..entry.change.clone()
            };
            parked::fold_into_waiting_insert(tx, &edit, ctx.node_id)?;
            edits.push(edit);
        }
    }
    Ok(edits)
}

/// Moves this node's row off `key` to a fresh one, with the rows that reference it by a declared foreign
/// key and were written on this node; logs them as local changes. Returns the new key.
fn move_row(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    table: &TableInfo,
    key: &[Value],
    outcome: &mut ApplyOutcome,
) -> Result<Vec<Value>> {
    let Some(new_key) = fresh_key(tx, table)? else {
        return Err(Error::Internal(format!(
            "table `{}` has no single-column key to move a row to",
            table.name
        )));
    };
    let new_key = vec![Value::Integer(new_key)];
    let key_column = &table.pk[0];
    tx.prepare_cached(&format!(
        "UPDATE {} SET {k} = ?1 WHERE {k} = ?2",
        quote(&table.name),
        k = quote(key_column)
    ))
    .and_then(|mut stmt| stmt.execute(rusqlite::params![&new_key[0], &key[0]]))
    .ctx("moving a row to a fresh key")?;
    outcome
        .follow_ups
        .push((table.name.clone(), OP_INSERT, new_key.clone()));
    for (child_name, column) in &table.referenced_by {
        let Some(child) = ctx.schema.tables.get(child_name) else {
            continue;
        };
        point_children_at(tx, ctx, child, column, &key[0], &new_key[0], outcome)?;
    }
    Ok(new_key)
}

/// Points the rows of `child` whose `column` holds `old_value` and was written on this node at `new_value`
/// (the row they point at moved there), and logs them for the stamper. A reference received from elsewhere
/// points at the row that keeps the key, and stays.
fn point_children_at(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    child: &TableInfo,
    column: &str,
    old_value: &Value,
    new_value: &Value,
    outcome: &mut ApplyOutcome,
) -> Result<()> {
    for child_key in keys_referencing(tx, child, column, old_value)? {
        let state = rows::read(tx, &child.name, &pk_key(&child_key))?;
        if state.is_some_and(|s| s.column_version(column).node != ctx.node_id) {
            continue;
        }
        let filter = crate::capture::sql::key_filter(&child.pk);
        let sql = format!(
            "UPDATE {} SET {} = ?{} WHERE {filter}",
            quote(&child.name),
            quote(column),
            child.pk.len() + 1
        );
        let mut bound: Vec<&Value> = child_key.iter().collect();
        bound.push(new_value);
        tx.prepare_cached(&sql)
            .and_then(|mut stmt| stmt.execute(params_from_iter(bound)))
            .ctx("pointing a row at its parent's new key")?;
        outcome
            .follow_ups
            .push((child.name.clone(), OP_UPDATE, child_key));
    }
    Ok(())
}

/// Keys of the rows of `child` whose `column` holds `value` (a declared foreign key to another row's key).
fn keys_referencing(
    tx: &Transaction<'_>,
    child: &TableInfo,
    column: &str,
    value: &Value,
) -> Result<Vec<Vec<Value>>> {
    let keys: Vec<String> = child.pk.iter().map(|c| quote(c)).collect();
    tx.prepare_cached(&format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        keys.join(", "),
        quote(&child.name),
        quote(column)
    ))
    .and_then(|mut stmt| {
        stmt.query_map([value], |row| {
            (0..child.pk.len())
                .map(|i| row.get_ref(i).map(Value::from))
                .collect::<rusqlite::Result<Vec<Value>>>()
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .ctx("finding the rows that reference a row")
}

/// Moves a row that is here aside, whole: deletes it and parks an insert of its image (with `fold`'s
/// columns written over it: a received edit that cannot apply yet) under its state's lineage and newest
/// version. Every node that moves the row aside parks the same, so the row waits alike everywhere.
#[allow(clippy::too_many_arguments)]
fn park_row_whole(
    tx: &Transaction<'_>,
    table: &TableInfo,
    key: &[Value],
    state: &RowState,
    image: Vec<Value>,
    fold: Option<(&RowChange, &[usize], u64)>,
    reason: &str,
    outcome: &mut ApplyOutcome,
) -> Result<Vec<(String, Value)>> {
    let mut columns: Vec<(String, Value)> = table.columns.iter().cloned().zip(image).collect();
    let mut versions: parked::ColumnVersions = state
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.version))
        .collect();
    let mut newest = state.newest();
    if let Some((change, write, origin)) = fold {
        let incoming = crate::clock::Version {
            hlc: change.hlc,
            node: origin,
        };
        for i in write {
            let (name, value) = &change.columns[*i];
            if let Some(slot) = columns.iter_mut().find(|(n, _)| n == name) {
                slot.1 = value.clone();
            }
            match versions.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = incoming,
                None => versions.push((name.clone(), incoming)),
            }
        }
        newest = newest.max(incoming);
    }
    let waiting = RowChange {
        table: table.name.clone(),
        op: Op::Insert,
        hlc: newest.hlc,
        cl: state.cl,
        born: state.born,
        born_hash: state.born_hash,
        life: state.life,
        seen: None,
        pk: key.to_vec(),
        columns,
    };
    execute_row_sql(tx, &table.sql.delete_row, key.iter()).ctx("moving a row aside")?;
    // The key stays known as the waiting row's (causal length 0: nothing of it here now, as on the nodes
    // that park it on arrival). Without it, a change of another lineage under the key (an edit of a row
    // its creator moved off it) would be taken for a fresh row, and the app's next insert there for the
    // waiting row.
    let reserved = RowState {
        cl: 0,
        born: state.born,
        born_hash: state.born_hash,
        life: state.life,
        last: state.last,
        columns: Vec::new(),
    };
    rows::write(tx, &table.name, &pk_key(key), &reserved)?;
    parked::park_whole(
        tx,
        newest.node,
        &waiting,
        ParkKind::Constraint,
        reason,
        &versions,
    )?;
    outcome.deferred += 1;
    Ok(waiting.columns)
}

/// Rows that point (by a declared foreign key) at a row this node has just moved aside (parked whole: it
/// lost a UNIQUE value to a row created first) wait with it, whole, and so do the rows pointing at them.
/// A row that arrives pointing at a waiting row waits too (`waits_for_parent`), so every node holds the
/// same whether the children came before or after the eviction. A child without state (written here and
/// not stamped yet) stays: its insert has not gone out, and no other node can hold it.
fn move_children_aside(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    table: &TableInfo,
    key: &[Value],
    outcome: &mut ApplyOutcome,
) -> Result<()> {
    let mut parents: Vec<(&TableInfo, Vec<Value>)> = vec![(table, key.to_vec())];
    let mut moved: BTreeSet<(String, Vec<u8>)> = BTreeSet::new();
    while let Some((parent, parent_key)) = parents.pop() {
        let [parent_value] = parent_key.as_slice() else {
            continue; // declared single-column foreign keys only (`TableInfo::parents`)
        };
        for (child_name, column) in &parent.referenced_by {
            let Some(child) = ctx.schema.tables.get(child_name) else {
                continue;
            };
            for child_key in keys_referencing(tx, child, column, parent_value)? {
                let bytes = pk_key(&child_key);
                if !moved.insert((child.name.clone(), bytes.clone())) {
                    continue;
                }
                let Some(state) = rows::read(tx, &child.name, &bytes)? else {
                    continue;
                };
                let Some(image) = read_row(tx, child, &child_key)? else {
                    continue;
                };
                let reason = format!(
                    "`{}`.{column} points at a row of `{}` that waits here too",
                    child.name, parent.name
                );
                park_row_whole(tx, child, &child_key, &state, image, None, &reason, outcome)?;
                parents.push((child, child_key));
            }
        }
    }
    Ok(())
}

fn record_conflict(
    tx: &Transaction<'_>,
    outcome: &mut ApplyOutcome,
    conflict: Conflict,
) -> Result<()> {
    let stored = conflicts::record(tx, conflict)?;
    outcome.conflicts.push(stored);
    Ok(())
}

fn side_of(
    table: &TableInfo,
    state: &RowState,
    row: Option<&[Value]>,
    columns: &[String],
) -> ConflictSide {
    let newest = columns
        .iter()
        .map(|c| state.column_version(c))
        .max()
        .unwrap_or(state.last);
    ConflictSide {
        node: newest.node,
        hlc: newest.hlc,
        values: named_values(table, row, columns),
    }
}

fn named_values(
    table: &TableInfo,
    row: Option<&[Value]>,
    columns: &[String],
) -> Vec<(String, Value)> {
    let Some(row) = row else {
        return Vec::new();
    };
    columns
        .iter()
        .filter_map(|name| {
            let index = table.columns.iter().position(|c| c == name)?;
            Some((name.clone(), row.get(index)?.clone()))
        })
        .collect()
}

fn event(table: &TableInfo, change: &RowChange, origin: u64, op: ChangeOp) -> ChangeEvent {
    ChangeEvent {
        table: table.name.clone(),
        op,
        pk: change.pk.clone(),
        origin_node: origin,
        hlc: change.hlc,
        local: false,
    }
}

fn describe_key(key: &[Value]) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|v| match v {
            Value::Null => "NULL".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(f) => f.to_string(),
            Value::Text(t) => format!("'{t}'"),
            Value::Blob(b) => format!(
                "x'{}'",
                b.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// INSERT of the key and the listed columns of the change (key values always from `change.pk`).
fn insert_row(
    tx: &Transaction<'_>,
    table: &TableInfo,
    change: &RowChange,
    write: &[usize],
) -> rusqlite::Result<()> {
    let mut names: Vec<&str> = Vec::with_capacity(table.columns.len());
    let mut values: Vec<&Value> = Vec::with_capacity(table.columns.len());
    for column in &table.columns {
        if let Some(k) = table.pk.iter().position(|p| p == column) {
            names.push(column);
            values.push(&change.pk[k]);
        } else if let Some(i) = write.iter().find(|i| change.columns[**i].0 == *column) {
            names.push(column);
            values.push(&change.columns[*i].1);
        }
    }
    if names.len() == table.columns.len() {
        tx.prepare_cached(&table.sql.insert_row)?
            .execute(params_from_iter(values))?;
    } else {
        // A sender that lacks some of this table's columns: they take their defaults.
        tx.prepare_cached(&insert_sql(&table.name, &names))?
            .execute(params_from_iter(values))?;
    }
    Ok(())
}

/// UPDATE of the listed non-key columns of the change; returns the rows updated (0: the row is not here).
fn update_row(
    tx: &Transaction<'_>,
    table: &TableInfo,
    change: &RowChange,
    write: &[usize],
) -> rusqlite::Result<usize> {
    let mut names: Vec<&str> = Vec::with_capacity(write.len());
    let mut values: Vec<&Value> = Vec::with_capacity(write.len() + change.pk.len());
    for i in write {
        let (name, value) = &change.columns[*i];
        if !table.is_key_column(name) {
            names.push(name);
            values.push(value);
        }
    }
    if names.is_empty() {
        // Only key columns: the row exists or it does not; make sure it does.
        let exists = tx
            .prepare_cached(&table.sql.select_row)?
            .exists(params_from_iter(change.pk.iter()))?;
        return Ok(usize::from(exists));
    }
    values.extend(change.pk.iter());
    tx.prepare_cached(&update_sql(&table.name, &names, &table.pk))?
        .execute(params_from_iter(values))
}

fn execute_row_sql<'v>(
    tx: &Transaction<'_>,
    sql: &str,
    values: impl Iterator<Item = &'v Value>,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params_from_iter(values))
}

// Savepoints are taken around every applied change: cached statements, since `execute_batch` parsed the
// SQL anew each time (a tenth of the applier's instructions per row).
fn savepoint(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.prepare_cached(&format!("SAVEPOINT {name}"))
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .ctx("starting a savepoint")
}

fn release(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.prepare_cached(&format!("RELEASE {name}"))
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .ctx("releasing a savepoint")
}

fn rollback_to(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))
        .ctx("rolling back a savepoint")
}

/// Errors of the database itself, not of one change: the whole batch is retried later.
fn is_transient(err: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        err.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | SystemIoFailure
                | DiskFull
                | OutOfMemory
                | CannotOpen
                | ReadOnly
                | DatabaseCorrupt
                | NotADatabase
                | OperationInterrupted
        )
    )
}
