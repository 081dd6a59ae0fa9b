//! The library's own SQLite connection, on a dedicated thread (SQLite work never runs on async workers).
//!
//! It notices the app's commits (`PRAGMA data_version` changes when another connection commits), stamps
//! captured changes into the outbox and hands them to the publisher, applies received batches, and
//! answers status queries. One thread, one connection: the library never races itself for the write lock.
//!
//! This file holds the commands the async side sends, the thread's loop and its timing; the jobs are in
//! `open` (the connection, node id and outbox at start), `stamping` (local changes into the outbox),
//! `applying` (remote batches and parked changes), `schema` (capture following the app's schema) and
//! `status`. The async halves that talk to JetStream (`relay/`) sit above; the database-side halves of the
//! pipeline (`publish/`, `apply/`) below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::apply::applier::{ApplyOutcome, Incoming};
use crate::capture::commit_watch::CommitWatch;
use crate::capture::Schema;
use crate::clock::{Clock, ClockHistory};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{ConflictHub, EventHub};
use crate::log::Publisher;
use crate::publish::stamp::StampSettings;
use crate::publish::OutboxEntry;
use crate::state::conflicts::Conflict;
use crate::state::{self as library, positions};

mod applying;
mod open;
mod schema;
mod stamping;
mod status;

pub use open::cleanup_database;
pub use status::DbStatus;

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
    /// The oldest `limit` dead letters of `shard`, to try again.
    DeadLetters {
        shard: u32,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<library::DeadLetter>>>,
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
            Command::DeadLetters {
                shard,
                limit,
                reply,
            } => {
                let _ = reply.send(library::dead_letters(&self.conn, shard, limit));
            }
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
}
