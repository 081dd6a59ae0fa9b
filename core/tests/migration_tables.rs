//! Migration tools' bookkeeping tables stay node-local by default (docs/configuration.md): each node records
//! its own migrations while the app's tables replicate.

mod support;

use support::*;

/// What `manage.py migrate` and `knex migrate:latest` leave behind, plus an app table. Sequel's
/// `schema_info` has no primary key: being node-local, it is not refused.
const SCHEMA: &str = "
CREATE TABLE django_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, name TEXT NOT NULL, applied TEXT NOT NULL);
CREATE TABLE knex_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, batch INTEGER, migration_time TEXT);
CREATE TABLE knex_migrations_lock(\"index\" INTEGER PRIMARY KEY AUTOINCREMENT, is_locked INTEGER);
CREATE TABLE schema_info(version INTEGER);
CREATE TABLE shop_product(id INTEGER PRIMARY KEY, name TEXT);
";

fn migrate(node: &Node, which: &str) {
    node.exec(&format!(
        "INSERT INTO django_migrations(app, name, applied) VALUES ('shop', '0001_initial', '{which}'), ('shop', '0002_{which}', '{which}');
         INSERT INTO knex_migrations(name, batch, migration_time) VALUES ('{which}.js', 1, '{which}');
         INSERT INTO knex_migrations_lock(is_locked) VALUES (0);
         INSERT INTO schema_info VALUES (1);"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_keeps_its_own_migration_rows_while_app_tables_replicate() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    migrate(&a, "node1");
    migrate(&b, "node2");
    a.exec("INSERT INTO shop_product VALUES (1, 'from node 1')");
    b.exec("INSERT INTO shop_product VALUES (2, 'from node 2')");
    converge(&[&a, &b]).await;

    assert_same(&[&a, &b], &["shop_product"]);
    assert_eq!(a.dump("shop_product").len(), 2);
    for (node, which) in [(&a, "node1"), (&b, "node2")] {
        let rows = node.dump("django_migrations");
        assert_eq!(rows.len(), 2, "{which}: {rows:?}");
        assert!(rows.iter().all(|r| r[3] == format!("t{which}")), "{rows:?}");
        assert_eq!(node.dump("knex_migrations").len(), 1);
        assert_eq!(node.dump("knex_migrations_lock").len(), 1);
        assert_eq!(node.dump("schema_info").len(), 1);
        let status = node.replica().status().await.expect("status");
        assert_eq!(status.replicated_tables, vec!["shop_product".to_string()]);
    }
    // Later bookkeeping writes (a knex lock taken and released) stay local too.
    a.exec("UPDATE knex_migrations_lock SET is_locked = 1");
    b.exec("INSERT INTO shop_product VALUES (3, 'after the lock')");
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["shop_product"]);
    assert_eq!(b.dump("knex_migrations_lock")[0][1], "i0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_tables_replicate_when_the_config_says_so() {
    init_logging();
    let server = NatsServer::start();
    let schema = SCHEMA.replace("CREATE TABLE schema_info(version INTEGER);", "");
    let config = |node| {
        let mut config = config_for(&server, node);
        config.tables.replicate_migration_tables = true;
        config
    };
    let a = Node::start(config(1), &schema).await;
    let mut only_django = config_for(&server, 2);
    only_django.tables.include = vec!["django_migrations".into(), "shop_product".into()];
    let b = Node::start(only_django, &schema).await;
    a.exec("INSERT INTO django_migrations(id, app, name, applied) VALUES (7, 'shop', '0001_initial', 'node1')");
    a.exec("INSERT INTO knex_migrations(id, name) VALUES (7, 'node1.js')");
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["django_migrations"]);
    assert_eq!(b.dump("django_migrations").len(), 1);
    // Node 2 includes django_migrations by name, not knex_migrations: it receives but never applies those.
    assert!(b.dump("knex_migrations").is_empty());
    let status = a.replica().status().await.expect("status");
    assert!(status
        .replicated_tables
        .contains(&"knex_migrations_lock".to_string()));
}
