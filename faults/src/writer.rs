//! The app: a separate process writing the node's database with plain SQLite, recording every
//! transaction in its ledger (`I` before the commit, `C` after it returned, each fsync'd).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection, TransactionBehavior};

pub const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS rows(id TEXT PRIMARY KEY, writer INTEGER NOT NULL, generation INTEGER NOT NULL,
                                    n INTEGER NOT NULL, payload BLOB);
    CREATE TABLE IF NOT EXISTS hot(k INTEGER PRIMARY KEY, v TEXT NOT NULL, writer INTEGER NOT NULL);
";

/// Hot rows every writer updates (and sometimes deletes): last-writer-wins must agree everywhere.
pub const HOT_KEYS: i64 = 16;

pub struct WriterArgs {
    pub db: PathBuf,
    pub ledger: PathBuf,
    pub writer: u64,
    pub generation: u64,
    pub seed: u64,
    pub pace: Duration,
}

fn now_ms() -> u64 {
    harmonylite::clock::wall_millis()
}

fn record(ledger: &mut std::fs::File, kind: &str, ids: &[String]) -> std::io::Result<()> {
    ledger.write_all(format!("{kind} {} {}\n", now_ms(), ids.join(",")).as_bytes())?;
    ledger.sync_data()
}

/// Runs until killed.
pub fn run(args: &WriterArgs) -> Result<(), String> {
    let mut conn =
        Connection::open(&args.db).map_err(|e| format!("open {}: {e}", args.db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let mut ledger = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.ledger)
        .map_err(|e| format!("open {}: {e}", args.ledger.display()))?;
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(args.seed ^ (args.writer << 32) ^ args.generation);
    let mut n: u64 = 0;
    loop {
        n += 1;
        let count = rng.random_range(1..=4u64);
        let ids: Vec<String> = (0..count)
            .map(|i| format!("w{}g{}n{n}r{i}", args.writer, args.generation))
            .collect();
        let hot = rng.random_bool(0.5).then(|| rng.random_range(1..=HOT_KEYS));
        let delete_hot = rng
            .random_bool(0.05)
            .then(|| rng.random_range(1..=HOT_KEYS));
        let payload: Vec<u8> = (0..rng.random_range(0..256usize))
            .map(|_| rng.random())
            .collect();
        record(&mut ledger, "I", &ids).map_err(|e| format!("ledger: {e}"))?;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = (|| -> rusqlite::Result<()> {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for (i, id) in ids.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO rows(id, writer, generation, n, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![id, args.writer as i64, args.generation as i64, (n * 10 + i as u64) as i64, payload],
                    )?;
                }
                if let Some(k) = hot {
                    tx.execute(
                        "INSERT INTO hot(k, v, writer) VALUES (?1, ?2, ?3)
                         ON CONFLICT(k) DO UPDATE SET v = excluded.v, writer = excluded.writer",
                        params![k, ids[0], args.writer as i64],
                    )?;
                }
                if let Some(k) = delete_hot {
                    tx.execute("DELETE FROM hot WHERE k = ?1", params![k])?;
                }
                tx.commit()
            })();
            match result {
                Ok(()) => break,
                Err(err) if attempt < 1000 => {
                    eprintln!(
                        "writer {}: transaction failed, retrying: {err}",
                        args.writer
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(format!("giving up: {err}")),
            }
        }
        record(&mut ledger, "C", &ids).map_err(|e| format!("ledger: {e}"))?;
        std::thread::sleep(args.pace);
    }
}

/// Burns one CPU until killed (load while processes are paused).
pub fn hog() {
    let mut x: u64 = 1;
    loop {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::hint::black_box(x);
    }
}
