//! What travels: row changes with their stamp and row identity, grouped into batches published as one
//! message (format 2: column-level changes, see ADR 0011).

use serde::{Deserialize, Serialize};

use crate::clock::{Hlc, Version};

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
            // `from_utf8` first: its check is much faster than the lossy decoder's, which only the
            // (rare) invalid text needs; the result is the same.
            ValueRef::Text(t) => Value::Text(match std::str::from_utf8(t) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(t).into_owned(),
            }),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A new incarnation of the row: `columns` holds its full image.
    Insert,
    /// Some columns of an existing incarnation changed: `columns` holds only those.
    Update,
    /// The incarnation was deleted: `columns` is empty.
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    pub table: String,
    pub op: Op,
    /// This change's stamp; with the batch's node it is the change's version.
    pub hlc: Hlc,
    /// The row's causal length after this change (odd: it exists, even: deleted).
    pub cl: u64,
    /// The incarnation the change belongs to (the version of the insert that created it).
    pub born: Version,
    /// Hash of that insert's full image ([`image_hash`]).
    pub born_hash: u64,
    /// The insert that started the row's current life (equal to `born` until the key is deleted and
    /// created again): on a table with auto-assigned keys, two lives created independently under one key
    /// are two rows.
    pub life: Version,
    /// The newest version of the changed columns the writer held before writing (None for inserts and
    /// deletes of rows it never saw): a stored value newer than this was not seen, so losing it is a conflict.
    pub seen: Option<Version>,
    /// Primary-key values in the table's primary-key order.
    pub pk: Vec<Value>,
    /// Column names and values: the full image of an insert, the changed columns of an update.
    pub columns: Vec<(String, Value)>,
}

/// The payload of one message: changes from one node, all of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub node_id: u64,
    pub changes: Vec<RowChange>,
    /// Replicated tables this node dropped, each once, after the changes above (ADR 0016): a node that
    /// lacks such a table stops keeping this node's earlier changes of it waiting for a table that will
    /// not come. Absent in messages of libraries that predate it.
    #[serde(default)]
    pub dropped: Vec<TableDropped>,
}

impl Batch {
    /// A batch of row changes only.
    pub fn of_changes(node_id: u64, changes: Vec<RowChange>) -> Batch {
        Batch {
            node_id,
            changes,
            dropped: Vec::new(),
        }
    }
}

/// A replicated table that its node dropped (`DROP TABLE` committed, the table absent at a later schema
/// check), stamped like a change: every change of it the node made is older.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDropped {
    pub table: String,
    pub hlc: Hlc,
}

/// A value's hash: storage class and bytes (REAL by bits), xxh3 — the same on every platform and node.
pub fn value_hash(value: &Value) -> u64 {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    match value {
        Value::Null => 0x9e37_79b9_7f4a_7c15,
        Value::Integer(i) => xxh3_64_with_seed(&i.to_le_bytes(), 1),
        Value::Real(f) => xxh3_64_with_seed(&f.to_bits().to_le_bytes(), 2),
        Value::Text(t) => xxh3_64_with_seed(t.as_bytes(), 3),
        Value::Blob(b) => xxh3_64_with_seed(b, 4),
    }
}

/// Hash of a full row image, independent of column order: two nodes that inserted identical rows get the
/// same hash whatever order their columns were declared in.
pub fn image_hash<'a>(columns: impl Iterator<Item = (&'a str, u64)>) -> u64 {
    let mut sum = 0u64;
    for (name, hash) in columns {
        let named = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), hash);
        sum = sum.wrapping_add(named.rotate_left(7) ^ named);
    }
    sum
}

/// Canonical bytes of a primary key, used as the key of the version table.
pub fn pk_key(pk: &[Value]) -> Vec<u8> {
    // Serializing a Vec of our own enum cannot fail; an empty key would only mean a bug elsewhere.
    rmp_serde::to_vec(pk).unwrap_or_default()
}

/// The key back from [`pk_key`]'s bytes (None when they are not such bytes).
pub fn pk_from_key(bytes: &[u8]) -> Option<Vec<Value>> {
    rmp_serde::from_slice(bytes).ok()
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
