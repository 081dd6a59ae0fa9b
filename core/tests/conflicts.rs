//! Conflicts resolve by `(hlc, node_id)` on every node, never by arrival order.

mod support;

use harmonylite::log::{encode, Batch, Op, RowChange, Value};
use harmonylite::Token;
use support::*;

const SCHEMA: &str = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);";

fn version_of(node: &Node, k: i64) -> (i64, i64, i64) {
    let pk = harmonylite::log::pk_key(&[Value::Integer(k)]);
    node.conn()
        .query_row(
            "SELECT hlc, node, deleted FROM __harmonylite__versions WHERE tbl = 'kv' AND pk = ?1",
            [pk],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("version row")
}

/// Publishes a hand-made change from a fake node, as if it arrived late from the network.
async fn inject(server: &NatsServer, node_id: u64, change: RowChange) -> Token {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let payload = encode(
        &Batch {
            node_id,
            changes: vec![change],
        },
        true,
    );
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

fn upsert(k: i64, v: &str, hlc: u64) -> RowChange {
    RowChange {
        table: "kv".into(),
        op: Op::Upsert,
        hlc,
        pk: vec![Value::Integer(k)],
        columns: vec![
            ("k".into(), Value::Integer(k)),
            ("v".into(), Value::Text(v.into())),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_converge_to_the_highest_version() {
    init_logging();
    let server = NatsServer::start();
    let nodes = [
        Node::start(config_for(&server, 1), SCHEMA).await,
        Node::start(config_for(&server, 2), SCHEMA).await,
        Node::start(config_for(&server, 3), SCHEMA).await,
    ];
    let refs: Vec<&Node> = nodes.iter().collect();
    nodes[0].exec("INSERT INTO kv VALUES (1, 'start'), (2, 'start'), (3, 'start')");
    converge(&refs).await;

    // Every node updates the same rows, many times, without waiting for the others.
    let mut subscriptions: Vec<_> = nodes.iter().map(|n| n.replica().subscribe()).collect();
    for round in 0..20 {
        for (i, node) in nodes.iter().enumerate() {
            node.exec(&format!(
                "UPDATE kv SET v = 'n{i}-r{round}' WHERE k IN (1, 2)"
            ));
        }
    }
    // Update-vs-delete race on row 3.
    nodes[0].exec("DELETE FROM kv WHERE k = 3");
    nodes[1].exec("UPDATE kv SET v = 'updated' WHERE k = 3");
    converge(&refs).await;
    assert_same(&refs, &["kv"]);

    // The winner is the highest (hlc, node) any node stamped for the row, on every node.
    let mut best: Option<((u64, u64), String)> = None;
    for (i, subscription) in subscriptions.iter_mut().enumerate() {
        while let Some(event) = subscription.try_recv() {
            if event.local && event.pk == vec![Value::Integer(1)] {
                let version = (event.hlc, event.origin_node);
                if best.as_ref().is_none_or(|(b, _)| version > *b) {
                    best = Some((version, format!("n{i}")));
                }
            }
        }
    }
    let ((hlc, node), writer) = best.expect("local events were emitted");
    for n in &nodes {
        assert_eq!(version_of(n, 1), (hlc as i64, node as i64, 0));
        let value = &n.dump("kv")[0][1];
        assert!(
            value.starts_with(&format!("t{writer}-")),
            "winner {writer}, found {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_arrivals_do_not_win_and_deletes_are_not_resurrected() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    a.exec("INSERT INTO kv VALUES (1, 'current'), (2, 'doomed')");
    converge(&[&a, &b]).await;
    let (hlc1, _, _) = version_of(&a, 1);

    // An older update arrives last: it must lose everywhere.
    let token = inject(&server, 99, upsert(1, "stale", hlc1 as u64 - 1000)).await;
    for n in [&a, &b] {
        n.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(n.dump("kv")[0][1], "tcurrent");
    }

    // A newer delete, then an older update of the same row arriving after it: the row stays deleted.
    a.exec("DELETE FROM kv WHERE k = 2");
    converge(&[&a, &b]).await;
    let (delete_hlc, _, deleted) = version_of(&b, 2);
    assert_eq!(deleted, 1, "the delete is versioned (tombstone)");
    let token = inject(&server, 99, upsert(2, "zombie", delete_hlc as u64 - 1)).await;
    for n in [&a, &b] {
        n.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(
            n.dump("kv").len(),
            1,
            "a late update resurrected a newer delete"
        );
    }

    // A late delete older than the row's version does not remove it.
    let late_delete = RowChange {
        table: "kv".into(),
        op: Op::Delete,
        hlc: hlc1 as u64 - 1,
        pk: vec![Value::Integer(1)],
        columns: vec![],
    };
    let token = inject(&server, 99, late_delete).await;
    for n in [&a, &b] {
        n.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(n.dump("kv").len(), 1);
    }

    // And a newer one from elsewhere wins everywhere; the local clock moves past it.
    let future = (harmonylite::clock::wall_millis() + 60_000) << 16;
    let token = inject(&server, 99, upsert(1, "future", future)).await;
    for n in [&a, &b] {
        n.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(n.dump("kv")[0][1], "tfuture");
    }
    a.exec("UPDATE kv SET v = 'after' WHERE k = 1");
    converge(&[&a, &b]).await;
    assert_eq!(
        b.dump("kv")[0][1],
        "tafter",
        "a write made after seeing a clock must order after it"
    );
}
