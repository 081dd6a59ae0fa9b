//! Conflicts resolve by `(hlc, node_id)` per column and by causal length per row, on every node, never by
//! arrival order (ADR 0011).

mod support;

use harmonylite::clock::Version;
use harmonylite::log::{encode, Batch, Op, RowChange, Value};
use harmonylite::Token;
use support::*;

const SCHEMA: &str = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);";

/// A row's newest change (hlc, node) and whether it is deleted.
fn version_of(node: &Node, k: i64) -> (i64, i64, i64) {
    let (cl, _, hlc, node_id) = state_of(node, k);
    (hlc, node_id, i64::from(cl % 2 == 0))
}

/// A row's causal length, incarnation, and newest change (hlc, node).
fn state_of(node: &Node, k: i64) -> (i64, Version, i64, i64) {
    let pk = harmonylite::log::pk_key(&[Value::Integer(k)]);
    node.conn()
        .query_row(
            "SELECT cl, born_hlc, born_node, hlc, node FROM __harmonylite__rows WHERE tbl = 'kv' AND pk = ?1",
            [pk],
            |r| {
                Ok((
                    r.get(0)?,
                    Version {
                        hlc: r.get::<_, i64>(1)? as u64,
                        node: r.get::<_, i64>(2)? as u64,
                    },
                    r.get(3)?,
                    r.get(4)?,
                ))
            },
        )
        .expect("row state")
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

/// An update of `v` in the row's life `cl`, incarnation `born`.
fn update(k: i64, v: &str, hlc: u64, cl: i64, born: Version) -> RowChange {
    RowChange {
        table: "kv".into(),
        op: Op::Update,
        hlc,
        cl: cl as u64,
        born,
        born_hash: 0,
        life: born,
        seen: None,
        pk: vec![Value::Integer(k)],
        columns: vec![("v".into(), Value::Text(v.into()))],
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
    let (cl1, born1, hlc1, _) = state_of(&a, 1);

    // An older update arrives last: it loses everywhere, and the conflict log says so.
    let token = inject(
        &server,
        99,
        update(1, "stale", hlc1 as u64 - 1000, cl1, born1),
    )
    .await;
    for n in [&a, &b] {
        n.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(n.dump("kv")[0][1], "tcurrent");
        let logged = n.replica().conflicts(0, 100).await.expect("conflicts");
        assert!(
            logged
                .iter()
                .any(|c| c.kind == harmonylite::ConflictKind::ChangeLost
                    && c.loser.as_ref().is_some_and(|l| l.node == 99)),
            "the stale edit is in the conflict log: {logged:?}"
        );
    }

    // A delete, then an update of the row's earlier life arriving after it — even with a newer clock: the
    // row stays deleted (a delete wins over a concurrent update).
    a.exec("DELETE FROM kv WHERE k = 2");
    converge(&[&a, &b]).await;
    let (delete_hlc, _, deleted) = version_of(&b, 2);
    assert_eq!(deleted, 1, "the delete is versioned (tombstone)");
    let (_, born2, _, _) = state_of(&b, 2);
    let token = inject(
        &server,
        99,
        update(2, "zombie", delete_hlc as u64 + 5, 1, born2),
    )
    .await;
    for n in [&a, &b] {
        n.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(
            n.dump("kv").len(),
            1,
            "a late update resurrected a deleted row"
        );
    }

    // Deleted and created again: a late delete of the earlier life does not remove the new one.
    a.exec("DELETE FROM kv WHERE k = 1");
    a.exec("INSERT INTO kv VALUES (1, 'again')");
    converge(&[&a, &b]).await;
    let (cl, born, _, _) = state_of(&b, 1);
    assert_eq!(cl, 3, "insert, delete, insert");
    let late_delete = RowChange {
        table: "kv".into(),
        op: Op::Delete,
        hlc: hlc1 as u64 + 1,
        cl: 2,
        born: born1,
        born_hash: 0,
        life: born1,
        seen: None,
        pk: vec![Value::Integer(1)],
        columns: vec![],
    };
    let token = inject(&server, 99, late_delete).await;
    for n in [&a, &b] {
        n.replica().wait_for(&token, WAIT).await.expect("wait");
        assert_eq!(n.dump("kv").len(), 1);
        assert_eq!(n.dump("kv")[0][1], "tagain");
    }

    // A newer change from elsewhere wins everywhere; a local write made after seeing it orders after it.
    let future = (harmonylite::clock::wall_millis() + 60_000) << 16;
    let token = inject(&server, 99, update(1, "future", future, cl, born)).await;
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
