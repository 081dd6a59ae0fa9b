//! The conflict log handed to Swift: the `Conflict` record (`Replica.conflicts()`, expanded from the core's
//! list in `records.rs`), and its delivery as it is recorded through a callback interface that the Swift
//! layer turns into `conflictStream` (as `changes`).

use crate::records::{Conflict, ConflictKind};

/// The kind's stable name, shared with the other languages: `change_lost`, `values_overwritten`, ...
#[uniffi::export(name = "native_conflict_kind_name")]
pub fn conflict_kind_name(kind: ConflictKind) -> String {
    harmonylite::ConflictKind::from(kind).as_str().to_string()
}

/// Implemented in Swift. Called on a core runtime thread, one conflict at a time, so it must return quickly.
#[uniffi::export(callback_interface)]
pub trait NativeConflictListener: Send + Sync {
    fn on_conflict(&self, conflict: Conflict);
    /// No more conflicts: the replica was closed or released.
    fn on_end(&self);
}
