//! The conflict log in JavaScript: what `conflicts()` reads (the `Conflict` object it resolves to and
//! `onConflict` callbacks receive is expanded from the core's list in `records.rs`).

use napi_derive::napi;

/// What `conflicts()` reads: entries with an id above `after` (default 0, from the start), at most `limit`
/// of the newest of them (default 1000).
#[napi(object, object_to_js = false)]
pub struct ConflictsOptions {
    /// Only entries whose `id` is above this (default 0: from the start).
    pub after: Option<i64>,
    /// At most this many of the newest entries (default 1000).
    pub limit: Option<u32>,
}
