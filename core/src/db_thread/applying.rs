//! The database thread's receiving side: applying batches from other nodes, skipping this node's own
//! messages without a write transaction, retrying parked changes, and telling the app what happened.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::DbWorker;
use crate::apply::applier::{ApplyOutcome, Incoming};
use crate::apply::transaction::{apply_batch, retry_parked_batch, BatchRun};
use crate::clock::Clock;
use crate::connection::{begin_write, with_busy_retry};
use crate::error::{Error, Result, SqlContext};
use crate::log::{batch_node_id, Origin};
use crate::publish::stamp::{self, StampSettings};
use crate::state::{outbox, positions};

impl DbWorker {
    /// Retries parked changes (of the given tables, or all) in one write transaction.
    pub(super) fn retry_parked(&mut self, tables: Option<&[String]>) {
        if Instant::now() < self.settle_until {
            self.retry_after_settle = true;
            return;
        }
        self.retry_after_settle = false;
        self.last_parked_retry = Instant::now();
        let waiting = match tables {
            Some(tables) => tables.iter().any(|t| self.parked_tables.contains(t)),
            None => !self.parked_tables.is_empty(),
        };
        if !waiting {
            return;
        }
        let settings = StampSettings {
            max_changes: u32::MAX,
            ..self.stamp_settings()
        };
        let publish = self.config.publish;
        let result = (|| -> Result<(ApplyOutcome, Option<stamp::Stamped>, Clock)> {
            let tx = begin_write(&self.conn, self.busy_limit(), "retrying parked changes")?;
            let mut clock = self.clock;
            let run = BatchRun {
                schema: &self.schema,
                node_id: self.node_id,
                instance: self.instance,
                stamp: publish.then_some(&settings),
                history: &self.history,
                parked_tables: &self.parked_tables,
                retry_parked: true,
            };
            let result = retry_parked_batch(&tx, &run, &mut clock, tables)?;
            outbox::delete(&tx, &self.acked)?;
            let wall = crate::clock::wall_millis();
            tx.commit().ctx("retrying parked changes")?;
            // Not only when something applied: a retry that moves a key or a row aside stamps changes of
            // this node, which the app can see from now on (`record` ignores a clock that did not move).
            self.history.record(wall, clock.last());
            if let Some(now_parked) = result.parked_tables {
                self.parked_tables = now_parked;
            }
            Ok((result.outcome, result.stamped, clock))
        })();
        match result {
            Ok((outcome, stamped, clock)) => {
                self.clock = clock;
                self.acked.clear();
                if let Some(stamped) = stamped {
                    self.after_stamp(stamped.outbox, stamped.events);
                }
                if outcome.applied > 0 {
                    info!(
                        applied = outcome.applied,
                        "parked changes applied: what they waited for is here now"
                    );
                }
                self.writes_since_checkpoint += 1;
                let follow_ups = !outcome.follow_ups.is_empty();
                self.publish_outcome(outcome);
                if follow_ups {
                    self.stamp_all();
                }
            }
            Err(err) => warn!(error = %err, "retrying parked changes failed; will retry"),
        }
    }

    /// Events, conflicts and counters of applied changes, for the app.
    pub(super) fn publish_outcome(&mut self, mut outcome: ApplyOutcome) {
        let counters = &self.outputs.counters;
        for (shard, seq) in &outcome.claims_this_node {
            let err = Error::config(
                "node_id",
                format!(
                    "message {seq} of shard {shard} claims this node's id {} but this database did not \
                     publish it: another node may be configured with the same node_id (or this node \
                     restored a snapshot, or the message is forged); it was applied like any other",
                    self.node_id
                ),
            );
            error!(error = %err, "a message claims this node's id");
            counters.record_error(&err);
        }
        counters.applied_rows.inc_by(outcome.applied);
        counters.kept_rows.inc_by(outcome.kept);
        counters.deferred_rows.inc_by(outcome.deferred);
        counters.moved_keys.inc_by(outcome.moved_keys);
        counters.conflicts.inc_by(outcome.conflicts.len() as u64);
        counters
            .dead_lettered
            .inc_by(outcome.dead_letters.len() as u64);
        if outcome.applied > 0 {
            counters
                .last_apply_ms
                .store(crate::clock::wall_millis(), Ordering::Relaxed);
        }
        for conflict in &outcome.conflicts {
            info!(table = %conflict.table, kind = conflict.kind.as_str(), detail = %conflict.detail, "conflict resolved and recorded");
        }
        self.outputs
            .conflicts
            .emit(std::mem::take(&mut outcome.conflicts));
        // Events before positions: whoever waits for a position also finds its events delivered.
        self.outputs
            .events
            .emit(std::mem::take(&mut outcome.events));
        if !outcome.positions.is_empty() {
            self.outputs.positions.send_modify(|positions| {
                for (shard, seq) in &outcome.positions {
                    positions.insert(*shard, *seq);
                }
            });
        }
    }

    /// Every node receives its own messages back from the stream. When a run holds nothing else, only the
    /// position moves: it is kept in memory (and published to waiters) and stored with the next write
    /// transaction. A write transaction per own message met the app's writes on the lock — the app then
    /// sleeps in SQLite's busy handler — and forced a stamp of whatever was pending. Losing the unsaved
    /// position in a crash only means receiving those messages again, which changes nothing.
    pub(super) fn skip_own_messages(&mut self, messages: &[Incoming]) -> Result<ApplyOutcome> {
        let mut outcome = ApplyOutcome::default();
        for message in messages {
            let position = match self.unsaved_positions.get(&message.shard) {
                Some(seq) => *seq,
                None => positions::read(&self.conn, message.shard)?,
            };
            if message.seq > position {
                self.unsaved_positions.insert(message.shard, message.seq);
                self.deferred_since.get_or_insert_with(Instant::now);
                match outcome
                    .positions
                    .iter_mut()
                    .find(|(s, _)| *s == message.shard)
                {
                    Some(entry) => entry.1 = message.seq,
                    None => outcome.positions.push((message.shard, message.seq)),
                }
            }
        }
        if !outcome.positions.is_empty() {
            self.outputs.positions.send_modify(|positions| {
                for (shard, seq) in &outcome.positions {
                    positions.insert(*shard, *seq);
                }
            });
        }
        Ok(outcome)
    }

    pub(super) fn apply(&mut self, messages: &[Incoming]) -> Result<ApplyOutcome> {
        // Whether these are all this node's own messages, from the node id at the start of each batch and
        // the message id: nothing is decoded for it (a writer receives every message it published, and
        // decoding each whole only to skip it cost it as much as applying one; the first message of another
        // node settles it, and the applier decodes each message once).
        let me = self.publisher();
        let own_only = messages.iter().all(|message| {
            !message.retry
                && batch_node_id(&message.payload)
                    .is_ok_and(|node| me.judge(node, message.published_by) == Origin::Own)
        });
        if own_only {
            return self.skip_own_messages(messages);
        }
        let _ = self.refresh_schema_if_changed();
        let limit = Duration::from_millis(self.config.apply.busy_timeout_ms);
        // Every pending local change is stamped before applying, however many there are.
        let settings = StampSettings {
            max_changes: u32::MAX,
            ..self.stamp_settings()
        };
        let publish = self.config.publish;
        let node_id = self.node_id;
        let instance = self.instance;
        let (outcome, stamped, clock) = {
            let schema = &self.schema;
            let start_clock = self.clock;
            let conn = &mut self.conn;
            let acked = &self.acked;
            let unsaved = &self.unsaved_positions;
            let history = &mut self.history;
            let parked_tables = &mut self.parked_tables;
            let retry_parked = Instant::now() >= self.settle_until;
            with_busy_retry(limit, || {
                let mut clock = start_clock;
                let tx = begin_write(conn, limit, "starting an apply transaction")?;
                positions::store_all(&tx, unsaved)?;
                let run = BatchRun {
                    schema,
                    node_id,
                    instance,
                    stamp: publish.then_some(&settings),
                    history,
                    parked_tables,
                    retry_parked,
                };
                let result = apply_batch(&tx, &run, &mut clock, messages)?;
                outbox::delete(&tx, acked)?;
                let wall = crate::clock::wall_millis();
                tx.commit().ctx("committing an apply transaction")?;
                history.record(wall, clock.last());
                if let Some(now_parked) = result.parked_tables {
                    *parked_tables = now_parked;
                }
                let (outcome, stamped) = (result.outcome, result.stamped);
                Ok((outcome, stamped, clock))
            })?
        };
        self.acked.clear();
        self.deferred_since = None;
        self.unsaved_positions.clear();
        self.writes_since_checkpoint += 1;
        self.clock = clock;
        if let Some(stamped) = stamped {
            self.after_stamp(stamped.outbox, stamped.events);
        }
        let has_follow_ups = !outcome.follow_ups.is_empty();
        let summary = ApplyOutcome {
            dead_letters: outcome.dead_letters.clone(),
            recovered_dead_letters: outcome.recovered_dead_letters,
            positions: outcome.positions.clone(),
            applied: outcome.applied,
            kept: outcome.kept,
            deferred: outcome.deferred,
            moved_keys: outcome.moved_keys,
            ..ApplyOutcome::default()
        };
        // Counters before positions, so whoever waits on a position sees the counts that go with it.
        self.publish_outcome(outcome);
        if has_follow_ups {
            // Rows moved off a colliding key go out now, not at the next commit of the app.
            self.stamp_all();
        }
        Ok(summary)
    }

    pub(super) fn reset_position(&mut self, shard: u32, seq: u64) -> Result<()> {
        self.store_deferred_writes();
        let tx = begin_write(
            &self.conn,
            self.busy_limit(),
            "resetting the stream position",
        )?;
        positions::store(&tx, shard, seq)?;
        tx.commit().ctx("resetting the stream position")?;
        // An own-message position that could not be written above must not overwrite the reset later.
        self.unsaved_positions.remove(&shard);
        Ok(())
    }
}
