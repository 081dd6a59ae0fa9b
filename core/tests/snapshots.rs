//! Snapshots: new nodes and nodes behind the stream's retention bootstrap from one, keeping their own
//! unpublished writes; stores round-trip; one uploader at a time; bad snapshots and bad files are handled.

mod support;

use std::path::Path;

use std::sync::{Arc, Mutex};

use harmonylite::snapshot::{
    build, fetch_newest_valid, upload, DirStore, SnapshotProgress, SnapshotStore,
};
use harmonylite::Config;
use support::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin INTEGER, body TEXT);";

/// Retention so small that the stream alone cannot bring a new node up to date (live nodes keep up with
/// the few messages the tests produce while they run; bulk loads happen while the others are away).
fn small_retention(server: &NatsServer, node_id: u64) -> Config {
    let mut config = config_for(server, node_id);
    config.replication_log.max_entries = 10;
    config.replication_log.max_message_bytes = 64 * 1024;
    config
}

fn with_dir_store(mut config: Config, dir: &Path) -> Config {
    config.snapshot.store = harmonylite::config::StoreKind::Dir;
    config.snapshot.dir.path = dir.display().to_string();
    config
}

fn count(node: &Node) -> i64 {
    node.conn()
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count")
}

fn bulk_insert(db: &Path, from: i64, rows: i64, per_tx: i64, origin: u64) {
    let mut conn = app_connection(db);
    let mut id = from;
    while id < from + rows {
        let tx = conn.transaction().expect("tx");
        for _ in 0..per_tx.min(from + rows - id) {
            tx.execute(
                "INSERT INTO items VALUES (?1, ?2, ?3)",
                rusqlite::params![id, origin as i64, format!("row {id}")],
            )
            .expect("insert");
            id += 1;
        }
        tx.commit().expect("commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_a_cluster_holding_100k_rows_while_writes_continue() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(small_retention(&server, 1), SCHEMA).await;
    bulk_insert(&a.db, 0, 100_000, 5_000, 1);
    a.sync().await;
    let manifest = a
        .replica()
        .save_snapshot()
        .await
        .expect("save")
        .expect("A holds the lease");
    assert!(
        manifest.positions[&0] > 10,
        "the stream had more messages than retention keeps"
    );
    // B joins first (from the snapshot), making the 2-node cluster that holds 100k rows.
    let b = Node::start(small_retention(&server, 2), SCHEMA).await;
    converge(&[&a, &b]).await;
    assert_eq!(count(&b), 100_000);

    // Writes go on (on A and B) while the new node C bootstraps.
    let writer = {
        let db = a.db.clone();
        std::thread::spawn(move || bulk_insert(&db, 200_000, 1_500, 300, 1))
    };
    let c = Node::start(small_retention(&server, 3), SCHEMA).await;
    b.exec("UPDATE items SET body = 'edited on B' WHERE id = 7");
    writer.join().expect("writer");
    converge(&[&a, &b, &c]).await;
    assert_eq!(count(&c), 101_500);
    assert_same(&[&a, &b, &c], &["items"]);
    for node in [&b, &c] {
        let status = node.replica().status().await.expect("status");
        assert_eq!(
            status.snapshot.restored.as_deref(),
            Some(manifest.object.as_str())
        );
        assert!(!status.behind_retention);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_past_retention_catches_up_and_its_offline_writes_reach_the_others() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(small_retention(&server, 1), SCHEMA).await;
    let mut b = Node::start(small_retention(&server, 2), SCHEMA).await;
    a.exec("INSERT INTO items VALUES (1, 1, 'before')");
    converge(&[&a, &b]).await;
    b.close().await;
    b.exec("INSERT INTO items VALUES (2, 2, 'written on B while offline')");
    b.exec("UPDATE items SET body = 'B edited offline' WHERE id = 1");
    for batch in 0..30 {
        // Far more messages than the stream keeps.
        bulk_insert(&a.db, 100 + batch * 100, 100, 100, 1);
        a.sync().await;
    }
    a.replica()
        .save_snapshot()
        .await
        .expect("save")
        .expect("lease");
    b.open().await;
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["items"]);
    assert_eq!(count(&a), 3_002);
    let bodies: Vec<String> = a
        .dump("items")
        .into_iter()
        .take(2)
        .map(|r| r[2].clone())
        .collect();
    assert_eq!(
        bodies,
        vec!["tB edited offline", "twritten on B while offline"]
    );
    assert!(b
        .replica()
        .status()
        .await
        .expect("status")
        .snapshot
        .restored
        .is_some());
}

async fn round_trip(store: &dyn SnapshotStore) {
    store
        .put("snapshot-a.json", b"one".to_vec())
        .await
        .expect("put");
    store
        .put("snapshot-b.json", vec![7u8; 3_000_000])
        .await
        .expect("put large");
    store.put("other", b"x".to_vec()).await.expect("put");
    assert_eq!(
        store.get("snapshot-a.json").await.expect("get"),
        Some(b"one".to_vec())
    );
    assert_eq!(
        store
            .get("snapshot-b.json")
            .await
            .expect("get")
            .map(|b| b.len()),
        Some(3_000_000)
    );
    assert_eq!(store.get("missing").await.expect("get"), None);
    let mut keys = store.list("snapshot-").await.expect("list");
    keys.sort();
    assert_eq!(keys, vec!["snapshot-a.json", "snapshot-b.json"]);
    store
        .put("snapshot-a.json", b"two".to_vec())
        .await
        .expect("replace");
    assert_eq!(
        store.get("snapshot-a.json").await.expect("get"),
        Some(b"two".to_vec())
    );
    store.delete("snapshot-a.json").await.expect("delete");
    store.delete("snapshot-a.json").await.expect("delete twice");
    assert_eq!(
        store.list("snapshot-").await.expect("list"),
        vec!["snapshot-b.json"]
    );

    // Files: streamed up and down, replacing, and a missing object leaves the destination alone.
    let files = tempfile::tempdir().expect("dir");
    let source = files.path().join("source");
    let data: Vec<u8> = (0..3_000_017u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&source, &data).expect("write");
    store
        .put_file("snapshot-c.db.zst", &source)
        .await
        .expect("put_file");
    let dest = files.path().join("dest");
    assert!(store
        .get_file("snapshot-c.db.zst", &dest)
        .await
        .expect("get_file"));
    assert!(std::fs::read(&dest).expect("read") == data);
    assert_eq!(
        store
            .get("snapshot-c.db.zst")
            .await
            .expect("get")
            .map(|b| b.len()),
        Some(data.len())
    );
    std::fs::write(&source, b"smaller").expect("write");
    store
        .put_file("snapshot-c.db.zst", &source)
        .await
        .expect("put_file replaces");
    assert!(store
        .get_file("snapshot-c.db.zst", &dest)
        .await
        .expect("get_file"));
    assert_eq!(std::fs::read(&dest).expect("read"), b"smaller");
    let untouched = files.path().join("untouched");
    assert!(!store
        .get_file("missing", &untouched)
        .await
        .expect("get_file missing"));
    assert!(!untouched.exists());
    let mut keys = store.list("snapshot-").await.expect("list");
    keys.sort();
    assert_eq!(keys, vec!["snapshot-b.json", "snapshot-c.db.zst"]);
    assert!(store
        .put_file("snapshot-d", &files.path().join("no such file"))
        .await
        .is_err());
    assert!(!store
        .list("snapshot-")
        .await
        .expect("list")
        .contains(&"snapshot-d".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_and_nats_object_stores_round_trip() {
    init_logging();
    let dir = tempfile::tempdir().expect("dir");
    round_trip(&DirStore::new(dir.path().join("snaps")).expect("dir store")).await;
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let store = harmonylite::snapshot::NatsObjectStore::open(&js, "round-trip", 1)
        .await
        .expect("bucket");
    round_trip(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_snapshotting_at_once_upload_exactly_one() {
    init_logging();
    let server = NatsServer::start();
    let snaps = tempfile::tempdir().expect("dir");
    let a = Node::start(with_dir_store(config_for(&server, 1), snaps.path()), SCHEMA).await;
    let b = Node::start(with_dir_store(config_for(&server, 2), snaps.path()), SCHEMA).await;
    a.exec("INSERT INTO items VALUES (1, 1, 'x')");
    converge(&[&a, &b]).await;
    let (from_a, from_b) = tokio::join!(a.replica().save_snapshot(), b.replica().save_snapshot());
    let uploads = [from_a.expect("a"), from_b.expect("b")]
        .into_iter()
        .flatten()
        .count();
    assert_eq!(uploads, 1, "exactly one node uploads");
    let store = DirStore::new(snaps.path()).expect("store");
    let manifests: Vec<String> = store
        .list("snapshot-")
        .await
        .expect("list")
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .collect();
    assert_eq!(manifests.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_is_rejected_and_the_older_one_is_used() {
    init_logging();
    let server = NatsServer::start();
    let snaps = tempfile::tempdir().expect("dir");
    let config = |id| with_dir_store(config_for(&server, id), snaps.path());
    let a = Node::start(config(1), SCHEMA).await;
    a.exec("INSERT INTO items VALUES (1, 1, 'first')");
    a.sync().await;
    let older = a
        .replica()
        .save_snapshot()
        .await
        .expect("save")
        .expect("lease");
    a.exec("INSERT INTO items VALUES (2, 1, 'second')");
    a.sync().await;
    let newer = a
        .replica()
        .save_snapshot()
        .await
        .expect("save")
        .expect("lease");
    assert_ne!(older.object, newer.object);
    // Flip bytes in the newest snapshot's data.
    let path = snaps.path().join(&newer.object);
    let mut bytes = std::fs::read(&path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt");

    let c = Node::start_without_database(config(3)).await;
    converge(&[&a, &c]).await;
    assert_same(&[&a, &c], &["items"]);
    let status = c.replica().status().await.expect("status");
    assert_eq!(
        status.snapshot.restored.as_deref(),
        Some(older.object.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_corrupted_database_is_rebuilt_on_restart() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(small_retention(&server, 1), SCHEMA).await;
    let mut b = Node::start(small_retention(&server, 2), SCHEMA).await;
    bulk_insert(&a.db, 0, 2_000, 100, 1);
    converge(&[&a, &b]).await;
    a.replica()
        .save_snapshot()
        .await
        .expect("save")
        .expect("lease");

    // Deleted.
    b.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", b.db.display()));
    }
    b.open().await;
    a.exec("INSERT INTO items VALUES (99999, 1, 'after the rebuild')");
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["items"]);
    assert_eq!(b.replica().node_id(), 2);

    // Corrupted: garbage over the middle of the file.
    b.close().await;
    {
        let conn = b.conn();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
    }
    let mut bytes = std::fs::read(&b.db).expect("read");
    let len = bytes.len();
    for byte in &mut bytes[len / 3..len / 3 + 8192] {
        *byte = 0x5a;
    }
    std::fs::write(&b.db, bytes).expect("corrupt");
    b.open().await;
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["items"]);
    let aside = std::fs::read_dir(b.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("corrupt-"));
    assert!(aside, "the corrupted file is kept aside for inspection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_saved_on_an_interval_and_after_the_stream_grows() {
    init_logging();
    let server = NatsServer::start();
    let manifests = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        name.starts_with("snapshot-") && name.ends_with(".json")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    // On an interval.
    let timed = tempfile::tempdir().expect("dir");
    let mut config = with_dir_store(config_for(&server, 1), timed.path());
    config.snapshot.interval = 300;
    let a = Node::start(config, SCHEMA).await;
    a.exec("INSERT INTO items VALUES (1, 1, 'x')");
    wait_until_async("a snapshot saved by the interval", || {
        manifests(timed.path()) >= 1
    })
    .await;

    // After the stream grew by `after_messages`.
    let grown = tempfile::tempdir().expect("dir");
    let mut config = with_dir_store(config_for(&server, 2), grown.path());
    config.nats.stream_prefix = "grown".into();
    config.nats.subject_prefix = "grown-log".into();
    config.snapshot.after_messages = 5;
    let b = Node::start(config, SCHEMA).await;
    assert_eq!(manifests(grown.path()), 0);
    for i in 0..6 {
        b.exec(&format!("INSERT INTO items VALUES ({i}, 2, 'y')"));
        b.sync().await;
    }
    wait_until_async("a snapshot saved after the stream grew", || {
        manifests(grown.path()) >= 1
    })
    .await;
    drop(a);
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The file-based pipeline on its own: a truncated object, one that decompresses larger than its manifest
/// says, and a corrupted one are each rejected for the next older snapshot, and no temporary file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_objects_are_rejected_and_leave_no_temporary_files() {
    init_logging();
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("app.db");
    let work = dir.path().join("work");
    let store = DirStore::new(dir.path().join("store")).expect("store");
    let progress = Arc::new(Mutex::new(SnapshotProgress::default()));
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(SCHEMA).expect("schema");
    let mut manifests = Vec::new();
    for round in 0..4i64 {
        conn.execute(
            "INSERT INTO items VALUES (?1, 1, ?2)",
            rusqlite::params![round, "x".repeat(20_000)],
        )
        .expect("insert");
        // The object name comes from the stored clock: a newer one per round.
        harmonylite::capture::create_library_tables(&conn).expect("library tables");
        conn.execute(
            "INSERT OR REPLACE INTO __harmonylite__meta(key, value) VALUES ('hlc', ?1)",
            [1000 + round],
        )
        .expect("clock");
        let (packed, manifest) = build(&db, &work, 1).expect("build");
        assert!(packed.path().exists());
        upload(&store, packed, &manifest, 10, &progress, None)
            .await
            .expect("upload");
        assert!(entries(&work).is_empty(), "{:?}", entries(&work));
        manifests.push(manifest);
    }
    let object = |i: usize| dir.path().join("store").join(&manifests[i].object);
    // Newest: truncated.
    let bytes = std::fs::read(object(3)).expect("read");
    std::fs::write(object(3), &bytes[..bytes.len() / 2]).expect("truncate");
    // Next: a manifest claiming fewer raw bytes than the object holds (checksum still right).
    let mut lying = manifests[2].clone();
    lying.raw_bytes -= 1;
    let json = serde_json::to_vec(&lying).expect("json");
    let manifest_key = manifests[2].object.trim_end_matches(".db.zst").to_string() + ".json";
    store.put(&manifest_key, json).await.expect("put");
    // Next: a flipped byte.
    let mut bytes = std::fs::read(object(1)).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(object(1), bytes).expect("corrupt");
    // `latest` still points at the truncated newest one.

    let (manifest, staged) = fetch_newest_valid(&store, &work, &progress, None)
        .await
        .expect("fetch")
        .expect("the oldest snapshot is good");
    assert_eq!(manifest.object, manifests[0].object);
    assert_eq!(
        entries(&work).len(),
        1,
        "only the staged database: {:?}",
        entries(&work)
    );
    let restored = rusqlite::Connection::open(staged.path()).expect("open staged");
    let rows: i64 = restored
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 1);
    drop(restored);
    drop(staged);
    assert!(entries(&work).is_empty(), "{:?}", entries(&work));

    // All bad: the error names the store and every object with its reason.
    std::fs::remove_file(object(0)).expect("remove");
    let err = fetch_newest_valid(&store, &work, &progress, None)
        .await
        .expect_err("no valid snapshot");
    let text = err.to_string();
    for part in [
        store.describe(),
        format!("{}: checksum mismatch", manifests[3].object),
        format!(
            "{}: cannot decompress: decompressed size exceeds",
            manifests[2].object
        ),
        format!("{}: checksum mismatch", manifests[1].object),
        format!("{}: object missing", manifests[0].object),
    ] {
        assert!(text.contains(&part), "`{part}` missing from: {text}");
    }
    assert!(entries(&work).is_empty(), "{:?}", entries(&work));
}

/// A snapshot strips node state (identity, queues). A large stripped queue is compacted away; a small one
/// is left as zeroed free pages rather than paying for a second copy of the whole database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_strip_node_state_and_compact_only_when_it_pays() {
    init_logging();
    let dir = tempfile::tempdir().expect("dir");
    let progress = Arc::new(Mutex::new(SnapshotProgress::default()));
    let store = DirStore::new(dir.path().join("store")).expect("store");
    for (case, outbox_mb) in [("small queue", 0usize), ("large queue", 8)] {
        let db = dir.path().join(format!("{}.db", case.replace(' ', "-")));
        let conn = app_connection(&db);
        harmonylite::capture::create_library_tables(&conn).expect("library tables");
        conn.execute_batch(SCHEMA).expect("schema");
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO items SELECT i, 1, hex(randomblob(200)) FROM n;
             INSERT INTO __harmonylite__meta(key, value) VALUES ('node_id', 77);",
        )
        .expect("rows");
        for _ in 0..outbox_mb {
            conn.execute(
                "INSERT INTO __harmonylite__outbox(shard, rows, payload) VALUES (0, 1, randomblob(1048576))",
                [],
            )
            .expect("outbox");
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        let work = dir.path().join(format!("work-{outbox_mb}"));
        let db_bytes = std::fs::metadata(&db).expect("db").len();
        let (packed, manifest) = build(&db, &work, 77).expect("build");
        assert!(
            manifest.raw_bytes < 2 << 20,
            "{case}: {} raw bytes for a database of {db_bytes} bytes (compaction expected when the strip frees much)",
            manifest.raw_bytes
        );
        upload(&store, packed, &manifest, 10, &progress, None)
            .await
            .expect("upload");
        let (fetched, staged) = fetch_newest_valid(&store, &work, &progress, None)
            .await
            .expect("fetch")
            .expect("a snapshot");
        assert_eq!(fetched.object, manifest.object);
        let copy = rusqlite::Connection::open(staged.path()).expect("open staged");
        let (items, queued, identity): (i64, i64, i64) = copy
            .query_row(
                "SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM __harmonylite__outbox),
                        (SELECT count(*) FROM __harmonylite__meta WHERE key = 'node_id')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("read staged");
        assert_eq!((items, queued, identity), (2000, 0, 0), "{case}");
        drop(copy);
        std::fs::remove_dir_all(dir.path().join("store")).expect("empty the store");
        std::fs::create_dir_all(dir.path().join("store")).expect("store");
    }
}
