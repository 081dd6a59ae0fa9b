//! The merge promises (ADR 0011) through the public API, on real nats-server processes and SQLite files:
//! rows created under one auto-assigned key on two nodes all survive with their children, edits of
//! different columns both survive, a UNIQUE clash converges and is reported, an offline write orders by
//! when it was made, a column added while a node is stopped lets its parked changes apply at restart, and
//! a database that already holds rows seeds the cluster. Every check is against what the app committed.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use harmonylite::ConflictKind;
use rusqlite::Connection;
use support::*;

const SHOP: &str = "CREATE TABLE category(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
     CREATE TABLE product(id INTEGER PRIMARY KEY, category_id INTEGER REFERENCES category(id),
                          name TEXT NOT NULL);";

/// The app's way: in one transaction, insert a parent, read its auto-assigned id, insert a child pointing
/// at it. (Outside a transaction a child written after its parent was moved off a colliding key would
/// point at the row that kept the key: the app still holds the old id. ADR 0011 says so.)
fn create_category_with_product(conn: &Connection, name: &str) {
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    conn.execute("INSERT INTO category(name) VALUES (?1)", [name])
        .expect("insert category");
    let id = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO product(category_id, name) VALUES (?1, ?2)",
        rusqlite::params![id, format!("{name}/product")],
    )
    .expect("insert product");
    conn.execute_batch("COMMIT").expect("commit");
}

/// Every category the app created exists exactly once, and its product points at it.
fn assert_shop_holds(node: &Node, ledger: &BTreeSet<String>) {
    let conn = node.conn();
    let categories: Vec<String> = conn
        .prepare("SELECT name FROM category ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .expect("categories");
    assert_eq!(
        categories.len(),
        ledger.len(),
        "every created category, once: {categories:?}"
    );
    assert_eq!(categories.iter().cloned().collect::<BTreeSet<_>>(), *ledger);
    let pairs: Vec<(String, Option<String>)> = conn
        .prepare(
            "SELECT p.name, c.name FROM product p LEFT JOIN category c ON c.id = p.category_id ORDER BY p.name",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .expect("products");
    assert_eq!(pairs.len(), ledger.len(), "every created product, once");
    for (product, category) in pairs {
        let expected = product.trim_end_matches("/product").to_string();
        assert_eq!(
            category.as_deref(),
            Some(expected.as_str()),
            "product {product} points at the wrong category"
        );
    }
}

async fn three_nodes(server: &NatsServer, schema: &str) -> (Node, Node, Node) {
    (
        Node::start(config_for(server, 1), schema).await,
        Node::start(config_for(server, 2), schema).await,
        Node::start(config_for(server, 3), schema).await,
    )
}

/// Waits until the wall clock is past `millis`, so the next write is stamped later than one made at it.
fn wait_past(millis: u64) {
    wait_until("the clock to move on", || {
        harmonylite::clock::wall_millis() > millis + 2
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_created_under_one_auto_key_on_two_nodes_all_survive_with_their_children() {
    init_logging();
    let server = NatsServer::start();
    let (a, mut b, c) = three_nodes(&server, SHOP).await;
    let mut ledger = BTreeSet::new();

    // B's app writes while its replica is down (an outage): both nodes hand out ids 1..20.
    b.close().await;
    for i in 0..20 {
        let name = format!("A-{i}");
        create_category_with_product(&a.conn(), &name);
        ledger.insert(name);
    }
    a.sync().await;
    wait_past(harmonylite::clock::wall_millis());
    for i in 0..20 {
        let name = format!("B-{i}");
        create_category_with_product(&b.conn(), &name);
        ledger.insert(name);
    }
    b.open().await;
    settle(&[&a, &b, &c]).await;
    for node in [&a, &b, &c] {
        assert_shop_holds(node, &ledger);
    }
    assert_same(&[&a, &b, &c], &["category", "product"]);
    // A created first and keeps ids 1..20 of both tables; B moved its own rows and says so.
    let status = b.replica().status().await.expect("status");
    assert_eq!(
        status.moved_keys, 40,
        "B moved its 20 categories and 20 products"
    );
    let metrics = b.replica().metrics().await.expect("metrics");
    let series = |name: &str| format!("harmonylite_{name}{{node_id=\"{}\"}}", status.node_id);
    assert_eq!(
        metric_value(&metrics, &series("keys_moved_total")),
        Some(40.0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, &series("conflicts_total")).is_some_and(|n| n >= 40.0),
        "every move is recorded: {metrics}"
    );
    let moved: Vec<_> = b
        .replica()
        .conflicts(0, 1000)
        .await
        .expect("conflicts")
        .into_iter()
        .filter(|c| c.kind == ConflictKind::KeyMoved && c.moved_to.is_some())
        .collect();
    assert_eq!(
        moved.iter().filter(|c| c.table == "category").count(),
        20,
        "each move is in B's conflict log"
    );
    assert_eq!(moved.iter().filter(|c| c.table == "product").count(), 20);
    for node in [&a, &c] {
        let logged = node.replica().conflicts(0, 1000).await.expect("conflicts");
        assert!(
            logged.iter().any(|c| c.kind == ConflictKind::KeyMoved),
            "every node records the collisions it saw"
        );
    }

    // Now both nodes at once, as fast as they can, with replication live.
    std::thread::scope(|scope| {
        for (node, prefix) in [(&a, "A2"), (&b, "B2")] {
            let names: Vec<String> = (0..20).map(|i| format!("{prefix}-{i}")).collect();
            ledger.extend(names.iter().cloned());
            let conn = node.conn();
            scope.spawn(move || {
                for name in names {
                    create_category_with_product(&conn, &name);
                }
            });
        }
    });
    settle(&[&a, &b, &c]).await;
    for node in [&a, &b, &c] {
        assert_shop_holds(node, &ledger);
    }
    assert_same(&[&a, &b, &c], &["category", "product"]);
}

const DOC: &str =
    "CREATE TABLE doc(id INTEGER PRIMARY KEY, title TEXT, body TEXT, rating INTEGER);";

fn doc_row(node: &Node, id: i64) -> Vec<String> {
    node.dump("doc")
        .into_iter()
        .find(|row| row[0] == format!("i{id}"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_of_different_columns_both_survive_and_offline_writes_order_by_when_made()
{
    init_logging();
    let server = NatsServer::start();
    let (mut a, b, c) = three_nodes(&server, DOC).await;
    a.exec("INSERT INTO doc VALUES (1, 'title', 'body', 0)");
    settle(&[&a, &b, &c]).await;

    // Two people edit different fields of one record; A's edit is made while its replica is down.
    a.close().await;
    a.exec("UPDATE doc SET title = 'title by A' WHERE id = 1");
    b.exec("UPDATE doc SET body = 'body by B' WHERE id = 1");
    b.sync().await;
    a.open().await;
    settle(&[&a, &b, &c]).await;
    for node in [&a, &b, &c] {
        assert_eq!(
            doc_row(node, 1),
            vec!["i1", "ttitle by A", "tbody by B", "i0"]
        );
        let logged = node.replica().conflicts(0, 100).await.expect("conflicts");
        assert!(
            logged.is_empty(),
            "edits of different columns are no conflict: {logged:?}"
        );
    }

    // The same field: A edits offline first, B later, then A comes back: B's later edit wins everywhere.
    a.close().await;
    a.exec("UPDATE doc SET rating = 1 WHERE id = 1");
    wait_past(harmonylite::clock::wall_millis());
    b.exec("UPDATE doc SET rating = 2 WHERE id = 1");
    b.sync().await;
    a.open().await;
    settle(&[&a, &b, &c]).await;
    for node in [&a, &b, &c] {
        assert_eq!(doc_row(node, 1)[3], "i2", "the later write wins");
    }
    let logged = a.replica().conflicts(0, 100).await.expect("conflicts");
    assert!(
        logged
            .iter()
            .any(|c| c.columns == vec!["rating".to_string()]
                && c.loser.as_ref().is_some_and(|l| l.node == 1)),
        "A's lost edit is in its conflict log: {logged:?}"
    );

    // And the other way round: B first, A offline later: A's wins when it comes back.
    b.exec("UPDATE doc SET rating = 3 WHERE id = 1");
    b.sync().await;
    a.close().await;
    wait_past(harmonylite::clock::wall_millis());
    a.exec("UPDATE doc SET rating = 4 WHERE id = 1");
    a.open().await;
    settle(&[&a, &b, &c]).await;
    for node in [&a, &b, &c] {
        assert_eq!(doc_row(node, 1)[3], "i4", "the later (offline) write wins");
    }
    assert_same(&[&a, &b, &c], &["doc"]);
}

const USERS: &str =
    "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_clash_converges_is_reported_and_applies_once_the_value_is_free() {
    init_logging();
    let server = NatsServer::start();
    let (a, mut b, c) = three_nodes(&server, USERS).await;
    b.close().await;
    a.exec("INSERT INTO users VALUES (1, 'x@example.com', 'created on A')");
    a.sync().await;
    wait_past(harmonylite::clock::wall_millis());
    b.exec("INSERT INTO users VALUES (2, 'x@example.com', 'created on B')");
    b.open().await;
    settle(&[&a, &b, &c]).await;
    assert_same(&[&a, &b, &c], &["users"]);
    for node in [&a, &b, &c] {
        assert_eq!(
            node.dump("users"),
            vec![vec!["i1", "tx@example.com", "tcreated on A"]],
            "the row created first keeps the value"
        );
        let status = node.replica().status().await.expect("status");
        let paused = status
            .paused_tables
            .iter()
            .find(|p| p.table == "users")
            .unwrap_or_else(|| panic!("users waits: {:?}", status.paused_tables));
        assert_eq!(
            (paused.waiting_changes, paused.kind.as_str()),
            (1, "constraint")
        );
        assert!(paused.reason.contains("UNIQUE"), "{}", paused.reason);
        let logged = node.replica().conflicts(0, 100).await.expect("conflicts");
        let clash = logged
            .iter()
            .find(|c| c.kind == ConflictKind::Constraint)
            .unwrap_or_else(|| panic!("the clash is recorded: {logged:?}"));
        assert_eq!(clash.winner.as_ref().map(|w| w.node), Some(1));
        assert!(clash.loser.as_ref().is_some_and(|l| l
            .values
            .iter()
            .any(|(_, v)| *v == harmonylite::Value::Text("created on B".into()))));
    }

    // The blocking data changes: the parked row applies everywhere.
    a.exec("UPDATE users SET email = 'y@example.com' WHERE id = 1");
    settle(&[&a, &b, &c]).await;
    for node in [&a, &b, &c] {
        wait_until_async("the parked row to apply", || node.dump("users").len() == 2).await;
        assert_eq!(
            node.dump("users"),
            vec![
                vec!["i1", "ty@example.com", "tcreated on A"],
                vec!["i2", "tx@example.com", "tcreated on B"]
            ]
        );
        let status = node.replica().status().await.expect("status");
        assert!(
            status.paused_tables.is_empty(),
            "{:?}",
            status.paused_tables
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_while_a_node_is_stopped_lets_its_parked_changes_apply_at_restart() {
    init_logging();
    let server = NatsServer::start();
    let (a, mut b, c) = three_nodes(&server, DOC).await;
    a.exec("INSERT INTO doc VALUES (1, 'title', 'body', 0)");
    settle(&[&a, &b, &c]).await;

    // A and C migrate first and write the new column; B has not migrated yet.
    a.exec("ALTER TABLE doc ADD COLUMN tags TEXT");
    c.exec("ALTER TABLE doc ADD COLUMN tags TEXT");
    a.exec("UPDATE doc SET tags = 'new' WHERE id = 1; INSERT INTO doc VALUES (2, 't2', 'b2', 5, 'fresh')");
    converge(&[&a, &b, &c]).await;
    let status = b.replica().status().await.expect("status");
    assert!(
        status
            .paused_tables
            .iter()
            .any(|p| p.table == "doc" && p.kind == "schema" && p.reason.contains("tags")),
        "B says doc waits for column tags: {:?}",
        status.paused_tables
    );
    // B, still on the old schema, edits row 1: the change lacks `tags` and must not reset it elsewhere.
    b.exec("UPDATE doc SET title = 'title by B' WHERE id = 1");
    converge(&[&a, &b, &c]).await;
    for node in [&a, &c] {
        assert_eq!(
            doc_row(node, 1),
            vec!["i1", "ttitle by B", "tbody", "i0", "tnew"]
        );
    }

    // B is stopped, migrated while stopped (the rolling upgrade), and started again.
    b.close().await;
    b.exec("ALTER TABLE doc ADD COLUMN tags TEXT");
    b.open().await;
    let started = std::time::Instant::now();
    loop {
        let status = b.replica().status().await.expect("status");
        if status.paused_tables.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "parked changes still wait after the restart: {:?}",
            status.paused_tables
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(&[&a, &b, &c]).await;
    assert_same(&[&a, &b, &c], &["doc"]);
    assert_eq!(doc_row(&b, 2), vec!["i2", "tt2", "tb2", "i5", "tfresh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_already_holds_rows_seeds_the_cluster() {
    init_logging();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.db");
    {
        let conn = app_connection(&db);
        conn.execute_batch(SHOP).expect("schema");
        for i in 0..100 {
            create_category_with_product(&conn, &format!("existing-{i}"));
        }
    }
    let mut a = Node {
        dir,
        db,
        replica: None,
        config: config_for(&server, 1),
    };
    a.open().await;
    let b = Node::start(config_for(&server, 2), SHOP).await;
    let c = Node::start(config_for(&server, 3), SHOP).await;
    settle(&[&a, &b, &c]).await;
    let ledger: BTreeSet<String> = (0..100).map(|i| format!("existing-{i}")).collect();
    for node in [&a, &b, &c] {
        assert_shop_holds(node, &ledger);
    }
    assert_same(&[&a, &b, &c], &["category", "product"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_configured_to_merge_whole_rows_keeps_the_newest_image() {
    init_logging();
    let server = NatsServer::start();
    let row_merged = |node_id| {
        let mut config = config_for(&server, node_id);
        config
            .tables
            .merge
            .insert("doc".into(), harmonylite::config::TableMerge::Row);
        config
    };
    let mut a = Node::start(row_merged(1), DOC).await;
    let b = Node::start(row_merged(2), DOC).await;
    a.exec("INSERT INTO doc VALUES (1, 'title', 'body', 0)");
    settle(&[&a, &b]).await;
    a.close().await;
    a.exec("UPDATE doc SET title = 'title by A' WHERE id = 1");
    wait_past(harmonylite::clock::wall_millis());
    b.exec("UPDATE doc SET body = 'body by B' WHERE id = 1");
    b.sync().await;
    a.open().await;
    settle(&[&a, &b]).await;
    for node in [&a, &b] {
        assert_eq!(
            doc_row(node, 1),
            vec!["i1", "ttitle", "tbody by B", "i0"],
            "the newest whole row (B's) wins; A's edit is in the conflict log"
        );
    }
    let logged = a.replica().conflicts(0, 100).await.expect("conflicts");
    assert!(
        logged
            .iter()
            .any(|c| c.columns.contains(&"title".to_string())),
        "{logged:?}"
    );
}

/// An edit made elsewhere to a row of this node (its lineage) waits here for a column; meanwhile a row
/// created earlier on another node takes the key and this node moves its row to a fresh key. When the
/// column comes, the edit belongs to a row that left the key: it is recorded as lost, and nothing is
/// written for it — no row appears under yet another key on this node only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_waiting_for_a_column_of_a_row_that_moved_writes_no_row_of_its_own() {
    use harmonylite::clock::Version;
    use harmonylite::log::{Op, RowChange, Value};

    init_logging();
    let server = NatsServer::start();
    let b = Node::start(
        config_for(&server, 2),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .await;
    b.exec("INSERT INTO t(v) VALUES ('from b')");
    b.sync().await;
    let pk = harmonylite::log::pk_key(&[Value::Integer(1)]);
    let (born_hlc, born_node, born_hash): (i64, i64, i64) = b
        .conn()
        .query_row(
            "SELECT born_hlc, born_node, born_hash FROM __harmonylite__rows WHERE tbl = 't' AND pk = ?1",
            [&pk],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("row state");
    let born = Version {
        hlc: born_hlc as u64,
        node: born_node as u64,
    };
    // Node 3 edits B's row with a column B does not have yet: it waits.
    let edit = RowChange {
        table: "t".into(),
        op: Op::Update,
        hlc: born.hlc + (5 << 16),
        cl: 1,
        born,
        born_hash: born_hash as u64,
        life: born,
        seen: None,
        pk: vec![Value::Integer(1)],
        columns: vec![("w".into(), Value::Text("edit from node 3".into()))],
    };
    let token = inject(&server, 3, vec![edit]).await;
    b.replica()
        .wait_for(&token, WAIT)
        .await
        .expect("the edit arrives");
    let status = b.replica().status().await.expect("status");
    assert_eq!(
        status
            .paused_tables
            .iter()
            .map(|t| t.waiting_changes)
            .sum::<u64>(),
        1,
        "the edit waits for column w: {:?}",
        status.paused_tables
    );
    // Node 1 created a row under the same key earlier: it keeps the key, B moves its row.
    let earlier = Version {
        hlc: born.hlc - (5 << 16),
        node: 1,
    };
    let first = RowChange {
        table: "t".into(),
        op: Op::Insert,
        hlc: earlier.hlc,
        cl: 1,
        born: earlier,
        born_hash: 0x5eed,
        life: earlier,
        seen: None,
        pk: vec![Value::Integer(1)],
        columns: vec![
            ("id".into(), Value::Integer(1)),
            ("v".into(), Value::Text("from node 1".into())),
        ],
    };
    let token = inject(&server, 1, vec![first]).await;
    b.replica()
        .wait_for(&token, WAIT)
        .await
        .expect("node 1's row arrives");
    wait_until_async("B to move its row off key 1", || {
        b.dump("t").len() == 2 && b.dump("t")[0][1] == "tfrom node 1"
    })
    .await;
    // The column comes: the waiting edit is retried, and nothing is left waiting.
    b.exec("ALTER TABLE t ADD COLUMN w TEXT");
    wait_until_async("the waiting edit to be settled", || {
        b.conn()
            .query_row("SELECT count(*) FROM __harmonylite__deferred", [], |r| {
                r.get::<_, i64>(0)
            })
            .is_ok_and(|n| n == 0)
    })
    .await;
    let rows = b.dump("t");
    assert_eq!(
        rows.len(),
        2,
        "node 1's row and B's moved row, nothing else: {rows:?}"
    );
    assert!(
        rows.iter().any(|r| r[1] == "tfrom b"),
        "B's row survives under its new key: {rows:?}"
    );
    let conflicts = b.replica().conflicts(0, 100).await.expect("conflicts");
    assert!(
        conflicts.iter().any(|c| c.loser.as_ref().is_some_and(|l| l
            .values
            .iter()
            .any(|(_, v)| *v == Value::Text("edit from node 3".into())))),
        "the edit is recorded as lost: {conflicts:?}"
    );
}
