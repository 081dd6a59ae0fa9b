//! Catching up never skips a message silently: a connection the server cuts (slow consumer) or a message
//! deleted from the stream is handled, and the node ends with every row.

mod support;

use support::*;

const SCHEMA: &str = "CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB);";

fn count(node: &Node) -> i64 {
    node.conn()
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_larger_than_the_servers_pending_limit_loses_nothing() {
    init_logging();
    // A tiny per-client pending limit: large pulls get the connection cut as a slow consumer.
    let server = NatsServer::start_with(|_| "max_payload: 1MB\nmax_pending: 2MB".into());
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut b = Node::start(config_for(&server, 2), SCHEMA).await;
    b.close().await;
    // ~48 MB of incompressible rows while B is away.
    {
        let mut conn = a.conn();
        for chunk in 0..48 {
            let tx = conn.transaction().expect("tx");
            for i in 0..4 {
                let body: Vec<u8> = (0..256 * 1024).map(|_| rand::random::<u8>()).collect();
                tx.execute(
                    "INSERT INTO blobs VALUES (?1, ?2)",
                    rusqlite::params![chunk * 4 + i, body],
                )
                .expect("insert");
            }
            tx.commit().expect("commit");
        }
    }
    a.sync().await;
    b.open().await;
    converge(&[&a, &b]).await;
    assert_eq!(count(&b), 192, "every row arrived");
    assert_same(&[&a, &b], &["blobs"]);
    assert!(!b.replica().status().await.expect("status").behind_retention);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_deleted_from_the_stream_do_not_stall_replication() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut b = Node::start(config_for(&server, 2), SCHEMA).await;
    b.close().await;
    for i in 0..5 {
        a.exec(&format!("INSERT INTO blobs VALUES ({i}, x'00')"));
        a.sync().await;
    }
    // An operator deletes one message in the middle of the stream.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream("harmonylite-changes-0")
        .await
        .expect("stream");
    stream.delete_message(3).await.expect("delete");
    b.open().await;
    a.exec("INSERT INTO blobs VALUES (100, x'01')");
    converge(&[&a, &b]).await;
    assert_eq!(
        count(&b),
        5,
        "the deleted message's row is missing, everything else arrived"
    );
}
