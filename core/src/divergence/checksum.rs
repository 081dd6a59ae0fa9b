//! One round's checksums, read on a connection of the checker's own, in one read transaction (WAL: it never
//! takes the write lock, and neither the app nor the database thread waits for it).
//!
//! What is hashed is what the cluster must agree on: the user tables' rows, every replicated column, by the
//! engine's value hash (`log::value_hash`: storage class and bytes, REAL by bits, xxh3 — the same on every
//! machine). Each row's hash covers its columns by name, so the declaration order does not matter; the
//! table's digest is the sum of its rows' 128-bit hashes, so the scan order does not matter either (no
//! ORDER BY, no index needed, no collation that could order two nodes' keys differently). Row states
//! (`__harmonylite__rows`) are not hashed: what must be equal is the data, and a row changed behind the
//! engine's back shows only there.
//!
//! A round is taken only when this node's tables hold nothing another node cannot have yet: no local change
//! captured or unacknowledged, and every shard applied up to the stream's last message (so this node's own
//! acknowledged messages, which its tables already reflect, are within the positions it reports).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::report::TableSum;
use crate::capture::{self, sql::quote, Schema, TableInfo};
use crate::config::Config;
use crate::error::{Result, SqlContext};
use crate::log::{value_hash, Value};
use crate::state::{self as library, parked, positions};

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// Nothing comparable now, and why (local changes unsent, behind the stream).
    Skipped(String),
    /// Taken; `reused` when the database had not changed since the last round taken, whose checksums
    /// these are.
    Taken {
        positions: Vec<u64>,
        tables: BTreeMap<String, TableSum>,
        reused: bool,
    },
}

/// The checker's read-only connection and the last round it took.
pub struct ChecksumSource {
    conn: Connection,
    config: Config,
    /// `PRAGMA data_version` at the last round taken, with its result: the same value means no connection
    /// committed since, so the checksums are the same too (the cost of a quiet round is a few reads).
    last: Option<(i64, Vec<u64>, BTreeMap<String, TableSum>)>,
}

impl ChecksumSource {
    pub fn open(db: &Path, config: &Config) -> Result<ChecksumSource> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ctx("opening the database for the divergence check")?;
        crate::connection::set_busy_timeout(
            &conn,
            Duration::from_millis(config.apply.busy_timeout_ms),
        )
        .ctx("setting busy_timeout")?;
        Ok(ChecksumSource {
            conn,
            config: config.clone(),
            last: None,
        })
    }

    /// Takes a round. `stream_last`: each shard's last stream sequence, asked from the server just before;
    /// `acknowledged`: the highest sequence per shard JetStream acknowledged to this node's publisher, read
    /// once the transaction's snapshot is fixed (it then covers every local change the snapshot holds).
    pub fn take(
        &mut self,
        stream_last: &BTreeMap<u32, u64>,
        acknowledged: impl FnOnce() -> BTreeMap<u32, u64>,
    ) -> Result<Round> {
        let shards = self.config.replication_log.shards;
        // Outside WAL a read transaction blocks every writer for as long as it lasts.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .ctx("reading the journal mode")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(Round::Skipped(format!(
                "the database is in {mode} mode, where reading every table would block the app's writes"
            )));
        }
        let tx = self
            .conn
            .unchecked_transaction()
            .ctx("starting the divergence check's read transaction")?;
        // The first read fixes the snapshot; everything after reads the same one.
        let stored = positions::read_all(&tx)?;
        let data_version: i64 = tx
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .ctx("reading data_version")?;
        let positions: Vec<u64> = (0..shards)
            .map(|shard| stored.get(&shard).copied().unwrap_or(0))
            .collect();
        if library::has_unsent_local_changes(&tx)? {
            return Ok(Round::Skipped("local changes not sent yet".into()));
        }
        let acknowledged = acknowledged();
        for (shard, applied) in positions.iter().enumerate() {
            let shard = shard as u32;
            let needed = stream_last
                .get(&shard)
                .copied()
                .unwrap_or(0)
                .max(acknowledged.get(&shard).copied().unwrap_or(0));
            if *applied < needed {
                return Ok(Round::Skipped(format!(
                    "shard {shard} applied up to {applied}, the stream holds {needed}"
                )));
            }
        }
        if let Some((version, last_positions, tables)) = &self.last {
            if *version == data_version && *last_positions == positions {
                return Ok(Round::Taken {
                    positions,
                    tables: tables.clone(),
                    reused: true,
                });
            }
        }
        let schema = Schema::read(&tx, &self.config)?;
        let registered = capture::registered_tables(&tx)?;
        let parked = parked::tables(&tx)?;
        let rejected = library::rejected_tables(&tx)?;
        let mut tables = BTreeMap::new();
        for info in schema.tables.values() {
            // A table in its first moments (not captured yet) replicates nothing so far.
            if !registered.contains(&info.name) {
                continue;
            }
            let sum = if parked.contains(&info.name) {
                TableSum::NotComparable {
                    reason: "received changes wait here (parked)".into(),
                }
            } else if rejected.contains(&info.name) {
                TableSum::NotComparable {
                    reason: "local changes could not be published".into(),
                }
            } else {
                table_sum(&tx, info)?
            };
            tables.insert(info.name.clone(), sum);
        }
        drop(tx);
        self.last = Some((data_version, positions.clone(), tables.clone()));
        Ok(Round::Taken {
            positions,
            tables,
            reused: false,
        })
    }
}

/// A table's checksum: its columns' fingerprint, its row count, and the sum of its rows' hashes.
fn table_sum(conn: &Connection, info: &TableInfo) -> Result<TableSum> {
    // Columns by name (SQLite compares names ASCII case-insensitively): two nodes that declared them in
    // different orders, or added them by migrations in different orders, hash alike.
    let mut columns: Vec<(String, &String)> = info
        .columns
        .iter()
        .map(|name| (name.to_ascii_lowercase(), name))
        .collect();
    columns.sort();
    let declared = declared_types(conn, &info.name)?;
    let mut fingerprint = Vec::new();
    for (lower, name) in &columns {
        let key_position = info.pk.iter().position(|k| k == *name).map_or(0, |i| i + 1);
        let declared_type = declared.get(*name).map(String::as_str).unwrap_or("");
        fingerprint.extend_from_slice(lower.as_bytes());
        fingerprint.push(0);
        fingerprint.extend_from_slice(declared_type.to_ascii_uppercase().trim().as_bytes());
        fingerprint.push(0);
        fingerprint.extend_from_slice(&(key_position as u32).to_le_bytes());
    }
    let select = format!(
        "SELECT {} FROM {}",
        columns
            .iter()
            .map(|(_, name)| quote(name))
            .collect::<Vec<_>>()
            .join(", "),
        quote(&info.name)
    );
    let mut stmt = conn.prepare(&select).ctx("reading a table's rows")?;
    let mut rows = stmt.query([]).ctx("reading a table's rows")?;
    let mut count = 0u64;
    let mut digest = 0u128;
    let mut buffer = Vec::with_capacity(64 * columns.len());
    while let Some(row) = rows.next().ctx("reading a table's rows")? {
        buffer.clear();
        for (i, (lower, _)) in columns.iter().enumerate() {
            let value = Value::from(row.get_ref(i).ctx("reading a table's rows")?);
            buffer.extend_from_slice(lower.as_bytes());
            buffer.push(0);
            buffer.extend_from_slice(&value_hash(&value).to_le_bytes());
        }
        digest = digest.wrapping_add(xxhash_rust::xxh3::xxh3_128(&buffer));
        count += 1;
    }
    Ok(TableSum::Sum {
        columns: xxhash_rust::xxh3::xxh3_64(&fingerprint),
        rows: count,
        digest: format!("{digest:032x}"),
    })
}

/// Declared type of each column, as written in the schema.
fn declared_types(conn: &Connection, table: &str) -> Result<BTreeMap<String, String>> {
    conn.prepare_cached("SELECT name, type FROM pragma_table_xinfo(?1)")
        .and_then(|mut stmt| {
            stmt.query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<BTreeMap<String, String>>>()
        })
        .ctx("reading a table's columns")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(schema: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .expect("WAL, as the engine sets it");
        conn.execute_batch(schema).expect("schema");
        capture::create_library_tables(&conn).expect("library tables");
        capture::install(&mut conn, &Config::default()).expect("install");
        // The first install logs existing rows; what is logged here was never sent.
        conn.execute_batch("DELETE FROM __harmonylite__change_log")
            .expect("empty log");
        (dir, path)
    }

    fn sums(path: &Path) -> BTreeMap<String, TableSum> {
        let mut source = ChecksumSource::open(path, &Config::default()).expect("source");
        match source.take(&BTreeMap::new(), BTreeMap::new).expect("round") {
            Round::Taken { tables, .. } => tables,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn equal_data_sums_alike_whatever_the_column_and_row_order() {
        let (_a, a) = database(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL);
             INSERT INTO t VALUES (1, 'x', 1.5), (2, 'y', NULL);",
        );
        let (_b, b) = database(
            "CREATE TABLE t(score REAL, name TEXT, id INTEGER PRIMARY KEY);
             INSERT INTO t(id, name, score) VALUES (2, 'y', NULL), (1, 'x', 1.5);",
        );
        assert_eq!(sums(&a), sums(&b));
    }

    #[test]
    fn swapped_values_a_missing_row_and_skewed_columns_show() {
        let (_a, a) = database(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x'), (2, 'y');",
        );
        let (_b, b) = database(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'y'), (2, 'x');",
        );
        let (_c, c) = database(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, extra TEXT); INSERT INTO t VALUES (1, 'x', NULL), (2, 'y', NULL);",
        );
        let (sa, sb, sc) = (sums(&a), sums(&b), sums(&c));
        let parts = |s: &BTreeMap<String, TableSum>| match s.get("t") {
            Some(TableSum::Sum {
                columns,
                rows,
                digest,
            }) => (*columns, *rows, digest.clone()),
            other => panic!("{other:?}"),
        };
        let (ca, ra, da) = parts(&sa);
        let (cb, rb, db) = parts(&sb);
        let (cc, _, _) = parts(&sc);
        assert_eq!((ca, ra), (cb, rb));
        assert_ne!(da, db, "values swapped between rows must change the digest");
        assert_ne!(ca, cc, "a column on one node only changes the fingerprint");
        Connection::open(&a)
            .expect("open")
            .execute_batch("DELETE FROM t WHERE id = 2; DELETE FROM __harmonylite__change_log;")
            .expect("delete");
        assert_ne!(parts(&sums(&a)).1, rb);
    }

    #[test]
    fn a_database_outside_wal_is_not_read_whole() {
        let (_a, a) = database("CREATE TABLE t(id INTEGER PRIMARY KEY);");
        Connection::open(&a)
            .expect("open")
            .execute_batch("PRAGMA journal_mode = DELETE;")
            .expect("rollback journal");
        let mut source = ChecksumSource::open(&a, &Config::default()).expect("source");
        assert!(matches!(
            source.take(&BTreeMap::new(), BTreeMap::new).expect("round"),
            Round::Skipped(reason) if reason.contains("delete mode")
        ));
    }

    #[test]
    fn unsent_changes_or_a_stream_ahead_skip_the_round_and_an_unchanged_file_is_reused() {
        let (_a, a) = database("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
        let mut source = ChecksumSource::open(&a, &Config::default()).expect("source");
        let behind = BTreeMap::from([(0u32, 5u64)]);
        assert!(matches!(
            source.take(&behind, BTreeMap::new).expect("round"),
            Round::Skipped(_)
        ));
        assert!(matches!(
            source
                .take(&BTreeMap::new(), || behind.clone())
                .expect("round"),
            Round::Skipped(_)
        ));
        assert!(matches!(
            source.take(&BTreeMap::new(), BTreeMap::new).expect("round"),
            Round::Taken { reused: false, .. }
        ));
        assert!(matches!(
            source.take(&BTreeMap::new(), BTreeMap::new).expect("round"),
            Round::Taken { reused: true, .. }
        ));
        Connection::open(&a)
            .expect("open")
            .execute_batch("INSERT INTO t VALUES (1, 'x')")
            .expect("insert");
        assert!(matches!(
            source.take(&BTreeMap::new(), BTreeMap::new).expect("round"),
            Round::Skipped(reason) if reason.contains("local changes")
        ));
    }
}
