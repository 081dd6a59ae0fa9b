//! The supervisor: one `nats-server` process per store folder, started from a generated config,
//! waited for, restarted with backoff when it exits, stopped gracefully (`docs/embedded-nats.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::binary::resolve_binary;
use crate::error::{Error, Result};
use crate::files::{
    check_client_port, exit_error, lock, no_monitor_error, open_output, read_ports_file,
    remove_stale_ports_files, send_signal, tail, write_atomic, DirGuard, Files, Ports, Sig,
};
use crate::monitor::{http_get, http_ok, READY_PATH};
use crate::plan::{path_str, Plan};

/// Default `max_payload` (8 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 8 * 1024 * 1024;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
#[cfg(target_os = "linux")]
/// How long a store folder's previous owner may take to finish exiting before the folder counts as in use.
const OWNER_EXIT_GRACE: Duration = Duration::from_secs(3);
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A process that ran at least this long counts as stable: the next crash restarts after BACKOFF_MIN.
const STABLE_RUN: Duration = Duration::from_secs(30);
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// What to start. Field names follow the `nats.*` configuration keys.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Explicit binary (`nats.server_binary`); `None` = resolve (see [`resolve_binary`]).
    pub binary: Option<PathBuf>,
    /// JetStream store folder (created if missing). Also holds the generated config, the logs,
    /// the pid file and the ports files.
    pub store_dir: PathBuf,
    /// Client listen `host:port`; empty host = 127.0.0.1; port 0 or missing = picked at first start.
    pub bind_address: String,
    /// Route listen `host:port` (explicit port required); empty = not clustered.
    pub cluster_addr: String,
    /// `nats://host:port` routes, or `dns://host:port?min=N&interval_ms=M` (see the docs).
    pub cluster_peers: Vec<String>,
    /// Leaf-node remotes (`nats-leaf://`, `nats://`, `tls://`, `ws://`, `wss://`), optional `?hub=true`.
    pub leaf_servers: Vec<String>,
    /// Cluster name shared by the peers (empty = "harmonylite").
    pub cluster_name: String,
    /// Unique server name, e.g. `hl-<node_id>` (empty = nats-server generates one).
    pub server_name: String,
    /// Extra nats-server configuration file, `include`d after the generated settings.
    pub server_config: Option<PathBuf>,
    /// Maximum message payload in bytes (1..=64 MiB).
    pub max_payload: u32,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            binary: None,
            store_dir: PathBuf::new(),
            bind_address: String::new(),
            cluster_addr: String::new(),
            cluster_peers: Vec::new(),
            leaf_servers: Vec::new(),
            cluster_name: "harmonylite".into(),
            server_name: String::new(),
            server_config: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// A nats-server left running by a process of ours that died without cleaning up (its pid file
/// names it, and its command line names our config file): stop it, or we would share the store.
#[cfg(target_os = "linux")]
async fn reclaim_orphan(files: &Files) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(&files.pid) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(());
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let stat = |pid: u32| -> Option<(char, u32)> {
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut rest = text.rsplit_once(')')?.1.split_whitespace();
        let state = rest.next()?.chars().next()?;
        Some((state, rest.next()?.parse().ok()?))
    };
    // Gone, or a zombie whose threads have all exited: it holds no port and no file any more, whenever
    // its new parent (init, or a container's first process) gets round to reaping it.
    let released = || {
        !proc_dir.exists()
            || (stat(pid).is_some_and(|(state, _)| state == 'Z')
                && std::fs::read_dir(proc_dir.join("task"))
                    .map_or(true, |tasks| tasks.count() <= 1))
    };
    let wait_gone = || async {
        let deadline = Instant::now() + STOP_GRACE;
        while !released() && Instant::now() < deadline {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        released()
    };
    let Some((state, parent)) = stat(pid) else {
        return Ok(()); // not running
    };
    if state == 'Z' {
        // Already exiting (e.g. an EmbeddedServer of this process was just dropped); its
        // threads may still hold the ports for a moment.
        wait_gone().await;
        return Ok(());
    }
    let config = files.config.to_string_lossy();
    let ours = std::fs::read(proc_dir.join("cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|b| *b == 0)
            .any(|arg| String::from_utf8_lossy(arg) == config)
    });
    if !ours {
        return Ok(()); // the pid was reused by something else
    }
    // Its parent is the process that started it unless that process died (then it is an
    // orphan, adopted by init or a subreaper). The state file records the starting process.
    let owner = std::fs::read_to_string(&files.state)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("owner_pid").and_then(serde_json::Value::as_u64));
    let owner_alive = |parent: u32| {
        let parent_is_owner = match owner {
            Some(owner) => u64::from(parent) == owner,
            None => parent > 1,
        };
        parent_is_owner
            && parent != std::process::id()
            && stat(parent).is_some_and(|(s, _)| s != 'Z' && s != 'X')
    };
    // The owner may be exiting right now: a killed replicator's node lock is released when its files
    // are closed, before its children get their death signal (ADR 0010). Give it a moment.
    let mut parent = parent;
    let deadline = Instant::now() + OWNER_EXIT_GRACE;
    while owner_alive(parent) && Instant::now() < deadline {
        tokio::time::sleep(POLL_INTERVAL).await;
        match stat(pid) {
            Some((_, now)) => parent = now,
            None => return Ok(()), // the server is gone too
        }
    }
    if owner_alive(parent) {
        return Err(Error::transport(
            "starting embedded nats-server",
            format!(
                "store folder {} is in use by nats-server pid {pid}, run by process {parent}; \
                 stop that process or use another nats.store_dir",
                files.dir.display()
            ),
        ));
    }
    tracing::warn!(pid, store = %files.dir.display(), "stopping an orphaned embedded nats-server");
    send_signal(pid, Sig::Term);
    if !wait_gone().await {
        send_signal(pid, Sig::Kill);
        wait_gone().await;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn reclaim_orphan(_files: &Files) -> Result<()> {
    Ok(())
}

// The server
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Live {
    plan: Plan,
    pid: Option<u32>,
    monitor_port: u16,
    restarts: u64,
    rendered_routes: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    binary: PathBuf,
    files: Files,
    live: Mutex<Live>,
    stopping: AtomicBool,
    stop_tx: watch::Sender<bool>,
}

impl Inner {
    fn write_config(&self, live: &mut Live) -> Result<()> {
        let (text, routes) = live.plan.render(&self.files)?;
        write_atomic(&self.files.config, &text)?;
        live.rendered_routes = routes;
        Ok(())
    }

    fn write_state(&self, live: &Live) {
        let client_port = live.plan.client_port.unwrap_or(0);
        let state = serde_json::json!({
            "owner_pid": std::process::id(),
            "pid": live.pid,
            "client_url": format!("nats://{}:{client_port}", live.plan.client.dial_host()),
            "monitor_url": format!("http://127.0.0.1:{}", live.monitor_port),
            "cluster_listen": live.plan.cluster.as_ref().map(|c| c.render(Some(c.port))),
            "routes": live.rendered_routes,
            "restarts": live.restarts,
        });
        if let Err(err) = write_atomic(&self.files.state, &state.to_string()) {
            tracing::debug!(%err, "could not write the embedded nats-server state file");
        }
    }

    fn spawn_child(&self) -> Result<Child> {
        remove_stale_ports_files(&self.files, &self.binary);
        let (out, err) = open_output(&self.files)?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.files.config)
            .current_dir(&self.files.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // If this process dies without running destructors (SIGKILL, abort), take the server with it.
        #[cfg(target_os = "linux")]
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and makes a single async-signal-safe
        // system call (prctl PR_SET_PDEATHSIG); it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(|e| {
            Error::transport(
                "starting embedded nats-server",
                format!("could not run {}: {e}", self.binary.display()),
            )
        })?;
        let mut live = lock(&self.live);
        live.pid = child.id();
        self.write_state(&live);
        Ok(child)
    }

    fn exit_error(&self, status: std::process::ExitStatus) -> Error {
        exit_error(&self.files, &lock(&self.live).plan, status)
    }

    /// Polls until the child wrote its ports file and answers `/healthz?js-server-only=true`.
    async fn wait_ready(&self, child: &mut Child, timeout: Duration) -> Result<Ports> {
        let deadline = Instant::now() + timeout;
        let pid = child.id().unwrap_or(0);
        let mut ports = None;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| Error::transport("watching embedded nats-server", e))?
            {
                return Err(self.exit_error(status));
            }
            if ports.is_none() {
                ports = read_ports_file(&self.files, &self.binary, pid);
            }
            if let Some(p) = ports {
                let Some(monitor) = p.monitor else {
                    return Err(no_monitor_error(&self.files));
                };
                if http_ok(monitor, READY_PATH).await {
                    // A listener failing right after the monitor came up still ends the process.
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(self.exit_error(status));
                    }
                    return Ok(p);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "embedded nats-server to become ready (see {})",
                        self.files.log.display()
                    ),
                    millis: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops `child`: SIGTERM (nats-server shuts down cleanly), then SIGKILL after STOP_GRACE.
    async fn shutdown_child(&self, child: &mut Child) {
        let pid = child.id();
        let termed = pid.is_some_and(|pid| send_signal(pid, Sig::Term));
        if !termed {
            let _ = child.start_kill();
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(?pid, "nats-server ignored SIGTERM for 10 s; killing it");
                let _ = child.kill().await;
            }
        }
        lock(&self.live).pid = None;
    }
}

/// Resolves when stop has been requested (or the handle is gone).
async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn supervise(inner: Arc<Inner>, mut child: Child, mut stop_rx: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    let mut started = Instant::now();
    let mut need_ports = false;
    loop {
        let pid = child.id().unwrap_or(0);
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                () = stop_requested(&mut stop_rx) => {
                    inner.shutdown_child(&mut child).await;
                    return;
                }
                () = tokio::time::sleep(POLL_INTERVAL), if need_ports => {
                    if let Some(ports) = read_ports_file(&inner.files, &inner.binary, pid) {
                        need_ports = false;
                        let mut live = lock(&inner.live);
                        live.monitor_port = ports.monitor.unwrap_or(0);
                        inner.write_state(&live);
                        tracing::info!(
                            pid,
                            client_port = ports.client,
                            monitor_port = live.monitor_port,
                            restarts = live.restarts,
                            "embedded nats-server restarted and listening"
                        );
                    }
                }
            }
        };
        lock(&inner.live).pid = None;
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        tracing::warn!(
            pid,
            %status,
            log = %inner.files.log.display(),
            tail = %tail(&inner.files.log, 5),
            "embedded nats-server exited unexpectedly; restarting"
        );
        if started.elapsed() >= STABLE_RUN {
            backoff = BACKOFF_MIN;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop_requested(&mut stop_rx) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            let restarts = {
                let mut live = lock(&inner.live);
                live.restarts += 1;
                live.restarts
            };
            match inner.spawn_child() {
                Ok(new_child) => {
                    tracing::info!(
                        pid = new_child.id(),
                        restarts,
                        next_backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "restarted embedded nats-server"
                    );
                    child = new_child;
                    started = Instant::now();
                    need_ports = true;
                    break;
                }
                Err(err) => {
                    tracing::warn!(%err, restarts, "could not restart embedded nats-server");
                }
            }
        }
    }
}

async fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    #[cfg(test)]
    if let Some(addrs) = tests::fake_dns(host, port) {
        return Ok(addrs);
    }
    let answer = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DNS lookup timed out"))??;
    Ok(answer.collect())
}

/// Re-resolves dns peer `idx` every interval; reloads nats-server (SIGHUP) when the routes change.
async fn watch_dns(inner: Arc<Inner>, idx: usize, mut stop_rx: watch::Receiver<bool>) {
    let Some((host, port, interval, spec)) = lock(&inner.live)
        .plan
        .dns
        .get(idx)
        .map(|p| (p.host.clone(), p.port, p.interval, p.spec.clone()))
    else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop_requested(&mut stop_rx) => return,
        }
        let answer = match lookup(&host, port).await {
            Ok(addrs) => addrs,
            Err(err) => {
                tracing::debug!(%err, peer = %spec, "DNS lookup failed; keeping the current routes");
                continue;
            }
        };
        let mut live = lock(&inner.live);
        if !live.plan.apply_dns(idx, &answer) || live.plan.routes() == live.rendered_routes {
            continue;
        }
        match inner.write_config(&mut live) {
            Ok(()) => {
                let reloaded = live.pid.is_some_and(|pid| send_signal(pid, Sig::Hup));
                tracing::info!(
                    peer = %spec,
                    routes = ?live.rendered_routes,
                    reloaded,
                    "cluster routes changed"
                );
                inner.write_state(&live);
            }
            Err(err) => tracing::warn!(%err, "could not rewrite the nats-server config"),
        }
    }
}

/// A supervised `nats-server` process. See the module docs.
#[derive(Debug)]
pub struct EmbeddedServer {
    inner: Arc<Inner>,
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
    client_url: String,
    /// Released by `stop()` (not only on drop), so a handle kept after stopping does not hold the folder.
    dir: Mutex<Option<DirGuard>>,
}

impl EmbeddedServer {
    /// Starts the server and waits (up to 30 s) until it is ready. See the module docs.
    pub async fn start(opts: EmbeddedOptions) -> Result<EmbeddedServer> {
        let mut plan = Plan::from_options(&opts)?;
        if opts.store_dir.as_os_str().is_empty() {
            return Err(Error::config("nats.store_dir", "must not be empty"));
        }
        let configured = opts.binary.clone();
        let binary = tokio::task::spawn_blocking(move || resolve_binary(configured.as_deref()))
            .await
            .map_err(|e| Error::Internal(format!("binary resolution task failed: {e}")))??;

        tokio::fs::create_dir_all(&opts.store_dir)
            .await
            .map_err(|e| Error::io(opts.store_dir.display(), e))?;
        let dir = tokio::fs::canonicalize(&opts.store_dir)
            .await
            .map_err(|e| Error::io(opts.store_dir.display(), e))?;
        path_str(&dir, "nats.store_dir")?;
        let dir_guard = DirGuard::claim(&dir)?;
        let files = Files::new(dir);

        if let Some(user) = opts
            .server_config
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            plan.include_user_config(&files, user)?;
        }

        reclaim_orphan(&files).await?;

        check_client_port(&plan)?;

        for idx in 0..plan.dns.len() {
            let (host, port) = (plan.dns[idx].host.clone(), plan.dns[idx].port);
            match lookup(&host, port).await {
                Ok(answer) => {
                    plan.apply_dns(idx, &answer);
                }
                Err(err) => {
                    tracing::info!(%err, peer = %plan.dns[idx].spec, "DNS lookup failed; will retry")
                }
            }
            let peer = &plan.dns[idx];
            if !peer.gate_open {
                tracing::info!(
                    peer = %peer.spec,
                    resolved = peer.last_total,
                    min = peer.min,
                    "waiting for enough peer addresses before routing to them"
                );
            }
        }

        let (stop_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            binary,
            files,
            live: Mutex::new(Live {
                plan,
                pid: None,
                monitor_port: 0,
                restarts: 0,
                rendered_routes: Vec::new(),
            }),
            stopping: AtomicBool::new(false),
            stop_tx,
        });
        inner.write_config(&mut lock(&inner.live))?;
        let mut child = inner.spawn_child()?;
        let ports = match inner.wait_ready(&mut child, READY_TIMEOUT).await {
            Ok(ports) => ports,
            Err(err) => {
                let _ = child.kill().await;
                lock(&inner.live).pid = None;
                return Err(err);
            }
        };

        let client_url = {
            let mut live = lock(&inner.live);
            live.monitor_port = ports.monitor.unwrap_or(0);
            live.plan.client_port = Some(ports.client);
            // Pin the client port for every restart.
            inner.write_config(&mut live)?;
            inner.write_state(&live);
            tracing::info!(
                pid = ?live.pid,
                client_port = ports.client,
                monitor_port = live.monitor_port,
                binary = %inner.binary.display(),
                store = %inner.files.dir.display(),
                "embedded nats-server ready"
            );
            format!("nats://{}:{}", live.plan.client.dial_host(), ports.client)
        };

        let mut tasks = vec![tokio::spawn(supervise(
            inner.clone(),
            child,
            inner.stop_tx.subscribe(),
        ))];
        let dns_count = lock(&inner.live).plan.dns.len();
        for idx in 0..dns_count {
            tasks.push(tokio::spawn(watch_dns(
                inner.clone(),
                idx,
                inner.stop_tx.subscribe(),
            )));
        }
        Ok(EmbeddedServer {
            inner,
            tasks: tokio::sync::Mutex::new(tasks),
            client_url,
            dir: Mutex::new(Some(dir_guard)),
        })
    }

    /// `nats://127.0.0.1:<port>` (or the bound host); the same across supervisor restarts.
    pub fn client_url(&self) -> String {
        self.client_url.clone()
    }

    /// `http://127.0.0.1:<port>` of the monitoring endpoint; may change when the process restarts.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", lock(&self.inner.live).monitor_port)
    }

    /// Number of servers expected in the cluster: configured peers + 1 (a dns:// peer counts as
    /// its last resolved addresses other than this server, at least `min - 1`).
    pub fn cluster_size_hint(&self) -> usize {
        lock(&self.inner.live).plan.cluster_size_hint()
    }

    /// The process is up and supervision has not been stopped.
    pub fn is_running(&self) -> bool {
        !self.inner.stopping.load(Ordering::SeqCst) && lock(&self.inner.live).pid.is_some()
    }

    /// Pid of the current nats-server process, if one is running.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.inner.live).pid
    }

    /// How many times the supervisor restarted the process.
    pub fn restarts(&self) -> u64 {
        lock(&self.inner.live).restarts
    }

    /// The JetStream store folder (canonical), which also holds the config, logs and pid file.
    pub fn store_dir(&self) -> &Path {
        &self.inner.files.dir
    }

    /// The generated nats-server configuration file.
    pub fn config_path(&self) -> &Path {
        &self.inner.files.config
    }

    /// The nats-server log file.
    pub fn log_path(&self) -> &Path {
        &self.inner.files.log
    }

    /// The binary that was resolved and is being run.
    pub fn binary(&self) -> &Path {
        &self.inner.binary
    }

    /// GET `path` (e.g. `/routez`, `/jsz`) from the monitoring endpoint: `(status, body)`.
    pub async fn monitor_get(&self, path: &str) -> Result<(u16, String)> {
        let port = lock(&self.inner.live).monitor_port;
        http_get(port, path)
            .await
            .map_err(|e| Error::transport(format!("GET {path} from the embedded nats-server"), e))
    }

    /// `/healthz` answers 200: running, JetStream ready and (when clustered) a meta leader known.
    pub async fn is_healthy(&self) -> bool {
        matches!(self.monitor_get("/healthz").await, Ok((200, _)))
    }

    /// `/healthz?js-server-only=true` answers 200: running with JetStream on, whether or not a
    /// cluster quorum exists (this is what [`EmbeddedServer::start`] waits for).
    pub async fn is_ready(&self) -> bool {
        matches!(self.monitor_get(READY_PATH).await, Ok((200, _)))
    }

    /// Stops supervision, then the process: SIGTERM, up to 10 s, then SIGKILL; then releases the store
    /// folder, so a new server may start on it at once (even while this handle is kept). Idempotent.
    pub async fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop_tx.send_replace(true);
        let mut tasks = self.tasks.lock().await;
        for task in tasks.drain(..) {
            if let Err(err) = task.await {
                if err.is_panic() {
                    tracing::error!("embedded nats-server supervisor panicked");
                }
            }
        }
        // If the supervisor died, its child was killed on drop; make sure nothing is left.
        let pid = lock(&self.inner.live).pid.take();
        if let Some(pid) = pid {
            send_signal(pid, Sig::Kill);
        }
        // The process is gone: the folder may be used again at once, even while this handle lives on.
        lock(&self.dir).take();
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop_tx.send_replace(true);
        if let Some(pid) = lock(&self.inner.live).pid.take() {
            send_signal(pid, Sig::Kill);
        }
        if let Ok(mut tasks) = self.tasks.try_lock() {
            for task in tasks.drain(..) {
                task.abort(); // dropping the task drops the Child, which is kill_on_drop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::OnceLock;

    fn fake_table() -> &'static Mutex<HashMap<String, Vec<SocketAddr>>> {
        static TABLE: OnceLock<Mutex<HashMap<String, Vec<SocketAddr>>>> = OnceLock::new();
        TABLE.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// Host names ending in `.hl-fake` resolve from a table the tests control.
    pub(super) fn fake_dns(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        if !host.ends_with(".hl-fake") {
            return None;
        }
        let table = lock(fake_table());
        Some(
            table
                .get(host)
                .map(|ips| ips.iter().map(|a| SocketAddr::new(a.ip(), port)).collect())
                .unwrap_or_default(),
        )
    }

    fn set_fake(host: &str, addrs: &[&str]) {
        let parsed = addrs
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 0))
            .collect();
        lock(fake_table()).insert(host.to_string(), parsed);
    }

    fn free_port() -> u16 {
        for _ in 0..1000 {
            let port = 20_000 + rand::random::<u16>() % 12_000;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!("no free port between 20000 and 32000");
    }

    async fn wait_for<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn num_routes(server: &EmbeddedServer) -> u64 {
        match server.monitor_get("/routez").await {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("num_routes").and_then(|n| n.as_u64()))
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// A dns:// peer whose name resolves to nothing yet: the server starts and serves with a
    /// self route; once the name resolves, the routes are written and nats-server reloaded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_peer_routes_appear_after_reload() {
        let dirs = [
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        ];
        let (pa, pb, dead) = (free_port(), free_port(), free_port());
        // a's only configured route goes nowhere: a route between a and b can only come from
        // b's reload.
        let a = EmbeddedServer::start(EmbeddedOptions {
            store_dir: dirs[0].path().join("a"),
            cluster_addr: format!("127.0.0.1:{pa}"),
            cluster_peers: vec![format!("nats://127.0.0.1:{dead}")],
            server_name: "dns-a".into(),
            ..EmbeddedOptions::default()
        })
        .await
        .expect("start a");
        let b = EmbeddedServer::start(EmbeddedOptions {
            store_dir: dirs[1].path().join("b"),
            cluster_addr: format!("127.0.0.1:{pb}"),
            cluster_peers: vec![format!("dns://later.hl-fake:{pa}?min=1&interval_ms=100")],
            server_name: "dns-b".into(),
            ..EmbeddedOptions::default()
        })
        .await
        .expect("start b");
        let config = std::fs::read_to_string(b.config_path()).expect("config");
        assert!(config.contains("# self: no peer known yet"), "{config}");
        assert_eq!(b.cluster_size_hint(), 1);
        set_fake("later.hl-fake", &["127.0.0.1"]);
        wait_for("b's config to route to a", || async {
            std::fs::read_to_string(b.config_path())
                .is_ok_and(|c| c.contains(&format!("nats://127.0.0.1:{pa}")))
        })
        .await;
        wait_for("routes on both", || async {
            num_routes(&a).await >= 1 && num_routes(&b).await >= 1
        })
        .await;
        wait_for("both healthy", || async {
            a.is_healthy().await && b.is_healthy().await
        })
        .await;
        a.stop().await;
        b.stop().await;
    }
}
