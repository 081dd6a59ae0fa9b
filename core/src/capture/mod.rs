//! Capture: which tables replicate, the triggers that log their changes, and their removal.
//!
//! Triggers write only (table id, op, primary key) into the change log, inside the app's transaction; the
//! row image is read later, off the app's path, when the change is stamped. The triggers have no guard: the
//! library's own write transactions drop what they logged before committing ([`discard_own_changes`], ADR
//! 0009), so nothing echoes, and the app's connections need no custom SQL function and no `trusted_schema`.

pub mod commit_watch;
pub mod schema;
pub mod sql;
pub mod triggers;

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, OptionalExtension};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, Result, SqlContext};
use crate::log::Value;
pub use crate::state::{create_library_tables, CHANGE_LOG, MAX_PK_COLUMNS, PREFIX, TABLES};
pub use schema::{Schema, TableInfo};

/// Where the change log ends now (0 when empty).
///
/// The library's own writes (applying received changes, merging a snapshot) fire the capture triggers like
/// any other write. Everything logged after this mark inside one of its write transactions is its own — the
/// app cannot write while that transaction holds the lock — and [`discard_own_changes`] drops it before
/// commit, so it is never published back. The triggers therefore need no guard, and the app's writes pay
/// nothing for echo suppression.
pub fn change_log_mark(conn: &Connection) -> Result<i64> {
    conn.query_row(
        &format!("SELECT coalesce(max(seq), 0) FROM {CHANGE_LOG}"),
        [],
        |row| row.get(0),
    )
    .ctx("reading the end of the change log")
}

/// Drops what the library's own writes logged since `mark` (see [`change_log_mark`]).
pub fn discard_own_changes(conn: &Connection, mark: i64) -> Result<usize> {
    conn.prepare_cached(&format!("DELETE FROM {CHANGE_LOG} WHERE seq > ?1"))
        .and_then(|mut stmt| stmt.execute([mark]))
        .ctx("dropping the library's own changes from the change log")
}

/// Reads the replicated schema and makes the triggers match it: installs missing ones, replaces stale
/// ones, drops those of tables that are gone or no longer selected. Runs in one write transaction.
/// A read replica (`publish = false`) gets no triggers at all: it sends nothing.
pub fn install(conn: &mut Connection, config: &Config) -> Result<Schema> {
    install_holding(conn, config, &BTreeSet::new())
}

/// [`install`], leaving out the tables in `hold` (new tables not captured yet, see
/// [`registered_tables`]): they get no triggers and are not part of the schema returned.
pub fn install_holding(
    conn: &mut Connection,
    config: &Config,
    hold: &BTreeSet<String>,
) -> Result<Schema> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("starting capture install")?;
    let mut schema = Schema::read(&tx, config)?;
    schema.tables.retain(|name, _| !hold.contains(name));
    let existing: Vec<(String, String)> = tx
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\'")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("listing capture triggers")?;
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for table in schema.tables.values().filter(|_| config.publish) {
        let (id, new) = table_id(&tx, &table.name)?;
        let table_triggers = triggers::for_table(table, id);
        // Rows a table holds before its triggers exist are logged now, so every row reaches the cluster:
        // the rows of a database replicated for the first time (it seeds the cluster), and those a table
        // created while the app ran got before this install. A row whose replication state matches its
        // values is not sent again (the stamper compares).
        if new {
            backfill(&tx, table, id)?;
        } else if !table_triggers
            .iter()
            .any(|t| existing.iter().any(|(name, _)| *name == t.name))
        {
            // A known table without any of its triggers was dropped and created again: a rebuild (Django's
            // AlterField, sqlite-utils' `transform`: CREATE new__t, INSERT … SELECT, DROP t, RENAME). What
            // the app wrote between the rebuild's commit and this install was not captured.
            reconcile(&tx, table, id)?;
        }
        for trigger in table_triggers {
            wanted.insert(trigger.name, trigger.sql);
        }
    }
    // After the registrations above (a table registered here first would not count as new).
    for table in schema.tables.values_mut() {
        table.dropped_columns = crate::state::note_columns(&tx, &table.name, &table.columns)?;
    }
    crate::state::meta::mark_capture_installed(&tx)?;
    let mut changed = 0usize;
    for (name, sql) in &existing {
        if wanted.get(name) != Some(sql) {
            tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", sql::quote(name)))
                .ctx("dropping a stale capture trigger")?;
            changed += 1;
        }
    }
    for (name, sql) in &wanted {
        if !existing.iter().any(|(n, s)| n == name && s == sql) {
            tx.execute_batch(sql).map_err(|source| Error::Sqlite {
                context: format!("installing capture trigger {name}"),
                source,
            })?;
            changed += 1;
        }
    }
    // Installing triggers bumped the schema version. Read it while this transaction still holds the write
    // lock: read after commit, it could already include an app's CREATE TABLE this schema has not seen.
    schema.version = tx
        .query_row("PRAGMA schema_version", [], |row| row.get(0))
        .ctx("reading schema_version")?;
    tx.commit().ctx("committing capture install")?;
    if changed > 0 {
        info!(
            tables = schema.tables.len(),
            triggers_changed = changed,
            "capture installed"
        );
    }
    Ok(schema)
}

/// The tables capture has ever been installed on (a table not among them is new to this node).
pub fn registered_tables(conn: &Connection) -> Result<BTreeSet<String>> {
    conn.prepare_cached(&format!("SELECT name FROM {TABLES}"))
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<BTreeSet<String>>>()
        })
        .ctx("reading table ids")
}

/// Tables capture was installed on that the database no longer holds at all (dropped; a table left out
/// by the config still exists and is not among them).
pub fn gone_tables(conn: &Connection) -> Result<Vec<String>> {
    conn.prepare_cached(&format!(
        "SELECT name FROM {TABLES} WHERE name NOT IN (SELECT name FROM sqlite_master WHERE type = 'table')
         ORDER BY name"
    ))
    .and_then(|mut stmt| {
        stmt.query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()
    })
    .ctx("reading dropped tables")
}

/// The table's id in the registry, and whether it was just registered.
fn table_id(conn: &Connection, name: &str) -> Result<(i64, bool)> {
    let existing: Option<i64> = conn
        .query_row(
            &format!("SELECT id FROM {TABLES} WHERE name = ?1"),
            [name],
            |row| row.get(0),
        )
        .optional()
        .ctx("reading table ids")?;
    if let Some(id) = existing {
        return Ok((id, false));
    }
    conn.execute(
        &format!("INSERT INTO {TABLES}(name) VALUES (?1)"),
        params![name],
    )
    .ctx("registering a table")?;
    Ok((conn.last_insert_rowid(), true))
}

fn backfill(conn: &Connection, table: &TableInfo, id: i64) -> Result<()> {
    let slots: String = (0..table.pk.len()).map(|i| format!(", k{i}")).collect();
    let keys: String = table
        .pk
        .iter()
        .map(|c| format!(", {}", sql::quote(c)))
        .collect();
    let logged = conn
        .execute(
            &format!(
                "INSERT INTO {CHANGE_LOG}(tbl, op, at{slots}) SELECT {id}, {}, {}{keys} FROM {}",
                triggers::OP_INSERT,
                triggers::COMMIT_MILLIS,
                sql::quote(&table.name)
            ),
            [],
        )
        .ctx("logging the rows of a new table")?;
    if logged > 0 {
        info!(table = %table.name, rows = logged, "rows written before capture was installed are logged, to be sent to the cluster");
    }
    Ok(())
}

/// Brings a rebuilt table's changes into the log: every row it holds (the stamper sends only those whose
/// values differ from their replication state, so the rebuild itself sends nothing), and a delete for
/// every row the state says exists but the table no longer holds.
fn reconcile(conn: &Connection, table: &TableInfo, id: i64) -> Result<()> {
    let slots: String = (0..table.pk.len()).map(|i| format!(", k{i}")).collect();
    let keys: String = table
        .pk
        .iter()
        .map(|c| format!(", {}", sql::quote(c)))
        .collect();
    conn.execute(
        &format!(
            "INSERT INTO {CHANGE_LOG}(tbl, op, at{slots}) SELECT {id}, {}, {}{keys} FROM {}",
            triggers::OP_INSERT,
            triggers::COMMIT_MILLIS,
            sql::quote(&table.name)
        ),
        [],
    )
    .ctx("logging the rows of a rebuilt table")?;
    let mut deleted = 0usize;
    for (bytes, state) in crate::state::rows::for_table(conn, &table.name)? {
        if !state.exists() {
            continue;
        }
        let Some(pk) = crate::log::pk_from_key(&bytes) else {
            continue;
        };
        let present: bool = conn
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {})",
                sql::quote(&table.name),
                sql::key_filter(&table.pk)
            ))
            .and_then(|mut stmt| {
                stmt.query_row(rusqlite::params_from_iter(pk.iter()), |row| row.get(0))
            })
            .ctx("reading a rebuilt table")?;
        if !present {
            log_local_change(conn, &table.name, triggers::OP_DELETE, &pk)?;
            deleted += 1;
        }
    }
    info!(table = %table.name, deleted, "table rebuilt: its rows are compared with their replication state, so what was written during the rebuild is sent");
    Ok(())
}

/// Logs a change the library itself makes on the app's behalf (a row moved to a fresh key, a child that
/// follows it): like an app's write, it is stamped and published. Call after [`discard_own_changes`].
pub fn log_local_change(conn: &Connection, table: &str, op: i64, pk: &[Value]) -> Result<()> {
    let (id, _) = table_id(conn, table)?;
    let slots: String = (0..pk.len()).map(|i| format!(", k{i}")).collect();
    let values: String = (0..pk.len()).map(|i| format!(", ?{}", i + 3)).collect();
    let sql = format!(
        "INSERT INTO {CHANGE_LOG}(tbl, op, at{slots}) VALUES (?1, ?2, {}{values})",
        triggers::COMMIT_MILLIS
    );
    let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&id, &op];
    for value in pk {
        bound.push(value);
    }
    conn.prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(bound.as_slice()))
        .ctx("logging a change made for the app")?;
    Ok(())
}

/// Removes every trigger and table the library created, and nothing else (HarmonyLite's `-cleanup`).
pub fn cleanup(conn: &mut Connection) -> Result<usize> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .ctx("starting cleanup")?;
    let objects: Vec<(String, String)> = tx
        .prepare(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'index', 'table')
             AND name LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\' ORDER BY type = 'table'",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("listing library objects")?;
    for (kind, name) in &objects {
        let statement = match kind.as_str() {
            "trigger" => "DROP TRIGGER",
            "index" => "DROP INDEX",
            _ => "DROP TABLE",
        };
        tx.execute_batch(&format!("{statement} IF EXISTS {}", sql::quote(name)))
            .ctx("dropping a library object")?;
    }
    // AUTOINCREMENT left a row in SQLite's own sqlite_sequence (a table SQLite does not let anyone drop).
    let has_sequence: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence')",
            [],
            |r| r.get(0),
        )
        .ctx("cleaning sqlite_sequence")?;
    if has_sequence {
        tx.execute(
            "DELETE FROM sqlite_sequence WHERE name LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\'",
            [],
        )
        .ctx("cleaning sqlite_sequence")?;
    }
    tx.commit().ctx("committing cleanup")?;
    if objects.is_empty() {
        warn!("cleanup: nothing to remove");
    }
    Ok(objects.len())
}
