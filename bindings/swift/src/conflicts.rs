//! The conflict log handed to Swift: the `Conflict` record (`Replica.conflicts()`), and its delivery as it is
//! recorded through a callback interface that the Swift layer turns into `conflictStream` (as `changes`).
//!
//! The core's structs are destructured without `..`: a field added to `harmonylite::Conflict` or
//! `ConflictSide` stops this crate compiling until it is converted here (`StatusFieldTests` also compares
//! the records with the core's serde output).

use std::collections::HashMap;

use crate::events::Value;

/// What a conflict-log entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ConflictKind {
    /// A received change lost to newer values for some columns (`loser`: the received values).
    ChangeLost,
    /// A received change replaced values its writer had not seen (`loser`: the values replaced).
    ValuesOverwritten,
    /// A delete removed a row holding edits its writer had not seen, or an edit arrived for a row deleted
    /// concurrently (the delete wins; `loser`: the edit).
    DeletedWithEdits,
    /// Two nodes created different rows under one auto-assigned key; the later one was moved to `movedTo`.
    KeyMoved,
    /// A received change conflicts with a local UNIQUE / NOT NULL / CHECK constraint; the row created first
    /// keeps the value and the other waits until the blocking data changes.
    Constraint,
    /// Changes of a table this node lacks, from a node that has dropped the table since: discarded, as they
    /// could never apply. One entry per table and node (`pk` empty, `detail` says how many).
    TableDropped,
}

impl From<harmonylite::ConflictKind> for ConflictKind {
    fn from(kind: harmonylite::ConflictKind) -> ConflictKind {
        match kind {
            harmonylite::ConflictKind::ChangeLost => ConflictKind::ChangeLost,
            harmonylite::ConflictKind::ValuesOverwritten => ConflictKind::ValuesOverwritten,
            harmonylite::ConflictKind::DeletedWithEdits => ConflictKind::DeletedWithEdits,
            harmonylite::ConflictKind::KeyMoved => ConflictKind::KeyMoved,
            harmonylite::ConflictKind::Constraint => ConflictKind::Constraint,
            harmonylite::ConflictKind::TableDropped => ConflictKind::TableDropped,
        }
    }
}

/// One side of a conflict: who wrote it, when, and the values involved (column name to value).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConflictSide {
    pub node: u64,
    pub hlc: u64,
    pub values: HashMap<String, Value>,
}

impl From<harmonylite::ConflictSide> for ConflictSide {
    fn from(side: harmonylite::ConflictSide) -> ConflictSide {
        let harmonylite::ConflictSide { node, hlc, values } = side;
        ConflictSide {
            node,
            hlc,
            values: values
                .into_iter()
                .map(|(column, value)| (column, value.into()))
                .collect(),
        }
    }
}

/// An entry of the conflict log: what a merge did not keep as it came, with both sides.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Conflict {
    /// Position in this node's log (pass the last one seen as `after`).
    pub id: i64,
    /// When it was recorded, milliseconds since the epoch.
    pub at_ms: u64,
    pub table: String,
    /// The row's primary-key values, in key order.
    pub pk: Vec<Value>,
    pub kind: ConflictKind,
    /// The columns involved.
    pub columns: Vec<String>,
    /// The side that was kept.
    pub winner: Option<ConflictSide>,
    /// The side that was not.
    pub loser: Option<ConflictSide>,
    /// The key the losing row now lives under (`keyMoved`).
    pub moved_to: Option<Vec<Value>>,
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
            at_ms,
            table,
            pk: pk.into_iter().map(Value::from).collect(),
            kind: kind.into(),
            columns,
            winner: winner.map(ConflictSide::from),
            loser: loser.map(ConflictSide::from),
            moved_to: moved_to.map(|key| key.into_iter().map(Value::from).collect()),
            detail,
        }
    }
}

/// The kind's stable name, shared with the other languages: `change_lost`, `values_overwritten`, ...
#[uniffi::export(name = "native_conflict_kind_name")]
pub fn conflict_kind_name(kind: ConflictKind) -> String {
    let core = match kind {
        ConflictKind::ChangeLost => harmonylite::ConflictKind::ChangeLost,
        ConflictKind::ValuesOverwritten => harmonylite::ConflictKind::ValuesOverwritten,
        ConflictKind::DeletedWithEdits => harmonylite::ConflictKind::DeletedWithEdits,
        ConflictKind::KeyMoved => harmonylite::ConflictKind::KeyMoved,
        ConflictKind::Constraint => harmonylite::ConflictKind::Constraint,
        ConflictKind::TableDropped => harmonylite::ConflictKind::TableDropped,
    };
    core.as_str().to_string()
}

/// Implemented in Swift. Called on a core runtime thread, one conflict at a time, so it must return quickly.
#[uniffi::export(callback_interface)]
pub trait NativeConflictListener: Send + Sync {
    fn on_conflict(&self, conflict: Conflict);
    /// No more conflicts: the replica was closed or released.
    fn on_end(&self);
}
