//! Several processes open one database file (ADR 0010): one runs the replicator, the others attach to it and
//! see its status and events; when it exits or is killed -9 one of them takes over within seconds, no row
//! committed by the app is lost, and there is never more than one embedded nats-server for the file.
//!
//! The processes are this test binary run again (`child_replica`, driven over stdin/stdout).

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use harmonylite::{Config, ReplicaRole, Status, Token};
use support::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT);";

/// One `child_replica` process.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    /// `EVENT <table> <pk> <local>` lines seen so far.
    events: Arc<Mutex<Vec<String>>>,
    pid: u32,
}

impl Proc {
    fn spawn(db: &Path, config: &Config) -> Proc {
        let exe = std::env::current_exe().expect("test executable");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "child_replica",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HL_CHILD_DB", db)
            .env(
                "HL_CHILD_CONFIG",
                serde_json::to_string(config).expect("config"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, replies) = mpsc::channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        std::thread::spawn(move || {
            // libtest prints `test child_replica ... ` without a newline: our first line follows it.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find("EVENT ") {
                    seen.lock()
                        .expect("events")
                        .push(line[at + 6..].to_string());
                } else if let Some(at) = line.find("HL ") {
                    let _ = tx.send(line[at..].to_string());
                }
            }
        });
        let pid = child.id();
        let mut proc = Proc {
            child,
            stdin,
            replies,
            events,
            pid,
        };
        let ready = proc.reply("READY");
        assert_eq!(ready, pid.to_string(), "the child's own pid");
        proc
    }

    /// Waits for the next `HL <kind> ...` reply and returns what follows `<kind> `.
    fn reply(&mut self, kind: &str) -> String {
        let line = self
            .replies
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("child {} did not answer {kind}", self.pid));
        let rest = line
            .strip_prefix("HL ")
            .and_then(|l| l.strip_prefix(kind))
            .unwrap_or_else(|| panic!("child {}: expected {kind}, got `{line}`", self.pid));
        rest.trim_start().to_string()
    }

    fn ask(&mut self, command: &str, kind: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the child");
        self.stdin.flush().expect("flush");
        self.reply(kind)
    }

    fn status(&mut self) -> Status {
        let text = self.ask("status", "STATUS");
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("status `{text}`: {err}"))
    }

    fn sync(&mut self) -> Token {
        let text = self.ask("sync", "TOKEN");
        text.parse()
            .unwrap_or_else(|err| panic!("token `{text}`: {err:?}"))
    }

    fn wait_for(&mut self, token: &Token) {
        let answer = self.ask(&format!("wait_for {token}"), "WAITED");
        assert_eq!(answer, "ok", "child {}", self.pid);
    }

    /// Local events of `items` seen by this child, as the set of their ids.
    fn local_item_events(&self) -> BTreeSet<i64> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter_map(|line| {
                let mut parts = line.split(' ');
                let (table, id, local) = (parts.next()?, parts.next()?, parts.next()?);
                (table == "items" && local == "true")
                    .then(|| id.parse().ok())
                    .flatten()
            })
            .collect()
    }

    fn close(mut self) {
        assert_eq!(self.ask("close", "CLOSED"), "ok");
        let _ = self.child.wait();
    }

    fn kill(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples the number of embedded nats-servers for a store folder until dropped; remembers the largest.
struct ServerCount {
    most: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerCount {
    fn watch(store: PathBuf) -> ServerCount {
        let most = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (most, stop) = (most.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    most.fetch_max(nats_servers_for(&store).len(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        ServerCount {
            most,
            stop,
            thread: Some(thread),
        }
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::Relaxed)
    }
}

impl Drop for ServerCount {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn store_of(db: &Path) -> PathBuf {
    Config::state_dir_for(db).join("nats")
}

fn insert(db: &Path, ids: std::ops::Range<i64>, origin: &str) {
    let mut conn = app_connection(db);
    for id in ids {
        let tx = conn.transaction().expect("begin");
        tx.execute("INSERT INTO items VALUES (?1, ?2)", (id, origin))
            .expect("insert");
        tx.commit().expect("commit");
    }
}

fn ids(db: &Path) -> BTreeSet<i64> {
    let conn = app_connection(db);
    let mut stmt = conn.prepare("SELECT id FROM items").expect("select");
    let ids = stmt
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<rusqlite::Result<BTreeSet<i64>>>()
        .expect("ids");
    ids
}

fn wait_for_events(proc: &Proc, expected: std::ops::Range<i64>) {
    wait_until(&format!("child {} to see the events", proc.pid), || {
        let seen = proc.local_item_events();
        expected.clone().all(|id| seen.contains(&id))
    });
}

#[test]
fn a_second_process_attaches_sees_status_and_events_and_takes_over_on_exit() {
    init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    let config = Config {
        node_id: 11,
        ..Config::default() // the embedded nats-server
    };
    let servers = ServerCount::watch(store_of(&db));
    let mut first = Proc::spawn(&db, &config);
    let mut second = Proc::spawn(&db, &Config::default());

    let status = second.status();
    assert_eq!(status.role, ReplicaRole::Attached);
    assert_eq!(status.replicator_pid, first.pid);
    assert_eq!(status.node_id, 11);
    let status = first.status();
    assert_eq!(status.role, ReplicaRole::Active);
    assert_eq!(status.replicator_pid, first.pid);
    assert_eq!(status.attached_handles, 1);
    assert_eq!(nats_servers_for(&store_of(&db)).len(), 1);

    // The app writes through its own connection (here: the test process); both processes see the events.
    insert(&db, 1..6, "app");
    wait_for_events(&second, 1..6);
    wait_for_events(&first, 1..6);
    let token = second.sync();
    second.wait_for(&token);
    assert_eq!(second.ask("snapshot", "SNAPSHOT"), "saved");

    // The replicator exits cleanly: the attached process takes over.
    first.close();
    let started = Instant::now();
    wait_until("the second process to take over", || {
        second.status().role == ReplicaRole::Active
    });
    eprintln!("takeover after a clean exit: {:?}", started.elapsed());
    assert_eq!(second.status().replicator_pid, second.pid);
    insert(&db, 6..9, "app");
    wait_for_events(&second, 6..9);
    let token = second.sync();
    second.wait_for(&token);
    assert_eq!(second.status().pending_changes, 0);
    second.close();
    wait_until("the embedded nats-server to stop", || {
        nats_servers_for(&store_of(&db)).is_empty()
    });
    assert_eq!(servers.most(), 1, "never two embedded nats-servers");
}

#[test]
fn a_killed_replicator_is_replaced_within_seconds_and_no_row_is_lost() {
    init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    // Node 1: three processes on one file, on the embedded server at a port node 2 can be given.
    let port = free_port();
    let mut config = Config {
        node_id: 1,
        ..Config::default()
    };
    config.nats.bind_address = format!("127.0.0.1:{port}");
    let servers = ServerCount::watch(store_of(&db));
    let mut procs: Vec<Proc> = (0..3).map(|_| Proc::spawn(&db, &config)).collect();
    assert_eq!(procs[0].status().role, ReplicaRole::Active);
    for proc in &mut procs[1..] {
        assert_eq!(proc.status().role, ReplicaRole::Attached);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut b_config = Config {
        node_id: 2,
        ..Config::default()
    };
    b_config.nats.urls = vec![format!("nats://127.0.0.1:{port}")];
    let b = runtime.block_on(Node::start(b_config, SCHEMA));

    insert(&db, 0..100, "node 1");
    procs.remove(0).kill();
    let killed_at = Instant::now();
    // Written while no replicator runs: captured by the triggers, published by the next one.
    insert(&db, 100..200, "node 1");
    let mut active = None;
    wait_until("one of the others to take over", || {
        let roles: Vec<ReplicaRole> = procs.iter_mut().map(|p| p.status().role).collect();
        let actives = roles.iter().filter(|r| **r == ReplicaRole::Active).count();
        assert!(actives <= 1, "two replicators: {roles:?}");
        active = roles.iter().position(|r| *r == ReplicaRole::Active);
        active.is_some()
    });
    let took = killed_at.elapsed();
    eprintln!("takeover after kill -9: {took:?}");
    assert!(took < Duration::from_secs(20), "takeover took {took:?}");
    let mut new_active = procs.remove(active.expect("an active one"));
    let mut other = procs.remove(0);
    wait_until("the other one to attach to the new replicator", || {
        let status = other.status();
        status.role == ReplicaRole::Attached && status.replicator_pid == new_active.pid
    });
    insert(&db, 200..300, "node 1");
    b.exec("INSERT INTO items VALUES (1000, 'node 2'), (1001, 'node 2')");

    // Everything node 1's app committed reaches node 2, and node 2's rows reach node 1.
    let token = new_active.sync();
    runtime
        .block_on(b.replica().wait_for(&token, WAIT))
        .expect("node 2 applies node 1's rows");
    let token = runtime.block_on(b.sync());
    other.wait_for(&token);
    let expected: BTreeSet<i64> = (0..300).chain([1000, 1001]).collect();
    assert_eq!(ids(&db), expected, "node 1");
    assert_eq!(ids(&b.db), expected, "node 2: no row lost");
    wait_for_events(&other, 200..300);

    // A clean exit of the new replicator hands over once more.
    new_active.close();
    wait_until("the last process to take over", || {
        other.status().role == ReplicaRole::Active
    });
    insert(&db, 300..310, "node 1");
    let token = other.sync();
    runtime
        .block_on(b.replica().wait_for(&token, WAIT))
        .expect("node 2 applies");
    assert_eq!(ids(&b.db).len(), 312);
    other.close();
    let mut b = b;
    runtime.block_on(b.close());
    wait_until("every embedded nats-server to stop", || {
        nats_servers_for(&store_of(&db)).is_empty()
    });
    assert_eq!(servers.most(), 1, "never two embedded nats-servers");
}

/// The child: opens the replica, prints every change event, and answers commands on stdin.
#[test]
#[ignore = "run as a child process by the other tests of this file"]
fn child_replica() {
    // Logs go to stderr, which the parent passes through (stdout carries the answers).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HARMONYLITE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let db = PathBuf::from(std::env::var_os("HL_CHILD_DB").expect("set by the parent"));
    let config =
        Config::from_json_str(&std::env::var("HL_CHILD_CONFIG").expect("set by the parent"))
            .expect("config");
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let replica =
        harmonylite::block_on(async move { harmonylite::open_replicated(&db, config).await })
            .expect("open_replicated");
    let _listener = replica.on_change(move |event| {
        let pk = match event.pk.first() {
            Some(harmonylite::Value::Integer(id)) => id.to_string(),
            other => format!("{other:?}"),
        };
        say(format!("EVENT {} {pk} {}", event.table, event.local));
    });
    // Any answer after subscribing: events flow from here on (ADR 0010).
    let handle = replica.clone();
    harmonylite::block_on(async move { handle.status().await }).expect("status");
    say(format!("HL READY {}", std::process::id()));
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let replica = replica.clone();
        let (command, argument) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let answer = match command {
            "status" => {
                let status = harmonylite::block_on(async move { replica.status().await });
                match status {
                    Ok(status) => format!(
                        "STATUS {}",
                        serde_json::to_string(&status).expect("status json")
                    ),
                    Err(err) => format!("ERROR {err}"),
                }
            }
            "sync" => match harmonylite::block_on(async move { replica.sync(WAIT).await }) {
                Ok(token) => format!("TOKEN {token}"),
                Err(err) => format!("ERROR {err}"),
            },
            "wait_for" => {
                let token: Token = argument.parse().expect("token");
                match harmonylite::block_on(async move { replica.wait_for(&token, WAIT).await }) {
                    Ok(()) => "WAITED ok".to_string(),
                    Err(err) => format!("WAITED {err}"),
                }
            }
            "snapshot" => match harmonylite::block_on(async move { replica.save_snapshot().await })
            {
                Ok(Some(_)) => "SNAPSHOT saved".to_string(),
                Ok(None) => "SNAPSHOT skipped".to_string(),
                Err(err) => format!("SNAPSHOT {err}"),
            },
            "close" => {
                let closed = harmonylite::block_on(async move { replica.close().await });
                say(format!(
                    "HL CLOSED {}",
                    closed.map_or_else(|e| e.to_string(), |()| "ok".into())
                ));
                std::process::exit(0);
            }
            other => format!("ERROR unknown command {other}"),
        };
        say(format!("HL {answer}"));
    }
    // The parent went away: exit without closing, like a crash.
    std::process::exit(0);
}
