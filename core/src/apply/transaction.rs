//! One apply transaction, start to end: stamp what the app committed, apply the received messages under
//! the merge rules, retry what was parked on the tables they wrote, drop the transaction's own captured
//! writes and log the changes the library made for the app (moved keys). The caller owns the transaction
//! (begin, positions of its own messages, commit); the database thread and the property tests both run
//! exactly this.

use std::collections::BTreeSet;

use rusqlite::Transaction;

use super::applier::{self, ApplyContext, ApplyOutcome, Incoming};
use crate::capture::{self, Schema};
use crate::clock::{Clock, ClockHistory};
use crate::error::Result;
use crate::publish::stamp::{self, StampSettings, Stamped};
use crate::state::{meta, parked};

/// Parked changes retried per table after a write to it.
pub const PARKED_RETRY_BATCH: usize = 2048;

pub struct BatchRun<'a> {
    pub schema: &'a Schema,
    pub node_id: u64,
    /// This database's publisher instance (`state::meta::instance`).
    pub instance: u64,
    /// How to stamp local changes first; None on a node that publishes nothing.
    pub stamp: Option<&'a StampSettings>,
    pub history: &'a ClockHistory,
    /// Tables with parked changes before this transaction.
    pub parked_tables: &'a BTreeSet<String>,
    /// Whether parked changes may be retried after the batch wrote their tables (not while a local
    /// schema change settles, see `db_thread::SCHEMA_SETTLE`).
    pub retry_parked: bool,
}

pub struct BatchResult {
    pub outcome: ApplyOutcome,
    pub stamped: Option<Stamped>,
    /// The tables with parked changes after this transaction, when that may have changed.
    pub parked_tables: Option<BTreeSet<String>>,
}

pub fn apply_batch(
    tx: &Transaction<'_>,
    run: &BatchRun<'_>,
    clock: &mut Clock,
    messages: &[Incoming],
) -> Result<BatchResult> {
    // Local changes not yet stamped are stamped first, from their commit times: the merge then compares
    // them with what arrived like any other change.
    let stamped = stamp_first(tx, run, clock)?;
    // Whatever the log holds from here on, this transaction wrote (see `capture::change_log_mark`).
    let mark = capture::change_log_mark(tx)?;
    let ctx = ApplyContext {
        schema: run.schema,
        node_id: run.node_id,
        instance: run.instance,
        parked_tables: run.parked_tables,
        stamp: run.stamp,
        history: run.history,
    };
    let mut outcome = applier::apply_messages(tx, &ctx, clock, messages)?;
    // What this batch wrote may unblock changes parked on the same table, or on a table whose rows point
    // at it.
    let touched = if run.retry_parked {
        unblocked(run.schema, &outcome.tables, run.parked_tables, true)
    } else {
        Vec::new()
    };
    let retried = retry_tables(tx, &ctx, clock, run, touched.clone())?;
    outcome.absorb(retried);
    capture::discard_own_changes(tx, mark)?;
    // On a node that publishes nothing, what the library changed for the app is logged, like the app's
    // own writes, after the discard (elsewhere it was stamped at once: `applier::flush_follow_ups`).
    for (table, op, pk) in &outcome.follow_ups {
        capture::log_local_change(tx, table, *op, pk)?;
    }
    if outcome.applied > 0 || stamped.as_ref().is_some_and(|s| s.log_entries > 0) {
        meta::save_clock(tx, clock)?;
    }
    let parked_tables =
        if outcome.deferred > 0 || !touched.is_empty() || outcome.discarded_changes > 0 {
            Some(parked::tables(tx)?)
        } else {
            None
        };
    let stamped = with_own_changes(stamped, &mut outcome);
    Ok(BatchResult {
        outcome,
        stamped,
        parked_tables,
    })
}

/// Retries the parked changes of `tables` (all tables with parked changes when None) in the caller's
/// transaction, with the same bookkeeping as [`apply_batch`].
pub fn retry_parked_batch(
    tx: &Transaction<'_>,
    run: &BatchRun<'_>,
    clock: &mut Clock,
    tables: Option<&[String]>,
) -> Result<BatchResult> {
    let wanted: Vec<String> = match tables {
        Some(tables) => tables
            .iter()
            .filter(|t| run.parked_tables.contains(*t))
            .cloned()
            .collect(),
        None => run.parked_tables.iter().cloned().collect(),
    };
    // As before applying anything: what the app committed is stamped first, so a parked change that
    // applies now is merged with it rather than written over it.
    let stamped = stamp_first(tx, run, clock)?;
    let mark = capture::change_log_mark(tx)?;
    let ctx = ApplyContext {
        schema: run.schema,
        node_id: run.node_id,
        instance: run.instance,
        parked_tables: run.parked_tables,
        stamp: run.stamp,
        history: run.history,
    };
    let mut outcome = retry_tables(tx, &ctx, clock, run, wanted)?;
    capture::discard_own_changes(tx, mark)?;
    for (table, op, pk) in &outcome.follow_ups {
        capture::log_local_change(tx, table, *op, pk)?;
    }
    if outcome.applied > 0 || stamped.as_ref().is_some_and(|s| s.log_entries > 0) {
        meta::save_clock(tx, clock)?;
    }
    let stamped = with_own_changes(stamped, &mut outcome);
    Ok(BatchResult {
        outcome,
        stamped,
        parked_tables: Some(parked::tables(tx)?),
    })
}

/// Retries the parked changes of `tables`; then, a few rounds at most, those of the parked tables whose
/// rows point at a table the retry wrote (a row that waited for its parent row applies with it).
fn retry_tables(
    tx: &Transaction<'_>,
    ctx: &ApplyContext<'_>,
    clock: &mut Clock,
    run: &BatchRun<'_>,
    mut tables: Vec<String>,
) -> Result<ApplyOutcome> {
    let mut outcome = ApplyOutcome::default();
    for _ in 0..4 {
        if tables.is_empty() {
            break;
        }
        let mut written = BTreeSet::new();
        for table in &tables {
            let retried = applier::retry_parked(tx, ctx, clock, Some(table), PARKED_RETRY_BATCH)?;
            written.extend(retried.tables.iter().cloned());
            outcome.absorb(retried);
        }
        tables = unblocked(run.schema, &written, run.parked_tables, false);
    }
    Ok(outcome)
}

/// The parked tables that writes to `written` may unblock: the tables whose foreign keys point at them
/// (and, with `itself`, the written tables themselves).
fn unblocked(
    schema: &Schema,
    written: &BTreeSet<String>,
    parked: &BTreeSet<String>,
    itself: bool,
) -> Vec<String> {
    let mut tables = BTreeSet::new();
    for table in written {
        if itself {
            tables.insert(table.clone());
        }
        if let Some(info) = schema.tables.get(table) {
            tables.extend(info.referenced_by.iter().map(|(child, _)| child.clone()));
        }
    }
    tables.retain(|t| parked.contains(t));
    tables.into_iter().collect()
}

fn stamp_first(
    tx: &Transaction<'_>,
    run: &BatchRun<'_>,
    clock: &mut Clock,
) -> Result<Option<Stamped>> {
    match run.stamp {
        Some(settings) => Ok(Some(stamp::stamp_pending(
            tx,
            run.schema,
            clock,
            run.history,
            settings,
        )?)),
        None => Ok(None),
    }
}

/// The messages stamped before applying, plus those of the changes the applier made for the app.
fn with_own_changes(stamped: Option<Stamped>, outcome: &mut ApplyOutcome) -> Option<Stamped> {
    if outcome.stamped.is_empty() {
        return stamped;
    }
    let mut stamped = stamped.unwrap_or_default();
    stamped.outbox.append(&mut outcome.stamped);
    stamped.events.append(&mut outcome.stamped_events);
    Some(stamped)
}
