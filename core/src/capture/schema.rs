//! Schema introspection: the tables that replicate, their columns and primary keys.

use std::collections::BTreeMap;

use rusqlite::Connection;
use tracing::info;

use super::{MAX_PK_COLUMNS, PREFIX};
use crate::config::Config;
use crate::error::{Error, Result, SqlContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// Writable columns in declaration order (generated and hidden columns left out).
    pub columns: Vec<String>,
    /// Primary-key columns in key order.
    pub pk: Vec<String>,
}

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
        let listed: Vec<(String, String)> = conn
            .prepare("SELECT name, type FROM pragma_table_list WHERE schema = 'main'")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .ctx("listing tables")?;
        let mut tables = BTreeMap::new();
        let mut refused = Vec::new();
        for (name, kind) in listed {
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
            match read_table(conn, &name) {
                Ok(info) => {
                    tables.insert(name, info);
                }
                Err(err @ (Error::NoPrimaryKey { .. } | Error::SchemaMismatch { .. })) => {
                    refused.push(err)
                }
                Err(other) => return Err(other),
            }
        }
        Ok(Schema {
            tables,
            version,
            refused,
        })
    }
}

pub fn read_table(conn: &Connection, name: &str) -> Result<TableInfo> {
    let mut columns = Vec::new();
    let mut pk: Vec<(i64, String)> = Vec::new();
    let rows: Vec<(String, i64, i64)> = conn
        .prepare("SELECT name, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")
        .and_then(|mut stmt| {
            stmt.query_map([name], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading table columns")?;
    for (column, pk_position, hidden) in rows {
        if hidden != 0 {
            continue;
        }
        if pk_position > 0 {
            pk.push((pk_position, column.clone()));
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
    Ok(TableInfo {
        name: name.to_string(),
        columns,
        pk: pk.into_iter().map(|(_, column)| column).collect(),
    })
}
