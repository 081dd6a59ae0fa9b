//! Nothing committed is lost: node restarts, a killed nats-server, NATS down at open; and the two modes.

mod support;

use harmonylite::ConnectionState;
use support::*;

const SCHEMA: &str = "CREATE TABLE events(id INTEGER PRIMARY KEY, origin INTEGER, n INTEGER);";

fn count(node: &Node) -> i64 {
    node.conn()
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_stream_resumes_without_loss_or_double_apply() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut b = Node::start(config_for(&server, 2), SCHEMA).await;
    let writer = {
        let db = a.db.clone();
        std::thread::spawn(move || {
            let conn = app_connection(&db);
            for tx in 0..200 {
                let rows: Vec<String> = (0..10)
                    .map(|i| format!("({}, 1, {i})", tx * 10 + i))
                    .collect();
                conn.execute_batch(&format!("INSERT INTO events VALUES {}", rows.join(",")))
                    .expect("insert");
            }
        })
    };
    // Stop B while A is writing, let A go on, then bring B back.
    wait_until_async("B to apply some rows", || count(&b) > 0).await;
    b.close().await;
    // What B applied before the restart is what its file holds once closed (a status read before close()
    // would miss a batch applied in between).
    let applied_before_restart = count(&b);
    b.exec("INSERT INTO events VALUES (100000, 2, 0)"); // written while B's replica was closed
    writer.join().expect("writer");
    b.open().await;
    converge(&[&a, &b]).await;
    assert_eq!(count(&a), 2001);
    assert_same(&[&a, &b], &["events"]);
    let after = b.replica().status().await.expect("status");
    assert_eq!(
        applied_before_restart as u64 + after.applied_rows,
        2000,
        "every row applied exactly once across the restart"
    );
    assert_eq!(
        after.skipped_rows, 0,
        "redelivered messages must be recognised by position, not re-applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_killed_and_restarted_while_all_nodes_write() {
    init_logging();
    let mut server = NatsServer::start();
    let nodes = [
        Node::start(config_for(&server, 1), SCHEMA).await,
        Node::start(config_for(&server, 2), SCHEMA).await,
        Node::start(config_for(&server, 3), SCHEMA).await,
    ];
    let write = |round: i64| {
        for (i, node) in nodes.iter().enumerate() {
            let id = round * 10 + i as i64;
            node.exec(&format!("INSERT INTO events VALUES ({id}, {i}, {round})"));
        }
    };
    for round in 0..20 {
        write(round);
    }
    server.kill();
    for round in 20..40 {
        write(round); // NATS is down: captured, kept, sent later
    }
    server.restart();
    for round in 40..60 {
        write(round);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    converge(&refs).await;
    for node in &nodes {
        assert_eq!(count(node), 180);
    }
    assert_same(&refs, &["events"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_succeeds_while_nats_is_down_and_changes_go_out_when_it_returns() {
    init_logging();
    // Reserve the ports, but do not start the server yet.
    let mut server = NatsServer::start();
    server.kill();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    a.exec("INSERT INTO events VALUES (1, 1, 1), (2, 1, 2)");
    let status = a.replica().status().await.expect("status");
    assert_ne!(status.connection, ConnectionState::Connected);
    assert!(!status.streams_ready);
    wait_until_async("the change to be stamped into the outbox", || {
        a.conn()
            .query_row("SELECT count(*) FROM __harmonylite__outbox", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
            .unwrap_or(false)
    })
    .await;
    server.restart();
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    converge(&[&a, &b]).await;
    assert_eq!(count(&b), 2);
    let status = a.replica().status().await.expect("status");
    assert_eq!(status.connection, ConnectionState::Connected);
    assert_eq!(status.unsent_messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_replica_sends_nothing_and_non_replicating_node_applies_nothing() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut reader_config = config_for(&server, 2);
    reader_config.publish = false;
    let reader = Node::start(reader_config, SCHEMA).await;
    let mut sender_config = config_for(&server, 3);
    sender_config.replicate = false;
    let sender = Node::start(sender_config, SCHEMA).await;

    a.exec("INSERT INTO events VALUES (1, 1, 1)");
    sender.exec("INSERT INTO events VALUES (3, 3, 3)");
    reader.exec("INSERT INTO events VALUES (2, 2, 2)");
    let mut token = a.sync().await;
    token.merge(&sender.sync().await);
    token.merge(&reader.sync().await);
    a.replica().wait_for(&token, WAIT).await.expect("a");
    reader
        .replica()
        .wait_for(&token, WAIT)
        .await
        .expect("reader");
    // The read replica got everything and sent nothing.
    assert_eq!(count(&reader), 3);
    let ids: Vec<String> = a.dump("events").into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, vec!["i1", "i3"]);
    let status = reader.replica().status().await.expect("status");
    assert!(!status.publish);
    assert_eq!(status.published_rows, 0);
    // The non-replicating node published its row but applied nothing.
    assert_eq!(count(&sender), 1);
    let err = sender
        .replica()
        .wait_for(&token, WAIT)
        .await
        .expect_err("no waiting on a node that applies nothing");
    assert_eq!(err.code(), harmonylite::ErrorCode::Config);
}
