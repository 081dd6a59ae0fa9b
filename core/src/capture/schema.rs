//! Schema introspection: the tables that replicate, their columns and primary keys.

use std::collections::BTreeMap;

use rusqlite::Connection;
use tracing::info;

use super::sql::{key_filter, quote};
use super::{MAX_PK_COLUMNS, PREFIX};
use crate::config::{Config, TableMerge};
use crate::error::{Error, Result, SqlContext};
use crate::log::Value;

/// How a table merges concurrent updates (`[tables] merge`, ADR 0011): column by column, or whole rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    Column,
    Row,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// Writable columns in declaration order (generated and hidden columns left out).
    pub columns: Vec<String>,
    /// Primary-key columns in key order.
    pub pk: Vec<String>,
    /// The key is one `INTEGER PRIMARY KEY` column (the rowid): apps let SQLite assign it, so two nodes
    /// can create different rows under one key, and such a collision moves one of them (ADR 0011).
    pub auto_key: bool,
    /// Key columns that accept NULL (an old SQLite quirk of non-integer keys); the capture refuses NULL
    /// in them, since such a key cannot identify a row on another node.
    pub nullable_pk: Vec<String>,
    /// Columns of other tables that reference this table's key by a declared foreign key: (table, column).
    pub referenced_by: Vec<(String, String)>,
    /// This table's single-column foreign keys to the key of another replicated table: (column, parent).
    /// A received row whose parent row waits here (parked) waits with it (`apply::applier`).
    pub parents: Vec<(String, String)>,
    /// Column sets of the table's UNIQUE constraints other than the key.
    pub unique: Vec<Vec<String>>,
    pub merge: MergeMode,
    /// Hash of each column's declared default, evaluated (NULL when none): a column added by a migration
    /// holds it in every old row, and a row whose state predates the column is not "changed" by holding it.
    pub default_hashes: Vec<u64>,
    /// Columns this node's table had and dropped since (`ALTER TABLE … DROP COLUMN`, a rebuild without
    /// them): a received change still carrying one (from a node not migrated yet) applies without it.
    pub dropped_columns: Vec<String>,
    /// The statements the per-row paths run, built once per schema read.
    pub sql: TableSql,
}

/// SQL text for one table. Stamping and applying run these for every row; building them with `format!` per
/// row was a quarter of the database thread's time in bench W3 (allocation and formatting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSql {
    /// Every column of one row, by key (the row image read at stamp time).
    pub select_row: String,
    /// Upsert of a change that carries exactly `columns`, in order (the usual case: same schema everywhere).
    pub upsert_all_columns: String,
    pub delete_row: String,
    /// `INSERT` of every column, in order (a row received whole).
    pub insert_row: String,
    /// `SELECT max(key) + MOVED_KEY_GAP`, for a table with an auto-assigned key (a fresh key for a moved
    /// row).
    pub next_key: Option<String>,
}

impl TableInfo {
    pub fn new(name: String, columns: Vec<String>, pk: Vec<String>) -> TableInfo {
        let all: Vec<&str> = columns.iter().map(String::as_str).collect();
        let sql = TableSql {
            select_row: format!(
                "SELECT {} FROM {} WHERE {}",
                all.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
                quote(&name),
                key_filter(&pk)
            ),
            upsert_all_columns: upsert_sql(&name, &all, &pk),
            delete_row: format!("DELETE FROM {} WHERE {}", quote(&name), key_filter(&pk)),
            insert_row: insert_sql(&name, &all),
            next_key: (pk.len() == 1).then(|| {
                format!(
                    "SELECT coalesce(max({k}), 0) + {MOVED_KEY_GAP} FROM {t}",
                    k = quote(&pk[0]),
                    t = quote(&name)
                )
            }),
        };
        TableInfo {
            name,
            columns,
            pk,
            auto_key: false,
            nullable_pk: Vec::new(),
            referenced_by: Vec::new(),
            parents: Vec::new(),
            unique: Vec::new(),
            merge: MergeMode::Column,
            default_hashes: Vec::new(),
            dropped_columns: Vec::new(),
            sql,
        }
    }

    /// True when `names` are this table's columns, in order.
    pub fn has_columns_in_order<'a>(&self, names: impl ExactSizeIterator<Item = &'a str>) -> bool {
        names.len() == self.columns.len() && names.zip(&self.columns).all(|(a, b)| a == b)
    }

    pub fn is_key_column(&self, column: &str) -> bool {
        self.pk.iter().any(|k| k == column)
    }
}

/// `UPDATE t SET "a" = ?1, … WHERE key IS ?n…`: the values first, then the key.
pub fn update_sql(table: &str, columns: &[&str], pk: &[String]) -> String {
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", quote(c), i + 1))
        .collect();
    let key: Vec<String> = pk
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} IS ?{}", quote(c), columns.len() + i + 1))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        quote(table),
        sets.join(", "),
        key.join(" AND ")
    )
}

/// `INSERT INTO t(cols) VALUES (…)`: a fresh row (the caller removed any row under its key first).
pub fn insert_sql(table: &str, columns: &[&str]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {}({}) VALUES ({})",
        quote(table),
        names.join(", "),
        placeholders.join(", ")
    )
}

/// `INSERT INTO t(cols) VALUES (?1, …) ON CONFLICT(key) DO UPDATE SET` every non-key column (or `DO
/// NOTHING` when all are key columns).
pub fn upsert_sql(table: &str, columns: &[&str], pk: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let key = pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let updates: Vec<String> = columns
        .iter()
        .filter(|name| !pk.iter().any(|k| k == *name))
        .map(|name| format!("{q} = excluded.{q}", q = quote(name)))
        .collect();
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {}({}) VALUES ({}) ON CONFLICT({key}) {on_conflict}",
        quote(table),
        names.join(", "),
        placeholders.join(", ")
    )
}

/// How far past the highest key a moved row lands: an app that assigns ids itself, counting up, does not
/// meet the moved row with its next INSERT (SQLite's own next rowid is past it either way).
pub const MOVED_KEY_GAP: i64 = 65_537;

#[derive(Debug, Default)]
pub struct Schema {
    pub tables: BTreeMap<String, TableInfo>,
    /// `PRAGMA schema_version` when this was read; a different value means: read again.
    pub version: i64,
    /// Selected tables that cannot replicate (no primary key, too wide a key), with the error.
    pub refused: Vec<Error>,
}

impl Schema {
    /// Reads the tables selected by config. A selected table that cannot replicate is listed in `refused`.
    pub fn read(conn: &Connection, config: &Config) -> Result<Schema> {
        let version: i64 = conn
            .query_row("PRAGMA schema_version", [], |row| row.get(0))
            .ctx("reading schema_version")?;
        let listed: Vec<(String, String, bool)> = conn
            .prepare("SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .ctx("listing tables")?;
        let mut tables = BTreeMap::new();
        let mut refused = Vec::new();
        for (name, kind, without_rowid) in listed {
            if name.starts_with("sqlite_") || name.starts_with(PREFIX) {
                continue;
            }
            if kind != "table" {
                if kind == "virtual" || kind == "shadow" {
                    info!(table = %name, kind = %kind, "not replicated: virtual tables and their shadow tables are node-local indexes");
                }
                continue;
            }
            if !config.table_selected(&name) {
                continue;
            }
            match read_table(conn, &name, without_rowid) {
                Ok(mut info) => {
                    if config.tables.merge.get(&name) == Some(&TableMerge::Row) {
                        info.merge = MergeMode::Row;
                    }
                    tables.insert(name, info);
                }
                Err(err @ (Error::NoPrimaryKey { .. } | Error::SchemaMismatch { .. })) => {
                    refused.push(err)
                }
                Err(other) => return Err(other),
            }
        }
        link_foreign_keys(conn, &mut tables)?;
        Ok(Schema {
            tables,
            version,
            refused,
        })
    }
}

/// Records, on each replicated table, the single-column foreign keys of other replicated tables that
/// reference its key (a moved row takes its children along).
fn link_foreign_keys(conn: &Connection, tables: &mut BTreeMap<String, TableInfo>) -> Result<()> {
    let mut links: Vec<(String, String, String, Option<String>)> = Vec::new();
    for child in tables.keys() {
        let keys: Vec<(i64, i64, String, String, Option<String>)> = conn
            .prepare("SELECT id, seq, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1)")
            .and_then(|mut stmt| {
                stmt.query_map([child], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .ctx("reading foreign keys")?;
        for (id, _, parent, from, to) in &keys {
            if keys.iter().filter(|k| k.0 == *id).count() != 1 {
                continue; // composite foreign keys cannot follow a moved single-column key
            }
            links.push((parent.clone(), child.clone(), from.clone(), to.clone()));
        }
    }
    for (parent, child, column, to) in links {
        let Some(table) = tables.get_mut(&parent) else {
            continue;
        };
        if table.pk.len() != 1 {
            continue;
        }
        let to_key = to.as_ref().is_none_or(|to| *to == table.pk[0]);
        table.referenced_by.push((child.clone(), column.clone()));
        if to_key {
            if let Some(child) = tables.get_mut(&child) {
                child.parents.push((column, parent));
            }
        }
    }
    Ok(())
}

pub fn read_table(conn: &Connection, name: &str, without_rowid: bool) -> Result<TableInfo> {
    let mut columns = Vec::new();
    let mut pk: Vec<(i64, String)> = Vec::new();
    let mut nullable_pk = Vec::new();
    let mut integer_key = false;
    let rows: Vec<(String, String, bool, Option<String>, i64, i64)> = conn
        .prepare(
            "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
        )
        .and_then(|mut stmt| {
            stmt.query_map([name], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading table columns")?;
    let mut defaults = Vec::new();
    for (column, declared_type, not_null, default, pk_position, hidden) in rows {
        if hidden != 0 {
            continue;
        }
        // The schema's own default expression (SQLite requires a constant one for an added column).
        defaults.push(crate::log::value_hash(
            &default
                .and_then(|expression| {
                    conn.query_row(&format!("SELECT {expression}"), [], |row| {
                        row.get_ref(0).map(Value::from)
                    })
                    .ok()
                })
                .unwrap_or(Value::Null),
        ));
        if pk_position > 0 {
            pk.push((pk_position, column.clone()));
            integer_key = declared_type.eq_ignore_ascii_case("INTEGER");
            // Rowid keys and WITHOUT ROWID tables refuse NULL keys themselves.
            if !not_null && !without_rowid {
                nullable_pk.push(column.clone());
            }
        }
        columns.push(column);
    }
    if pk.is_empty() {
        return Err(Error::NoPrimaryKey {
            table: name.to_string(),
        });
    }
    if pk.len() > MAX_PK_COLUMNS {
        return Err(Error::SchemaMismatch {
            table: name.to_string(),
            reason: format!(
                "its primary key has {} columns; at most {MAX_PK_COLUMNS} are supported",
                pk.len()
            ),
        });
    }
    pk.sort();
    let single_key = pk.len() == 1;
    let mut table = TableInfo::new(
        name.to_string(),
        columns,
        pk.into_iter().map(|(_, column)| column).collect(),
    );
    // An INTEGER PRIMARY KEY of a rowid table is the rowid: the key SQLite assigns when the app gives none.
    table.auto_key = single_key && integer_key && !without_rowid;
    if single_key && table.auto_key {
        nullable_pk.clear();
    }
    table.nullable_pk = nullable_pk;
    table.default_hashes = defaults;
    table.unique = unique_constraints(conn, name)?;
    Ok(table)
}

/// Column sets of the table's UNIQUE indexes other than the primary key (expression indexes left out).
fn unique_constraints(conn: &Connection, table: &str) -> Result<Vec<Vec<String>>> {
    let indexes: Vec<(String, String)> = conn
        .prepare("SELECT name, origin FROM pragma_index_list(?1) WHERE \"unique\" = 1")
        .and_then(|mut stmt| {
            stmt.query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading unique indexes")?;
    let mut sets = Vec::new();
    for (index, origin) in indexes {
        if origin == "pk" {
            continue;
        }
        let columns: Vec<Option<String>> = conn
            .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
            .and_then(|mut stmt| {
                stmt.query_map([&index], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .ctx("reading unique indexes")?;
        if let Some(columns) = columns.into_iter().collect::<Option<Vec<String>>>() {
            if !columns.is_empty() {
                sets.push(columns);
            }
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prebuilt_statements_select_upsert_and_delete_by_key() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "CREATE TABLE \"odd \"\"t\"(a INTEGER, \"b c\" TEXT, v TEXT, PRIMARY KEY(\"b c\", a))",
        )
        .expect("schema");
        let table = read_table(&conn, "odd \"t", false).expect("table");
        // Key order, not column order: the select and delete take ("b c", a).
        assert_eq!(table.pk, vec!["b c", "a"]);
        let all = (1, "k", "first");
        conn.execute(&table.sql.upsert_all_columns, (all.0, all.1, all.2))
            .expect("insert");
        conn.execute(&table.sql.upsert_all_columns, (1, "k", "second"))
            .expect("update on conflict");
        // A sender that does not know column `v` yet: its own statement, leaving `v` alone.
        assert!(!table.has_columns_in_order(["a", "b c"].into_iter()));
        conn.execute(&upsert_sql(&table.name, &["a", "b c"], &table.pk), (1, "k"))
            .expect("partial upsert");
        let v: String = conn
            .query_row(&table.sql.select_row, ("k", 1), |r| r.get(2))
            .expect("select");
        assert_eq!(v, "second");
        assert_eq!(
            conn.execute(&table.sql.delete_row, ("k", 1))
                .expect("delete"),
            1
        );
    }
}
