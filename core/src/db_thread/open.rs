//! Opening the library's connection: the node id, capture installed, the clock and the outbox loaded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tracing::info;

use super::schema::migration_bookkeeping;
use super::{DbOutputs, DbWorker, Opened};
use crate::capture;
use crate::clock::ClockHistory;
use crate::config::Config;
use crate::connection::{open_connection, with_busy_retry};
use crate::error::{Error, Result, SqlContext};
use crate::log::{decode, Publisher};
use crate::publish::OutboxEntry;
use crate::state::{meta, outbox, parked, positions};

impl DbWorker {
    pub(super) fn open(
        db: &Path,
        config: &Config,
        outputs: DbOutputs,
    ) -> Result<(DbWorker, Opened)> {
        let busy = Duration::from_millis(config.apply.busy_timeout_ms);
        let mut conn = open_connection(db, busy)?;
        with_busy_retry(busy * 4, || capture::create_library_tables(&conn))?;
        let node_id = match (config.node_id, meta::node_id(&conn)?) {
            (0, Some(stored)) => stored,
            (0, None) => {
                // Random and kept in the file: machine ids repeat across cloned containers.
                let id = (rand::random::<u64>() >> 1).max(1);
                meta::set_node_id(&conn, id)?;
                info!(
                    node_id = id,
                    "generated a node id and stored it in the database"
                );
                id
            }
            (configured, stored) => {
                if stored != Some(configured) {
                    meta::set_node_id(&conn, configured)?;
                }
                configured
            }
        };
        let clock = meta::clock(&conn)?;
        let instance = with_busy_retry(busy * 4, || meta::instance(&conn))?;
        let schema = with_busy_retry(busy * 4, || capture::install(&mut conn, config))?;
        if let Some(refused) = schema.refused.first() {
            return Err(match refused {
                Error::NoPrimaryKey { table } => Error::NoPrimaryKey {
                    table: table.clone(),
                },
                Error::SchemaMismatch { table, reason } => Error::SchemaMismatch {
                    table: table.clone(),
                    reason: reason.clone(),
                },
                other => Error::Internal(other.to_string()),
            });
        }
        let data_version: i64 = conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .ctx("reading data_version")?;
        // Checkpoints run between transactions (see `checkpoint_if_due`); SQLite's own, inside a commit, only
        // past 10,000 pages (large catch-up transactions). The app's connections keep their settings.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 10000")
            .ctx("setting wal_autocheckpoint")?;
        let publisher = Publisher {
            node: node_id,
            instance,
        };
        let pending_outbox = load_outbox(&conn, publisher)?;
        let positions = positions::read_all(&conn)?;
        let parked_tables = parked::tables(&conn)?;
        let last_outbox_id = pending_outbox.last().map(|e| e.id).unwrap_or(0);
        outputs.positions.send_replace(positions);
        let migrations_seen = migration_bookkeeping(&conn);
        info!(
            db = %db.display(),
            node_id,
            tables = schema.tables.len(),
            unsent_messages = pending_outbox.len(),
            "database opened"
        );
        Ok((
            DbWorker {
                conn,
                config: config.clone(),
                node_id,
                instance,
                schema,
                clock,
                history: ClockHistory::new(clock.last()),
                parked_tables,
                // The thread retries parked changes as soon as it runs (`run`): the schema or the data they
                // wait for may have changed while the node was stopped.
                last_parked_retry: Instant::now(),
                settle_until: Instant::now(),
                retry_after_settle: false,
                announce_drops_owed: false,
                new_tables: BTreeMap::new(),
                schema_recheck_at: None,
                capture_now: false,
                migrations_seen,
                data_version,
                outputs,
                last_outbox_id,
                wake_pending: Arc::new(AtomicBool::new(false)),
                acked: Vec::new(),
                deferred_since: None,
                unsaved_positions: BTreeMap::new(),
                writes_since_checkpoint: 0,
                last_checkpoint: Instant::now(),
            },
            Opened { pending_outbox },
        ))
    }
}

fn load_outbox(conn: &Connection, publisher: Publisher) -> Result<Vec<OutboxEntry>> {
    Ok(outbox::load(conn)?
        .into_iter()
        .map(|queued| {
            // The same newest clock the stamper put in the message id: the id must not change across a
            // restart, or the server's duplicate window would not recognise a message published again
            // after its acknowledgement was lost. A message queued by an older library has no stored
            // clock: it is read from the payload (a batch of dropped tables has no changes).
            let newest = queued.newest.unwrap_or_else(|| {
                decode(&queued.payload)
                    .map(|b| {
                        let changes = b.changes.iter().map(|c| c.hlc);
                        changes.chain(b.dropped.iter().map(|d| d.hlc)).max()
                    })
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            });
            OutboxEntry {
                id: queued.id,
                shard: queued.shard,
                rows: queued.rows,
                msg_id: publisher.message_id(queued.id, newest),
                payload: queued.payload.into(),
            }
        })
        .collect())
}

/// Removes capture from a database file (HarmonyLite's `-cleanup`).
pub fn cleanup_database(db: &Path) -> Result<usize> {
    let mut conn = open_connection(db, Duration::from_secs(5))?;
    capture::cleanup(&mut conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{encode, Batch, Op, RowChange, Value};

    fn change(hlc: u64) -> RowChange {
        let version = crate::clock::Version { hlc, node: 3 };
        RowChange {
            table: "t".into(),
            op: Op::Insert,
            hlc,
            cl: 1,
            born: version,
            born_hash: 0,
            life: version,
            seen: None,
            pk: vec![Value::Integer(hlc as i64)],
            columns: vec![("id".into(), Value::Integer(hlc as i64))],
        }
    }

    /// A message keeps its id across a restart whether its clock was stored (state format 4) or is read
    /// from the payload (a message queued by an older library, `newest` NULL after the upgrade).
    #[test]
    fn a_queued_message_keeps_its_id_after_reopening_with_or_without_a_stored_clock() {
        let conn = Connection::open_in_memory().expect("open");
        crate::state::create_library_tables(&conn).expect("tables");
        let publisher = Publisher {
            node: 3,
            instance: 0x5eed,
        };
        let payload = encode(
            &Batch::of_changes(3, vec![change(41), change(97), change(60)]),
            false,
        );
        let queued =
            OutboxEntry::queue(&conn, publisher, 1, 3, 97, payload.clone()).expect("queue");
        let older = outbox::insert(&conn, 0, 3, None, &payload).expect("older message");
        let loaded = load_outbox(&conn, publisher).expect("load");
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].msg_id, queued.msg_id);
        assert_eq!(loaded[1].msg_id, publisher.message_id(older, 97));
        assert_eq!((loaded[0].shard, loaded[0].rows), (1, 3));
        assert_eq!(loaded[0].payload, queued.payload);
    }
}
