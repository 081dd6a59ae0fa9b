//! The divergence check (ADR 0017), with real nats-server processes and real SQLite files: nodes exchange
//! per-table checksums over NATS and compare them when both applied the same changes. Converged nodes
//! report nothing; a node that skipped messages (its stored position moved past them while it was down, as
//! an undetected broker loss would leave it) is found different at identical positions, reported in
//! `status()` and `/health`, and repaired by a republish; a column present on one node only is schema skew,
//! not a divergence.

mod support;

use std::time::{Duration, Instant};

use harmonylite::config::Seconds;
use harmonylite::{Config, Status};
use support::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER);
                      CREATE TABLE other(k TEXT PRIMARY KEY, v BLOB);";

/// Rounds every quarter second, so a test sees several of them.
fn config(server: &NatsServer, node_id: u64) -> Config {
    let mut config = config_for(server, node_id);
    config.divergence_check.interval = Seconds(Duration::from_millis(250));
    config
}

async fn status(node: &Node) -> Status {
    node.replica().status().await.expect("status")
}

/// Polls the nodes' status until `done` holds for every one; every status seen must pass `always`.
async fn wait_for_status(
    what: &str,
    nodes: &[&Node],
    mut always: impl FnMut(&Status),
    mut done: impl FnMut(&Status) -> bool,
) -> Vec<Status> {
    let started = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for node in nodes {
            let status = status(node).await;
            always(&status);
            statuses.push(status);
        }
        if statuses.iter().all(&mut done) {
            return statuses;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}: {:?}",
            statuses
                .iter()
                .map(|s| (
                    s.node_id,
                    s.divergence_comparisons,
                    s.divergent_tables.clone(),
                    s.shards.iter().map(|sh| sh.applied_seq).collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The comparison count a node must reach, from (node id, count) pairs.
fn target_of(targets: &[(u64, u64)], status: &Status) -> u64 {
    targets
        .iter()
        .find(|(node, _)| *node == status.node_id)
        .map_or(u64::MAX, |(_, n)| *n)
}

fn no_divergence(status: &Status) {
    assert!(
        status.divergent_tables.is_empty(),
        "node {} reports a divergence between converged nodes: {:?}",
        status.node_id,
        status.divergent_tables
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converged_nodes_compare_their_tables_and_find_no_divergence() {
    init_logging();
    let server = NatsServer::start();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node::start(config(&server, id), SCHEMA).await);
    }
    // Each node writes its own rows, and all three edit the same shared rows (merged per column).
    for (i, node) in nodes.iter().enumerate() {
        let conn = node.conn();
        for n in 0..40 {
            conn.execute(
                "INSERT INTO items(id, name, qty) VALUES (?1, ?2, ?3)",
                rusqlite::params![(i as i64 + 1) * 1000 + n, format!("node {i} row {n}"), n],
            )
            .expect("insert");
        }
        conn.execute(
            "INSERT INTO other(k, v) VALUES (?1, ?2)",
            rusqlite::params![format!("k{i}"), vec![i as u8; 64]],
        )
        .expect("insert other");
    }
    for (i, node) in nodes.iter().enumerate() {
        node.exec(&format!(
            "INSERT INTO items(id, name, qty) VALUES (1, 'shared', {i}) ON CONFLICT(id) DO UPDATE SET qty = qty + {i};"
        ));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    settle(&all).await;
    assert_same(&all, &["items", "other"]);
    // Each node compares both tables with both peers at the positions they all reached; a divergence
    // reported at any point (in flight included) fails the test.
    let statuses = wait_for_status(
        "every node to compare both tables with both peers",
        &all,
        no_divergence,
        |s| s.divergence_comparisons >= 4,
    )
    .await;
    for status in &statuses {
        let health = status.health();
        assert!(health.ok, "node {}: {:?}", status.node_id, health.problems);
    }
    // Later writes are compared too: the check keeps up with a cluster that goes on working.
    let targets: Vec<(u64, u64)> = statuses
        .iter()
        .map(|s| (s.node_id, s.divergence_comparisons + 4))
        .collect();
    nodes[1].exec("UPDATE items SET qty = 99 WHERE id = 1; DELETE FROM items WHERE id = 3005;");
    settle(&all).await;
    assert_same(&all, &["items", "other"]);
    wait_for_status(
        "the nodes to compare again after more writes",
        &all,
        no_divergence,
        |s| s.divergence_comparisons >= target_of(&targets, s),
    )
    .await;
    for node in &mut nodes {
        node.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_skipped_messages_is_found_divergent_and_repaired() {
    init_logging();
    let server = NatsServer::start();
    // Node 1 only reports at first (repair_interval 0): the divergence must stay visible until node 1
    // runs with repairs, since only node 1 holds what node 2 skipped.
    let mut report_only = config(&server, 1);
    report_only.divergence_check.repair_interval = Seconds(Duration::ZERO);
    let mut a = Node::start(report_only, SCHEMA).await;
    let mut b = Node::start(config(&server, 2), SCHEMA).await;
    for n in 1..=20 {
        a.exec(&format!(
            "INSERT INTO items(id, name, qty) VALUES ({n}, 'row {n}', {n});"
        ));
    }
    settle(&[&a, &b]).await;
    assert_same(&[&a, &b], &["items"]);
    wait_for_status("a first comparison", &[&a, &b], no_divergence, |s| {
        s.divergence_comparisons >= 2
    })
    .await;

    // Node 2 stops; node 1 writes; node 2's stored position is moved past those messages, so it resumes
    // after them and never applies them (what an undetected loss of messages leaves behind).
    b.close().await;
    a.exec("INSERT INTO items(id, name, qty) VALUES (100, 'only on node 1', 1); UPDATE items SET qty = 500 WHERE id = 5;");
    let token = a.sync().await;
    a.replica()
        .wait_for(&token, WAIT)
        .await
        .expect("node 1 applies its own messages");
    let skipped_to = token.positions.get(&0).copied().expect("shard 0 position");
    app_connection(&b.db)
        .execute(
            "INSERT OR REPLACE INTO __harmonylite__positions(shard, seq) VALUES (0, ?1)",
            [skipped_to as i64],
        )
        .expect("move node 2's position");
    b.open().await;
    assert_eq!(
        b.dump("items").len(),
        20,
        "node 2 misses the row it skipped"
    );

    // Both nodes find the table different at identical positions and say so.
    let statuses = wait_for_status(
        "both nodes to report items as divergent",
        &[&a, &b],
        |_| {},
        |s| {
            s.divergent_tables
                .iter()
                .any(|d| d.table == "items" && d.peer_node_id == 3 - s.node_id)
        },
    )
    .await;
    for status in &statuses {
        let divergence = status
            .divergent_tables
            .iter()
            .find(|d| d.table == "items")
            .expect("items divergent");
        let (here, there) = if status.node_id == 1 {
            (21, 20)
        } else {
            (20, 21)
        };
        assert_eq!(
            (divergence.rows_here, divergence.rows_at_peer),
            (here, there),
            "{divergence:?}"
        );
        assert!(divergence.since_ms > 0);
        let health = status.health();
        assert!(
            !health.ok,
            "node {} reports healthy while divergent",
            status.node_id
        );
        let peer = 3 - status.node_id;
        assert!(
            health
                .problems
                .iter()
                .any(|p| p.contains("table items") && p.contains(&format!("node {peer}"))),
            "{:?}",
            health.problems
        );
    }
    // Node 2 republished its rows (it may repair), which cannot bring it what it never had; node 1 only
    // reports: the divergence stays, on both.
    let statuses = wait_for_status(
        "node 2 to republish its rows",
        &[&b],
        |_| {},
        |s| {
            s.divergent_tables
                .iter()
                .any(|d| d.table == "items" && d.republished_at_ms.is_some())
        },
    )
    .await;
    assert_eq!(statuses[0].divergent_tables.len(), 1);
    assert_eq!(b.dump("items").len(), 20);
    let status_a = status(&a).await;
    assert!(
        status_a
            .divergent_tables
            .iter()
            .any(|d| d.table == "items" && d.peer_node_id == 2 && d.republished_at_ms.is_none()),
        "{:?}",
        status_a.divergent_tables
    );

    // Node 1 runs with repairs again: it finds the difference, publishes its rows, node 2 gets what it
    // skipped, and both clear the divergence at the next comparison.
    a.close().await;
    a.config.divergence_check.repair_interval = Seconds(Duration::from_secs(600));
    a.open().await;
    let statuses = wait_for_status(
        "the divergence to be repaired and cleared on both nodes",
        &[&a, &b],
        |_| {},
        |s| s.divergent_tables.is_empty() && s.divergence_comparisons > 0,
    )
    .await;
    settle(&[&a, &b]).await;
    assert_same(&[&a, &b], &["items"]);
    assert_eq!(b.dump("items").len(), 21);
    let qty: i64 = b
        .conn()
        .query_row("SELECT qty FROM items WHERE id = 5", [], |r| r.get(0))
        .expect("row 5");
    assert_eq!(qty, 500, "the update node 2 skipped reached it");
    for status in &statuses {
        let health = status.health();
        assert!(health.ok, "node {}: {:?}", status.node_id, health.problems);
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_on_one_node_only_is_schema_skew_not_divergence() {
    init_logging();
    let server = NatsServer::start();
    let mut a = Node::start(config(&server, 1), SCHEMA).await;
    let mut b = Node::start(config(&server, 2), SCHEMA).await;
    a.exec("INSERT INTO items(id, name, qty) VALUES (1, 'a', 1), (2, 'b', 2); INSERT INTO other VALUES ('x', x'00');");
    settle(&[&a, &b]).await;
    let baseline = wait_for_status(
        "a first comparison of both tables",
        &[&a, &b],
        no_divergence,
        |s| s.divergence_comparisons >= 2,
    )
    .await;
    // Node 1 migrates first: its rows of `items` now hold a column node 2's lack (NULL everywhere, so
    // nothing is sent). Hashed together, the tables would differ.
    a.exec("ALTER TABLE items ADD COLUMN note TEXT;");
    a.exec("INSERT INTO other VALUES ('y', x'01');");
    settle(&[&a, &b]).await;
    let targets: Vec<(u64, u64)> = baseline
        .iter()
        .map(|s| (s.node_id, s.divergence_comparisons + 1))
        .collect();
    let statuses = wait_for_status(
        "a comparison after the migration on node 1",
        &[&a, &b],
        no_divergence,
        |s| s.divergence_comparisons >= target_of(&targets, s),
    )
    .await;
    for status in &statuses {
        assert!(status.health().ok, "{:?}", status.health().problems);
    }
    // Node 2 migrates too: the tables are comparable again, and equal.
    b.exec("ALTER TABLE items ADD COLUMN note TEXT;");
    a.exec("INSERT INTO other VALUES ('z', x'02');");
    settle(&[&a, &b]).await;
    let targets: Vec<(u64, u64)> = statuses
        .iter()
        .map(|s| (s.node_id, s.divergence_comparisons + 2))
        .collect();
    wait_for_status(
        "both tables compared once both nodes migrated",
        &[&a, &b],
        no_divergence,
        |s| s.divergence_comparisons >= target_of(&targets, s),
    )
    .await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_writing_all_along_never_report_a_divergence() {
    init_logging();
    let server = NatsServer::start();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut config = config(&server, id);
        config.divergence_check.interval = Seconds(Duration::from_millis(100));
        nodes.push(Node::start(config, SCHEMA).await);
    }
    // Writers with pauses between bursts: moments at which the nodes briefly meet at identical positions
    // (compared) alternate with moments at which one node holds writes the others cannot have yet.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let conn = node.conn();
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..5 {
                    conn.execute(
                        "INSERT INTO items(id, name, qty) VALUES (?1, 'w', ?2)
                         ON CONFLICT(id) DO UPDATE SET qty = excluded.qty",
                        rusqlite::params![(n % 50) + (i as i64) * 25, n],
                    )
                    .expect("write");
                    n += 1;
                }
                // Pacing, not synchronisation: bursts a few hundred milliseconds apart.
                std::thread::sleep(Duration::from_millis(150 + 50 * i as u64));
            }
        }));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for node in &all {
            no_divergence(&status(node).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut compared_while_writing = 0;
    for node in &all {
        compared_while_writing += status(node).await.divergence_comparisons;
    }
    // The writers leave quiet moments: without comparisons among them, this test would prove nothing.
    assert!(
        compared_while_writing > 0,
        "no comparison while the writers ran"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer");
    }
    settle(&all).await;
    assert_same(&all, &["items"]);
    wait_for_status(
        "comparisons once the writers stopped",
        &all,
        no_divergence,
        |s| s.divergence_comparisons >= 2,
    )
    .await;
    for node in &mut nodes {
        node.close().await;
    }
}
