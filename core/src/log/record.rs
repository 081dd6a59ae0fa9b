//! What travels: row changes with their stamp, grouped into batches published as one message.

use serde::{Deserialize, Serialize};

use crate::clock::Hlc;

/// One SQLite value. Every storage class round-trips exactly (REAL bit for bit, all of i64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Value {
    /// Identity comparison: REAL by bits, so a value equals itself after a round trip.
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(value: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            // SQLite may hold invalid UTF-8 in TEXT; keep it lossless by carrying the bytes as a blob-less
            // text only when valid, else replace (never panic on disk content).
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Insert or update: `columns` holds the full row image.
    Upsert,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    pub table: String,
    pub op: Op,
    pub hlc: Hlc,
    /// Primary-key values in the table's primary-key order.
    pub pk: Vec<Value>,
    /// Column names and values of the row image (empty for deletes).
    pub columns: Vec<(String, Value)>,
}

/// The payload of one message: changes from one node, all of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub node_id: u64,
    pub changes: Vec<RowChange>,
}

/// Canonical bytes of a primary key, used as the key of the version table.
pub fn pk_key(pk: &[Value]) -> Vec<u8> {
    // Serializing a Vec of our own enum cannot fail; an empty key would only mean a bug elsewhere.
    rmp_serde::to_vec(pk).unwrap_or_default()
}

/// Stable shard of a row: FNV-1a over (table, canonical key), so every node routes a row the same way.
pub fn shard_of(table: &str, pk_bytes: &[u8], shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in table.bytes().chain([0u8]).chain(pk_bytes.iter().copied()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}
