//! The library's own tables (`__harmonylite__*`): every statement that reads or writes them lives in this
//! module and its children, so their layout exists once.
//!
//! | table | what |
//! |---|---|
//! | `meta` | node id, clock high-water mark, capture and state-format markers |
//! | `tables` | table name ↔ id used in the change log |
//! | `change_log` | captured (table id, op, commit time, key) entries, written by the triggers |
//! | `rows` | each row's replication state: causal length, incarnation, per-column versions and hashes |
//! | `outbox` | stamped messages not yet acknowledged |
//! | `positions` | applied stream position per shard |
//! | `deferred` | received changes parked until the schema or the blocking data allows them |
//! | `conflicts` | bounded log of merge losers, moved keys and constraint resolutions |
//! | `dead_letters` | received messages that could not be applied (undecodable, or refused by `[signing]`), tried again at each start |
//! | `rejected` | local changes that cannot be published |
//! | `dropped` | replicated tables each node dropped, and when |

pub mod conflicts;
pub mod dropped;
pub mod meta;
pub mod outbox;
pub mod parked;
pub mod positions;
pub mod rows;

use rusqlite::Connection;
use tracing::{info, warn};

use crate::error::{Result, SqlContext};

/// Prefix of every object the library creates; `cleanup` removes exactly these. (The outbox uses
/// AUTOINCREMENT: its ids must never repeat, since read-your-writes progress is tracked by id.)
pub const PREFIX: &str = "__harmonylite__";
pub const CHANGE_LOG: &str = "__harmonylite__change_log";
pub const TABLES: &str = "__harmonylite__tables";
/// Most primary-key columns a table may have (the change log has this many key slots).
pub const MAX_PK_COLUMNS: usize = 8;
/// Layout of the library's tables. 2: per-column row state (`rows`) replaced row versions (`versions`),
/// the change log records commit times, parked changes record their kind. 3: the row state is keyed by
/// (pk, tbl), not (tbl, pk) — see [`rekey_row_state`]. 4: each outbox message records its newest clock
/// (`newest`, part of its message id), so reopening does not decode every queued payload.
const STATE_FORMAT: i64 = 4;

/// Creates the library's own tables if missing and upgrades an older layout. Idempotent.
pub fn create_library_tables(conn: &Connection) -> Result<()> {
    let key_columns: String = (0..MAX_PK_COLUMNS).map(|i| format!(", k{i}")).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS __harmonylite__meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {TABLES}(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         CREATE TABLE IF NOT EXISTS {CHANGE_LOG}(seq INTEGER PRIMARY KEY, tbl INTEGER NOT NULL,
             op INTEGER NOT NULL, at INTEGER{key_columns});
         DROP TABLE IF EXISTS __harmonylite__applying;
         CREATE TABLE IF NOT EXISTS __harmonylite__rows(tbl TEXT NOT NULL, pk BLOB NOT NULL,
             cl INTEGER NOT NULL, born_hlc INTEGER NOT NULL, born_node INTEGER NOT NULL,
             born_hash INTEGER NOT NULL, hlc INTEGER NOT NULL, node INTEGER NOT NULL, cols BLOB,
             life_hlc INTEGER, life_node INTEGER, PRIMARY KEY(pk, tbl)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS __harmonylite__outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, shard INTEGER NOT NULL,
             rows INTEGER NOT NULL, payload BLOB NOT NULL, newest INTEGER);
         CREATE TABLE IF NOT EXISTS __harmonylite__positions(shard INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS __harmonylite__deferred(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL,
             reason TEXT NOT NULL, change BLOB NOT NULL, kind TEXT NOT NULL DEFAULT 'schema',
             at INTEGER NOT NULL DEFAULT 0, pk BLOB);
         CREATE INDEX IF NOT EXISTS __harmonylite__deferred_key ON __harmonylite__deferred(tbl, pk);
         CREATE TABLE IF NOT EXISTS __harmonylite__conflicts(id INTEGER PRIMARY KEY, at INTEGER NOT NULL,
             tbl TEXT NOT NULL, pk BLOB NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL, record BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS __harmonylite__dead_letters(id INTEGER PRIMARY KEY, shard INTEGER NOT NULL,
             seq INTEGER NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS __harmonylite__rejected(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL,
             pk BLOB NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS __harmonylite__dropped(tbl TEXT NOT NULL, node INTEGER NOT NULL,
             hlc INTEGER NOT NULL, PRIMARY KEY(tbl, node)) WITHOUT ROWID;"
    ))
    .ctx("creating the library's tables")?;
    let has_known_columns: bool = conn
        .query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{TABLES}') WHERE name = 'known_columns')"),
            [],
            |row| row.get(0),
        )
        .ctx("reading the library's tables")?;
    if !has_known_columns {
        // Every column each table has had here, so a column dropped here is told from one not added yet.
        conn.execute_batch(&format!(
            "ALTER TABLE {TABLES} ADD COLUMN known_columns TEXT"
        ))
        .ctx("upgrading the table registry")?;
    }
    upgrade(conn)
}

/// Records `columns` among the columns `table` has had here; returns those it had and no longer has.
pub fn note_columns(conn: &Connection, table: &str, columns: &[String]) -> Result<Vec<String>> {
    let stored: Option<String> = conn
        .prepare_cached(&format!(
            "SELECT known_columns FROM {TABLES} WHERE name = ?1"
        ))
        .and_then(|mut stmt| {
            use rusqlite::OptionalExtension;
            stmt.query_row([table], |row| row.get::<_, Option<String>>(0))
                .optional()
        })
        .ctx("reading the table registry")?
        .flatten();
    let mut known: Vec<String> = stored
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let dropped: Vec<String> = known
        .iter()
        .filter(|column| !columns.contains(column))
        .cloned()
        .collect();
    let before = known.len();
    for column in columns {
        if !known.contains(column) {
            known.push(column.clone());
        }
    }
    if known.len() != before {
        let text = serde_json::to_string(&known).unwrap_or_default();
        conn.prepare_cached(&format!(
            "INSERT INTO {TABLES}(name, known_columns) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET known_columns = excluded.known_columns"
        ))
        .and_then(|mut stmt| stmt.execute(rusqlite::params![table, text]))
        .ctx("updating the table registry")?;
    }
    Ok(dropped)
}

/// Brings a database written by the format-1 library (row-level versions) to the current layout.
fn upgrade(conn: &Connection) -> Result<()> {
    let format = meta::get(conn, "state_format")?.unwrap_or(0);
    if format >= STATE_FORMAT {
        return Ok(());
    }
    let has_column = |table: &str, column: &str| -> Result<bool> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |row| row.get(0),
        )
        .ctx("reading the library's tables")
    };
    if !has_column(CHANGE_LOG, "at")? {
        conn.execute_batch(&format!("ALTER TABLE {CHANGE_LOG} ADD COLUMN at INTEGER"))
            .ctx("upgrading the change log")?;
    }
    if !has_column("__harmonylite__outbox", "newest")? {
        // Messages queued before: NULL, and their clock is read from the payload when they are loaded.
        conn.execute_batch("ALTER TABLE __harmonylite__outbox ADD COLUMN newest INTEGER")
            .ctx("upgrading the outbox")?;
    }
    if !has_column("__harmonylite__deferred", "kind")? {
        // Format-1 parked changes are in the old wire form: they cannot be read any more.
        let dropped: i64 = conn
            .query_row("SELECT count(*) FROM __harmonylite__deferred", [], |r| {
                r.get(0)
            })
            .ctx("upgrading parked changes")?;
        if dropped > 0 {
            warn!(
                dropped,
                "parked changes of the previous storage format dropped on upgrade"
            );
        }
        conn.execute_batch(
            "DROP TABLE __harmonylite__deferred;
             CREATE TABLE __harmonylite__deferred(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL,
                 reason TEXT NOT NULL, change BLOB NOT NULL, kind TEXT NOT NULL DEFAULT 'schema',
                 at INTEGER NOT NULL DEFAULT 0, pk BLOB);
             CREATE INDEX __harmonylite__deferred_key ON __harmonylite__deferred(tbl, pk);",
        )
        .ctx("upgrading parked changes")?;
    }
    let old_versions: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '__harmonylite__versions')",
            [],
            |r| r.get(0),
        )
        .ctx("reading the library's tables")?;
    if old_versions {
        // A row version becomes the row's incarnation and last change; its columns carry no hash yet, so
        // the next local change of such a row is sent with every column.
        let moved = conn
            .execute(
                "INSERT OR IGNORE INTO __harmonylite__rows(tbl, pk, cl, born_hlc, born_node, born_hash, hlc, node, cols)
                 SELECT tbl, pk, CASE WHEN deleted THEN 2 ELSE 1 END, hlc, node, 0, hlc, node, NULL
                 FROM __harmonylite__versions",
                [],
            )
            .ctx("upgrading row versions")?;
        conn.execute_batch("DROP TABLE __harmonylite__versions")
            .ctx("upgrading row versions")?;
        info!(rows = moved, "row versions upgraded to per-column state");
    }
    rekey_row_state(conn)?;
    meta::set(conn, "state_format", STATE_FORMAT)
}

/// Format 3 keys `__harmonylite__rows` by (pk, tbl). Every change reads and writes its row's state, and
/// with the table name first each B-tree step compared the name (equal in nearly every step) before the
/// key: the text comparisons were a twelfth of the work of stamping or applying a row. With the key first,
/// the comparison is usually decided by its first bytes. Rebuilt in one savepoint: all or nothing.
fn rekey_row_state(conn: &Connection) -> Result<()> {
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '__harmonylite__rows'",
            [],
            |row| row.get(0),
        )
        .ctx("reading the library's tables")?;
    if !sql.contains("PRIMARY KEY(tbl, pk)") {
        return Ok(());
    }
    let columns =
        "tbl, pk, cl, born_hlc, born_node, born_hash, hlc, node, cols, life_hlc, life_node";
    conn.execute_batch(&format!(
        "SAVEPOINT hl_rekey;
         CREATE TABLE __harmonylite__rows_rekeyed(tbl TEXT NOT NULL, pk BLOB NOT NULL,
             cl INTEGER NOT NULL, born_hlc INTEGER NOT NULL, born_node INTEGER NOT NULL,
             born_hash INTEGER NOT NULL, hlc INTEGER NOT NULL, node INTEGER NOT NULL, cols BLOB,
             life_hlc INTEGER, life_node INTEGER, PRIMARY KEY(pk, tbl)) WITHOUT ROWID;
         INSERT INTO __harmonylite__rows_rekeyed({columns}) SELECT {columns} FROM __harmonylite__rows;
         DROP TABLE __harmonylite__rows;
         ALTER TABLE __harmonylite__rows_rekeyed RENAME TO __harmonylite__rows;
         RELEASE hl_rekey;"
    ))
    .inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK TO hl_rekey; RELEASE hl_rekey;");
    })
    .ctx("re-keying the row state (state format 3)")?;
    info!("row state re-keyed by (pk, tbl)");
    Ok(())
}

/// What `status()` reads from the library's tables.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub pending_changes: u64,
    pub outbox_messages: u64,
    pub outbox_rows: u64,
    pub rejected_local: u64,
    pub dead_lettered: u64,
    pub conflicts: u64,
}

pub fn counts(conn: &Connection) -> Result<Counts> {
    let count = |sql: &str| -> Result<u64> {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)))
            .ctx("reading status")
            .map(|n| n.max(0) as u64)
    };
    Ok(Counts {
        pending_changes: count(&format!("SELECT count(*) FROM {CHANGE_LOG}"))?,
        outbox_messages: count("SELECT count(*) FROM __harmonylite__outbox")?,
        outbox_rows: count("SELECT coalesce(sum(rows), 0) FROM __harmonylite__outbox")?,
        rejected_local: count("SELECT count(*) FROM __harmonylite__rejected")?,
        dead_lettered: count("SELECT count(*) FROM __harmonylite__dead_letters")?,
        conflicts: count("SELECT count(*) FROM __harmonylite__conflicts")?,
    })
}

/// Whether this node holds local changes no other node can have yet: captured and not stamped, or stamped
/// and not acknowledged by JetStream. (The divergence check compares only tables that cannot hold such
/// writes.)
pub fn has_unsent_local_changes(conn: &Connection) -> Result<bool> {
    conn.prepare_cached(&format!(
        "SELECT EXISTS (SELECT 1 FROM {CHANGE_LOG}) OR EXISTS (SELECT 1 FROM __harmonylite__outbox)"
    ))
    .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
    .ctx("reading whether local changes wait")
}

/// Tables with local changes that could not be published: their rows differ from the other nodes' for a
/// reason `status().rejected_local` already reports, and no republish can mend.
pub fn rejected_tables(conn: &Connection) -> Result<std::collections::BTreeSet<String>> {
    conn.prepare_cached("SELECT DISTINCT tbl FROM __harmonylite__rejected")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<std::collections::BTreeSet<String>>>()
        })
        .ctx("reading rejected changes")
}

/// Records a message that could not be decoded.
pub fn record_dead_letter(conn: &Connection, shard: u32, seq: u64, reason: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO __harmonylite__dead_letters(shard, seq, reason, at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(rusqlite::params![
            shard,
            seq as i64,
            reason,
            crate::clock::wall_millis() as i64
        ])
    })
    .ctx("recording a dead letter")?;
    Ok(())
}

/// A message of a shard's stream that could not be applied when it arrived (`dead_letters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: u64,
    /// When it was first refused (this node's wall clock, ms since the epoch).
    pub at_ms: u64,
}

/// The dead letters of `shard`, oldest first, at most `limit` of them.
pub fn dead_letters(conn: &Connection, shard: u32, limit: usize) -> Result<Vec<DeadLetter>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, min(at) FROM __harmonylite__dead_letters WHERE shard = ?1
             GROUP BY seq ORDER BY seq LIMIT ?2",
        )
        .ctx("reading the dead letters")?;
    let rows = stmt
        .query_map(rusqlite::params![shard, limit as i64], |row| {
            Ok(DeadLetter {
                seq: row.get::<_, i64>(0)? as u64,
                at_ms: row.get::<_, i64>(1)? as u64,
            })
        })
        .ctx("reading the dead letters")?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .ctx("reading the dead letters")
}

/// Forgets the dead letter of `shard` at `seq`: its message was applied on a later try.
pub fn forget_dead_letter(conn: &Connection, shard: u32, seq: u64) -> Result<()> {
    conn.prepare_cached("DELETE FROM __harmonylite__dead_letters WHERE shard = ?1 AND seq = ?2")
        .and_then(|mut stmt| stmt.execute(rusqlite::params![shard, seq as i64]))
        .ctx("forgetting a dead letter")?;
    Ok(())
}

/// Records a local change that cannot be published (too large for the server, or a key that cannot
/// identify a row elsewhere).
pub fn record_rejected(conn: &Connection, table: &str, pk: &[u8], reason: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO __harmonylite__rejected(tbl, pk, reason, at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(rusqlite::params![
            table,
            pk,
            reason,
            crate::clock::wall_millis() as i64
        ])
    })
    .ctx("recording a rejected change")?;
    Ok(())
}

/// Empties what is specific to one node before a snapshot copy leaves it (its queues, records and identity).
/// Parked changes stay: a node restoring the copy replays the stream only after the positions it records,
/// so the changes parked before them would otherwise be lost to it.
pub fn strip_node_state(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "DELETE FROM {CHANGE_LOG}; DELETE FROM __harmonylite__outbox;
         DELETE FROM __harmonylite__dead_letters;
         DELETE FROM __harmonylite__rejected; DELETE FROM __harmonylite__conflicts;
         DELETE FROM __harmonylite__meta WHERE key = 'node_id';"
    ))
    .ctx("stripping node state from the snapshot")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format-2 database (row state keyed by (tbl, pk)) is re-keyed at open, its states all kept.
    #[test]
    fn a_format_2_row_state_is_rekeyed_and_kept() {
        let conn = Connection::open_in_memory().expect("open");
        create_library_tables(&conn).expect("tables");
        // Back to the format-2 layout, with states of two tables.
        conn.execute_batch(
            "DROP TABLE __harmonylite__rows;
             CREATE TABLE __harmonylite__rows(tbl TEXT NOT NULL, pk BLOB NOT NULL,
                 cl INTEGER NOT NULL, born_hlc INTEGER NOT NULL, born_node INTEGER NOT NULL,
                 born_hash INTEGER NOT NULL, hlc INTEGER NOT NULL, node INTEGER NOT NULL, cols BLOB,
                 life_hlc INTEGER, life_node INTEGER, PRIMARY KEY(tbl, pk)) WITHOUT ROWID;
             INSERT INTO __harmonylite__rows VALUES ('a', x'01', 1, 10, 1, 7, 11, 1, x'00', 10, 1);
             INSERT INTO __harmonylite__rows VALUES ('b', x'01', 2, 20, 2, 8, 21, 2, NULL, 20, 2);
             UPDATE __harmonylite__meta SET value = 2 WHERE key = 'state_format';",
        )
        .expect("format 2");
        let before = dump(&conn);
        create_library_tables(&conn).expect("upgrade");
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = '__harmonylite__rows'",
                [],
                |row| row.get(0),
            )
            .expect("sql");
        assert!(sql.contains("PRIMARY KEY(pk, tbl)"), "{sql}");
        assert_eq!(dump(&conn), before);
        assert_eq!(
            meta::get(&conn, "state_format").expect("format"),
            Some(STATE_FORMAT)
        );
        // Idempotent: a second open changes nothing.
        create_library_tables(&conn).expect("again");
        assert_eq!(dump(&conn), before);
    }

    /// A format-3 outbox (no `newest`) gains the column at open; its queued messages are kept, clock unknown.
    #[test]
    fn a_format_3_outbox_gains_the_newest_clock_column_and_keeps_its_messages() {
        let conn = Connection::open_in_memory().expect("open");
        create_library_tables(&conn).expect("tables");
        conn.execute_batch(
            "DROP TABLE __harmonylite__outbox;
             CREATE TABLE __harmonylite__outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, shard INTEGER NOT NULL,
                 rows INTEGER NOT NULL, payload BLOB NOT NULL);
             INSERT INTO __harmonylite__outbox(shard, rows, payload) VALUES (2, 5, x'0102');
             UPDATE __harmonylite__meta SET value = 3 WHERE key = 'state_format';",
        )
        .expect("format 3");
        create_library_tables(&conn).expect("upgrade");
        let queued = outbox::load(&conn).expect("load");
        assert_eq!(queued.len(), 1);
        let kept = &queued[0];
        assert_eq!((kept.shard, kept.rows, kept.newest), (2, 5, None));
        assert_eq!(kept.payload, vec![1, 2]);
        let id = outbox::insert(&conn, 0, 1, Some(7), b"x").expect("insert");
        let newest = outbox::load(&conn)
            .expect("load")
            .into_iter()
            .find(|q| q.id == id);
        assert_eq!(newest.and_then(|q| q.newest), Some(7));
    }

    fn dump(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT quote(tbl), quote(pk), cl, born_hlc, born_node, born_hash, hlc, node, quote(cols), life_hlc, life_node FROM __harmonylite__rows ORDER BY tbl, pk")
            .expect("prepare");
        stmt.query_map([], |row| {
            Ok((0..11)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<rusqlite::Result<Vec<_>>>()?
                .join("|"))
        })
        .expect("query")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("rows")
    }
}
