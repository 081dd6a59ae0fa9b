//! The database thread's answer to `status()`: counts read from the library's tables.

use std::collections::BTreeMap;

use super::DbWorker;
use crate::error::Result;
use crate::state::{self as library, parked, positions};

/// What the database knows for `status()`.
#[derive(Debug, Clone, Default)]
pub struct DbStatus {
    pub pending_changes: u64,
    pub outbox_messages: u64,
    pub outbox_rows: u64,
    /// Per table: changes waiting, the reason of the oldest, and its kind.
    pub paused_tables: BTreeMap<String, (u64, String, String)>,
    pub conflicts: u64,
    pub rejected_local: u64,
    pub dead_lettered: u64,
    pub positions: BTreeMap<u32, u64>,
    pub replicated_tables: Vec<String>,
}

impl DbWorker {
    pub(super) fn status(&self) -> Result<DbStatus> {
        let counts = library::counts(&self.conn)?;
        Ok(DbStatus {
            pending_changes: counts.pending_changes,
            outbox_messages: counts.outbox_messages,
            outbox_rows: counts.outbox_rows,
            paused_tables: parked::summary(&self.conn)?,
            conflicts: counts.conflicts,
            rejected_local: counts.rejected_local,
            dead_lettered: counts.dead_lettered,
            positions: positions::read_all(&self.conn)?,
            replicated_tables: self.schema.tables.keys().cloned().collect(),
        })
    }
}
