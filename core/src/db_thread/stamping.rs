//! The database thread's publishing side: stamping what the app committed into the outbox and handing it
//! to the publisher, deleting what JetStream acknowledged, republishing after a loss, and recording local
//! changes the server refused.

use std::collections::BTreeSet;

use tracing::{debug, error, info, warn};

use super::DbWorker;
use crate::connection::{begin_write, with_busy_retry};
use crate::error::{Error, Result, SqlContext};
use crate::log::{decode, pk_key, shard_of};
use crate::publish::republish::{republish_shard, republish_tables};
use crate::publish::{stamp, OutboxEntry};
use crate::state::{self as library, outbox, positions};

impl DbWorker {
    /// Stamps every captured change, one bounded transaction at a time.
    /// Returns how many change-log entries were stamped.
    pub(super) fn stamp_all(&mut self) -> usize {
        if let Err(err) = self.refresh_schema_if_changed() {
            warn!(error = %err, "schema refresh failed; will retry");
        }
        if self.announce_drops_owed {
            self.announce_dropped_tables();
        }
        if !self.config.publish {
            return 0;
        }
        // A read does not block the app (WAL); taking the write lock for an empty log would.
        if self.change_log_is_empty() {
            return 0;
        }
        let mut stamped = 0;
        loop {
            match self.stamp_once() {
                Ok(entries) if entries >= self.config.scan_max_changes as usize => {
                    stamped += entries;
                    continue;
                }
                Ok(entries) => {
                    stamped += entries;
                    break;
                }
                Err(Error::SqliteBusy { .. }) => {
                    debug!("database busy while stamping; will retry");
                    break;
                }
                Err(err) => {
                    error!(error = %err, "stamping local changes failed; will retry");
                    break;
                }
            }
        }
        stamped
    }

    pub(super) fn change_log_is_empty(&self) -> bool {
        self.conn
            .prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM __harmonylite__change_log)")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .unwrap_or(false)
    }

    pub(super) fn stamp_once(&mut self) -> Result<usize> {
        let settings = self.stamp_settings();
        let tx = begin_write(&self.conn, self.busy_limit(), "stamping local changes")?;
        let mut clock = self.clock;
        let stamped =
            stamp::stamp_pending(&tx, &self.schema, &mut clock, &self.history, &settings)?;
        if stamped.log_entries == 0 {
            return Ok(0);
        }
        outbox::delete(&tx, &self.acked)?;
        positions::store_all(&tx, &self.unsaved_positions)?;
        let log_empty = stamped.log_entries < settings.max_changes as usize;
        tx.commit().ctx("committing stamped changes")?;
        if log_empty {
            self.history.compact();
        }
        let touched = stamped.tables.clone();
        self.unsaved_positions.clear();
        self.writes_since_checkpoint += 1;
        self.acked.clear();
        self.deferred_since = None;
        self.clock = clock;
        self.after_stamp(stamped.outbox, stamped.events);
        // A local change may free what a parked change waits for (a UNIQUE value, for one).
        self.retry_parked(Some(&touched));
        Ok(stamped.log_entries)
    }

    pub(super) fn after_stamp(
        &mut self,
        outbox: Vec<OutboxEntry>,
        events: Vec<crate::events::ChangeEvent>,
    ) {
        if let Some(last) = outbox.last() {
            self.last_outbox_id = last.id;
        }
        for entry in outbox {
            // The publisher is gone only while closing; the entry stays in the outbox for next time.
            let _ = self.outputs.outbox.send(entry);
        }
        self.outputs.events.emit(events);
    }

    /// Queues every row of `shard` again (see `Command::Republish`). What the app committed is stamped
    /// first, so the row states hold it.
    pub(super) fn republish(&mut self, shard: u32) -> Result<u64> {
        if !self.config.publish {
            return Ok(0); // a read replica never published anything
        }
        self.stamp_all();
        let settings = self.stamp_settings();
        let limit = self.busy_limit();
        let (conn, schema) = (&self.conn, &self.schema);
        let mut clock = self.clock;
        let republished = with_busy_retry(limit, || {
            let tx = begin_write(conn, limit, "republishing rows after broker data loss")?;
            let mut republished = republish_shard(&tx, schema, &settings, shard)?;
            // The tables this node dropped are announced again too (ADR 0016), on the shard they route to.
            let drops: Vec<String> = library::dropped::tables_of(&tx, settings.node_id)?
                .into_iter()
                .map(|(table, _)| table)
                .filter(|table| shard_of(table, &[], settings.shards) == shard)
                .collect();
            clock = self.clock;
            republished.outbox.extend(stamp::stamp_dropped_tables(
                &tx, &mut clock, &settings, &drops,
            )?);
            tx.commit()
                .ctx("republishing rows after broker data loss")?;
            Ok(republished)
        })?;
        self.clock = clock;
        info!(
            shard,
            rows = republished.rows,
            messages = republished.outbox.len(),
            "rows queued for publishing again after broker data loss"
        );
        let rows = republished.rows;
        self.after_stamp(republished.outbox, Vec::new());
        Ok(rows)
    }

    /// Queues every row of `tables` again (see `Command::RepublishTables`), after stamping what the app
    /// committed. One write transaction: the cost is that of the broker-loss repair, limited to these tables
    /// and rate-limited by the divergence checker.
    pub(super) fn republish_tables(&mut self, tables: BTreeSet<String>) -> Result<u64> {
        if !self.config.publish {
            return Ok(0); // a read replica's rows are all someone else's; they republish them
        }
        self.stamp_all();
        let settings = self.stamp_settings();
        let limit = self.busy_limit();
        let (conn, schema) = (&self.conn, &self.schema);
        let republished = with_busy_retry(limit, || {
            let tx = begin_write(conn, limit, "republishing divergent tables")?;
            let republished = republish_tables(&tx, schema, &settings, &tables)?;
            tx.commit().ctx("republishing divergent tables")?;
            Ok(republished)
        })?;
        info!(
            tables = ?tables,
            rows = republished.rows,
            messages = republished.outbox.len(),
            "rows of divergent tables queued for publishing again"
        );
        let rows = republished.rows;
        self.after_stamp(republished.outbox, Vec::new());
        Ok(rows)
    }

    pub(super) fn reject(&mut self, entry: OutboxEntry, reason: &str) {
        let rows: Vec<(String, Vec<u8>)> = match decode(&entry.payload) {
            Ok(batch) => batch
                .changes
                .iter()
                .map(|c| (c.table.clone(), pk_key(&c.pk)))
                .collect(),
            Err(_) => Vec::new(),
        };
        for (table, _) in &rows {
            error!(table = %table, reason, "a local change cannot be published and stays on this node only");
        }
        let result = (|| -> Result<()> {
            let tx = begin_write(&self.conn, self.busy_limit(), "recording a rejected change")?;
            for (table, pk) in &rows {
                library::record_rejected(&tx, table, pk, reason)?;
            }
            outbox::delete(&tx, &[entry.id])?;
            tx.commit().ctx("recording a rejected change")
        })();
        match result {
            Ok(()) => {
                self.outputs
                    .counters
                    .rejected_local
                    .inc_by(rows.len() as u64);
            }
            Err(err) => warn!(error = %err, "could not record a rejected change"),
        }
    }

    /// Deletes acknowledged outbox entries and stores own-message positions that no other write transaction
    /// took along.
    pub(super) fn store_deferred_writes(&mut self) {
        if self.acked.is_empty() && self.unsaved_positions.is_empty() {
            return;
        }
        let result = begin_write(
            &self.conn,
            self.busy_limit(),
            "deleting acknowledged outbox entries",
        )
        .and_then(|tx| {
            outbox::delete(&tx, &self.acked)?;
            positions::store_all(&tx, &self.unsaved_positions)?;
            tx.commit().ctx("deleting acknowledged outbox entries")
        });
        match result {
            Ok(()) => {
                self.acked.clear();
                self.deferred_since = None;
                self.unsaved_positions.clear();
                self.writes_since_checkpoint += 1;
            }
            // Harmless: they go with the next transaction; after a crash, entries are published again (and
            // de-duplicated by message id) and own messages received again.
            Err(err) => warn!(error = %err, "could not delete acknowledged outbox entries yet"),
        }
    }
}
