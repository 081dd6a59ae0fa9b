//! The database thread keeps up with the app's schema: capture follows new and changed tables (after a
//! short grace for probe tables), dropped tables are announced, and parked changes retried when a
//! migration has settled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tracing::{error, info, warn};

use super::DbWorker;
use crate::capture;
use crate::clock::Clock;
use crate::connection::begin_write;
use crate::error::{Result, SqlContext};
use crate::publish::{stamp, OutboxEntry};
use crate::state::{self as library, outbox};

/// A table created while the replica runs is captured once it has existed this long. Tools create and
/// drop probe tables outside any transaction (sqlite-utils: `t<random hex>` with one row, to test for
/// upsert support): captured at once, such a table's row went out, and every other node kept it waiting
/// for a table that never comes. Rows written meanwhile are not missed: a table's existing rows are
/// logged when it is first captured.
const NEW_TABLE_GRACE: Duration = Duration::from_millis(500);
/// While a migration tool migrates (its bookkeeping table changes with the schema), parked changes are
/// retried only once the schema has been still this long. A migration tool runs its own steps right after the schema change that unblocks them (Django's
/// post_migrate reads which content types and permissions exist and inserts the missing ones): received
/// rows applied in between made its INSERT fail on a UNIQUE constraint. Applied after it, identical rows
/// merge as one.
const SCHEMA_SETTLE: Duration = Duration::from_secs(2);

impl DbWorker {
    pub(super) fn refresh_schema_if_changed(&mut self) -> Result<bool> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA schema_version", [], |row| row.get(0))
            .ctx("reading schema_version")?;
        if version == self.schema.version {
            return Ok(false);
        }
        let hold = self.tables_to_hold()?;
        let schema = capture::install_holding(&mut self.conn, &self.config, &hold)?;
        for refused in &schema.refused {
            error!(error = %refused, "table not replicated");
        }
        self.schema = schema;
        self.announce_dropped_tables();
        // Changes that waited for this schema may apply now; while a migration tool is at work (its
        // bookkeeping changed with the schema), once it has finished (`SCHEMA_SETTLE`).
        let migrations = migration_bookkeeping(&self.conn);
        if migrations != self.migrations_seen {
            self.migrations_seen = migrations;
            self.settle_until = Instant::now() + SCHEMA_SETTLE;
        }
        self.retry_parked(None);
        Ok(true)
    }

    /// Announces, once each, the replicated tables the app dropped here (ADR 0016), so that nodes lacking
    /// them stop keeping this node's changes of them waiting; a table created again is forgotten as dropped
    /// (a later drop is announced anew). A read replica announces nothing: it sent nothing.
    pub(super) fn announce_dropped_tables(&mut self) {
        if !self.config.publish {
            return;
        }
        self.announce_drops_owed = false;
        /// The tables announced now, their messages, and the clock after stamping them.
        type Announced = (Vec<String>, Vec<OutboxEntry>, Clock);
        let result = (|| -> Result<Option<Announced>> {
            let gone = capture::gone_tables(&self.conn)?;
            let announced = library::dropped::tables_of(&self.conn, self.node_id)?;
            let new: Vec<String> = gone
                .iter()
                .filter(|table| !announced.iter().any(|(done, _)| done == *table))
                .cloned()
                .collect();
            let back: Vec<&String> = announced
                .iter()
                .map(|(table, _)| table)
                .filter(|table| !gone.contains(table))
                .collect();
            if new.is_empty() && back.is_empty() {
                return Ok(None);
            }
            let settings = self.stamp_settings();
            let tx = begin_write(&self.conn, self.busy_limit(), "announcing dropped tables")?;
            for table in back {
                library::dropped::forget(&tx, table, self.node_id)?;
            }
            let mut clock = self.clock;
            let queued = stamp::stamp_dropped_tables(&tx, &mut clock, &settings, &new)?;
            outbox::delete(&tx, &self.acked)?;
            tx.commit().ctx("announcing dropped tables")?;
            Ok(Some((new, queued, clock)))
        })();
        match result {
            Ok(None) => {}
            Ok(Some((tables, queued, clock))) => {
                self.acked.clear();
                self.clock = clock;
                if !tables.is_empty() {
                    info!(tables = ?tables, "replicated tables dropped here; announced to the other nodes");
                }
                self.after_stamp(queued, Vec::new());
            }
            Err(err) => {
                self.announce_drops_owed = true;
                warn!(error = %err, "announcing dropped tables failed; will retry");
            }
        }
    }

    /// Ends the grace of new tables (`sync()`, close): everything committed so far goes out.
    pub(super) fn capture_new_tables_now(&mut self) {
        if self.schema_recheck_at.is_some() {
            self.capture_now = true;
            self.schema.version = -1;
        }
    }

    /// The new tables still in their `NEW_TABLE_GRACE`, and when the next one is due.
    pub(super) fn tables_to_hold(&mut self) -> Result<BTreeSet<String>> {
        if std::mem::take(&mut self.capture_now) {
            self.schema_recheck_at = None;
            return Ok(BTreeSet::new());
        }
        let present = capture::Schema::read(&self.conn, &self.config)?;
        let registered = capture::registered_tables(&self.conn)?;
        let now = Instant::now();
        self.new_tables
            .retain(|name, _| present.tables.contains_key(name) && !registered.contains(name));
        let mut hold = BTreeSet::new();
        let mut next: Option<Instant> = None;
        for name in present.tables.keys().filter(|n| !registered.contains(*n)) {
            let due = *self.new_tables.entry(name.clone()).or_insert(now) + NEW_TABLE_GRACE;
            if now < due {
                hold.insert(name.clone());
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        self.schema_recheck_at = next;
        Ok(hold)
    }
}

/// How many rows the migration tools' bookkeeping tables hold (it changes as a tool migrates).
pub(super) fn migration_bookkeeping(conn: &Connection) -> i64 {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .unwrap_or_default();
    tables
        .iter()
        .filter(|t| crate::config::migration_tool(t).is_some())
        .map(|t| {
            conn.query_row(
                &format!("SELECT count(*) FROM {}", capture::sql::quote(t)),
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap_or(0)
        })
        .sum()
}
