//! Well-formed but unappliable or forged changes: each one is parked on its own with its reason, the rest
//! of its batch and everything after it applies, and `status()` says what waits and why. Also: a NULL in a
//! primary-key column is refused to the app at capture, with a message naming the table.

mod support;

use harmonylite::clock::Version;
use harmonylite::log::{encode, Batch, Op, RowChange, Value};
use harmonylite::Token;
use support::*;

const SCHEMA: &str = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);
     CREATE TABLE pair(a TEXT, b INTEGER, v TEXT, PRIMARY KEY(a, b));";

/// Publishes one batch from a fake node, as if it arrived from the network.
async fn inject(server: &NatsServer, node_id: u64, changes: Vec<RowChange>) -> Token {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let payload = encode(&Batch { node_id, changes }, true);
    let ack = js
        .publish("harmonylite-change-log.0", payload.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let mut token = Token::default();
    token.positions.insert(0, ack.sequence);
    token
}

fn insert(table: &str, pk: Vec<Value>, columns: Vec<(&str, Value)>, hlc: u64) -> RowChange {
    let born = Version { hlc, node: 99 };
    RowChange {
        table: table.into(),
        op: Op::Insert,
        hlc,
        cl: 1,
        born,
        born_hash: hlc,
        life: born,
        seen: None,
        pk,
        columns: columns
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    }
}

fn now() -> u64 {
    harmonylite::clock::wall_millis() << 16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_changes_are_parked_one_by_one_and_the_stream_goes_on() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    let t = now();
    let poison = vec![
        // Text into an INTEGER PRIMARY KEY: SQLite's "datatype mismatch".
        insert(
            "kv",
            vec![Value::Text("not a number".into())],
            vec![
                ("k", Value::Text("not a number".into())),
                ("v", Value::Text("x".into())),
            ],
            t,
        ),
        // A good change in the same batch: it must apply.
        insert(
            "kv",
            vec![Value::Integer(1)],
            vec![("k", Value::Integer(1)), ("v", Value::Text("good".into()))],
            t + 1,
        ),
        // A key that disagrees with the row image.
        insert(
            "kv",
            vec![Value::Integer(2)],
            vec![("k", Value::Integer(3)), ("v", Value::Text("liar".into()))],
            t + 2,
        ),
        // A NULL key.
        insert(
            "pair",
            vec![Value::Null, Value::Integer(7)],
            vec![("v", Value::Text("null key".into()))],
            t + 3,
        ),
        // A forged clock far beyond the largest valid stamp (stored as -1 before: it froze the row).
        insert(
            "kv",
            vec![Value::Integer(4)],
            vec![
                ("k", Value::Integer(4)),
                ("v", Value::Text("forever".into())),
            ],
            u64::MAX,
        ),
        // A clock an hour ahead: waits until this node's clock gets there.
        insert(
            "kv",
            vec![Value::Integer(5)],
            vec![("k", Value::Integer(5)), ("v", Value::Text("early".into()))],
            (harmonylite::clock::wall_millis() + 3_600_000) << 16,
        ),
    ];
    let token = inject(&server, 99, poison).await;
    for node in [&a, &b] {
        node.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(
            node.dump("kv"),
            vec![vec!["i1".to_string(), "tgood".to_string()]],
            "only the good change applied"
        );
        let status = node.replica().status().await.expect("status");
        let kv = status
            .paused_tables
            .iter()
            .find(|p| p.table == "kv")
            .expect("kv has waiting changes");
        assert_eq!(kv.waiting_changes, 4, "{:?}", status.paused_tables);
        assert_eq!(kv.kind, "invalid", "{:?}", status.paused_tables);
        assert!(
            kv.reason.contains("cannot store") || kv.reason.contains("mismatch"),
            "{}",
            kv.reason
        );
        let pair = status
            .paused_tables
            .iter()
            .find(|p| p.table == "pair")
            .expect("pair has a waiting change");
        assert!(pair.reason.contains("NULL"), "{}", pair.reason);
    }

    // The stream is not stuck: new writes flow both ways.
    a.exec("INSERT INTO kv VALUES (10, 'after a')");
    b.exec("INSERT INTO kv VALUES (11, 'after b')");
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["kv"]);
    assert_eq!(a.dump("kv").len(), 3);
    // A later write to row 4 is not frozen by the forged clock.
    a.exec("INSERT INTO kv VALUES (4, 'real')");
    converge(&[&a, &b]).await;
    assert!(b.dump("kv").iter().any(|r| r[1] == "treal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_in_a_primary_key_is_refused_to_the_app_with_the_table_named() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let err = a
        .conn()
        .execute("INSERT INTO pair(a, b, v) VALUES (NULL, 7, 'x')", [])
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("pair") && text.contains("NULL"),
        "the error names the table and the cause: {text}"
    );
    // Non-NULL keys work, and an update cannot set a key column to NULL either.
    a.exec("INSERT INTO pair(a, b, v) VALUES ('x', 7, 'ok')");
    assert!(a
        .conn()
        .execute("UPDATE pair SET a = NULL WHERE b = 7", [])
        .is_err());
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["pair"]);
    assert_eq!(b.dump("pair").len(), 1);
}
