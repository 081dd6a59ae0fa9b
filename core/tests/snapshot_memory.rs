//! Saving and restoring a snapshot streams between files: the process's peak memory must not grow with the
//! database. Its own test binary with a single test, because the peak (VmHWM) is per process and tests in
//! one binary run on parallel threads.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use harmonylite::snapshot::{
    build, fetch_newest_valid, install, upload, DirStore, NatsObjectStore, SnapshotProgress,
    SnapshotStore,
};
use harmonylite::Config;
use rand::RngCore;
use rusqlite::Connection;
use support::*;

/// Incompressible, so the compressed object is as large as the database too.
const ROWS: usize = 768;
const BLOB: usize = 64 * 1024;

/// The process's peak resident set (VmHWM) in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line");
    kb * 1024
}

/// Resets the peak to the current resident set (Linux ≥ 4.0); without it the peak only ever grows, which
/// still bounds the growth of each phase from above.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn fill(db: &Path) -> u64 {
    let mut conn = Connection::open(db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )
    .expect("schema");
    let mut rng = rand::rng();
    let mut body = vec![0u8; BLOB];
    let tx = conn.transaction().expect("tx");
    for id in 0..ROWS {
        rng.fill_bytes(&mut body);
        tx.execute(
            "INSERT INTO blobs VALUES (?1, ?2)",
            rusqlite::params![id as i64, body],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    std::fs::metadata(db).expect("size").len()
}

/// SHA-256 over every row, to compare the restored database with the original.
fn fingerprint(db: &Path) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let conn = Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT id, body FROM blobs ORDER BY id")
        .expect("select");
    let mut rows = stmt.query([]).expect("query");
    let mut hasher = Sha256::new();
    let mut count = 0;
    while let Some(row) = rows.next().expect("row") {
        let id: i64 = row.get(0).expect("id");
        let body: Vec<u8> = row.get(1).expect("body");
        hasher.update(id.to_le_bytes());
        hasher.update(&body);
        count += 1;
    }
    assert_eq!(count, ROWS);
    hasher.finalize().to_vec()
}

/// Save then restore through `store`; returns the peak memory growth of each.
async fn save_and_restore(
    store: &dyn SnapshotStore,
    db: &Path,
    work: &Path,
    restored: &Path,
) -> (u64, u64) {
    let progress = Arc::new(Mutex::new(SnapshotProgress::default()));
    reset_peak_rss();
    let before = peak_rss();
    let (db_owned, work_owned) = (db.to_path_buf(), work.to_path_buf());
    let (packed, manifest) = tokio::task::spawn_blocking(move || build(&db_owned, &work_owned, 1))
        .await
        .expect("build task")
        .expect("build");
    assert!(manifest.bytes > (ROWS * BLOB) as u64, "incompressible data");
    upload(store, packed, &manifest, 2, &progress, None)
        .await
        .expect("upload");
    let save = peak_rss().saturating_sub(before);

    reset_peak_rss();
    let before = peak_rss();
    let (fetched, staged) = fetch_newest_valid(store, work, &progress, None)
        .await
        .expect("fetch")
        .expect("a snapshot");
    assert_eq!(fetched.object, manifest.object);
    let restored_owned = restored.to_path_buf();
    tokio::task::spawn_blocking(move || {
        install(&restored_owned, staged.path(), 2, &Config::default(), false)
    })
    .await
    .expect("install task")
    .expect("install");
    let restore = peak_rss().saturating_sub(before);
    assert_eq!(fingerprint(restored), fingerprint(db));
    let left: Vec<_> = std::fs::read_dir(work)
        .expect("work dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    (save, restore)
}

/// Saves and restores through `store` and fails if either grew the peak RSS by half the database or more.
async fn assert_bounded(
    name: &str,
    store: &dyn SnapshotStore,
    db: &Path,
    root: &Path,
    tag: &str,
    size: u64,
) {
    let (save, restore) = save_and_restore(
        store,
        db,
        &root.join(format!("work-{tag}")),
        &root.join(format!("restored-{tag}.db")),
    )
    .await;
    eprintln!(
        "{name}, database of {} MB: save +{} MB, restore +{} MB",
        size >> 20,
        save >> 20,
        restore >> 20
    );
    let limit = size / 2;
    assert!(
        save < limit && restore < limit,
        "{name}: peak memory grew by {save} bytes (save) and {restore} bytes (restore) for a database of {size} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_and_restoring_a_snapshot_does_not_hold_the_database_in_memory() {
    init_logging();
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("app.db");
    let size = fill(&db);
    assert!(size >= (ROWS * BLOB) as u64);

    let dir_store = DirStore::new(dir.path().join("store")).expect("dir store");
    assert_bounded("dir store", &dir_store, &db, dir.path(), "dir", size).await;

    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let nats_store = NatsObjectStore::open(&js, "memory", 1)
        .await
        .expect("bucket");
    assert_bounded(
        "NATS object store",
        &nats_store,
        &db,
        dir.path(),
        "nats",
        size,
    )
    .await;
}
