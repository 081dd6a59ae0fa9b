//! Every SQLite storage class round-trips exactly; oversized rows are refused with a clear record.

mod support;

use support::*;

const SCHEMA: &str =
    "CREATE TABLE vals(id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, any_col);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_exactly() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    let conn = a.conn();
    let reals = [
        0.0,
        -0.0,
        1.0 / 3.0,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        -f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -2.5,
    ];
    let ints = [i64::MIN, i64::MAX, 0, -1, 1 << 53, (1 << 53) + 1];
    let texts = [
        "",
        "plain",
        "zé 🚀 日本語",
        "quote ' and \" and \0 nul",
        &"x".repeat(500_000),
    ];
    let blobs: [Vec<u8>; 4] = [
        vec![],
        vec![0, 1, 2, 255],
        vec![0u8; 1000],
        (0..2_000_000u32).map(|i| (i * 7) as u8).collect(),
    ];
    let mut id = 0;
    for (n, r) in reals.iter().enumerate() {
        id += 1;
        conn.execute(
            "INSERT INTO vals VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                id,
                ints[n % ints.len()],
                r,
                texts[n % texts.len()],
                blobs[n % blobs.len()],
                r
            ],
        )
        .expect("insert");
    }
    for i in ints {
        id += 1;
        conn.execute(
            "INSERT INTO vals(id, i, any_col) VALUES (?1, ?2, ?2)",
            rusqlite::params![id, i],
        )
        .expect("insert");
    }
    id += 1;
    conn.execute(
        "INSERT INTO vals VALUES (?1, NULL, NULL, NULL, NULL, NULL)",
        [id],
    )
    .expect("nulls");
    id += 1;
    // A 2 MB row (above NATS' default 1 MB payload) replicates: the servers here allow 8 MB.
    conn.execute(
        "INSERT INTO vals(id, b) VALUES (?1, ?2)",
        rusqlite::params![id, blobs[3]],
    )
    .expect("big");
    converge(&[&a, &b]).await;
    assert_eq!(a.dump("vals").len(), id as usize);
    assert_same(&[&a, &b], &["vals"]);
    // Spot-check types on B directly.
    let extremes: (i64, i64) = b
        .conn()
        .query_row("SELECT min(i), max(i) FROM vals", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .expect("row");
    assert_eq!(extremes, (i64::MIN, i64::MAX));
    let r: f64 = b
        .conn()
        .query_row("SELECT r FROM vals WHERE id = 6", [], |row| row.get(0))
        .expect("row");
    assert_eq!(r.to_bits(), f64::MAX.to_bits());
    let t: String = b
        .conn()
        .query_row("SELECT t FROM vals WHERE id = 3", [], |row| row.get(0))
        .expect("row");
    assert_eq!(t, "zé 🚀 日本語");
    let kind: String = b
        .conn()
        .query_row(
            "SELECT typeof(any_col) FROM vals WHERE id = 12",
            [],
            |row| row.get(0),
        )
        .expect("row");
    assert_eq!(kind, "integer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_larger_than_the_server_accepts_is_refused_and_recorded() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    // Random bytes do not compress: 12 MB is over the server's 8 MB max payload.
    let huge: Vec<u8> = (0..12_000_000).map(|_| rand::random::<u8>()).collect();
    a.conn()
        .execute("INSERT INTO vals(id, b) VALUES (1, ?1)", [huge])
        .expect("insert");
    a.exec("INSERT INTO vals(id, t) VALUES (2, 'small')");
    converge(&[&a, &b]).await;
    let status = a.replica().status().await.expect("status");
    assert_eq!(status.rejected_local, 1, "the refused row is recorded");
    assert_eq!(status.unsent_messages, 0);
    let reason: String = a
        .conn()
        .query_row(
            "SELECT tbl || ': ' || reason FROM __harmonylite__rejected",
            [],
            |r| r.get(0),
        )
        .expect("rejected row");
    assert!(reason.starts_with("vals: "), "{reason}");
    // The small row still replicated; the huge one stayed local.
    let rows = b.dump("vals");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "i2");
}
