//! The README's demo: three nodes on the embedded default (each starts its own nats-server, clustered with
//! the others), writes on every node through plain SQLite connections, and shows the rows arriving everywhere.
//!
//! Run: `cargo run -p harmonylite-examples --bin demo` (or `scripts/demo.sh`, which installs nats-server first).
//! Options: `--nodes N` (default 3), `--rows N` per node (default 100), `--keep DIR` to keep the databases.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use harmonylite::{Config, Replica, Token};
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS notes(id TEXT PRIMARY KEY, author INTEGER NOT NULL, body TEXT NOT NULL);";

struct Options {
    nodes: usize,
    rows: usize,
    keep: Option<PathBuf>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        nodes: 3,
        rows: 100,
        keep: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--nodes" => {
                options.nodes = value("--nodes")?
                    .parse()
                    .map_err(|_| "--nodes must be a number")?
            }
            "--rows" => {
                options.rows = value("--rows")?
                    .parse()
                    .map_err(|_| "--rows must be a number")?
            }
            "--keep" => options.keep = Some(PathBuf::from(value("--keep")?)),
            "--help" | "-h" => {
                return Err("usage: demo [--nodes N] [--rows N] [--keep DIR]".into());
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    if options.nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    Ok(options)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| format!("no free port: {err}"))
}

/// Row count and an order-independent-of-node checksum of the table, as the app would read it.
fn summary(db: &Path) -> Result<(i64, String), String> {
    let conn = Connection::open(db).map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT id, author, body FROM notes ORDER BY id")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut count = 0i64;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        count += 1;
        let id: String = row.get(0).map_err(|e| e.to_string())?;
        let author: i64 = row.get(1).map_err(|e| e.to_string())?;
        let body: String = row.get(2).map_err(|e| e.to_string())?;
        for byte in format!("{id}|{author}|{body}\n").bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok((count, format!("{hash:016x}")))
}

async fn run(options: Options) -> Result<(), String> {
    // The demo's own connections use the engine's SQLite copy: switch its locking before the first one
    // opens (open_replicated would do it too, but possibly while another thread holds a lock taken the old
    // way; see docs/adr/0012-sqlite-coexistence.md).
    harmonylite::sqlite_locks::install().map_err(|e| e.to_string())?;
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = match &options.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let cluster_ports: Vec<u16> = (0..options.nodes)
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let mut dbs = Vec::new();
    let mut opening = Vec::new();
    println!(
        "starting {} nodes, each with an embedded nats-server (clustered on loopback)",
        options.nodes
    );
    for i in 0..options.nodes {
        let node_dir = root.join(format!("node{}", i + 1));
        std::fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
        let db = node_dir.join("app.db");
        Connection::open(&db)
            .and_then(|conn| conn.execute_batch(SCHEMA))
            .map_err(|e| format!("creating {}: {e}", db.display()))?;
        let mut config = Config {
            node_id: i as u64 + 1,
            ..Config::default()
        };
        config.nats.cluster_addr = format!("127.0.0.1:{}", cluster_ports[i]);
        config.nats.cluster_peers = cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, port)| format!("nats://127.0.0.1:{port}"))
            .collect();
        dbs.push(db.clone());
        opening.push(tokio::spawn(harmonylite::open_replicated(db, config)));
    }
    let mut replicas: Vec<Replica> = Vec::new();
    for (i, handle) in opening.into_iter().enumerate() {
        let replica = handle
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("node {}: {e}", i + 1))?;
        replicas.push(replica);
    }
    for (i, replica) in replicas.iter().enumerate() {
        replica
            .wait_ready(Duration::from_secs(60))
            .await
            .map_err(|e| format!("node {}: {e}", i + 1))?;
        println!(
            "node {} ready: nats {}",
            i + 1,
            replica.nats_urls().join(",")
        );
    }

    println!(
        "writing {} rows on every node through its own sqlite connection",
        options.rows
    );
    for (i, db) in dbs.iter().enumerate() {
        let mut conn = Connection::open(db).map_err(|e| e.to_string())?;
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        for n in 0..options.rows {
            tx.execute(
                "INSERT INTO notes(id, author, body) VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    format!("n{}-{n:05}", i + 1),
                    i as i64 + 1,
                    format!("note {n} from node {}", i + 1)
                ],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
    }
    // The same row edited on two nodes: last writer (by hybrid logical clock) wins everywhere.
    for (i, db) in dbs.iter().enumerate().take(2) {
        Connection::open(db)
            .and_then(|c| {
                c.execute(
                    "UPDATE notes SET body = ?1 WHERE id = 'n1-00000'",
                    [format!("edited on node {}", i + 1)],
                )
            })
            .map_err(|e| e.to_string())?;
    }

    let started = Instant::now();
    let mut token = Token::default();
    for replica in &replicas {
        token.merge(
            &replica
                .sync(Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let expected = (options.rows * options.nodes) as i64;
    loop {
        let summaries: Vec<(i64, String)> =
            dbs.iter().map(|db| summary(db)).collect::<Result<_, _>>()?;
        for (i, (count, checksum)) in summaries.iter().enumerate() {
            println!("  node {}: {count:>5} rows  checksum {checksum}", i + 1);
        }
        let converged = summaries
            .iter()
            .all(|s| s.0 == expected && s.1 == summaries[0].1);
        if converged {
            println!(
                "converged: {} nodes hold the same {expected} rows (checksum {}) {} ms after the last write",
                options.nodes,
                summaries[0].1,
                started.elapsed().as_millis()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the nodes did not converge within 60 s".into());
        }
        for replica in &replicas {
            let _ = replica.wait_for(&token, Duration::from_millis(500)).await;
        }
    }
    for replica in &replicas {
        replica.close().await.map_err(|e| e.to_string())?;
    }
    if options.keep.is_some() {
        println!("databases kept in {}", root.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = harmonylite::runtime().block_on(run(options));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo failed: {message}");
            ExitCode::FAILURE
        }
    }
}
