//! The processes of one scenario: nats-servers, `harmonylite` sidecars, writers and CPU hogs. Every
//! process is a child of this harness, killed by its own pid, and all of them die with the cluster.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use harmonylite_nats::{EmbeddedOptions, NatsProcess, ProcessOptions, Readiness};
use rusqlite::OpenFlags;
use rustix::process::{kill_process, Pid, Signal};

use crate::ledger::{Ledger, NodeView};
use crate::net::Net;
use crate::writer::SCHEMA;

pub struct Binaries {
    pub harmonylite: PathBuf,
    pub nats_server: PathBuf,
    /// This harness (writers, hogs and NATS clients run as its subcommands).
    pub faults: PathBuf,
}

/// A child process that can be killed, paused and resumed.
pub struct Proc {
    child: Option<Running>,
    paused: bool,
}

/// A harness subprocess, or a nats-server started through the project's launcher.
enum Running {
    Child(Child),
    Nats(Box<NatsProcess>),
}

impl Proc {
    fn new(child: Child) -> Proc {
        Proc {
            child: Some(Running::Child(child)),
            paused: false,
        }
    }

    fn nats(process: NatsProcess) -> Proc {
        Proc {
            child: Some(Running::Nats(Box::new(process))),
            paused: false,
        }
    }

    fn signal(&mut self, signal: Signal) {
        match &self.child {
            Some(Running::Child(child)) => {
                let _ = kill_process(Pid::from_child(child), signal);
            }
            Some(Running::Nats(process)) => match signal {
                Signal::STOP => process.pause(),
                Signal::CONT => process.resume(),
                _ => {}
            },
            None => {}
        }
    }

    pub fn kill9(&mut self) {
        self.resume();
        match self.child.take() {
            Some(Running::Child(mut child)) => {
                let _ = kill_process(Pid::from_child(&child), Signal::KILL);
                let _ = child.wait();
            }
            Some(Running::Nats(mut process)) => process.kill(),
            None => {}
        }
    }

    pub fn pause(&mut self) {
        if !self.paused {
            self.signal(Signal::STOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if self.paused {
            self.signal(Signal::CONT);
            self.paused = false;
        }
    }

    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(Running::Child(child)) => matches!(child.try_wait(), Ok(None)),
            Some(Running::Nats(process)) => process.is_running(),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until `path` (from byte `from`) contains `needle`.
pub fn wait_log(path: &Path, from: u64, needle: &str, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(path) {
            let _ = file.seek(SeekFrom::Start(from));
            let _ = file.read_to_string(&mut text);
        }
        if strip_ansi(&text).contains(needle) {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "`{needle}` not in {} after {limit:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn append_log(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub struct NatsNode {
    pub k: usize,
    pub client_port: u16,
    pub route_port: u16,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
}

impl NatsNode {
    /// The JetStream store the launcher configures under the server's folder.
    pub fn store(&self) -> PathBuf {
        self.dir.join("jetstream")
    }
}

pub struct SidecarNode {
    pub k: usize,
    pub dir: PathBuf,
    pub health_port: u16,
    pub proc: Option<Proc>,
    pub writer: Option<Proc>,
    pub generation: u64,
}

impl SidecarNode {
    pub fn db(&self) -> PathBuf {
        self.dir.join("app.db")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("sidecar.log")
    }
    pub fn ledger(&self) -> PathBuf {
        self.dir.join("ledger.txt")
    }
    pub fn writer_log(&self) -> PathBuf {
        self.dir.join("writer.log")
    }
    pub fn node_id(&self) -> u64 {
        self.k as u64
    }
}

pub struct ClusterSpec {
    pub nodes: usize,
    /// nats-servers: 1 (all sidecars share it) or one per node, clustered.
    pub servers: usize,
    pub shards: u32,
    pub writer_pace: Duration,
    pub seed: u64,
}

pub struct Cluster<'a> {
    pub net: &'a Net,
    pub bins: &'a Binaries,
    pub spec: ClusterSpec,
    pub nats: Vec<NatsNode>,
    pub sidecars: Vec<SidecarNode>,
    pub hogs: Vec<Proc>,
}

pub const READY: Duration = Duration::from_secs(60);

impl<'a> Cluster<'a> {
    pub fn start(
        net: &'a Net,
        bins: &'a Binaries,
        dir: PathBuf,
        spec: ClusterSpec,
    ) -> Result<Cluster<'a>, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let isolated = net.is_isolated();
        let nats = (1..=spec.servers)
            .map(|k| NatsNode {
                k,
                client_port: if isolated { 4222 } else { free_port() },
                route_port: if isolated { 6222 } else { free_port() },
                dir: dir.join(format!("nats-{k}")),
                proc: None,
            })
            .collect();
        let sidecars = (1..=spec.nodes)
            .map(|k| SidecarNode {
                k,
                dir: dir.join(format!("node-{k}")),
                health_port: if isolated { 8090 } else { free_port() },
                proc: None,
                writer: None,
                generation: 0,
            })
            .collect();
        let mut cluster = Cluster {
            net,
            bins,
            spec,
            nats,
            sidecars,
            hogs: Vec::new(),
        };
        for i in 0..cluster.nats.len() {
            cluster.start_nats(i)?;
        }
        for i in 0..cluster.sidecars.len() {
            let node = &cluster.sidecars[i];
            std::fs::create_dir_all(&node.dir).map_err(|e| e.to_string())?;
            let conn = rusqlite::Connection::open(node.db()).map_err(|e| e.to_string())?;
            conn.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
            cluster.write_config(i)?;
        }
        for i in 0..cluster.sidecars.len() {
            cluster.start_sidecar(i)?;
        }
        for i in 0..cluster.sidecars.len() {
            cluster.wait_consuming(i, 0)?;
        }
        for i in 0..cluster.sidecars.len() {
            cluster.start_writer(i)?;
        }
        Ok(cluster)
    }

    /// The host where nats-server `i` (0-based) runs: node i+1's namespace.
    fn nats_host(&self, i: usize) -> String {
        self.net.host(i + 1)
    }

    pub fn nats_url(&self, i: usize) -> String {
        format!("nats://{}:{}", self.nats_host(i), self.nats[i].client_port)
    }

    pub fn start_nats(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nats[i];
        let host = self.nats_host(i);
        let (cluster_addr, cluster_peers) = if self.nats.len() > 1 {
            let routes = (0..self.nats.len())
                .filter(|j| *j != i)
                .map(|j| {
                    format!(
                        "nats-route://{}:{}",
                        self.nats_host(j),
                        self.nats[j].route_port
                    )
                })
                .collect();
            (format!("{host}:{}", node.route_port), routes)
        } else {
            (String::new(), Vec::new())
        };
        let process = NatsProcess::start(&ProcessOptions {
            server: EmbeddedOptions {
                binary: Some(self.bins.nats_server.clone()),
                store_dir: node.dir.clone(),
                bind_address: format!("{host}:{}", node.client_port),
                server_name: format!("hlf-{}", node.k),
                cluster_name: "hlf".into(),
                cluster_addr,
                cluster_peers,
                ..EmbeddedOptions::default()
            },
            command_prefix: self.net.prefix(i + 1),
            // In its own network namespace the server's loopback (its monitoring port) cannot be
            // reached from here; the ports file, written once every listener is up, can.
            readiness: if self.net.is_isolated() {
                Readiness::PortsFile
            } else {
                Readiness::Monitor
            },
            ready_timeout: READY,
            ..ProcessOptions::default()
        })
        .map_err(|e| format!("nats-server {}: {e}", node.k))?;
        self.nats[i].proc = Some(Proc::nats(process));
        Ok(())
    }

    pub fn kill_nats(&mut self, i: usize) {
        if let Some(mut proc) = self.nats[i].proc.take() {
            proc.kill9();
        }
    }

    fn write_config(&self, i: usize) -> Result<(), String> {
        let node = &self.sidecars[i];
        // Each node talks to its own server when every node has one, else to the shared one.
        let server = if self.nats.len() > 1 { i } else { 0 };
        let replicas = self.nats.len().min(3);
        let config = format!(
            "db_path = \"{}\"\nnode_id = {}\n\n[nats]\nurls = [\"{}\"]\nreconnect_wait_seconds = 1\n\n\
             [replication_log]\nshards = {}\nreplicas = {replicas}\n\n[snapshot]\nenabled = false\n\n\
             [health_check]\nenable = true\nbind = \"{}:{}\"\npath = \"/health\"\n",
            node.db().display(),
            node.node_id(),
            self.nats_url(server),
            self.spec.shards,
            self.net.host(node.k),
            node.health_port,
        );
        std::fs::write(node.dir.join("config.toml"), config).map_err(|e| e.to_string())
    }

    pub fn start_sidecar(&mut self, i: usize) -> Result<(), String> {
        let node = &self.sidecars[i];
        let log = node.log();
        let child = self
            .net
            .command(node.k, &self.bins.harmonylite)
            .arg("-config")
            .arg(node.dir.join("config.toml"))
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(append_log(&log)?)
            .spawn()
            .map_err(|e| format!("harmonylite: {e}"))?;
        self.sidecars[i].proc = Some(Proc::new(child));
        Ok(())
    }

    /// Waits until sidecar `i` consumes every shard (its log from byte `from`).
    pub fn wait_consuming(&self, i: usize, from: u64) -> Result<(), String> {
        let log = self.sidecars[i].log();
        for shard in 0..self.spec.shards {
            wait_log(&log, from, &format!("consuming shard={shard}"), READY)?;
        }
        Ok(())
    }

    pub fn kill_sidecar(&mut self, i: usize) {
        if let Some(mut proc) = self.sidecars[i].proc.take() {
            proc.kill9();
        }
    }

    pub fn start_writer(&mut self, i: usize) -> Result<(), String> {
        self.sidecars[i].generation += 1;
        let node = &self.sidecars[i];
        let child = std::process::Command::new(&self.bins.faults)
            .arg("writer")
            .arg("--db")
            .arg(node.db())
            .arg("--ledger")
            .arg(node.ledger())
            .args(["--writer", &node.k.to_string()])
            .args(["--generation", &node.generation.to_string()])
            .args(["--seed", &self.spec.seed.to_string()])
            .args(["--pace-ms", &self.spec.writer_pace.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(append_log(&node.writer_log())?)
            .spawn()
            .map_err(|e| format!("writer: {e}"))?;
        self.sidecars[i].writer = Some(Proc::new(child));
        Ok(())
    }

    pub fn kill_writer(&mut self, i: usize) {
        if let Some(mut proc) = self.sidecars[i].writer.take() {
            proc.kill9();
        }
    }

    pub fn start_hogs(&mut self, count: usize) -> Result<(), String> {
        for _ in 0..count {
            let child = std::process::Command::new(&self.bins.faults)
                .arg("hog")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("hog: {e}"))?;
            self.hogs.push(Proc::new(child));
        }
        Ok(())
    }

    pub fn stop_hogs(&mut self) {
        for mut hog in self.hogs.drain(..) {
            hog.kill9();
        }
    }

    /// Committed rows in all writers' ledgers so far.
    pub fn ledger(&self) -> Ledger {
        let mut all = Ledger::default();
        for node in &self.sidecars {
            all.merge(Ledger::read(&node.ledger()));
        }
        all
    }

    pub fn committed(&self, i: usize) -> usize {
        Ledger::read(&self.sidecars[i].ledger()).committed.len()
    }

    /// Waits until every writer committed `more` rows beyond what it had.
    pub fn wait_writes(&self, more: usize) -> Result<(), String> {
        let base: Vec<usize> = (0..self.sidecars.len())
            .map(|i| self.committed(i))
            .collect();
        let started = Instant::now();
        loop {
            let done = (0..self.sidecars.len())
                .all(|i| self.sidecars[i].writer.is_none() || self.committed(i) >= base[i] + more);
            if done {
                return Ok(());
            }
            if started.elapsed() > READY {
                return Err(format!(
                    "writers did not commit {more} more rows in {READY:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Brings every process back: links, servers, sidecars and writers (resumed or restarted); stops hogs.
    pub fn heal_all(&mut self) -> Result<(), String> {
        self.stop_hogs();
        for k in 1..=self.sidecars.len() {
            if self.net.is_isolated() {
                self.net.heal(k)?;
            }
        }
        for i in 0..self.nats.len() {
            if !resume_if_running(&mut self.nats[i].proc) {
                self.start_nats(i)?;
            }
        }
        for i in 0..self.sidecars.len() {
            if !resume_if_running(&mut self.sidecars[i].proc) {
                self.start_sidecar(i)?;
            }
            if !resume_if_running(&mut self.sidecars[i].writer) {
                self.start_writer(i)?;
            }
        }
        Ok(())
    }

    /// Writers stop with a kill -9 too: whatever they had in flight is "uncertain" in the ledger.
    pub fn stop_writers(&mut self) {
        for i in 0..self.sidecars.len() {
            self.kill_writer(i);
        }
    }

    pub fn views(&self) -> Result<Vec<NodeView>, String> {
        self.sidecars.iter().map(|node| view(&node.db())).collect()
    }

    /// Lines with `panicked` in every process log of this scenario.
    pub fn panics(&self) -> Vec<String> {
        let mut logs: Vec<PathBuf> = Vec::new();
        for node in &self.sidecars {
            logs.push(node.log());
            logs.push(node.writer_log());
        }
        let mut found = Vec::new();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("panicked")) {
                found.push(format!("{}: {}", log.display(), line.trim()));
            }
        }
        found
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.stop_hogs();
        for node in &mut self.sidecars {
            if let Some(mut writer) = node.writer.take() {
                writer.kill9();
            }
            if let Some(mut proc) = node.proc.take() {
                proc.kill9();
            }
        }
        for node in &mut self.nats {
            if let Some(mut proc) = node.proc.take() {
                proc.kill9();
            }
        }
    }
}

/// Resumes a paused process; false when there is none running.
fn resume_if_running(proc: &mut Option<Proc>) -> bool {
    let Some(proc) = proc.as_mut() else {
        return false;
    };
    if !proc.running() {
        return false;
    }
    proc.resume();
    true
}

/// What a node's database holds, read without disturbing the sidecar (read-only connection). Values are
/// compared as SQLite stores them, whatever their type (a forged message may store anything).
pub fn view(db: &Path) -> Result<NodeView, String> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: {e}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let read = || -> rusqlite::Result<NodeView> {
        let mut ids = BTreeSet::new();
        let mut null_ids = 0;
        let mut hasher = Fnv::default();
        for (table, order) in [("rows", "id"), ("hot", "k")] {
            hasher.add(table.as_bytes());
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))?;
            let columns = stmt.column_count();
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                for c in 0..columns {
                    hasher.add(value_text(row.get_ref(c)?).as_bytes());
                }
                if table == "rows" {
                    match row.get_ref(0)? {
                        rusqlite::types::ValueRef::Text(id) => {
                            ids.insert(String::from_utf8_lossy(id).into_owned());
                        }
                        rusqlite::types::ValueRef::Null => null_ids += 1,
                        other => {
                            ids.insert(value_text(other));
                        }
                    }
                }
            }
        }
        Ok(NodeView {
            ids,
            null_ids,
            fingerprint: format!("{:016x}", hasher.0),
        })
    };
    read().map_err(|e| format!("{}: {e}", db.display()))
}

fn value_text(value: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => "N".into(),
        ValueRef::Integer(i) => format!("i{i}"),
        ValueRef::Real(f) => format!("r{:x}", f.to_bits()),
        ValueRef::Text(t) => format!("t{}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!(
            "b{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for byte in bytes.iter().chain([0u8].iter()) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}
