//! Signed messages (`[signing]`, docs/security.md): nodes that share the cluster key replicate as usual; a
//! message that is unsigned, signed with another key, or altered is refused before it touches a table (kept on
//! the dead-letter stream with its reason, counted in `status()`), and the stream goes on. During a rollout,
//! `accept_unsigned` applies unsigned messages; during a key rotation, `previous_keys` verifies the old key.

mod support;

use async_nats::HeaderMap;
use harmonylite::clock::Version;
use harmonylite::log::signing::{ClusterKeys, SIGNATURE_HEADER};
use harmonylite::log::{Batch, Op, RowChange, Value};
use harmonylite::{Config, ErrorCode, Token};
use support::*;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";
const KEY: &str = "0123456789abcdef0123456789abcdef-cluster";
const OLD_KEY: &str = "fedcba9876543210fedcba9876543210-retired";

fn signed(server: &NatsServer, node: u64, key: &str) -> Config {
    let mut config = config_for(server, node);
    config.signing.key = key.to_string();
    config
}

fn insert(id: i64, body: &str, node: u64) -> RowChange {
    let hlc = harmonylite::clock::wall_millis() << 16;
    let born = Version { hlc, node };
    RowChange {
        table: "notes".into(),
        op: Op::Insert,
        hlc,
        cl: 1,
        born,
        born_hash: hlc ^ id as u64,
        life: born,
        seen: None,
        pk: vec![Value::Integer(id)],
        columns: vec![
            ("id".to_string(), Value::Integer(id)),
            ("body".to_string(), Value::Text(body.into())),
        ],
    }
}

/// Publishes one batch of `node`'s changes with a message id and, if given, a signature header; returns the
/// token that covers it.
async fn publish(
    server: &NatsServer,
    node: u64,
    changes: Vec<RowChange>,
    signature: impl FnOnce(&str, &[u8]) -> Option<String>,
) -> Token {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let payload = harmonylite::log::encode(&Batch::of_changes(node, changes), true);
    let id = format!("{node}-{}-1-forged", rand_id());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    if let Some(value) = signature(&id, &payload) {
        headers.insert(SIGNATURE_HEADER, value.as_str());
    }
    let ack = js
        .publish_with_headers("harmonylite-change-log.0", headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let mut token = Token::default();
    token.positions.insert(0, ack.sequence);
    token
}

/// Unique per message: JetStream drops a second message with the same id.
fn rand_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn bodies(node: &Node) -> Vec<String> {
    // `dump` prefixes each value with its type (`t` for text).
    node.dump("notes")
        .into_iter()
        .map(|row| row[1][1..].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_messages_signed_with_the_cluster_key_are_applied() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(signed(&server, 1, KEY), SCHEMA).await;
    let b = Node::start(signed(&server, 2, KEY), SCHEMA).await;
    a.exec("INSERT INTO notes VALUES (1, 'from a')");
    b.exec("INSERT INTO notes VALUES (2, 'from b')");
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["notes"]);
    assert_eq!(bodies(&a), ["from a", "from b"]);

    // Forged: unsigned, signed with another key, signed but altered in transit, signed under another id.
    let mut token = Token::default();
    let other = ClusterKeys::new(b"the key of some other cluster, not ours", &[], false);
    let ours = ClusterKeys::new(KEY.as_bytes(), &[], false);
    token.merge(&publish(&server, 9, vec![insert(10, "unsigned", 9)], |_, _| None).await);
    token.merge(
        &publish(&server, 9, vec![insert(11, "other key", 9)], |id, p| {
            Some(other.sign(id, p))
        })
        .await,
    );
    token.merge(
        &publish(&server, 9, vec![insert(12, "altered", 9)], |id, _| {
            Some(ours.sign(id, b"the payload that was signed"))
        })
        .await,
    );
    token.merge(
        &publish(&server, 9, vec![insert(13, "replayed id", 9)], |_, p| {
            Some(ours.sign("another-message-id", p))
        })
        .await,
    );
    // And one signed with the cluster key: applied, after the refused ones.
    token.merge(
        &publish(&server, 9, vec![insert(14, "signed", 9)], |id, p| {
            Some(ours.sign(id, p))
        })
        .await,
    );
    a.exec("INSERT INTO notes VALUES (3, 'after the forgeries')");
    token.merge(&a.sync().await);
    for node in [&a, &b] {
        node.replica()
            .wait_for(&token, WAIT)
            .await
            .expect("the stream goes on past refused messages");
    }
    assert_same(&[&a, &b], &["notes"]);
    assert_eq!(
        bodies(&b),
        ["from a", "from b", "after the forgeries", "signed"]
    );
    for node in [&a, &b] {
        let status = node.replica().status().await.expect("status");
        assert_eq!(status.dead_lettered, 4, "the four forged messages");
    }
    // Kept whole on the dead-letter stream, with the reason.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let dead = js
        .get_stream("harmonylite-changes-dead-letter")
        .await
        .expect("dead-letter stream");
    let mut reasons = Vec::new();
    let mut seq = 1;
    while let Ok(message) = dead.get_raw_message(seq).await {
        reasons.push(
            message
                .headers
                .get("HarmonyLite-Reason")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
        seq += 1;
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unsigned message refused")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not match")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_signing_out_and_rotating_the_key_lose_nothing() {
    init_logging();
    let server = NatsServer::start();
    // Step 1 of a rollout: b has the key and still accepts unsigned messages; a has no key yet.
    let mut a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut rollout = signed(&server, 2, OLD_KEY);
    rollout.signing.accept_unsigned = true;
    let mut b = Node::start(rollout, SCHEMA).await;
    a.exec("INSERT INTO notes VALUES (1, 'unsigned, during the rollout')");
    b.exec("INSERT INTO notes VALUES (2, 'signed by b')");
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["notes"]);

    // A rotation: a now signs with the new key; b signs with the old one and accepts the new one.
    a.close().await;
    a.config = signed(&server, 1, KEY);
    a.config.signing.previous_keys = vec![OLD_KEY.to_string()];
    a.open().await;
    b.close().await;
    b.config = signed(&server, 2, OLD_KEY);
    b.config.signing.previous_keys = vec![KEY.to_string()];
    b.open().await;
    a.exec("INSERT INTO notes VALUES (3, 'new key')");
    b.exec("INSERT INTO notes VALUES (4, 'old key')");
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["notes"]);
    assert_eq!(a.dump("notes").len(), 4);
    for node in [&a, &b] {
        let status = node.replica().status().await.expect("status");
        assert_eq!(status.dead_lettered, 0);
    }
}

/// A node that refused messages (here: signed with a key it did not know yet) keeps them as dead letters;
/// restarted with the key, it reads them back from the stream and applies them, and the records go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_apply_after_a_restart_that_can_trust_them() {
    init_logging();
    let server = NatsServer::start();
    let mut a = Node::start(signed(&server, 1, KEY), SCHEMA).await;
    let mut b = Node::start(signed(&server, 2, OLD_KEY), SCHEMA).await;
    a.exec("INSERT INTO notes VALUES (1, 'from a')");
    a.exec("UPDATE notes SET body = 'from a, edited' WHERE id = 1");
    b.exec("INSERT INTO notes VALUES (2, 'from b, before')");
    let token = a.sync().await;
    b.replica()
        .wait_for(&token, WAIT)
        .await
        .expect("the stream goes on past refused messages");
    assert_eq!(bodies(&b), ["from b, before"]);
    let refused = b.replica().status().await.expect("status").dead_lettered;
    assert!(refused >= 1, "a's messages are dead letters on b");

    // The operator fixes the keys (each node also trusts the other's); each applies what it refused, and
    // b's write made while it was closed goes out too.
    b.close().await;
    b.exec("INSERT INTO notes VALUES (3, 'from b, while closed')");
    b.config = signed(&server, 2, OLD_KEY);
    b.config.signing.previous_keys = vec![KEY.to_string()];
    b.open().await;
    a.close().await;
    a.config = signed(&server, 1, KEY);
    a.config.signing.previous_keys = vec![OLD_KEY.to_string()];
    a.open().await;
    for node in [&a, &b] {
        let started = std::time::Instant::now();
        while node.replica().status().await.expect("status").dead_lettered > 0 {
            assert!(started.elapsed() < WAIT, "dead letters were not applied");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    converge(&[&a, &b]).await;
    assert_same(&[&a, &b], &["notes"]);
    assert_eq!(
        bodies(&b),
        ["from a, edited", "from b, before", "from b, while closed"]
    );
    for node in [&a, &b] {
        let status = node.replica().status().await.expect("status");
        assert_eq!(status.dead_lettered, 0);
        assert_eq!(status.errors, 0, "{:?}", status.last_error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signing_config_names_the_key_or_the_file() {
    init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    let cases: Vec<(Config, &str, &str)> = vec![
        (
            Config {
                signing: harmonylite::config::SigningConfig {
                    key: "short".into(),
                    ..Default::default()
                },
                ..Config::default()
            },
            "signing.key",
            "at least 32",
        ),
        (
            Config {
                signing: harmonylite::config::SigningConfig {
                    key_file: dir.path().join("missing.key").display().to_string(),
                    ..Default::default()
                },
                ..Config::default()
            },
            "signing.key_file",
            "missing.key",
        ),
        (
            Config {
                signing: harmonylite::config::SigningConfig {
                    accept_unsigned: true,
                    ..Default::default()
                },
                ..Config::default()
            },
            "signing.key",
            "required",
        ),
    ];
    for (config, key, words) in cases {
        let err = match harmonylite::open_replicated(&db, config).await {
            Ok(_) => panic!("a config with a bad {key} was accepted"),
            Err(err) => err,
        };
        assert_eq!(err.code(), ErrorCode::Config, "{err}");
        let text = err.to_string();
        assert!(text.contains(key) && text.contains(words), "{text}");
    }
    // A key file works like the key, trailing newline and all: validation passes.
    let file = dir.path().join("cluster.key");
    std::fs::write(&file, format!("{KEY}\n")).expect("key file");
    let config = Config {
        signing: harmonylite::config::SigningConfig {
            key_file: file.display().to_string(),
            ..Default::default()
        },
        ..Config::default()
    };
    config.validate().expect("a key file of 40 characters");
    // The key is never printed.
    let mut config = Config::default();
    config.signing.key = KEY.to_string();
    let shown = format!("{config:?}");
    assert!(!shown.contains(KEY), "{shown}");
}

/// Snapshots: with a cluster key, a node restores only a snapshot whose manifest is signed with it. A newer
/// unsigned or foreign one (planted by someone who can write the store) is passed over for an older signed one;
/// with no signed snapshot, the error says why for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_snapshots_signed_with_the_cluster_key_are_restored() {
    use harmonylite::snapshot::{build, fetch_newest_valid, upload, DirStore, SnapshotProgress};
    use std::sync::{Arc, Mutex};
    init_logging();
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("app.db");
    let work = dir.path().join("work");
    let store = DirStore::new(dir.path().join("store")).expect("store");
    let progress = Arc::new(Mutex::new(SnapshotProgress::default()));
    let conn = app_connection(&db);
    conn.execute_batch(SCHEMA).expect("schema");
    harmonylite::capture::create_library_tables(&conn).expect("library tables");
    let ours = ClusterKeys::new(KEY.as_bytes(), &[], false);
    let other = ClusterKeys::new(b"the key of some other cluster, not ours", &[], false);
    let mut objects = Vec::new();
    for (round, keys) in [Some(&ours), None, Some(&other)].into_iter().enumerate() {
        conn.execute(
            "INSERT INTO notes VALUES (?1, ?2)",
            rusqlite::params![round as i64, format!("round {round}")],
        )
        .expect("insert");
        // Each snapshot is newer than the one before (its name comes from the stored clock).
        conn.execute(
            "INSERT OR REPLACE INTO __harmonylite__meta(key, value) VALUES ('hlc', ?1)",
            [1000 + round as i64],
        )
        .expect("clock");
        let (packed, manifest) = build(&db, &work, 1).expect("build");
        let stored = upload(&store, packed, &manifest, 10, &progress, keys)
            .await
            .expect("upload");
        assert_eq!(stored.signature.is_some(), keys.is_some());
        objects.push(manifest.object);
    }
    // A node with the key takes the oldest: the two newer ones are unsigned and signed by another key.
    let (manifest, staged) = fetch_newest_valid(&store, &work, &progress, Some(&ours))
        .await
        .expect("fetch")
        .expect("the signed snapshot");
    assert_eq!(manifest.object, objects[0]);
    let rows: i64 = rusqlite::Connection::open(staged.path())
        .expect("open staged")
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 1, "the first round's database");
    drop(staged);
    // A node without a key takes the newest, as before signing.
    let (manifest, _staged) = fetch_newest_valid(&store, &work, &progress, None)
        .await
        .expect("fetch")
        .expect("a snapshot");
    assert_eq!(manifest.object, objects[2]);
    // Altering a signed manifest (say, to point at other data) breaks its signature.
    let key = objects[0].trim_end_matches(".db.zst").to_string() + ".json";
    let mut altered: harmonylite::snapshot::Manifest =
        serde_json::from_slice(&std::fs::read(dir.path().join("store").join(&key)).expect("read"))
            .expect("manifest");
    altered.raw_bytes += 1;
    use harmonylite::snapshot::SnapshotStore as _;
    store
        .put(&key, serde_json::to_vec(&altered).expect("json"))
        .await
        .expect("put");
    let err = fetch_newest_valid(&store, &work, &progress, Some(&ours))
        .await
        .expect_err("no signed snapshot is left");
    let text = err.to_string();
    for (object, why) in [
        (&objects[0], "does not match"),
        (&objects[1], "unsigned"),
        (&objects[2], "does not match"),
    ] {
        assert!(text.contains(&format!("{object}: ")), "{text}");
        assert!(text.contains(why), "{text}");
    }
}
