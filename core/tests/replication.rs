//! Multi-node replication through a real nats-server: writes on every node reach the others.

mod support;

use support::*;

const SCHEMA: &str = "
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, score REAL);
CREATE TABLE memberships(org TEXT, user_id INTEGER, role TEXT, PRIMARY KEY(org, user_id));
CREATE TABLE \"select\"(\"from\" TEXT PRIMARY KEY, \"we\"\"ird col\" TEXT, \"order by\" INTEGER);
";

async fn three_nodes(server: &NatsServer) -> (Node, Node, Node) {
    (
        Node::start(config_for(server, 1), SCHEMA).await,
        Node::start(config_for(server, 2), SCHEMA).await,
        Node::start(config_for(server, 3), SCHEMA).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_and_deletes_on_every_node_reach_the_others() {
    init_logging();
    let server = NatsServer::start();
    let (mut a, mut b, mut c) = three_nodes(&server).await;

    a.exec("INSERT INTO users VALUES (1, 'ann', 1.5), (2, 'bob', 2.5), (3, 'cy', NULL)");
    b.exec("INSERT INTO memberships VALUES ('acme', 1, 'admin'), ('acme', 2, 'dev'), ('umbrella', 1, 'dev')");
    c.exec("INSERT INTO \"select\" VALUES ('x', 'y\"z', 7), ('it''s', NULL, -1)");
    converge(&[&a, &b, &c]).await;
    assert_eq!(c.dump("users").len(), 3);
    assert_eq!(a.dump("memberships").len(), 3);
    assert_eq!(b.dump("select").len(), 2);
    assert_same(&[&a, &b, &c], &["users", "memberships", "select"]);

    b.exec("UPDATE users SET name = 'BOB' WHERE id = 2");
    c.exec("DELETE FROM users WHERE id = 3");
    a.exec("UPDATE memberships SET role = 'owner' WHERE org = 'acme' AND user_id = 1");
    a.exec("UPDATE \"select\" SET \"order by\" = 8 WHERE \"from\" = 'x'");
    converge(&[&a, &b, &c]).await;
    assert_same(&[&a, &b, &c], &["users", "memberships", "select"]);
    let users = c.dump("users");
    assert_eq!(users.len(), 2);
    assert_eq!(users[1][1], "tBOB");
    assert_eq!(b.dump("memberships")[0][2], "towner");

    // A primary-key change replicates as delete-old + upsert-new: no orphan under the old key.
    c.exec("UPDATE users SET id = 10 WHERE id = 1");
    c.exec("UPDATE memberships SET org = 'initech' WHERE org = 'umbrella'");
    converge(&[&a, &b, &c]).await;
    assert_same(&[&a, &b, &c], &["users", "memberships"]);
    let ids: Vec<String> = a.dump("users").into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, vec!["i2", "i10"]);
    let orgs: Vec<String> = b
        .dump("memberships")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(orgs, vec!["tacme", "tacme", "tinitech"]);

    // A rolled-back transaction leaves nothing to replicate.
    {
        let mut conn = a.conn();
        let tx = conn.transaction().expect("tx");
        tx.execute("INSERT INTO users VALUES (99, 'ghost', 0)", [])
            .expect("insert");
        tx.rollback().expect("rollback");
    }
    a.exec("INSERT INTO users VALUES (100, 'real', 0)");
    converge(&[&a, &b, &c]).await;
    assert_same(&[&a, &b, &c], &["users"]);
    assert!(!b.dump("users").iter().any(|r| r[0] == "i99"));
    assert!(b.dump("users").iter().any(|r| r[0] == "i100"));

    for node in [&mut a, &mut b, &mut c] {
        let status = node.replica().status().await.expect("status");
        assert_eq!(status.pending_changes, 0);
        assert_eq!(status.unsent_messages, 0);
        assert_eq!(status.dead_lettered, 0);
        node.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applier_writes_are_not_echoed_and_status_reports_progress() {
    init_logging();
    let server = NatsServer::start();
    let (a, b, _c) = three_nodes(&server).await;
    a.exec("INSERT INTO users VALUES (1, 'ann', 1.0)");
    converge(&[&a, &b]).await;
    // B applied the row; its capture must not have logged it again.
    let b_status = b.replica().status().await.expect("status");
    assert_eq!(b_status.pending_changes, 0);
    assert_eq!(
        b_status.published_rows, 0,
        "B echoed a change it only applied"
    );
    assert_eq!(b_status.applied_rows, 1);
    let a_status = a.replica().status().await.expect("status");
    assert_eq!(a_status.published_rows, 1);
    assert_eq!(a_status.connection, harmonylite::ConnectionState::Connected);
    assert!(a_status.shards[0].published_seq >= 1);

    // The same counts in the metrics, counted where they happened; gauges labelled per shard.
    let b_metrics = b.replica().metrics().await.expect("metrics");
    let b_series = |name: &str| format!("harmonylite_{name}{{node_id=\"{}\"}}", b_status.node_id);
    assert_eq!(
        metric_value(&b_metrics, &b_series("changes_applied_total")),
        Some(1.0),
        "{b_metrics}"
    );
    assert_eq!(
        metric_value(&b_metrics, &b_series("changes_published_total")),
        Some(0.0),
        "{b_metrics}"
    );
    assert_eq!(
        metric_value(&b_metrics, &b_series("nats_connected")),
        Some(1.0),
        "{b_metrics}"
    );
    assert_eq!(
        metric_value(
            &b_metrics,
            &format!(
                "harmonylite_applied_position{{node_id=\"{}\",shard=\"0\"}}",
                b_status.node_id
            )
        ),
        Some(b_status.shards[0].applied_seq as f64),
        "{b_metrics}"
    );
    assert!(b_metrics.ends_with("# EOF\n"), "{b_metrics}");
    let a_metrics = a.replica().metrics().await.expect("metrics");
    assert_eq!(
        metric_value(
            &a_metrics,
            &format!(
                "harmonylite_changes_published_total{{node_id=\"{}\"}}",
                a_status.node_id
            )
        ),
        Some(1.0),
        "{a_metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_shards_keep_every_row_in_order() {
    init_logging();
    let server = NatsServer::start();
    let config = |id| {
        let mut config = config_for(&server, id);
        config.replication_log.shards = 4;
        config
    };
    let a = Node::start(config(1), SCHEMA).await;
    let b = Node::start(config(2), SCHEMA).await;
    for round in 0..5 {
        let rows: Vec<String> = (0..200)
            .map(|i| format!("({i}, 'r{round}', {i}.5)"))
            .collect();
        a.exec(&format!(
            "INSERT OR REPLACE INTO users VALUES {}",
            rows.join(",")
        ));
        b.exec(&format!("DELETE FROM users WHERE id % 7 = {}", round));
    }
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["users"]);
    let status = a.replica().status().await.expect("status");
    assert_eq!(status.shards.len(), 4);
    assert!(
        status.shards.iter().all(|s| s.published_seq > 0),
        "every shard carried messages: {:?}",
        status.shards
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_change_events_carry_table_key_op_origin_and_clock() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    let mut events = b.replica().subscribe();
    a.exec("INSERT INTO memberships VALUES ('acme', 7, 'dev')");
    converge(&[&a, &b]).await;
    a.exec("UPDATE memberships SET role = 'lead'");
    // (Changes of one row not yet stamped coalesce into its latest state, so publish between the two.)
    converge(&[&a, &b]).await;
    a.exec("DELETE FROM memberships");
    converge(&[&a, &b]).await;
    let mut seen = Vec::new();
    while let Some(event) = events.try_recv() {
        seen.push(event);
    }
    let ops: Vec<&str> = seen.iter().map(|e| e.op.as_str()).collect();
    assert_eq!(ops, vec!["insert", "update", "delete"]);
    for event in &seen {
        assert_eq!(event.table, "memberships");
        assert_eq!(
            event.pk,
            vec![
                harmonylite::Value::Text("acme".into()),
                harmonylite::Value::Integer(7)
            ]
        );
        assert_eq!(event.origin_node, 1);
        assert!(!event.local);
        assert!(event.hlc > 0);
    }
    assert!(seen.windows(2).all(|w| w[0].hlc < w[1].hlc));
    // A callback listener gets them too, and a panicking callback does not stop later events.
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let listener = b.replica().on_change(move |event| {
        if event.pk[1] == harmonylite::Value::Integer(1) {
            panic!("a user callback that throws");
        }
        let _ = sender.send(event.pk[1].clone());
    });
    a.exec("INSERT INTO memberships VALUES ('x', 1, 'a'), ('x', 2, 'b')");
    converge(&[&a, &b]).await;
    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("event")
        .expect("open");
    assert_eq!(got, harmonylite::Value::Integer(2));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_holding_the_write_lock_delays_apply_without_errors() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    let mut lock_holder = b.conn();
    let tx = lock_holder
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("app takes the write lock");
    a.exec("INSERT INTO users VALUES (1, 'while locked', 0)");
    let token = a.sync().await;
    let blocked = b
        .replica()
        .wait_for(&token, std::time::Duration::from_millis(300))
        .await;
    assert_eq!(
        blocked.map_err(|e| e.code()),
        Err(harmonylite::ErrorCode::Timeout)
    );
    tx.commit().expect("app releases the lock");
    b.replica()
        .wait_for(&token, WAIT)
        .await
        .expect("applied once the lock is free");
    assert_eq!(b.dump("users").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_end_when_the_replica_closes() {
    init_logging();
    let server = NatsServer::start();
    let mut a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut before = a.replica().subscribe();
    let replica = a.replica().clone();
    a.close().await;
    let ended = tokio::time::timeout(WAIT, before.recv())
        .await
        .expect("recv returns");
    assert!(ended.is_none(), "a subscription made before close ends");
    let mut after = replica.subscribe();
    assert!(tokio::time::timeout(WAIT, after.recv())
        .await
        .expect("recv returns")
        .is_none());
}

/// A rolling upgrade (ADR 0020): one node still writes format 2 (`replication_log.message_format = 2`), the
/// others format 3; every node reads both, so every row reaches every node and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_writing_format_2_and_format_3_read_each_other() {
    init_logging();
    let server = NatsServer::start();
    let mut old_format = config_for(&server, 1);
    old_format.replication_log.message_format = 2;
    let mut a = Node::start(old_format, SCHEMA).await;
    let mut b = Node::start(config_for(&server, 2), SCHEMA).await;
    let mut c = Node::start(config_for(&server, 3), SCHEMA).await;

    a.exec("INSERT INTO users VALUES (1, 'from format 2', 1.5), (2, 'x', -0.0)");
    b.exec("INSERT INTO users VALUES (3, 'from format 3', NULL)");
    c.exec("INSERT INTO \"select\" VALUES ('k', 'v', 1)");
    converge(&[&a, &b, &c]).await;
    a.exec("UPDATE users SET score = 9 WHERE id = 3");
    b.exec("UPDATE users SET name = 'edited on b' WHERE id = 1");
    c.exec("DELETE FROM users WHERE id = 2");
    converge(&[&a, &b, &c]).await;
    assert_same(&[&a, &b, &c], &["users", "select"]);
    let real = |value: f64| format!("r{:x}", value.to_bits());
    assert_eq!(
        c.dump("users"),
        vec![
            vec!["i1".to_string(), "tedited on b".into(), real(1.5)],
            vec!["i3".to_string(), "tfrom format 3".into(), real(9.0)],
        ]
    );
    for node in [&mut a, &mut b, &mut c] {
        let status = node.replica().status().await.expect("status");
        assert_eq!(status.dead_lettered, 0);
        assert_eq!(status.errors, 0, "{:?}", status.last_error);
        node.close().await;
    }
}
