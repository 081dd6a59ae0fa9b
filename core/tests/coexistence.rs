//! An app writing through another copy of SQLite (the system libsqlite3, as an app's apsw, better-sqlite3
//! or a statically linked Python sqlite3 would be) while the engine in the same process applies remote
//! changes, builds snapshots (a second, read-only engine connection during writes), checkpoints and closes
//! and reopens its replica: the file stays intact and every row of the ledger reaches both nodes (ADR 0012).
//!
//! A few seconds in CI; `HARMONYLITE_COEXIST_ROUNDS=200` (scripts/coexistence-soak.sh) for a long run.

#[path = "support/foreign_sqlite.rs"]
mod foreign_sqlite;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use foreign_sqlite::{foreign_sqlite, SQLITE_BUSY};
use harmonylite::Config;
use support::*;

const SCHEMA: &str =
    "CREATE TABLE ledger(id INTEGER PRIMARY KEY, origin INTEGER NOT NULL, seq INTEGER NOT NULL, body BLOB);";
const ROWS_PER_TX: i64 = 20;
/// Rows each app commits per round, during that round's snapshot, checkpoint and reopen.
const ROWS_PER_ROUND: usize = 1_500;

fn rounds() -> usize {
    std::env::var("HARMONYLITE_COEXIST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn with_dir_store(mut config: Config, dir: &Path) -> Config {
    config.snapshot.store = harmonylite::config::StoreKind::Dir;
    config.snapshot.dir.path = dir.display().to_string();
    config
}

/// The app: a connection of the other SQLite copy per transaction (as web apps do), `ROWS_PER_TX` ledger
/// rows in each, a TRUNCATE checkpoint now and then, until it committed `target` rows (then it parks until
/// the target is raised). Returns the ids it committed, or the first error that was not SQLITE_BUSY.
struct Writer {
    stop: Arc<AtomicBool>,
    target: Arc<AtomicUsize>,
    committed: Arc<Mutex<Vec<i64>>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Writer {
    fn start(db: PathBuf, origin: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(AtomicUsize::new(0));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, target, committed) = (stop.clone(), target.clone(), committed.clone());
            std::thread::spawn(move || {
                let lib = foreign_sqlite();
                let mut next = origin * 1_000_000_000;
                let mut tx = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if committed.lock().expect("ids").len() >= target.load(Ordering::Relaxed) {
                        std::thread::park(); // until `raise` or `finish`
                        continue;
                    }
                    let conn = lib.open(&db)?;
                    let mut sql = String::from("BEGIN IMMEDIATE;");
                    for i in 0..ROWS_PER_TX {
                        sql.push_str(&format!(
                            "INSERT INTO ledger VALUES ({}, {origin}, {tx}, randomblob(600));",
                            next + i
                        ));
                    }
                    sql.push_str("COMMIT;");
                    match conn.exec(&sql) {
                        Ok(()) => {
                            committed
                                .lock()
                                .expect("ids")
                                .extend(next..next + ROWS_PER_TX);
                            next += ROWS_PER_TX;
                        }
                        Err((SQLITE_BUSY, _)) => {
                            let _ = conn.exec("ROLLBACK");
                        }
                        Err((code, message)) => {
                            return Err(format!(
                                "app transaction {tx} on {}: ({code}) {message}",
                                db.display()
                            ))
                        }
                    }
                    if tx % 25 == 24 {
                        match conn.column("PRAGMA wal_checkpoint(TRUNCATE)") {
                            Ok(_) | Err((SQLITE_BUSY, _)) => {}
                            Err((code, message)) => {
                                return Err(format!("app checkpoint: ({code}) {message}"))
                            }
                        }
                    }
                    tx += 1;
                }
                Ok(())
            })
        };
        Writer {
            stop,
            target,
            committed,
            thread: Some(thread),
        }
    }

    fn raise(&self, rows: usize) {
        self.target.fetch_add(rows, Ordering::Relaxed);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    fn reached_target(&self) -> bool {
        self.committed() >= self.target.load(Ordering::Relaxed)
    }

    fn committed(&self) -> usize {
        self.committed.lock().expect("ids").len()
    }

    fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.thread().unpark();
        thread
            .join()
            .expect("writer thread")
            .unwrap_or_else(|err| panic!("the app's writes failed: {err}"));
        std::mem::take(&mut *self.committed.lock().expect("ids"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn integrity(db: &Path) -> (Vec<String>, Vec<String>) {
    let foreign = foreign_sqlite()
        .open(db)
        .expect("open")
        .column("PRAGMA integrity_check")
        .unwrap_or_else(|e| vec![format!("{e:?}")]);
    let engine: Vec<String> = {
        let conn = app_connection(db);
        let mut stmt = conn.prepare("PRAGMA integrity_check").expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .unwrap_or_else(|e| vec![e.to_string()])
    };
    (foreign, engine)
}

fn ledger_ids(db: &Path) -> BTreeSet<i64> {
    let conn = app_connection(db);
    let mut stmt = conn.prepare("SELECT id FROM ledger").expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("ids")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_on_another_sqlite_copy_writes_while_the_engine_applies_snapshots_and_checkpoints() {
    init_logging();
    let server = NatsServer::start();
    let store = tempfile::tempdir().expect("store");
    let a_config = with_dir_store(config_for(&server, 1), store.path());
    let b_config = with_dir_store(config_for(&server, 2), store.path());
    let a = Node::start(a_config, SCHEMA).await;
    let mut b = Node::start(b_config, SCHEMA).await;
    println!(
        "second SQLite copy: system libsqlite3 {}",
        foreign_sqlite().version()
    );

    let writer_a = Writer::start(a.db.clone(), 1);
    let writer_b = Writer::start(b.db.clone(), 2);
    let rounds = rounds();
    let mut snapshots = 0;
    for round in 0..rounds {
        // Both apps commit while each node applies the other's stream ...
        writer_a.raise(ROWS_PER_ROUND);
        writer_b.raise(ROWS_PER_ROUND);
        // ... and meanwhile a snapshot: publishes, waits for its own messages, then VACUUM INTO from a read-only connection
        // while the app writes.
        if a.replica()
            .save_snapshot()
            .await
            .expect("snapshot")
            .is_some()
        {
            snapshots += 1;
        }
        // The engine's copy checkpoints too (the replica also does, PASSIVE, when idle).
        app_connection(&a.db)
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .or_else(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::DatabaseBusy =>
                {
                    Ok(())
                }
                e => Err(e),
            })
            .expect("engine-copy checkpoint");
        // Every other round B's replica closes (its connections close their descriptors) and reopens
        // while its app writes.
        if round % 2 == 1 {
            b.close().await;
            b.open().await;
        }
        wait_until_async("both apps committed this round's rows", || {
            writer_a.reached_target() && writer_b.reached_target()
        })
        .await;
    }
    let ids_a = writer_a.finish();
    let ids_b = writer_b.finish();
    converge(&[&a, &b]).await;

    for node in [&a, &b] {
        let (foreign, engine) = integrity(&node.db);
        assert_eq!(foreign, ["ok"], "integrity_check through the other copy");
        assert_eq!(engine, ["ok"], "integrity_check through the engine's copy");
    }
    let expected: BTreeSet<i64> = ids_a.iter().chain(&ids_b).copied().collect();
    assert_eq!(expected.len(), ids_a.len() + ids_b.len());
    for node in [&a, &b] {
        let present = ledger_ids(&node.db);
        let missing: Vec<_> = expected.difference(&present).take(5).collect();
        assert!(
            missing.is_empty(),
            "{} misses ledger rows, e.g. {missing:?}",
            node.db.display()
        );
        assert_eq!(present.len(), expected.len(), "no row beyond the ledger");
    }
    assert_same(&[&a, &b], &["ledger"]);
    assert!(
        snapshots >= 1,
        "at least one snapshot was built during the writes"
    );
    println!(
        "{rounds} rounds: {} + {} ledger rows, {snapshots} snapshots, intact on both nodes",
        ids_a.len(),
        ids_b.len()
    );
}
