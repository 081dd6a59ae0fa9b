//! One replicated node per child process, as deployed: its own process, runtime, database thread and
//! memory (so peak RSS is per node). The harness drives it with JSON lines on stdin and reads one JSON
//! line per request on stdout; logs go to stderr (a file per node).
//!
//! Timestamps are CLOCK_MONOTONIC nanoseconds, shared by every process on the machine: a commit stamped in
//! node A's process and a change event stamped in node B's process subtract directly.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harmonylite::{Config, Listener, Replica, Token, Value as SqlValue};
use rusqlite::Connection;
use serde_json::{json, Value};

use crate::sys::{mono_ns, peak_rss_mb, Ctx, Res};
use crate::workload;

const OPEN_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------------
// The child: `harmonylite-bench node --db PATH --config JSON`

struct NodeState {
    replica: Replica,
    db: PathBuf,
    app: Option<Connection>,
    listener: Option<Listener>,
    received: Arc<Mutex<Vec<(i64, u64)>>>,
}

pub fn serve(args: &[String]) -> Res<()> {
    let mut db = None;
    let mut config_text = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--db" => db = iter.next().map(PathBuf::from),
            "--config" => config_text = iter.next().cloned(),
            other => return Err(format!("node: unknown argument {other}")),
        }
    }
    let db = db.ok_or("node: --db is required")?;
    let config = Config::from_json_str(&config_text.ok_or("node: --config is required")?)
        .map_err(|err| format!("node config: {err}"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HARMONYLITE_LOG")
                // Snapshot steps log their durations at info: W5 reads them from the node's log.
                .unwrap_or_else(|_| "warn,harmonylite::snapshot=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();

    let started = mono_ns();
    let replica = harmonylite::block_on(harmonylite::open_replicated(db.clone(), config))
        .map_err(|err| format!("open_replicated: {err}"))?;
    let opened = mono_ns();
    let ready_replica = replica.clone();
    harmonylite::block_on(async move { ready_replica.wait_ready(OPEN_TIMEOUT).await })
        .map_err(|err| format!("wait_ready: {err}"))?;
    let mut out = std::io::stdout().lock();
    reply(
        &mut out,
        json!({"ok": true, "event": "ready", "start_ns": started, "opened_ns": opened, "ready_ns": mono_ns(),
               "node_id": replica.node_id()}),
    )?;
    let mut state = NodeState {
        replica,
        db,
        app: None,
        listener: None,
        received: Arc::new(Mutex::new(Vec::new())),
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.ctx("reading a request")?;
        if line.trim().is_empty() {
            continue;
        }
        let request: Value = serde_json::from_str(&line).ctx("parsing a request")?;
        let command = request["cmd"].as_str().unwrap_or_default().to_string();
        let answer = match state.handle(&command, &request) {
            Ok(mut body) => {
                body["ok"] = json!(true);
                body
            }
            Err(err) => json!({"ok": false, "error": err}),
        };
        reply(&mut out, answer)?;
        if command == "close" {
            break;
        }
    }
    Ok(())
}

fn reply(out: &mut impl Write, value: Value) -> Res<()> {
    writeln!(out, "{value}").ctx("writing a reply")?;
    out.flush().ctx("writing a reply")
}

fn int(request: &Value, key: &str) -> Res<i64> {
    request[key]
        .as_i64()
        .ok_or_else(|| format!("request needs an integer `{key}`"))
}

impl NodeState {
    fn app(&mut self) -> Res<&mut Connection> {
        if self.app.is_none() {
            self.app = Some(workload::app_connection(&self.db)?);
        }
        self.app
            .as_mut()
            .ok_or_else(|| "no app connection".to_string())
    }

    fn handle(&mut self, command: &str, request: &Value) -> Res<Value> {
        match command {
            "listen" => {
                let (lo, hi) = (int(request, "from")?, int(request, "to")?);
                let received = Arc::new(Mutex::new(Vec::with_capacity((hi - lo).max(0) as usize)));
                self.received = received.clone();
                // Remote changes of the benchmark table (or, with `local`, this node's own changes once
                // stamped for publishing), timed the moment the event arrives.
                let local = request["local"].as_bool().unwrap_or(false);
                self.listener = Some(self.replica.on_change(move |event| {
                    let now = mono_ns();
                    if event.local != local || event.table != workload::TABLE {
                        return;
                    }
                    if let Some(SqlValue::Integer(id)) = event.pk.first() {
                        if (lo..hi).contains(id) {
                            if let Ok(mut seen) = received.lock() {
                                seen.push((*id, now));
                            }
                        }
                    }
                }));
                Ok(json!({}))
            }
            "received" => {
                let count = self.received.lock().map(|r| r.len()).unwrap_or(0);
                Ok(json!({"count": count}))
            }
            "collect" => {
                self.listener = None;
                let seen = self
                    .received
                    .lock()
                    .map(|mut r| std::mem::take(&mut *r))
                    .unwrap_or_default();
                let (ids, times): (Vec<i64>, Vec<u64>) = seen.into_iter().unzip();
                Ok(json!({"ids": ids, "t": times}))
            }
            "write_open_loop" => {
                let start = int(request, "start")?;
                let count = int(request, "count")?.max(0) as usize;
                let rate = int(request, "rate")?.max(1) as u64;
                let conn = self.app()?;
                let mut commits = Vec::with_capacity(count);
                let t0 = mono_ns() + 1_000_000;
                for i in 0..count {
                    // Open loop: each row has its due time; a late writer does not slow the schedule down.
                    let due = t0 + (i as u64) * 1_000_000_000 / rate;
                    let now = mono_ns();
                    if due > now {
                        std::thread::sleep(Duration::from_nanos(due - now));
                    }
                    workload::insert_row(conn, start + i as i64)?;
                    commits.push(mono_ns());
                }
                Ok(json!({"start_ns": t0, "commit_ns": commits}))
            }
            "write_bulk" => {
                let start = int(request, "start")?;
                let count = int(request, "count")?.max(0) as usize;
                let tx_rows = int(request, "tx_rows")?.max(1) as usize;
                let body_len = request["body_len"]
                    .as_u64()
                    .map_or(workload::BODY_LEN, |n| n as usize);
                let conn = self.app()?;
                let begun = mono_ns();
                workload::insert_rows(conn, start, count, tx_rows, body_len)?;
                Ok(json!({"start_ns": begun, "end_ns": mono_ns()}))
            }
            "sync" => {
                let replica = self.replica.clone();
                let token =
                    harmonylite::block_on(
                        async move { replica.sync(Duration::from_secs(600)).await },
                    )
                    .map_err(|err| format!("sync: {err}"))?;
                Ok(json!({"token": token.to_string(), "done_ns": mono_ns()}))
            }
            "wait" => {
                let token: Token = request["token"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|err| format!("token: {err}"))?;
                let timeout = Duration::from_secs(int(request, "timeout_s")?.max(1) as u64);
                let replica = self.replica.clone();
                harmonylite::block_on(async move { replica.wait_for(&token, timeout).await })
                    .map_err(|err| format!("wait_for: {err}"))?;
                Ok(json!({"done_ns": mono_ns()}))
            }
            "checksum" => {
                let (lo, hi) = (int(request, "from")?, int(request, "to")?);
                let (count, hash) = workload::checksum(self.app()?, lo, hi)?;
                Ok(json!({"count": count, "hash": hash}))
            }
            "save_snapshot" => {
                let replica = self.replica.clone();
                let begun = mono_ns();
                let manifest = harmonylite::block_on(async move { replica.save_snapshot().await })
                    .map_err(|err| format!("save_snapshot: {err}"))?
                    .ok_or("save_snapshot: another node holds the snapshot lease")?;
                Ok(json!({
                    "start_ns": begun,
                    "done_ns": mono_ns(),
                    "bytes": manifest.bytes,
                    "raw_bytes": manifest.raw_bytes,
                    "positions": manifest.positions,
                }))
            }
            "status" => {
                let replica = self.replica.clone();
                let status = harmonylite::block_on(async move { replica.status().await })
                    .map_err(|err| format!("status: {err}"))?;
                Ok(json!({"status": serde_json::to_value(status).ctx("status")?}))
            }
            "close" => {
                self.listener = None;
                self.app = None;
                let replica = self.replica.clone();
                harmonylite::block_on(async move { replica.close().await })
                    .map_err(|err| format!("close: {err}"))?;
                Ok(json!({}))
            }
            other => Err(format!("unknown command `{other}`")),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The harness side: a handle on one node process.

pub struct NodeProc {
    pub name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    /// The child's `ready` line: start_ns, opened_ns, ready_ns.
    pub ready: Value,
}

impl NodeProc {
    /// Starts a node process on `db` and returns once its replica is open and its streams are ready.
    pub fn start(name: &str, db: &Path, config: &Value, log: &Path) -> Res<NodeProc> {
        let exe = std::env::current_exe().ctx("locating the bench binary")?;
        let stderr = std::fs::File::create(log).ctx("creating a node log")?;
        let mut child = Command::new(exe)
            .arg("node")
            .arg("--db")
            .arg(db)
            .arg("--config")
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .ctx("starting a node process")?;
        let stdout = child.stdout.take().ok_or("node stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = NodeProc {
            name: name.to_string(),
            child: Some(child),
            stdin,
            lines,
            log: log.to_path_buf(),
            ready: Value::Null,
        };
        node.ready = node.recv(OPEN_TIMEOUT)?;
        Ok(node)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.pid().and_then(peak_rss_mb)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(8).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn send(&mut self, request: &Value) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("node stdin closed")?;
        writeln!(stdin, "{request}")
            .and_then(|_| stdin.flush())
            .map_err(|err| format!("{}: sending a request: {err}", self.name))
    }

    pub fn recv(&mut self, timeout: Duration) -> Res<Value> {
        let line = self.lines.recv_timeout(timeout).map_err(|err| {
            format!(
                "{}: no answer ({err}); log tail:\n{}",
                self.name,
                self.log_tail()
            )
        })?;
        let value: Value = serde_json::from_str(&line).ctx("parsing a node answer")?;
        if value["ok"] != json!(true) {
            return Err(format!(
                "{}: {}",
                self.name,
                value["error"].as_str().unwrap_or("failed")
            ));
        }
        Ok(value)
    }

    pub fn request(&mut self, request: Value, timeout: Duration) -> Res<Value> {
        self.send(&request)?;
        self.recv(timeout)
    }

    /// Closes the replica and waits for the process to exit.
    pub fn close(&mut self) -> Res<()> {
        let outcome = self.request(json!({"cmd": "close"}), Duration::from_secs(60));
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        outcome.map(|_| ())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A node's configuration, for the JSON the child parses with `Config::from_json_str`: the defaults,
/// except the NATS URLs, per-scenario stream names, the replica count, and `apply` settings if given.
pub fn node_config(node_id: u64, urls: &[String], prefix: &str, setup: &Setup) -> Value {
    let mut config = json!({
        "node_id": node_id,
        "nats": {
            "urls": urls,
            "stream_prefix": format!("{prefix}-changes"),
            "subject_prefix": format!("{prefix}-change-log"),
        },
        "replication_log": {"replicas": setup.replicas},
    });
    if let Some(apply) = &setup.apply {
        config["apply"] = apply.clone();
    }
    config
}

/// What differs between the scenarios' nodes.
#[derive(Clone)]
pub struct Setup {
    pub replicas: u32,
    /// An `[apply]` section to use instead of the defaults (W4's workaround variant).
    pub apply: Option<Value>,
}

impl Setup {
    pub fn replicas(replicas: u32) -> Setup {
        Setup {
            replicas,
            apply: None,
        }
    }
}

/// Three nodes A, B, C with fresh databases holding the benchmark table.
pub fn start_three(
    root: &Path,
    urls: &[Vec<String>; 3],
    prefix: &str,
    setup: &Setup,
) -> Res<Vec<NodeProc>> {
    let mut nodes = Vec::new();
    for (i, name) in ["A", "B", "C"].iter().enumerate() {
        let dir = root.join(format!("{prefix}-{name}"));
        std::fs::create_dir_all(&dir).ctx("creating a node folder")?;
        let db = dir.join("app.db");
        workload::app_connection(&db)?
            .execute_batch(workload::SCHEMA)
            .ctx("creating the benchmark table")?;
        let config = node_config(i as u64 + 1, &urls[i], prefix, setup);
        nodes.push(NodeProc::start(name, &db, &config, &dir.join("node.log"))?);
    }
    Ok(nodes)
}

pub fn node_db(root: &Path, prefix: &str, name: &str) -> PathBuf {
    root.join(format!("{prefix}-{name}")).join("app.db")
}
