//! The benchmark table and what the "app" does to it: plain SQLite statements on its own connection,
//! WAL and `synchronous=NORMAL`, one prepared statement per operation.

use std::path::Path;
use std::time::Duration;

use harmonylite::log::{encode, Batch, Op, RowChange, Value};
use rusqlite::{params, Connection};

use crate::sys::{Ctx, Res};

pub const TABLE: &str = "items";
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY,
    grp INTEGER NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);";
/// Bytes of `body`: a small, typical row (about 130 bytes with the other columns).
pub const BODY_LEN: usize = 100;

pub const INSERT: &str = "INSERT INTO items(id, grp, name, body) VALUES (?1, ?2, ?3, ?4)";
pub const UPDATE: &str = "UPDATE items SET grp = grp + 1, body = ?2 WHERE id = ?1";
pub const DELETE: &str = "DELETE FROM items WHERE id = ?1";

/// Pseudo-random text (so zstd does not make the payload unrealistically small), the same for an id
/// on every run.
pub fn body(id: i64, salt: u64) -> String {
    body_sized(id, salt, BODY_LEN)
}

/// `body` of any length (W5 fills a large database with rows of about 1 KB).
pub fn body_sized(id: i64, salt: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
    let mut state = (id as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

pub fn name(id: i64) -> String {
    format!("item-{id:08}")
}

/// The app's connection: the settings the comparison is made at.
pub fn app_connection(db: &Path) -> Res<Connection> {
    let conn = Connection::open(db).ctx("opening the app connection")?;
    conn.busy_timeout(Duration::from_secs(30))
        .ctx("setting busy_timeout")?;
    let _mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .ctx("enabling WAL")?;
    conn.execute_batch("PRAGMA synchronous = NORMAL;")
        .ctx("setting synchronous")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub fn insert_row(conn: &Connection, id: i64) -> Res<()> {
    insert_sized_row(conn, id, BODY_LEN)
}

fn insert_sized_row(conn: &Connection, id: i64, body_len: usize) -> Res<()> {
    conn.prepare_cached(INSERT)
        .and_then(|mut stmt| {
            stmt.execute(params![id, id % 97, name(id), body_sized(id, 0, body_len)])
        })
        .ctx("insert")?;
    Ok(())
}

/// Inserts `count` rows from `start` in transactions of `tx_rows` (1 = autocommit, one row each), each
/// with a `body_len`-byte body.
pub fn insert_rows(
    conn: &mut Connection,
    start: i64,
    count: usize,
    tx_rows: usize,
    body_len: usize,
) -> Res<()> {
    let mut id = start;
    let end = start + count as i64;
    while id < end {
        let upto = (id + tx_rows.max(1) as i64).min(end);
        if tx_rows <= 1 {
            insert_sized_row(conn, id, body_len)?;
        } else {
            let tx = conn.transaction().ctx("begin")?;
            for row in id..upto {
                insert_sized_row(&tx, row, body_len)?;
            }
            tx.commit().ctx("commit")?;
        }
        id = upto;
    }
    Ok(())
}

/// Row count and an FNV-1a hash of `[lo, hi)` in key order, as the app would read it.
pub fn checksum(conn: &Connection, lo: i64, hi: i64) -> Res<(u64, String)> {
    let mut stmt = conn
        .prepare("SELECT id, grp, name, body FROM items WHERE id >= ?1 AND id < ?2 ORDER BY id")
        .ctx("checksum query")?;
    let mut rows = stmt.query([lo, hi]).ctx("checksum query")?;
    let mut count = 0u64;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    while let Some(row) = rows.next().ctx("checksum row")? {
        count += 1;
        let id: i64 = row.get(0).ctx("checksum id")?;
        let grp: i64 = row.get(1).ctx("checksum grp")?;
        let name: String = row.get(2).ctx("checksum name")?;
        let body: String = row.get(3).ctx("checksum body")?;
        for byte in format!("{id}|{grp}|{name}|{body}\n").bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok((count, format!("{hash:016x}")))
}

/// The bytes the engine publishes for one of these rows alone in a message (its codec, compression on):
/// the payload size of the raw JetStream baselines.
pub fn one_row_message_bytes() -> usize {
    let id = 123_456;
    let change = RowChange {
        table: TABLE.into(),
        op: Op::Insert,
        hlc: 1 << 40,
        cl: 1,
        born: harmonylite::clock::Version {
            hlc: 1 << 40,
            node: 1,
        },
        born_hash: 0,
        life: harmonylite::clock::Version {
            hlc: 1 << 40,
            node: 1,
        },
        seen: None,
        pk: vec![Value::Integer(id)],
        columns: vec![
            ("id".into(), Value::Integer(id)),
            ("grp".into(), Value::Integer(id % 97)),
            ("name".into(), Value::Text(name(id))),
            ("body".into(), Value::Text(body(id, 0))),
        ],
    };
    encode(&Batch::of_changes(1, vec![change]), true).len()
}
