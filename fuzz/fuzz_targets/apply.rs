//! The applier on arbitrary received messages, against a real SQLite database with capture installed:
//! whatever arrives, applying it returns (Ok or Err) and never panics. Each input is applied in a
//! transaction that is rolled back, so every run starts from the same database.
#![no_main]

use std::sync::Mutex;

use std::collections::BTreeSet;

use harmonylite::apply::applier::Incoming;
use harmonylite::apply::transaction::{apply_batch, BatchRun};
use harmonylite::capture::{self, Schema};
use harmonylite::clock::{Clock, ClockHistory};
use harmonylite::Config;
use libfuzzer_sys::fuzz_target;
use rusqlite::Connection;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER CHECK (qty >= 0), price REAL);
    CREATE TABLE IF NOT EXISTS pairs(a TEXT, b INTEGER, v BLOB, PRIMARY KEY (a, b));
    CREATE TABLE IF NOT EXISTS tags(tag TEXT PRIMARY KEY, item INTEGER REFERENCES items(id), UNIQUE(item));
    CREATE TABLE IF NOT EXISTS strict_t(k INTEGER PRIMARY KEY, s TEXT) STRICT;
    CREATE TABLE IF NOT EXISTS rows(id TEXT PRIMARY KEY, writer INTEGER NOT NULL, generation INTEGER NOT NULL,
                                    n INTEGER NOT NULL, payload BLOB);
    CREATE TABLE IF NOT EXISTS hot(k INTEGER PRIMARY KEY, v TEXT NOT NULL, writer INTEGER NOT NULL);
";

struct Db {
    _dir: std::path::PathBuf,
    conn: Connection,
    schema: Schema,
}

static DB: Mutex<Option<Db>> = Mutex::new(None);

fn open() -> Db {
    let dir = std::env::temp_dir().join(format!("harmonylite-fuzz-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fuzz temp dir");
    let mut conn = Connection::open(dir.join("fuzz.db")).expect("open");
    conn.execute_batch(SCHEMA).expect("schema");
    conn.execute_batch(
        "INSERT OR IGNORE INTO items VALUES (1, 'one', 1, 1.5), (2, 'two', 2, NULL);",
    )
    .expect("rows");
    capture::create_library_tables(&conn).expect("library tables");
    let config = Config {
        node_id: 1,
        ..Config::default()
    };
    let schema = capture::install(&mut conn, &config).expect("capture");
    Db {
        _dir: dir,
        conn,
        schema,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = DB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let db = guard.get_or_insert_with(open);
    // First byte: 0xff wraps the rest in an uncompressed envelope (reach the MessagePack body directly);
    // otherwise the bytes are the payload as received.
    let payload = match data.split_first() {
        Some((0xff, rest)) => [b"HL\x01\x00".as_slice(), rest].concat(),
        _ => data.to_vec(),
    };
    let Ok(tx) = db.conn.transaction() else {
        return;
    };
    let mut clock = Clock::resume(0);
    let messages = [
        Incoming {
            shard: 0,
            seq: 1,
            payload: bytes::Bytes::from(payload.clone()),
            published_by: None,
        },
        // The same message again: a redelivery must be a no-op.
        Incoming {
            shard: 0,
            seq: 1,
            payload: bytes::Bytes::from(payload),
            published_by: None,
        },
    ];
    let history = ClockHistory::new(0);
    let parked_tables = BTreeSet::new();
    let run = BatchRun {
        schema: &db.schema,
        node_id: 2,
        instance: 1,
        stamp: None,
        history: &history,
        parked_tables: &parked_tables,
    };
    let _ = apply_batch(&tx, &run, &mut clock, &messages);
    drop(tx); // rolled back
});
