//! The library's own SQLite connection, on a dedicated thread (SQLite work never runs on async workers).
//!
//! It notices the app's commits (`PRAGMA data_version` changes when another connection commits), stamps
//! captured changes into the outbox and hands them to the publisher, applies received batches, and
//! answers status queries. One thread, one connection: the library never races itself for the write lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::apply::applier::{ApplyOutcome, Incoming};
use crate::apply::transaction::{apply_batch, retry_parked_batch, BatchRun};
use crate::capture::commit_watch::CommitWatch;
use crate::capture::{self, Schema};
use crate::clock::{Clock, ClockHistory};
use crate::config::Config;
use crate::connection::{begin_write, open_connection, with_busy_retry};
use crate::error::{Error, Result, SqlContext};
use crate::events::{ConflictHub, EventHub};
use crate::log::{batch_node_id, decode, pk_key, shard_of, Origin, Publisher};
use crate::publish::republish::{republish_shard, republish_tables};
use crate::publish::stamp::{self, StampSettings};
use crate::publish::OutboxEntry;
use crate::state::conflicts::Conflict;
use crate::state::{self as library, meta, outbox, parked, positions};

pub(crate) enum Command {
    /// The WAL file was written (by the app, another process, or this thread): check for a commit.
    Wake,
    Apply {
        /// Shared with the consumer, which hands over the same batch again when an apply is retried.
        messages: std::sync::Arc<[Incoming]>,
        reply: oneshot::Sender<Result<ApplyOutcome>>,
    },
    /// Stamp whatever the app committed so far; replies with the newest outbox id.
    Flush {
        reply: oneshot::Sender<Result<i64>>,
    },
    Acked {
        ids: Vec<i64>,
    },
    /// Write what waits for a transaction to ride along (acknowledged deletes, own-message positions) now:
    /// a snapshot is about to copy the file.
    StoreDeferred {
        reply: oneshot::Sender<()>,
    },
    /// The server refused a message (larger than its max payload): keep a record, stop retrying it.
    Reject {
        entry: OutboxEntry,
        reason: String,
    },
    Position {
        shard: u32,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// After broker data loss: `shard`'s stored position becomes `seq` (the start of the stream the server
    /// holds now). What waits in memory is written first, so no own-message position overwrites the reset.
    ResetPosition {
        shard: u32,
        seq: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Status {
        reply: oneshot::Sender<Result<DbStatus>>,
    },
    /// After broker data loss: queue every row of `shard` this node holds again, with its stored versions
    /// (`publish::republish`); replies with the number of rows queued.
    Republish {
        shard: u32,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// A divergence was found (ADR 0017): queue every row of these tables this node holds again, with its
    /// stored versions, on every shard; replies with the number of rows queued.
    RepublishTables {
        tables: Vec<String>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// The newest `limit` entries of the conflict log after id `after`.
    Conflicts {
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Conflict>>>,
    },
}

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

pub(crate) struct DbHandle {
    pub commands: std_mpsc::Sender<Command>,
    pub thread: Option<std::thread::JoinHandle<()>>,
    /// Holds a sender too: stopped before the thread is joined, so the thread sees its inbox close.
    pub commit_watch: Option<CommitWatch>,
}

/// State shared back to the async side.
pub(crate) struct DbOutputs {
    pub outbox: mpsc::UnboundedSender<OutboxEntry>,
    pub events: EventHub,
    pub positions: watch::Sender<BTreeMap<u32, u64>>,
    pub counters: std::sync::Arc<crate::metrics::Counters>,
    pub conflicts: ConflictHub,
}

pub(crate) struct Opened {
    pub pending_outbox: Vec<OutboxEntry>,
}

struct DbWorker {
    conn: Connection,
    config: Config,
    node_id: u64,
    /// This database's publisher instance (`state::meta::instance`), part of its message ids.
    instance: u64,
    schema: Schema,
    clock: Clock,
    /// The clock over time, for stamping local changes from their commit time (`clock::ClockHistory`).
    history: ClockHistory,
    /// Tables with parked changes, and when parked changes were last retried.
    parked_tables: std::collections::BTreeSet<String>,
    last_parked_retry: Instant,
    /// While a migration tool migrates, parked changes wait until `settle_until` (`SCHEMA_SETTLE`);
    /// `retry_after_settle` says a retry is owed then.
    settle_until: Instant,
    retry_after_settle: bool,
    /// Announcing dropped tables failed (the database was busy): tried again at the next stamp.
    announce_drops_owed: bool,
    /// Tables created since the replica opened, not captured yet, and when each was first seen (see
    /// `NEW_TABLE_GRACE`); `schema_recheck_at`: when the next of them is due.
    new_tables: BTreeMap<String, Instant>,
    schema_recheck_at: Option<Instant>,
    capture_now: bool,
    migrations_seen: i64,
    data_version: i64,
    outputs: DbOutputs,
    last_outbox_id: i64,
    wake_pending: Arc<AtomicBool>,
    /// Outbox entries JetStream acknowledged, deleted in the next write transaction rather than one of
    /// their own: a transaction less per message means fewer collisions with the app's writes.
    acked: Vec<i64>,
    deferred_since: Option<Instant>,
    /// Stream positions reached by messages this node published itself, not yet stored: such messages change
    /// nothing here, so they take no write transaction of their own (see `skip_own_messages`).
    unsaved_positions: BTreeMap<u32, u64>,
    /// Write transactions since the last checkpoint this thread ran, and when that was.
    writes_since_checkpoint: u32,
    last_checkpoint: Instant,
}

/// Polling while commits come in, and the next check after a stamp. A commit wakes the thread sooner when
/// the WAL is watched; the watcher itself wakes it at most every `WAKE_INTERVAL`, so an app committing tens
/// of thousands of times a second gets its commits stamped in batches rather than competing with a stamp
/// (and two thread wake-ups) per commit — which halved such an app's commit rate in bench W3.
const MIN_POLL: Duration = Duration::from_millis(1);
const WAKE_INTERVAL: Duration = Duration::from_micros(500);
/// After stamping n rows, the next stamp waits n × `STAMP_HOLD_PER_ROW` (at most `MAX_STAMP_HOLD`), and at
/// least `MIN_BUSY_STAMP_HOLD` while the app writes faster than `BUSY_WRITER_ROWS_PER_S`. A commit after a
/// quiet spell is stamped at once; an app committing thousands of times a second gets its commits stamped in
/// batches. Every stamp takes the write lock, and an app that meets it sleeps in SQLite's busy handler (1 ms
/// at first): stamping each of its commits alone cut a single-row writer from ~31k to ~24k commits/s in
/// bench W3, and a write transaction per own message received back to ~13k.
const STAMP_HOLD_PER_ROW: Duration = Duration::from_micros(100);
const MIN_BUSY_STAMP_HOLD: Duration = Duration::from_millis(1);
const BUSY_WRITER_ROWS_PER_S: f64 = 8_000.0;
const MAX_STAMP_HOLD: Duration = Duration::from_millis(4);
/// Re-check after a wake-up that found nothing: the write that woke the thread can precede the commit
/// becoming visible by a few microseconds.
const RECHECK: Duration = Duration::from_micros(50);
/// Acknowledged outbox entries and own-message positions wait at most this long for a write transaction.
const DEFERRED_WRITE_DELAY: Duration = Duration::from_millis(20);
const ACKED_DELETE_BATCH: usize = 1024;
/// This connection checkpoints the WAL itself, between transactions, rather than inside whichever commit
/// crosses SQLite's 1,000-page mark (that commit then took ~5 ms, and its events waited for it): when the
/// inbox is empty after this many write transactions and the last checkpoint is not too recent (each one
/// syncs twice), or regardless after the larger number.
const CHECKPOINT_WHEN_IDLE_AFTER: u32 = 16;
const CHECKPOINT_MIN_GAP: Duration = Duration::from_millis(100);
const CHECKPOINT_AFTER: u32 = 1024;
/// Parked changes are retried after whatever may unblock them (a schema change, a write to their table)
/// and, for those waiting on time (a clock ahead of ours) or on anything else, at least this often.
const PARKED_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// A table created while the replica runs is captured once it has existed this long. Tools create and
/// drop probe tables outside any transaction (sqlite-utils: `t<random hex>` with one row, to test for
/// upsert support): captured at once, such a table's row went out, and every other node kept it waiting
/// for a table that never comes. Rows written meanwhile are not missed: a table's existing rows are
/// logged when it is first captured.
const NEW_TABLE_GRACE: Duration = Duration::from_millis(500);
/// While a migration tool migrates (its bookkeeping table changes with the schema), parked changes are
/// retried only once the schema has been still this long. A migration tool runs its own steps right after the schema change that unblocks them (Django's
/// post_migrate reads which content types and permissions exist and inserts the missing ones): received
/// rows applied in between made its INSERT fail on a UNIQUE constraint. Applied after it, identical rows
/// merge as one.
const SCHEMA_SETTLE: Duration = Duration::from_secs(2);

/// Opens the database, installs capture, and starts the thread.
pub(crate) fn start(db: &Path, config: &Config, outputs: DbOutputs) -> Result<(DbHandle, Opened)> {
    let (mut worker, opened) = DbWorker::open(db, config, outputs)?;
    let (commands, inbox) = std_mpsc::channel();
    let commit_watch = wal_path(&worker.conn).and_then(|wal| {
        let (sender, pending) = (commands.clone(), worker.wake_pending.clone());
        CommitWatch::start(&wal, WAKE_INTERVAL, move || {
            // One wake-up in the inbox at a time: a burst of writes needs a single check.
            pending.swap(true, Ordering::AcqRel) || sender.send(Command::Wake).is_ok()
        })
    });
    let thread = std::thread::Builder::new()
        .name("harmonylite-db".into())
        .spawn(move || worker.run(inbox))
        .map_err(|err| Error::io("the database thread", err))?;
    Ok((
        DbHandle {
            commands,
            thread: Some(thread),
            commit_watch,
        },
        opened,
    ))
}

/// The `-wal` file of the main database, if the database is in WAL mode and the file exists.
fn wal_path(conn: &Connection) -> Option<PathBuf> {
    let main: String = conn
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            [],
            |row| row.get(0),
        )
        .ok()?;
    let wal = PathBuf::from(format!("{main}-wal"));
    wal.exists().then_some(wal)
}

impl DbWorker {
    fn open(db: &Path, config: &Config, outputs: DbOutputs) -> Result<(DbWorker, Opened)> {
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

    fn run(&mut self, inbox: std_mpsc::Receiver<Command>) {
        let max_poll = self.config.max_poll_interval();
        let mut poll = MIN_POLL;
        let mut last_check = Instant::now();
        // A commit seen but held back (see `STAMP_HOLD_PER_ROW`), and until when.
        let mut stamp_due = false;
        let mut hold_until = Instant::now();
        let mut last_stamp = Instant::now();
        // Tables dropped while we were not running, then whatever the app committed meanwhile.
        self.announce_dropped_tables();
        self.stamp_all();
        self.retry_parked(None);
        loop {
            let mut woken = false;
            let mut idle = false;
            let mut wait = poll.saturating_sub(last_check.elapsed());
            if stamp_due {
                wait = wait.min(hold_until.saturating_duration_since(Instant::now()));
            }
            match inbox.recv_timeout(wait) {
                // While a stamp is held back there is nothing to learn from a wake-up: leave the flag set,
                // so the watcher stops sending them until the stamp (which clears it).
                Ok(Command::Wake) if stamp_due => {}
                Ok(Command::Wake) => {
                    self.wake_pending.store(false, Ordering::Release);
                    woken = true;
                }
                Ok(command) => self.handle(command),
                Err(std_mpsc::RecvTimeoutError::Timeout) => idle = true,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if !stamp_due && (woken || last_check.elapsed() >= poll) {
                last_check = Instant::now();
                if self.app_committed() {
                    stamp_due = true;
                } else if woken {
                    poll = RECHECK;
                } else {
                    poll = (poll * 2).min(max_poll);
                }
            }
            if stamp_due && Instant::now() >= hold_until {
                stamp_due = false;
                self.wake_pending.store(false, Ordering::Release);
                let stamped = self.stamp_all() as u32;
                if stamped > 0 {
                    let now = Instant::now();
                    let rate =
                        f64::from(stamped) / now.duration_since(last_stamp).as_secs_f64().max(1e-6);
                    last_stamp = now;
                    let floor = if rate >= BUSY_WRITER_ROWS_PER_S {
                        MIN_BUSY_STAMP_HOLD
                    } else {
                        Duration::ZERO
                    };
                    hold_until = now + (STAMP_HOLD_PER_ROW * stamped).clamp(floor, MAX_STAMP_HOLD);
                }
                poll = MIN_POLL;
            }
            if self
                .deferred_since
                .is_some_and(|since| since.elapsed() >= DEFERRED_WRITE_DELAY)
                || self.acked.len() >= ACKED_DELETE_BATCH
            {
                self.store_deferred_writes();
            }
            if self
                .schema_recheck_at
                .is_some_and(|at| Instant::now() >= at)
            {
                self.schema.version = -1; // re-read: a new table is due for capture
                                          // Capturing it logs its rows (no app commit wakes the stamper for those): stamp them now.
                self.stamp_all();
            }
            if (self.retry_after_settle && Instant::now() >= self.settle_until)
                || (!self.parked_tables.is_empty()
                    && self.last_parked_retry.elapsed() >= PARKED_RETRY_INTERVAL)
            {
                self.retry_parked(None);
            }
            self.checkpoint_if_due(idle);
        }
        // Last chance to move committed changes into the outbox; whatever stays goes out next open.
        self.capture_new_tables_now();
        self.stamp_all();
        self.store_deferred_writes();
        debug!("database thread stopped");
    }

    fn app_committed(&mut self) -> bool {
        match self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
        {
            Ok(version) if version != self.data_version => {
                self.data_version = version;
                true
            }
            Ok(_) => false,
            Err(err) => {
                warn!(error = %err, "could not read data_version");
                false
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Apply { messages, reply } => {
                let result = self.apply(&messages);
                let _ = reply.send(result);
            }
            Command::Flush { reply } => {
                self.app_committed();
                self.capture_new_tables_now();
                self.stamp_all();
                let _ = reply.send(Ok(self.last_outbox_id));
            }
            Command::Wake => self.wake_pending.store(false, Ordering::Release),
            Command::Acked { ids } => {
                self.acked.extend(ids);
                self.deferred_since.get_or_insert_with(Instant::now);
            }
            Command::StoreDeferred { reply } => {
                self.store_deferred_writes();
                let _ = reply.send(());
            }
            Command::Reject { entry, reason } => self.reject(entry, &reason),
            Command::Position { shard, reply } => {
                let result = match self.unsaved_positions.get(&shard) {
                    Some(seq) => Ok(*seq),
                    None => positions::read(&self.conn, shard),
                };
                let _ = reply.send(result);
            }
            Command::ResetPosition { shard, seq, reply } => {
                let _ = reply.send(self.reset_position(shard, seq));
            }
            Command::Conflicts {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(library::conflicts::list(&self.conn, after, limit));
            }
            Command::Republish { shard, reply } => {
                let _ = reply.send(self.republish(shard));
            }
            Command::RepublishTables { tables, reply } => {
                let _ = reply.send(self.republish_tables(tables.into_iter().collect()));
            }
            Command::Status { reply } => {
                // Exact counts: what JetStream acknowledged is not "unsent".
                self.store_deferred_writes();
                let _ = reply.send(self.status());
            }
        }
    }

    fn refresh_schema_if_changed(&mut self) -> Result<bool> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA schema_version", [], |row| row.get(0))
            .ctx("reading schema_version")?;
        if version == self.schema.version {
            return Ok(false);
        }
        let hold = self.tables_to_hold()?;
        let schema = capture::install_holding(&mut self.conn, &self.config, &hold)?;
        for refused in &schema.refused {
            error!(error = %refused, "table not replicated");
        }
        self.schema = schema;
        self.announce_dropped_tables();
        // Changes that waited for this schema may apply now; while a migration tool is at work (its
        // bookkeeping changed with the schema), once it has finished (`SCHEMA_SETTLE`).
        let migrations = migration_bookkeeping(&self.conn);
        if migrations != self.migrations_seen {
            self.migrations_seen = migrations;
            self.settle_until = Instant::now() + SCHEMA_SETTLE;
        }
        self.retry_parked(None);
        Ok(true)
    }

    /// Announces, once each, the replicated tables the app dropped here (ADR 0016), so that nodes lacking
    /// them stop keeping this node's changes of them waiting; a table created again is forgotten as dropped
    /// (a later drop is announced anew). A read replica announces nothing: it sent nothing.
    fn announce_dropped_tables(&mut self) {
        if !self.config.publish {
            return;
        }
        self.announce_drops_owed = false;
        /// The tables announced now, their messages, and the clock after stamping them.
        type Announced = (Vec<String>, Vec<OutboxEntry>, Clock);
        let result = (|| -> Result<Option<Announced>> {
            let gone = capture::gone_tables(&self.conn)?;
            let announced = library::dropped::tables_of(&self.conn, self.node_id)?;
            let new: Vec<String> = gone
                .iter()
                .filter(|table| !announced.iter().any(|(done, _)| done == *table))
                .cloned()
                .collect();
            let back: Vec<&String> = announced
                .iter()
                .map(|(table, _)| table)
                .filter(|table| !gone.contains(table))
                .collect();
            if new.is_empty() && back.is_empty() {
                return Ok(None);
            }
            let settings = self.stamp_settings();
            let tx = begin_write(&self.conn, self.busy_limit(), "announcing dropped tables")?;
            for table in back {
                library::dropped::forget(&tx, table, self.node_id)?;
            }
            let mut clock = self.clock;
            let queued = stamp::stamp_dropped_tables(&tx, &mut clock, &settings, &new)?;
            outbox::delete(&tx, &self.acked)?;
            tx.commit().ctx("announcing dropped tables")?;
            Ok(Some((new, queued, clock)))
        })();
        match result {
            Ok(None) => {}
            Ok(Some((tables, queued, clock))) => {
                self.acked.clear();
                self.clock = clock;
                if !tables.is_empty() {
                    info!(tables = ?tables, "replicated tables dropped here; announced to the other nodes");
                }
                self.after_stamp(queued, Vec::new());
            }
            Err(err) => {
                self.announce_drops_owed = true;
                warn!(error = %err, "announcing dropped tables failed; will retry");
            }
        }
    }

    /// Ends the grace of new tables (`sync()`, close): everything committed so far goes out.
    fn capture_new_tables_now(&mut self) {
        if self.schema_recheck_at.is_some() {
            self.capture_now = true;
            self.schema.version = -1;
        }
    }

    /// The new tables still in their `NEW_TABLE_GRACE`, and when the next one is due.
    fn tables_to_hold(&mut self) -> Result<BTreeSet<String>> {
        if std::mem::take(&mut self.capture_now) {
            self.schema_recheck_at = None;
            return Ok(BTreeSet::new());
        }
        let present = capture::Schema::read(&self.conn, &self.config)?;
        let registered = capture::registered_tables(&self.conn)?;
        let now = Instant::now();
        self.new_tables
            .retain(|name, _| present.tables.contains_key(name) && !registered.contains(name));
        let mut hold = BTreeSet::new();
        let mut next: Option<Instant> = None;
        for name in present.tables.keys().filter(|n| !registered.contains(*n)) {
            let due = *self.new_tables.entry(name.clone()).or_insert(now) + NEW_TABLE_GRACE;
            if now < due {
                hold.insert(name.clone());
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        self.schema_recheck_at = next;
        Ok(hold)
    }

    /// Retries parked changes (of the given tables, or all) in one write transaction.
    fn retry_parked(&mut self, tables: Option<&[String]>) {
        if Instant::now() < self.settle_until {
            self.retry_after_settle = true;
            return;
        }
        self.retry_after_settle = false;
        self.last_parked_retry = Instant::now();
        let waiting = match tables {
            Some(tables) => tables.iter().any(|t| self.parked_tables.contains(t)),
            None => !self.parked_tables.is_empty(),
        };
        if !waiting {
            return;
        }
        let settings = StampSettings {
            max_changes: u32::MAX,
            ..self.stamp_settings()
        };
        let publish = self.config.publish;
        let result = (|| -> Result<(ApplyOutcome, Option<stamp::Stamped>, Clock)> {
            let tx = begin_write(&self.conn, self.busy_limit(), "retrying parked changes")?;
            let mut clock = self.clock;
            let run = BatchRun {
                schema: &self.schema,
                node_id: self.node_id,
                instance: self.instance,
                stamp: publish.then_some(&settings),
                history: &self.history,
                parked_tables: &self.parked_tables,
                retry_parked: true,
            };
            let result = retry_parked_batch(&tx, &run, &mut clock, tables)?;
            outbox::delete(&tx, &self.acked)?;
            let wall = crate::clock::wall_millis();
            tx.commit().ctx("retrying parked changes")?;
            // Not only when something applied: a retry that moves a key or a row aside stamps changes of
            // this node, which the app can see from now on (`record` ignores a clock that did not move).
            self.history.record(wall, clock.last());
            if let Some(now_parked) = result.parked_tables {
                self.parked_tables = now_parked;
            }
            Ok((result.outcome, result.stamped, clock))
        })();
        match result {
            Ok((outcome, stamped, clock)) => {
                self.clock = clock;
                self.acked.clear();
                if let Some(stamped) = stamped {
                    self.after_stamp(stamped.outbox, stamped.events);
                }
                if outcome.applied > 0 {
                    info!(
                        applied = outcome.applied,
                        "parked changes applied: what they waited for is here now"
                    );
                }
                self.writes_since_checkpoint += 1;
                let follow_ups = !outcome.follow_ups.is_empty();
                self.publish_outcome(outcome);
                if follow_ups {
                    self.stamp_all();
                }
            }
            Err(err) => warn!(error = %err, "retrying parked changes failed; will retry"),
        }
    }

    /// Queues every row of `shard` again (see `Command::Republish`). What the app committed is stamped
    /// first, so the row states hold it.
    fn republish(&mut self, shard: u32) -> Result<u64> {
        if !self.config.publish {
            return Ok(0); // a read replica never published anything
        }
        self.stamp_all();
        let settings = self.stamp_settings();
        let limit = self.busy_limit();
        let (conn, schema) = (&self.conn, &self.schema);
        let mut clock = self.clock;
        let republished = with_busy_retry(limit, || {
            let tx = begin_write(conn, limit, "republishing rows after broker data loss")?;
            let mut republished = republish_shard(&tx, schema, &settings, shard)?;
            // The tables this node dropped are announced again too (ADR 0016), on the shard they route to.
            let drops: Vec<String> = library::dropped::tables_of(&tx, settings.node_id)?
                .into_iter()
                .map(|(table, _)| table)
                .filter(|table| shard_of(table, &[], settings.shards) == shard)
                .collect();
            clock = self.clock;
            republished.outbox.extend(stamp::stamp_dropped_tables(
                &tx, &mut clock, &settings, &drops,
            )?);
            tx.commit()
                .ctx("republishing rows after broker data loss")?;
            Ok(republished)
        })?;
        self.clock = clock;
        info!(
            shard,
            rows = republished.rows,
            messages = republished.outbox.len(),
            "rows queued for publishing again after broker data loss"
        );
        let rows = republished.rows;
        self.after_stamp(republished.outbox, Vec::new());
        Ok(rows)
    }

    /// Queues every row of `tables` again (see `Command::RepublishTables`), after stamping what the app
    /// committed. One write transaction: the cost is that of the broker-loss repair, limited to these tables
    /// and rate-limited by the divergence checker.
    fn republish_tables(&mut self, tables: BTreeSet<String>) -> Result<u64> {
        if !self.config.publish {
            return Ok(0); // a read replica's rows are all someone else's; they republish them
        }
        self.stamp_all();
        let settings = self.stamp_settings();
        let limit = self.busy_limit();
        let (conn, schema) = (&self.conn, &self.schema);
        let republished = with_busy_retry(limit, || {
            let tx = begin_write(conn, limit, "republishing divergent tables")?;
            let republished = republish_tables(&tx, schema, &settings, &tables)?;
            tx.commit().ctx("republishing divergent tables")?;
            Ok(republished)
        })?;
        info!(
            tables = ?tables,
            rows = republished.rows,
            messages = republished.outbox.len(),
            "rows of divergent tables queued for publishing again"
        );
        let rows = republished.rows;
        self.after_stamp(republished.outbox, Vec::new());
        Ok(rows)
    }

    /// Events, conflicts and counters of applied changes, for the app.
    fn publish_outcome(&mut self, mut outcome: ApplyOutcome) {
        let counters = &self.outputs.counters;
        for (shard, seq) in &outcome.claims_this_node {
            let err = Error::config(
                "node_id",
                format!(
                    "message {seq} of shard {shard} claims this node's id {} but this database did not \
                     publish it: another node may be configured with the same node_id (or this node \
                     restored a snapshot, or the message is forged); it was applied like any other",
                    self.node_id
                ),
            );
            error!(error = %err, "a message claims this node's id");
            counters.record_error(&err);
        }
        counters.applied_rows.inc_by(outcome.applied);
        counters.kept_rows.inc_by(outcome.kept);
        counters.deferred_rows.inc_by(outcome.deferred);
        counters.moved_keys.inc_by(outcome.moved_keys);
        counters.conflicts.inc_by(outcome.conflicts.len() as u64);
        counters
            .dead_lettered
            .inc_by(outcome.dead_letters.len() as u64);
        if outcome.applied > 0 {
            counters
                .last_apply_ms
                .store(crate::clock::wall_millis(), Ordering::Relaxed);
        }
        for conflict in &outcome.conflicts {
            info!(table = %conflict.table, kind = conflict.kind.as_str(), detail = %conflict.detail, "conflict resolved and recorded");
        }
        self.outputs
            .conflicts
            .emit(std::mem::take(&mut outcome.conflicts));
        // Events before positions: whoever waits for a position also finds its events delivered.
        self.outputs
            .events
            .emit(std::mem::take(&mut outcome.events));
        if !outcome.positions.is_empty() {
            self.outputs.positions.send_modify(|positions| {
                for (shard, seq) in &outcome.positions {
                    positions.insert(*shard, *seq);
                }
            });
        }
    }

    fn busy_limit(&self) -> Duration {
        Duration::from_millis(self.config.apply.busy_timeout_ms)
    }

    fn publisher(&self) -> Publisher {
        Publisher {
            node: self.node_id,
            instance: self.instance,
        }
    }

    fn stamp_settings(&self) -> StampSettings {
        StampSettings::from_config(&self.config, self.node_id, self.instance)
    }

    /// Stamps every captured change, one bounded transaction at a time.
    /// Returns how many change-log entries were stamped.
    fn stamp_all(&mut self) -> usize {
        if let Err(err) = self.refresh_schema_if_changed() {
            warn!(error = %err, "schema refresh failed; will retry");
        }
        if self.announce_drops_owed {
            self.announce_dropped_tables();
        }
        if !self.config.publish {
            return 0;
        }
        // A read does not block the app (WAL); taking the write lock for an empty log would.
        if self.change_log_is_empty() {
            return 0;
        }
        let mut stamped = 0;
        loop {
            match self.stamp_once() {
                Ok(entries) if entries >= self.config.scan_max_changes as usize => {
                    stamped += entries;
                    continue;
                }
                Ok(entries) => {
                    stamped += entries;
                    break;
                }
                Err(Error::SqliteBusy { .. }) => {
                    debug!("database busy while stamping; will retry");
                    break;
                }
                Err(err) => {
                    error!(error = %err, "stamping local changes failed; will retry");
                    break;
                }
            }
        }
        stamped
    }

    fn change_log_is_empty(&self) -> bool {
        self.conn
            .prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM __harmonylite__change_log)")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .unwrap_or(false)
    }

    fn stamp_once(&mut self) -> Result<usize> {
        let settings = self.stamp_settings();
        let tx = begin_write(&self.conn, self.busy_limit(), "stamping local changes")?;
        let mut clock = self.clock;
        let stamped =
            stamp::stamp_pending(&tx, &self.schema, &mut clock, &self.history, &settings)?;
        if stamped.log_entries == 0 {
            return Ok(0);
        }
        outbox::delete(&tx, &self.acked)?;
        positions::store_all(&tx, &self.unsaved_positions)?;
        let log_empty = stamped.log_entries < settings.max_changes as usize;
        tx.commit().ctx("committing stamped changes")?;
        if log_empty {
            self.history.compact();
        }
        let touched = stamped.tables.clone();
        self.unsaved_positions.clear();
        self.writes_since_checkpoint += 1;
        self.acked.clear();
        self.deferred_since = None;
        self.clock = clock;
        self.after_stamp(stamped.outbox, stamped.events);
        // A local change may free what a parked change waits for (a UNIQUE value, for one).
        self.retry_parked(Some(&touched));
        Ok(stamped.log_entries)
    }

    fn after_stamp(&mut self, outbox: Vec<OutboxEntry>, events: Vec<crate::events::ChangeEvent>) {
        if let Some(last) = outbox.last() {
            self.last_outbox_id = last.id;
        }
        for entry in outbox {
            // The publisher is gone only while closing; the entry stays in the outbox for next time.
            let _ = self.outputs.outbox.send(entry);
        }
        self.outputs.events.emit(events);
    }

    /// Every node receives its own messages back from the stream. When a run holds nothing else, only the
    /// position moves: it is kept in memory (and published to waiters) and stored with the next write
    /// transaction. A write transaction per own message met the app's writes on the lock — the app then
    /// sleeps in SQLite's busy handler — and forced a stamp of whatever was pending. Losing the unsaved
    /// position in a crash only means receiving those messages again, which changes nothing.
    fn skip_own_messages(&mut self, messages: &[Incoming]) -> Result<ApplyOutcome> {
        let mut outcome = ApplyOutcome::default();
        for message in messages {
            let position = match self.unsaved_positions.get(&message.shard) {
                Some(seq) => *seq,
                None => positions::read(&self.conn, message.shard)?,
            };
            if message.seq > position {
                self.unsaved_positions.insert(message.shard, message.seq);
                self.deferred_since.get_or_insert_with(Instant::now);
                match outcome
                    .positions
                    .iter_mut()
                    .find(|(s, _)| *s == message.shard)
                {
                    Some(entry) => entry.1 = message.seq,
                    None => outcome.positions.push((message.shard, message.seq)),
                }
            }
        }
        if !outcome.positions.is_empty() {
            self.outputs.positions.send_modify(|positions| {
                for (shard, seq) in &outcome.positions {
                    positions.insert(*shard, *seq);
                }
            });
        }
        Ok(outcome)
    }

    fn apply(&mut self, messages: &[Incoming]) -> Result<ApplyOutcome> {
        // Whether these are all this node's own messages, from the node id at the start of each batch and
        // the message id: nothing is decoded for it (a writer receives every message it published, and
        // decoding each whole only to skip it cost it as much as applying one; the first message of another
        // node settles it, and the applier decodes each message once).
        let me = self.publisher();
        let own_only = messages.iter().all(|message| {
            batch_node_id(&message.payload)
                .is_ok_and(|node| me.judge(node, message.published_by) == Origin::Own)
        });
        if own_only {
            return self.skip_own_messages(messages);
        }
        let _ = self.refresh_schema_if_changed();
        let limit = Duration::from_millis(self.config.apply.busy_timeout_ms);
        // Every pending local change is stamped before applying, however many there are.
        let settings = StampSettings {
            max_changes: u32::MAX,
            ..self.stamp_settings()
        };
        let publish = self.config.publish;
        let node_id = self.node_id;
        let instance = self.instance;
        let (outcome, stamped, clock) = {
            let schema = &self.schema;
            let start_clock = self.clock;
            let conn = &mut self.conn;
            let acked = &self.acked;
            let unsaved = &self.unsaved_positions;
            let history = &mut self.history;
            let parked_tables = &mut self.parked_tables;
            let retry_parked = Instant::now() >= self.settle_until;
            with_busy_retry(limit, || {
                let mut clock = start_clock;
                let tx = begin_write(conn, limit, "starting an apply transaction")?;
                positions::store_all(&tx, unsaved)?;
                let run = BatchRun {
                    schema,
                    node_id,
                    instance,
                    stamp: publish.then_some(&settings),
                    history,
                    parked_tables,
                    retry_parked,
                };
                let result = apply_batch(&tx, &run, &mut clock, messages)?;
                outbox::delete(&tx, acked)?;
                let wall = crate::clock::wall_millis();
                tx.commit().ctx("committing an apply transaction")?;
                history.record(wall, clock.last());
                if let Some(now_parked) = result.parked_tables {
                    *parked_tables = now_parked;
                }
                let (outcome, stamped) = (result.outcome, result.stamped);
                Ok((outcome, stamped, clock))
            })?
        };
        self.acked.clear();
        self.deferred_since = None;
        self.unsaved_positions.clear();
        self.writes_since_checkpoint += 1;
        self.clock = clock;
        if let Some(stamped) = stamped {
            self.after_stamp(stamped.outbox, stamped.events);
        }
        let has_follow_ups = !outcome.follow_ups.is_empty();
        let summary = ApplyOutcome {
            dead_letters: outcome.dead_letters.clone(),
            positions: outcome.positions.clone(),
            applied: outcome.applied,
            kept: outcome.kept,
            deferred: outcome.deferred,
            moved_keys: outcome.moved_keys,
            ..ApplyOutcome::default()
        };
        // Counters before positions, so whoever waits on a position sees the counts that go with it.
        self.publish_outcome(outcome);
        if has_follow_ups {
            // Rows moved off a colliding key go out now, not at the next commit of the app.
            self.stamp_all();
        }
        Ok(summary)
    }

    fn checkpoint_if_due(&mut self, idle: bool) {
        let due = self.writes_since_checkpoint >= CHECKPOINT_AFTER
            || (idle
                && self.writes_since_checkpoint >= CHECKPOINT_WHEN_IDLE_AFTER
                && self.last_checkpoint.elapsed() >= CHECKPOINT_MIN_GAP);
        if !due {
            return;
        }
        self.writes_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        // PASSIVE never waits for readers or writers; what it cannot copy now goes next time.
        if let Err(err) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            debug!(error = %err, "WAL checkpoint skipped");
        }
    }

    /// Deletes acknowledged outbox entries and stores own-message positions that no other write transaction
    /// took along.
    fn store_deferred_writes(&mut self) {
        if self.acked.is_empty() && self.unsaved_positions.is_empty() {
            return;
        }
        let result = begin_write(
            &self.conn,
            self.busy_limit(),
            "deleting acknowledged outbox entries",
        )
        .and_then(|tx| {
            outbox::delete(&tx, &self.acked)?;
            positions::store_all(&tx, &self.unsaved_positions)?;
            tx.commit().ctx("deleting acknowledged outbox entries")
        });
        match result {
            Ok(()) => {
                self.acked.clear();
                self.deferred_since = None;
                self.unsaved_positions.clear();
                self.writes_since_checkpoint += 1;
            }
            // Harmless: they go with the next transaction; after a crash, entries are published again (and
            // de-duplicated by message id) and own messages received again.
            Err(err) => warn!(error = %err, "could not delete acknowledged outbox entries yet"),
        }
    }

    fn reset_position(&mut self, shard: u32, seq: u64) -> Result<()> {
        self.store_deferred_writes();
        let tx = begin_write(
            &self.conn,
            self.busy_limit(),
            "resetting the stream position",
        )?;
        positions::store(&tx, shard, seq)?;
        tx.commit().ctx("resetting the stream position")?;
        // An own-message position that could not be written above must not overwrite the reset later.
        self.unsaved_positions.remove(&shard);
        Ok(())
    }

    fn reject(&mut self, entry: OutboxEntry, reason: &str) {
        let rows: Vec<(String, Vec<u8>)> = match decode(&entry.payload) {
            Ok(batch) => batch
                .changes
                .iter()
                .map(|c| (c.table.clone(), pk_key(&c.pk)))
                .collect(),
            Err(_) => Vec::new(),
        };
        for (table, _) in &rows {
            error!(table = %table, reason, "a local change cannot be published and stays on this node only");
        }
        let result = (|| -> Result<()> {
            let tx = begin_write(&self.conn, self.busy_limit(), "recording a rejected change")?;
            for (table, pk) in &rows {
                library::record_rejected(&tx, table, pk, reason)?;
            }
            outbox::delete(&tx, &[entry.id])?;
            tx.commit().ctx("recording a rejected change")
        })();
        match result {
            Ok(()) => {
                self.outputs
                    .counters
                    .rejected_local
                    .inc_by(rows.len() as u64);
            }
            Err(err) => warn!(error = %err, "could not record a rejected change"),
        }
    }

    fn status(&self) -> Result<DbStatus> {
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

/// How many rows the migration tools' bookkeeping tables hold (it changes as a tool migrates).
fn migration_bookkeeping(conn: &Connection) -> i64 {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .unwrap_or_default();
    tables
        .iter()
        .filter(|t| crate::config::migration_tool(t).is_some())
        .map(|t| {
            conn.query_row(
                &format!("SELECT count(*) FROM {}", capture::sql::quote(t)),
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap_or(0)
        })
        .sum()
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
