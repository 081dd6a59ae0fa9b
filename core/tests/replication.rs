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
}
