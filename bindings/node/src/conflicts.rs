//! The conflict log in JavaScript: the `Conflict` object that `conflicts()` resolves to and `onConflict`
//! callbacks receive.
//!
//! The core's structs are destructured without `..`, so a field added to `harmonylite::Conflict` or
//! `ConflictSide` stops this crate compiling until it is converted here; `test/conflicts.test.js` also
//! compares the objects' keys with the core's serde field names at run time.

use std::collections::BTreeMap;

use napi::bindgen_prelude::BigInt;
use napi_derive::napi;

use crate::events::{sql_value, SqlValue};

/// One side of a {@link Conflict}: who wrote it, when, and the values involved.
#[napi(object, object_from_js = false, use_nullable = true)]
pub struct ConflictSide {
    /// The node that wrote it.
    pub node: BigInt,
    /// Its hybrid-logical-clock stamp.
    pub hlc: BigInt,
    /// Column name to value (INTEGER as `bigint`, REAL as `number`, TEXT as `string`, BLOB as `Buffer`).
    #[napi(ts_type = "Record<string, null | bigint | number | string | Buffer>")]
    pub values: BTreeMap<String, SqlValue>,
}

impl From<harmonylite::ConflictSide> for ConflictSide {
    fn from(side: harmonylite::ConflictSide) -> ConflictSide {
        let harmonylite::ConflictSide { node, hlc, values } = side;
        ConflictSide {
            node: BigInt::from(node),
            hlc: BigInt::from(hlc),
            values: values
                .into_iter()
                .map(|(column, value)| (column, sql_value(value)))
                .collect(),
        }
    }
}

/// An entry of the conflict log: what a merge did not keep as it came (the loser of a concurrent edit, a
/// row moved off a colliding key, a change a local constraint refused), with both sides.
#[napi(object, object_from_js = false, use_nullable = true)]
pub struct Conflict {
    /// Position in this node's log (pass the last one seen as `after`).
    pub id: i64,
    /// When it was recorded, milliseconds since the epoch.
    pub at_ms: i64,
    /// The table the row belongs to.
    pub table: String,
    /// The row's primary-key values, in key order.
    #[napi(ts_type = "Array<null | bigint | number | string | Buffer>")]
    pub pk: Vec<SqlValue>,
    /// What happened: a received change lost (`change_lost`), a received change replaced values its
    /// writer had not seen (`values_overwritten`), a delete won over edits (`deleted_with_edits`), a row
    /// was moved to a fresh auto-assigned key (`key_moved`), a local constraint refused a change
    /// (`constraint`), changes of a table this node lacks were discarded because their node dropped it
    /// (`table_dropped`).
    #[napi(
        ts_type = "'change_lost' | 'values_overwritten' | 'deleted_with_edits' | 'key_moved' | 'constraint' | 'table_dropped'"
    )]
    pub kind: String,
    /// The columns involved.
    pub columns: Vec<String>,
    /// The side that was kept.
    pub winner: Option<ConflictSide>,
    /// The side that was not.
    pub loser: Option<ConflictSide>,
    /// The key the losing row now lives under (`key_moved`).
    #[napi(ts_type = "Array<null | bigint | number | string | Buffer>")]
    pub moved_to: Option<Vec<SqlValue>>,
    /// What happened, in words.
    pub detail: String,
}

impl From<harmonylite::Conflict> for Conflict {
    fn from(conflict: harmonylite::Conflict) -> Conflict {
        let harmonylite::Conflict {
            id,
            at_ms,
            table,
            pk,
            kind,
            columns,
            winner,
            loser,
            moved_to,
            detail,
        } = conflict;
        Conflict {
            id,
            at_ms: i64::try_from(at_ms).unwrap_or(i64::MAX),
            table,
            pk: pk.into_iter().map(sql_value).collect(),
            kind: kind.as_str().to_string(),
            columns,
            winner: winner.map(ConflictSide::from),
            loser: loser.map(ConflictSide::from),
            moved_to: moved_to.map(|key| key.into_iter().map(sql_value).collect()),
            detail,
        }
    }
}

/// What `conflicts()` reads: entries with an id above `after` (default 0, from the start), at most `limit`
/// of the newest of them (default 1000).
#[napi(object, object_to_js = false)]
pub struct ConflictsOptions {
    /// Only entries whose `id` is above this (default 0: from the start).
    pub after: Option<i64>,
    /// At most this many of the newest entries (default 1000).
    pub limit: Option<u32>,
}
