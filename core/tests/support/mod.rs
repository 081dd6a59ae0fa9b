//! Test harness: real nats-server processes, real SQLite files in per-test temp folders, no fixed sleeps.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harmonylite::{Config, Replica, Token};
use rusqlite::Connection;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HARMONYLITE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The pinned nats-server: $HARMONYLITE_NATS_SERVER, the repo's .venv (scripts/setup.sh), then PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HARMONYLITE_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A port for a server that must know its port before it starts (a cluster route, a peer's address, a
/// server restarted on the same port). Drawn at random below the kernel's ephemeral range (32768 and up on
/// Linux), where servers started with port -1 and every client connection take theirs, so nothing else in
/// the run is handed it between this check and the server's bind (a port from `bind(0)` is, under load).
pub fn free_port() -> u16 {
    // std's randomly seeded hasher: the CLI's tests share this file and do not depend on `rand`.
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0..1000u32 {
        let port = 20_000 + (std::hash::BuildHasher::hash_one(&seed, attempt) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// The port of the endpoint `what` ("health check", "prometheus metrics") from the sidecar's "serving" log
/// line, in the text or the JSON format. Tests bind port 0 and read the port here, so no other process can
/// take it between the test choosing it and the sidecar binding it.
pub fn served_port(log: &str, what: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|line| line.contains("serving") && line.contains(what))?;
    let (_, after) = line.split_once("127.0.0.1:")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Polls `check` until it returns true or `WAIT` passes.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !check() {
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

pub async fn wait_until_async(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !check() {
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A real nats-server with JetStream, its store in a temp folder, started through the same launcher as
/// everything else (`harmonylite-nats`). Stopped on drop.
pub struct NatsServer {
    /// The client port: the same for every restart, so replicas reconnect to it.
    pub port: u16,
    /// The monitoring port of the current process (picked by nats-server on each start).
    pub monitor_port: u16,
    pub dir: tempfile::TempDir,
    process: Option<harmonylite_nats::NatsProcess>,
    extra: String,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(|_| String::new())
    }

    /// Starts a server with extra configuration text (auth, TLS), made from its own temp folder.
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra = extra(dir.path());
        let mut server = NatsServer {
            port: 0,
            monitor_port: 0,
            dir,
            process: None,
            extra,
        };
        // The port must be known before the first start (restarts reuse it). Another test may take a
        // port between `free_port`'s check and the server's bind: then pick another one.
        for attempt in 1.. {
            server.port = free_port();
            match server.try_spawn() {
                Ok(()) => break,
                Err(err) if err.is_port_in_use() && attempt < 10 => continue,
                Err(err) => server.fail(err),
            }
        }
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn try_spawn(&mut self) -> harmonylite_nats::Result<()> {
        let mut process =
            harmonylite_nats::NatsProcess::start(&harmonylite_nats::ProcessOptions {
                server: harmonylite_nats::EmbeddedOptions {
                    binary: Some(nats_server_binary()),
                    store_dir: self.dir.path().join("nats"),
                    bind_address: format!("127.0.0.1:{}", self.port),
                    ..harmonylite_nats::EmbeddedOptions::default()
                },
                extra_config: self.extra.clone(),
                ready_timeout: WAIT,
                ..harmonylite_nats::ProcessOptions::default()
            })?;
        // Ready is "JetStream runs"; the tests want what they always waited for: a healthy server
        // (its streams recovered after a restart).
        process.wait_healthy(WAIT)?;
        self.monitor_port = process.monitor_port().unwrap_or(0);
        self.process = Some(process);
        Ok(())
    }

    fn spawn(&mut self) {
        if let Err(err) = self.try_spawn() {
            self.fail(err);
        }
    }

    fn fail(&self, err: harmonylite_nats::Error) -> ! {
        panic!(
            "cannot start nats-server ({}): {err}; run scripts/setup.sh",
            nats_server_binary().display()
        )
    }

    /// The JetStream store (under the server's folder).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("nats").join("jetstream")
    }

    /// Kills the server (SIGKILL) and keeps its store for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same ports with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the server again on the same ports after deleting its JetStream store (a lost disk).
    pub fn restart_with_store_wiped(&mut self) {
        self.kill();
        let store = self.store();
        if store.exists() {
            std::fs::remove_dir_all(&store).expect("wipe the JetStream store");
        }
        self.spawn();
    }

    /// Starts the server again (after `kill`) on the same ports with what is left of its store.
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node: its own folder and database, a replica, and the app's own plain connection.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub replica: Option<Replica>,
    pub config: Config,
}

pub fn config_for(server: &NatsServer, node_id: u64) -> Config {
    let mut config = Config {
        node_id,
        ..Config::default()
    };
    config.nats.urls = vec![server.url()];
    config
}

/// The app's connection: SQLite defaults, and `trusted_schema` explicitly OFF. The test shares the engine's
/// SQLite copy, so the lock shim goes in first, as a Rust app that shares it should do (ADR 0012).
pub fn app_connection(db: &Path) -> Connection {
    harmonylite::sqlite_locks::install().expect("SQLite lock shim");
    let conn = Connection::open(db).expect("open app connection");
    conn.execute_batch("PRAGMA trusted_schema = OFF;")
        .expect("trusted_schema off");
    conn.busy_timeout(Duration::from_secs(30))
        .expect("busy timeout");
    conn
}

impl Node {
    /// Creates the database with `schema` (run through the app's connection), then opens the replica.
    pub async fn start(config: Config, schema: &str) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("app.db");
        app_connection(&db).execute_batch(schema).expect("schema");
        let mut node = Node {
            dir,
            db,
            replica: None,
            config,
        };
        node.open().await;
        node
    }

    /// A node whose database file does not exist yet (a new node that bootstraps from a snapshot).
    pub async fn start_without_database(config: Config) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("app.db");
        let mut node = Node {
            dir,
            db,
            replica: None,
            config,
        };
        node.open().await;
        node
    }

    pub async fn open(&mut self) {
        let replica = harmonylite::open_replicated(&self.db, self.config.clone())
            .await
            .expect("open_replicated");
        self.replica = Some(replica);
    }

    pub async fn close(&mut self) {
        if let Some(replica) = self.replica.take() {
            replica.close().await.expect("close");
        }
    }

    pub fn replica(&self) -> &Replica {
        self.replica.as_ref().expect("replica is open")
    }

    pub fn conn(&self) -> Connection {
        app_connection(&self.db)
    }

    pub fn exec(&self, sql: &str) {
        self.conn()
            .execute_batch(sql)
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    pub async fn sync(&self) -> Token {
        self.replica().sync(WAIT).await.expect("sync")
    }

    /// Every row of `table`, ordered, as text for comparison (REAL by bits).
    pub fn dump(&self, table: &str) -> Vec<Vec<String>> {
        dump(&self.conn(), table)
    }
}

pub fn dump(conn: &Connection, table: &str) -> Vec<Vec<String>> {
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {quoted} ORDER BY 1, 2"))
        .or_else(|_| conn.prepare(&format!("SELECT * FROM {quoted} ORDER BY 1")))
        .expect("select");
    let columns = stmt.column_count();
    let rows = stmt
        .query_map([], |row| {
            let mut values = Vec::new();
            for i in 0..columns {
                let value = match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => format!("i{v}"),
                    rusqlite::types::ValueRef::Real(v) => format!("r{:x}", v.to_bits()),
                    rusqlite::types::ValueRef::Text(v) => {
                        format!("t{}", String::from_utf8_lossy(v))
                    }
                    rusqlite::types::ValueRef::Blob(v) => format!("b{}:{:x}", v.len(), fxhash(v)),
                };
                values.push(value);
            }
            Ok(values)
        })
        .expect("query");
    rows.collect::<rusqlite::Result<Vec<_>>>().expect("rows")
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Publishes everything every node committed and waits until every node applied all of it.
pub async fn converge(nodes: &[&Node]) {
    let mut token = Token::default();
    for node in nodes {
        token.merge(&node.sync().await);
    }
    for node in nodes {
        node.replica()
            .wait_for(&token, WAIT)
            .await
            .expect("wait_for");
    }
}

/// Asserts that every node holds the same rows in each table (reporting the first difference briefly).
pub fn assert_same(nodes: &[&Node], tables: &[&str]) {
    for table in tables {
        let first = nodes[0].dump(table);
        for (i, node) in nodes.iter().enumerate().skip(1) {
            let other = node.dump(table);
            if first != other {
                let at = first.iter().zip(other.iter()).position(|(x, y)| x != y);
                let show = |rows: &Vec<Vec<String>>, at: usize| {
                    rows.get(at).map(|r| r.join("|")).unwrap_or_default()
                };
                let at = at.unwrap_or(first.len().min(other.len()));
                panic!(
                    "table {table}: node 0 has {} rows, node {i} has {}; first difference at row {at}: `{}` vs `{}`",
                    first.len(),
                    other.len(),
                    show(&first, at),
                    show(&other, at)
                );
            }
        }
    }
}

/// Like [`converge`], repeated until a round publishes nothing new: changes the nodes make in reaction to
/// what they receive (a row moved off a colliding key, a parked change applied) travel too.
pub async fn settle(nodes: &[&Node]) {
    let started = Instant::now();
    let mut previous: Option<Token> = None;
    loop {
        let mut token = Token::default();
        for node in nodes {
            token.merge(&node.sync().await);
        }
        for node in nodes {
            node.replica()
                .wait_for(&token, WAIT)
                .await
                .expect("wait_for");
        }
        let mut quiet = previous.as_ref() == Some(&token);
        for node in nodes {
            let status = node.replica().status().await.expect("status");
            quiet &= status.pending_changes == 0 && status.unsent_messages == 0;
        }
        if quiet {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "nodes still exchanging changes after {WAIT:?}"
        );
        previous = Some(token);
    }
}

/// Publishes one batch as if `node_id` had sent it (late, forged or malformed messages), on shard 0 of the
/// default stream; returns the token that covers it.
pub async fn inject(
    server: &NatsServer,
    node_id: u64,
    changes: Vec<harmonylite::log::RowChange>,
) -> Token {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let payload =
        harmonylite::log::encode(&harmonylite::log::Batch::of_changes(node_id, changes), true);
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

/// Pids of the running (not zombie) nats-server processes started for the store folder `store` (those
/// whose command line names `<store>/nats-server.conf`, as the embedded supervisor starts them).
#[cfg(target_os = "linux")]
pub fn nats_servers_for(store: &Path) -> Vec<u32> {
    let Ok(store) = std::fs::canonicalize(store) else {
        return Vec::new();
    };
    let config = store.join("nats-server.conf");
    let config = config.to_string_lossy();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| String::from_utf8_lossy(arg) == config);
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if ours && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// `GET path` on 127.0.0.1:`port` (one request, the connection closed after it): status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// The value of one series of a Prometheus text exposition (`name{labels}` exactly as written), if present.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}
