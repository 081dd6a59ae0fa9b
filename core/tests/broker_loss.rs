//! Broker data loss is detected and handled: the server losing its JetStream store (or a stream deleted)
//! while nodes write, a node that was down meanwhile, a stored position beyond the stream's last message.
//! Positions are reset to the stream the server holds now, every write made after the loss replicates, and
//! `status()` reports the loss. Every node then publishes the rows it holds again with their versions, so
//! rows that only the lost messages carried reach the nodes that had not applied them — written by a node
//! that is gone since included.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const SCHEMA: &str =
    "CREATE TABLE ledger(id TEXT PRIMARY KEY, node INTEGER NOT NULL, n INTEGER NOT NULL);";
const STREAM: &str = "harmonylite-changes-0";

/// Rows each writer committed, and when the commit returned.
type Ledger = Arc<Mutex<Vec<(String, Instant)>>>;

/// An app process writing one row per transaction into its node's database until told to stop.
struct Writer {
    stop: Arc<AtomicBool>,
    ledger: Ledger,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(node: &Node, node_id: u64) -> Writer {
        let (stop, ledger): (Arc<AtomicBool>, Ledger) = Default::default();
        let conn = node.conn();
        let (stop_flag, rows) = (stop.clone(), ledger.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let id = format!("{node_id}-{n}");
                conn.execute(
                    "INSERT INTO ledger(id, node, n) VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, node_id as i64, n as i64],
                )
                .expect("the app's insert");
                rows.lock().expect("ledger").push((id, Instant::now()));
                n += 1;
                // Pacing, not synchronisation: an app writing a few hundred rows a second.
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        Writer {
            stop,
            ledger,
            thread: Some(thread),
        }
    }

    fn committed(&self) -> usize {
        self.ledger.lock().expect("ledger").len()
    }

    fn committed_after(&self, at: Instant) -> usize {
        self.ledger
            .lock()
            .expect("ledger")
            .iter()
            .filter(|(_, committed)| *committed > at)
            .count()
    }

    fn stop(&mut self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer thread");
        }
        self.ledger.lock().expect("ledger").clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn rows(node: &Node) -> BTreeMap<String, (i64, i64)> {
    let conn = node.conn();
    let mut stmt = conn
        .prepare("SELECT id, node, n FROM ledger")
        .expect("select");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

async fn status(node: &Node) -> harmonylite::Status {
    node.replica().status().await.expect("status")
}

async fn wait_for_loss_handled(node: &Node) {
    let started = Instant::now();
    loop {
        let status = status(node).await;
        let repaired = status
            .broker_data_loss
            .iter()
            .any(|l| l.position_reset && l.republished_rows.is_some());
        if repaired && status.streams_ready {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "node {} did not detect and handle the broker data loss: {:?}",
            status.node_id,
            status.broker_data_loss
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_loss_reported(status: &harmonylite::Status) {
    assert!(status.broker_data_loss_detected, "{status:?}");
    assert!(status.broker_data_loss_events >= 1);
    let loss = status
        .broker_data_loss
        .iter()
        .find(|l| l.stream == STREAM)
        .unwrap_or_else(|| {
            panic!(
                "no loss recorded for {STREAM}: {:?}",
                status.broker_data_loss
            )
        });
    assert!(loss.position_reset, "{loss:?}");
    assert!(loss.republished_rows.is_some(), "not republished: {loss:?}");
    let shard = &status.shards[0];
    let last = shard.stream_last_seq.expect("stream answers");
    assert!(
        shard.applied_seq <= last,
        "applied {} beyond the new stream's last {last}",
        shard.applied_seq
    );
    let health = status.health();
    assert!(
        !health
            .problems
            .iter()
            .any(|p| p.contains("broker data loss")),
        "the loss is repaired from this node's side once it republished: {health:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_wiped_while_three_nodes_write_new_writes_replicate_and_status_reports_it() {
    init_logging();
    let mut server = NatsServer::start();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node::start(config_for(&server, id), SCHEMA).await);
    }
    for node in &nodes {
        node.replica().wait_ready(WAIT).await.expect("ready");
    }
    let mut writers: Vec<Writer> = nodes
        .iter()
        .zip(1u64..)
        .map(|(node, id)| Writer::start(node, id))
        .collect();
    wait_until_async("writers committing", || {
        writers.iter().all(|w| w.committed() >= 30)
    })
    .await;
    converge(&nodes.iter().collect::<Vec<_>>()).await;

    // The disk under the server is lost; the server comes back empty on the same port.
    server.kill();
    let lost_at = Instant::now();
    wait_until_async("writes during the outage", || {
        writers.iter().all(|w| w.committed_after(lost_at) >= 10)
    })
    .await;
    server.restart_with_store_wiped();
    for node in &nodes {
        wait_for_loss_handled(node).await;
    }
    let handled_at = Instant::now();
    wait_until_async("writes after the repair", || {
        writers.iter().all(|w| w.committed_after(handled_at) >= 20)
    })
    .await;
    let ledgers: Vec<Vec<(String, Instant)>> = writers.iter_mut().map(Writer::stop).collect();
    converge(&nodes.iter().collect::<Vec<_>>()).await;

    let held: Vec<BTreeMap<String, (i64, i64)>> = nodes.iter().map(rows).collect();
    let mut checked = 0;
    for (writer, ledger) in ledgers.iter().enumerate() {
        for (id, committed) in ledger.iter().filter(|(_, at)| *at > lost_at) {
            checked += 1;
            let first = held[0].get(id);
            for (i, node_rows) in held.iter().enumerate() {
                assert!(
                    node_rows.get(id).is_some(),
                    "row {id} (writer {writer}, committed {:?} after the store was lost) missing on node {}",
                    committed.duration_since(lost_at),
                    i + 1
                );
                assert_eq!(
                    node_rows.get(id),
                    first,
                    "row {id} differs on node {}",
                    i + 1
                );
            }
        }
    }
    assert!(checked >= 90, "only {checked} rows written after the loss");
    for node in &nodes {
        let status = status(node).await;
        assert_loss_reported(&status);
        assert!(
            status.missing_streams.is_empty(),
            "{:?}",
            status.missing_streams
        );
    }
}

/// Writes `rows` on `node`, one message each, and returns the stream's last sequence after them.
async fn write_rows(node: &Node, node_id: u64, range: std::ops::Range<u64>) -> u64 {
    for n in range {
        node.exec(&format!(
            "INSERT INTO ledger(id, node, n) VALUES ('{node_id}-{n}', {node_id}, {n})"
        ));
        node.sync().await;
    }
    status(node).await.shards[0]
        .stream_last_seq
        .expect("the stream answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_the_store_was_lost_notices_the_recreated_stream_when_it_starts() {
    init_logging();
    let mut server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut c = Node::start(config_for(&server, 3), SCHEMA).await;
    write_rows(&a, 1, 0..8).await;
    converge(&[&a, &c]).await;
    let old_position = status(&c).await.shards[0].applied_seq;
    assert!(old_position >= 8);
    c.close().await;

    server.restart_with_store_wiped();
    // More messages than C's old position: only the stream's identity can tell C it is a new stream.
    let last = write_rows(&a, 1, 100..100 + old_position + 5).await;
    assert!(last > old_position, "{last} <= {old_position}");
    c.open().await;
    converge(&[&a, &c]).await;
    let on_c = rows(&c);
    for n in 100..100 + old_position + 5 {
        assert!(
            on_c.contains_key(&format!("1-{n}")),
            "row 1-{n}, written to the new stream, missing on C"
        );
    }
    let status = status(&c).await;
    assert_loss_reported(&status);
    assert!(
        status.broker_data_loss[0].reason.contains("recreated"),
        "{:?}",
        status.broker_data_loss
    );
    a.replica().close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_position_beyond_the_streams_last_sequence_is_detected() {
    init_logging();
    let mut server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut c = Node::start(config_for(&server, 3), SCHEMA).await;
    write_rows(&a, 1, 0..10).await;
    converge(&[&a, &c]).await;
    c.close().await;
    // C keeps no record of the stream it read (as after an upgrade): only its position can tell.
    let identities = c.dir.path().join("app.db.harmonylite").join("streams.json");
    assert!(identities.exists(), "the stream identity was recorded");
    std::fs::remove_file(&identities).expect("forget the stream identity");

    server.restart_with_store_wiped();
    let last = write_rows(&a, 1, 100..103).await;
    assert!(last < 10);
    c.open().await;
    converge(&[&a, &c]).await;
    let on_c = rows(&c);
    for n in 100..103 {
        assert!(
            on_c.contains_key(&format!("1-{n}")),
            "row 1-{n} missing on C"
        );
    }
    let status = status(&c).await;
    assert_loss_reported(&status);
    assert!(
        status.broker_data_loss[0].reason.contains("beyond"),
        "{:?}",
        status.broker_data_loss
    );
    a.replica().close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_while_running_is_reported_missing_then_created_again() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    write_rows(&a, 1, 0..3).await;
    converge(&[&a, &b]).await;
    assert!(status(&b).await.streams_ready);

    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    // Someone deletes the stream and takes its subject: the stream cannot be created again for now.
    js.delete_stream(STREAM).await.expect("delete");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "squatter".into(),
        subjects: vec!["harmonylite-change-log.0".into()],
        ..Default::default()
    })
    .await
    .expect("squat the subject");
    for node in [&a, &b] {
        let started = Instant::now();
        loop {
            let status = status(node).await;
            if status.missing_streams.iter().any(|s| s == STREAM) {
                assert!(
                    !status.streams_ready,
                    "streams_ready while {STREAM} is missing"
                );
                let health = status.health();
                assert!(!health.ok);
                assert!(
                    health.problems.iter().any(|p| p.contains("missing")),
                    "{health:?}"
                );
                break;
            }
            assert!(started.elapsed() < WAIT, "{STREAM} never reported missing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    js.delete_stream("squatter")
        .await
        .expect("free the subject");
    for node in [&a, &b] {
        wait_for_loss_handled(node).await;
    }
    js.get_stream(STREAM).await.expect("created again");
    write_rows(&a, 1, 10..13).await;
    converge(&[&a, &b]).await;
    let on_b = rows(&b);
    for n in 10..13 {
        assert!(
            on_b.contains_key(&format!("1-{n}")),
            "row 1-{n} missing on B"
        );
    }
    for node in [&a, &b] {
        assert_loss_reported(&status(node).await);
    }
}

/// The case only republishing repairs: rows that reached the stream, were applied by some nodes and not by
/// others, then the stream lost them. B holds A's rows (one of them edited on B) and A is gone for good
/// when C comes back: B publishes A's versions in A's name, C its own rows, and all end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_only_the_lost_messages_carried_are_republished_even_when_their_writer_is_gone() {
    init_logging();
    let mut server = NatsServer::start();
    let mut a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    let mut c = Node::start(config_for(&server, 3), SCHEMA).await;
    write_rows(&a, 1, 0..5).await;
    write_rows(&c, 3, 0..5).await;
    converge(&[&a, &b, &c]).await;
    c.close().await;

    // C is down: only the stream (and A, B) hold these.
    write_rows(&a, 1, 100..110).await;
    converge(&[&a, &b]).await;
    b.exec("UPDATE ledger SET n = -1 WHERE id = '1-100'");
    b.sync().await;
    converge(&[&a, &b]).await;
    a.close().await;

    server.restart_with_store_wiped();
    wait_for_loss_handled(&b).await;
    c.open().await;
    wait_for_loss_handled(&c).await;
    converge(&[&b, &c]).await;

    let on_b = rows(&b);
    let on_c = rows(&c);
    for n in 100..110 {
        let id = format!("1-{n}");
        let expected = if n == 100 { -1 } else { n as i64 };
        assert_eq!(
            on_c.get(&id),
            Some(&(1, expected)),
            "row {id}, carried only by the lost messages, is missing or stale on C"
        );
    }
    for n in 0..5 {
        assert!(
            on_b.contains_key(&format!("3-{n}")),
            "C's row 3-{n} missing on B"
        );
    }
    assert_eq!(on_b, on_c, "B and C differ after the repair");
    assert_loss_reported(&status(&b).await);
    assert_loss_reported(&status(&c).await);
    b.replica().close().await.expect("close");
    c.replica().close().await.expect("close");
}
