//! Instruction counts of the engine's own work per replicated row, without NATS: node A's app inserts
//! `--rows` rows (transactions of `--tx-rows`), A's stamper turns them into outbox messages, and node B
//! applies those messages (one apply transaction per `--messages-per-batch` messages), through the
//! functions the database thread runs (`stamp_pending`, `apply_batch`).
//!
//! Wall time on a shared 2-core machine says little; instructions repeat. Run it under callgrind and
//! read the inclusive cost of the three phase functions (`phase_app_insert`, `phase_stamp`,
//! `phase_apply`):
//!
//! ```sh
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cost.out \
//!     target/x86_64-unknown-linux-gnu/release/pipeline_cost --rows 20000 --tx-rows 100
//! callgrind_annotate --inclusive=yes /tmp/cost.out | grep phase_
//! ```
//!
//! `--stamp-every N` stamps after every N rows (as a live stamper does), which shows the fixed cost
//! of a stamp transaction; `--messages-per-batch` sets the messages per apply transaction. The WAL
//! bytes each node wrote are printed too (checkpoints off): the write I/O that instructions miss.
//!
//! The same harness, adapted to the older API, measured d790278 (before the column merge): see
//! BENCHMARKS.md, "W3 and W4 after the column merge".

use std::collections::BTreeSet;
use std::path::Path;

use harmonylite::apply::applier::Incoming;
use harmonylite::apply::transaction::{apply_batch, BatchRun};
use harmonylite::capture::{self, Schema};
use harmonylite::clock::{Clock, ClockHistory};
use harmonylite::log::PublishedBy;
use harmonylite::publish::stamp::{stamp_pending, StampSettings};
use harmonylite::state::{meta, outbox, parked};
use harmonylite::Config;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL);";

struct Args {
    rows: i64,
    tx_rows: i64,
    messages_per_batch: usize,
    /// Stamp after every this many rows (0: once, after all of them), as a live stamper does.
    stamp_every: i64,
}

fn args() -> Args {
    let mut out = Args {
        rows: 20_000,
        tx_rows: 100,
        messages_per_batch: 1,
        stamp_every: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = || pair.get(1).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        match pair[0].as_str() {
            "--rows" => out.rows = value(),
            "--tx-rows" => out.tx_rows = value().max(1),
            "--messages-per-batch" => out.messages_per_batch = value().max(1) as usize,
            "--stamp-every" => out.stamp_every = value().max(0),
            other => panic!("unknown argument {other}"),
        }
    }
    out
}

/// The bench workload's row body: pseudo-random text, so compression behaves as with real data.
fn body(id: i64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
    let mut state = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..100)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// The library's connection, opened as the database thread opens it.
fn engine_connection(db: &Path, config: &Config) -> (Connection, Schema, Clock, u64) {
    let mut conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("engine connection");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 0;",
    )
    .expect("pragmas");
    conn.set_prepared_statement_cache_capacity(256);
    capture::create_library_tables(&conn).expect("library tables");
    let schema = capture::install(&mut conn, config).expect("install");
    let clock = meta::clock(&conn).expect("clock");
    let instance = meta::instance(&conn).expect("instance");
    (conn, schema, clock, instance)
}

fn app_connection(db: &Path) -> Connection {
    let app = Connection::open(db).expect("app connection");
    app.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;",
    )
    .expect("pragmas");
    app.execute_batch(SCHEMA).expect("schema");
    app
}

#[inline(never)]
fn phase_app_insert(app: &mut Connection, start: i64, rows: i64, tx_rows: i64) {
    let mut id = start;
    let rows = start + rows;
    while id < rows {
        let tx = app.transaction().expect("begin");
        for row in id..(id + tx_rows).min(rows) {
            tx.prepare_cached("INSERT INTO items(id, grp, name, body) VALUES (?1, ?2, ?3, ?4)")
                .and_then(|mut s| {
                    s.execute(params![row, row % 97, format!("item-{row:08}"), body(row)])
                })
                .expect("insert");
        }
        tx.commit().expect("commit");
        id += tx_rows;
    }
}

/// Stamps everything logged, `scan_max_changes` entries per transaction as the database thread does;
/// returns the outbox messages (payload, message id), acknowledged at once.
#[inline(never)]
fn phase_stamp(
    conn: &mut Connection,
    schema: &Schema,
    clock: &mut Clock,
    history: &ClockHistory,
    settings: &StampSettings,
) -> Vec<(Vec<u8>, String)> {
    let mut published = Vec::new();
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        let stamped = stamp_pending(&tx, schema, clock, history, settings).expect("stamp");
        let ids: Vec<i64> = stamped.outbox.iter().map(|e| e.id).collect();
        outbox::delete(&tx, &ids).expect("ack");
        tx.commit().expect("commit");
        if stamped.log_entries == 0 {
            break;
        }
        published.extend(
            stamped
                .outbox
                .into_iter()
                .map(|e| (e.payload.to_vec(), e.msg_id)),
        );
    }
    published
}

#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn phase_apply(
    conn: &mut Connection,
    schema: &Schema,
    clock: &mut Clock,
    history: &ClockHistory,
    settings: &StampSettings,
    node_id: u64,
    instance: u64,
    messages: &[Incoming],
    per_batch: usize,
) -> u64 {
    let mut parked_tables: BTreeSet<String> = parked::tables(conn).expect("parked tables");
    let mut applied = 0;
    for chunk in messages.chunks(per_batch) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        let run = BatchRun {
            schema,
            node_id,
            instance,
            stamp: Some(settings),
            history,
            parked_tables: &parked_tables,
            retry_parked: true,
        };
        let result = apply_batch(&tx, &run, clock, chunk).expect("apply");
        tx.commit().expect("commit");
        applied += result.outcome.applied;
        if let Some(now) = result.parked_tables {
            parked_tables = now;
        }
    }
    applied
}

/// Bytes in a database's WAL: with checkpoints off, what every phase wrote (the I/O callgrind misses).
fn wal_bytes(dir: &Path, node: u64) -> u64 {
    std::fs::metadata(dir.join(format!("node{node}.db-wal")))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn main() {
    let args = args();
    // As `open_replicated` does: the engine's SQLite takes its locks through the OFD shim.
    let _locking = harmonylite::sqlite_locks::install().expect("lock shim");
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes: Vec<_> = (1..=2u64)
        .map(|node_id| {
            let db = dir.path().join(format!("node{node_id}.db"));
            let app = app_connection(&db);
            let config = Config {
                node_id,
                ..Config::default()
            };
            let (engine, schema, clock, instance) = engine_connection(&db, &config);
            (node_id, app, config, engine, schema, clock, instance)
        })
        .collect();
    let mut nodes = nodes.into_iter();
    let (a_id, mut a_app, a_config, mut a_engine, a_schema, mut a_clock, a_instance) =
        nodes.next().expect("node A");
    let (b_id, b_app, b_config, mut b_engine, b_schema, mut b_clock, b_instance) =
        nodes.next().expect("node B");

    let wal_a0 = wal_bytes(dir.path(), 1);
    let a_history = ClockHistory::new(a_clock.last());
    let a_settings = StampSettings::from_config(&a_config, a_id, a_instance);
    let chunk = if args.stamp_every > 0 {
        args.stamp_every
    } else {
        args.rows
    };
    let mut published = Vec::new();
    let mut stamps = 0usize;
    let mut start = 0;
    while start < args.rows {
        let rows = chunk.min(args.rows - start);
        phase_app_insert(&mut a_app, start, rows, args.tx_rows);
        published.extend(phase_stamp(
            &mut a_engine,
            &a_schema,
            &mut a_clock,
            &a_history,
            &a_settings,
        ));
        stamps += 1;
        start += rows;
    }
    println!("stamp calls {stamps}");
    let wal_a2 = wal_bytes(dir.path(), 1);
    let wal_b0 = wal_bytes(dir.path(), 2);
    let messages: Vec<Incoming> = published
        .iter()
        .enumerate()
        .map(|(i, (payload, msg_id))| Incoming {
            shard: 0,
            seq: i as u64 + 1,
            payload: payload.clone().into(),
            published_by: PublishedBy::from_message_id(msg_id),
            refused: None,
            retry: false,
        })
        .collect();
    let b_history = ClockHistory::new(b_clock.last());
    let b_settings = StampSettings {
        max_changes: u32::MAX,
        ..StampSettings::from_config(&b_config, b_id, b_instance)
    };
    let applied = phase_apply(
        &mut b_engine,
        &b_schema,
        &mut b_clock,
        &b_history,
        &b_settings,
        b_id,
        b_instance,
        &messages,
        args.messages_per_batch,
    );
    let wal_b1 = wal_bytes(dir.path(), 2);
    let per_row = |bytes: u64| bytes as f64 / args.rows.max(1) as f64;
    println!(
        "WAL bytes per row: app insert and stamp {:.0}, apply {:.0}",
        per_row(wal_a2 - wal_a0),
        per_row(wal_b1 - wal_b0)
    );
    let count: i64 = b_app
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count");
    println!(
        "rows {} tx_rows {} messages {} applied {applied} rows on B {count}",
        args.rows,
        args.tx_rows,
        messages.len()
    );
    assert_eq!(count, args.rows, "B must hold every row");
}
