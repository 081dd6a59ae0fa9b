//! `close()` releases everything, so the same process can open the file again at once; a dropped handle does
//! not block the next open for long; a second open of one file in one process attaches to the first and takes
//! over when it closes (ADR 0010).

mod support;

use std::time::{Duration, Instant};

use harmonylite::{Config, ReplicaRole};
use support::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, note TEXT);";

fn count(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .expect("count")
}

fn store_of(db: &std::path::Path) -> std::path::PathBuf {
    Config::state_dir_for(db).join("nats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_open_again_at_once_three_times_and_replication_goes_on() {
    init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("a.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    // The embedded default, on a port fixed for the test so node B keeps one URL across the reopenings.
    let port = free_port();
    let mut config = Config {
        node_id: 1,
        ..Config::default()
    };
    config.nats.bind_address = format!("127.0.0.1:{port}");
    let mut b_config = Config {
        node_id: 2,
        ..Config::default()
    };
    b_config.nats.urls = vec![format!("nats://127.0.0.1:{port}")];

    // Closed handles are kept alive on purpose, as a garbage-collected language would keep them.
    let mut kept = Vec::new();
    let mut b: Option<Node> = None;
    for round in 0..3i64 {
        let started = Instant::now();
        let a = harmonylite::open_replicated(&db, config.clone())
            .await
            .unwrap_or_else(|err| panic!("round {round}: open again: {err}"));
        assert_eq!(a.role(), ReplicaRole::Active);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "round {round}: reopening took {:?}",
            started.elapsed()
        );
        if b.is_none() {
            b = Some(Node::start(b_config.clone(), SCHEMA).await);
        }
        let b = b.as_ref().expect("node b");
        let conn = app_connection(&db);
        for i in 0..10 {
            let id = round * 10 + i;
            conn.execute("INSERT INTO items VALUES (?1, 'from a')", [id])
                .expect("insert");
        }
        let token = a.sync(WAIT).await.expect("sync");
        b.replica().wait_for(&token, WAIT).await.expect("b applies");
        assert_eq!(count(&b.conn()), (round + 1) * 10);
        assert_eq!(count(&conn), (round + 1) * 10);
        a.close().await.expect("close");
        assert!(
            nats_servers_for(&store_of(&db)).is_empty(),
            "round {round}: close left the embedded nats-server running"
        );
        kept.push(a);
    }
    // Node B's write made while A (and with it the NATS server) was down goes out once A is back.
    let b = b.expect("node b");
    b.exec("INSERT INTO items VALUES (100, 'from b')");
    let a = harmonylite::open_replicated(&db, config.clone())
        .await
        .expect("open a last time");
    let token = b.sync().await;
    a.wait_for(&token, WAIT).await.expect("a applies");
    assert_eq!(dump(&app_connection(&db), "items"), b.dump("items"));
    assert_eq!(count(&app_connection(&db)), 31);
    a.close().await.expect("close");
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_replica_does_not_block_the_next_open() {
    init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("a.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    let config = Config {
        node_id: 1,
        ..Config::default()
    };
    for round in 0..2i64 {
        let replica = harmonylite::open_replicated(&db, config.clone())
            .await
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        app_connection(&db)
            .execute("INSERT INTO items VALUES (?1, 'x')", [round])
            .expect("insert");
        replica.sync(WAIT).await.expect("sync");
        drop(replica); // no close()
    }
    let started = Instant::now();
    let replica = harmonylite::open_replicated(&db, config)
        .await
        .expect("open after drop");
    // It waited for the dropped one to finish closing (a few seconds at most), then took the lock.
    wait_until_async("the new handle to run the replicator", || {
        replica.role() == ReplicaRole::Active
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    replica.sync(WAIT).await.expect("sync");
    assert_eq!(count(&app_connection(&db)), 2);
    replica.close().await.expect("close");
    assert!(nats_servers_for(&store_of(&db)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_in_one_process_attaches_and_takes_over_on_close() {
    init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("a.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    let config = Config {
        node_id: 7,
        ..Config::default()
    };
    let first = harmonylite::open_replicated(&db, config.clone())
        .await
        .expect("first open");
    let second = harmonylite::open_replicated(&db, Config::default())
        .await
        .expect("second open");
    assert_eq!(first.role(), ReplicaRole::Active);
    assert_eq!(second.role(), ReplicaRole::Attached);
    assert_eq!(second.node_id(), 7, "the node id comes from the replicator");
    assert_eq!(second.nats_urls(), first.nats_urls());
    let status = second.status().await.expect("attached status");
    assert_eq!(status.role, ReplicaRole::Attached);
    assert_eq!(status.replicator_pid, std::process::id());
    assert_eq!(status.node_id, 7);
    let status = first.status().await.expect("active status");
    assert_eq!(status.role, ReplicaRole::Active);
    assert_eq!(status.attached_handles, 1);
    assert_eq!(nats_servers_for(&store_of(&db)).len(), 1);

    let mut events = second.subscribe();
    // Any answer after subscribing means the replicator forwards events from then on.
    second.status().await.expect("status");
    app_connection(&db)
        .execute("INSERT INTO items VALUES (1, 'one')", [])
        .expect("insert");
    let event = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("an event");
    assert_eq!(event.table, "items");
    assert!(event.local);
    let token = second
        .sync(WAIT)
        .await
        .expect("sync through the replicator");
    second.wait_for(&token, WAIT).await.expect("wait_for");
    second.wait_ready(WAIT).await.expect("wait_ready");
    let manifest = second.save_snapshot().await.expect("snapshot");
    assert!(manifest.is_some(), "the only node holds the lease");
    assert!(second.applied().positions.values().sum::<u64>() >= 1);

    first.close().await.expect("close the first");
    wait_until_async("the second handle to take over", || {
        second.role() == ReplicaRole::Active
    })
    .await;
    let status = second.status().await.expect("status after takeover");
    assert_eq!(status.role, ReplicaRole::Active);
    assert_eq!(status.node_id, 7);
    assert_eq!(nats_servers_for(&store_of(&db)).len(), 1);
    // The subscription made while attached lives on.
    app_connection(&db)
        .execute("INSERT INTO items VALUES (2, 'two')", [])
        .expect("insert");
    let event = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("an event");
    assert_eq!(event.pk, vec![harmonylite::Value::Integer(2)]);
    second.sync(WAIT).await.expect("sync after takeover");
    second.close().await.expect("close");
    assert!(
        events.recv().await.is_none(),
        "closing ends the subscription"
    );
    assert!(nats_servers_for(&store_of(&db)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_is_refused_while_another_handle_replicates() {
    init_logging();
    let server = NatsServer::start();
    let node = Node::start(config_for(&server, 1), SCHEMA).await;
    let err = harmonylite::cleanup_database(&node.db).expect_err("in use");
    assert_eq!(err.code(), harmonylite::ErrorCode::Config, "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    let attached = harmonylite::open_replicated(&node.db, node.config.clone())
        .await
        .expect("attach");
    let err = attached.cleanup().await.expect_err("attached cleanup");
    assert_eq!(err.code(), harmonylite::ErrorCode::Config, "{err}");
    assert!(!attached.is_closed(), "a refused cleanup changes nothing");
    attached.close().await.expect("detach");
    node.replica().close().await.expect("close");
    let removed = harmonylite::cleanup_database(&node.db).expect("cleanup once closed");
    assert!(removed > 0);
}
