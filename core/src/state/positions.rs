//! `__harmonylite__positions`: the stream position applied per shard, stored in the same transaction as
//! the rows it applied (exactly-once effect).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Result, SqlContext};

pub fn read_all(conn: &Connection) -> Result<BTreeMap<u32, u64>> {
    conn.prepare_cached("SELECT shard, seq FROM __harmonylite__positions")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u32,
                    row.get::<_, i64>(1)?.max(0) as u64,
                ))
            })?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()
        })
        .ctx("reading stream positions")
}

pub fn read(conn: &Connection, shard: u32) -> Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM __harmonylite__positions WHERE shard = ?1")
        .and_then(|mut stmt| stmt.query_row([shard], |row| row.get(0)).optional())
        .ctx("reading the stream position")?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

pub fn store(conn: &Connection, shard: u32, seq: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO __harmonylite__positions(shard, seq) VALUES (?1, ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![shard, seq as i64]))
    .ctx("storing the stream position")?;
    Ok(())
}

pub fn store_all(conn: &Connection, positions: &BTreeMap<u32, u64>) -> Result<()> {
    for (shard, seq) in positions {
        store(conn, *shard, *seq)?;
    }
    Ok(())
}
