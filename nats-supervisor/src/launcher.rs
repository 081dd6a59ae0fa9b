//! The plain launcher: one `nats-server` from the same generated configuration as the supervisor,
//! started, waited for and stopped, and nothing else. Tests, the benchmark and the fault harness
//! kill, pause and restart servers on purpose, so no supervisor may bring one back behind their
//! back. Blocking (std processes, no runtime), so it serves plain threads and async tests alike.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::resolve_binary;
use crate::error::{Error, Result};
use crate::files::{
    check_client_port, exit_error, no_monitor_error, open_output, read_ports_file,
    remove_stale_ports_files, send_signal, write_atomic, DirGuard, Files, Ports, Sig,
};
use crate::monitor::{http_get_blocking, http_ok_blocking, HEALTH_PATH, READY_PATH};
use crate::plan::{path_str, Plan};
use crate::supervisor::{EmbeddedOptions, POLL_INTERVAL, STOP_GRACE};

/// The extra configuration text of [`ProcessOptions::extra_config`], included like a user's
/// `nats.server_config`.
const EXTRA_FILE: &str = "nats-server.extra.conf";

/// When [`NatsProcess::start`] counts the server as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Readiness {
    /// The ports file is written and `/healthz?js-server-only=true` answers 200 (what the
    /// supervisor waits for): listeners up and JetStream running, cluster quorum or not.
    #[default]
    Monitor,
    /// The ports file is written: every listener is up and JetStream was enabled before them. For a
    /// server whose loopback interface this process cannot reach (started in another network
    /// namespace through [`ProcessOptions::command_prefix`]).
    PortsFile,
}

/// What to start. `server` holds the same options as the supervisor's (its `store_dir` is the
/// server's folder: config, logs, ports file and the JetStream store under `jetstream/`);
/// `dns://` peers are not supported here, since nothing would re-resolve them.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub server: EmbeddedOptions,
    /// nats-server configuration text (auth, TLS, limits), included after the generated settings,
    /// so a key set here wins (see `docs/embedded-nats.md`).
    pub extra_config: String,
    /// Runs the binary through another program, e.g. `ip netns exec <ns>` (which must exec it, so
    /// the pid stays the server's).
    pub command_prefix: Vec<OsString>,
    pub readiness: Readiness,
    pub ready_timeout: Duration,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            server: EmbeddedOptions::default(),
            extra_config: String::new(),
            command_prefix: Vec::new(),
            readiness: Readiness::Monitor,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// One running `nats-server`, not supervised. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct NatsProcess {
    child: Option<Child>,
    pid: u32,
    binary: PathBuf,
    files: Files,
    ports: Ports,
    client_url: String,
    /// Held while the process runs: one server per folder in this process, as for the supervisor.
    dir: Option<DirGuard>,
}

impl NatsProcess {
    /// Starts the server and waits until it is ready (see [`Readiness`]), up to
    /// `opts.ready_timeout`. A taken explicit port fails with an error for which
    /// [`Error::is_port_in_use`] holds, so a caller that picked the port may pick another.
    pub fn start(opts: &ProcessOptions) -> Result<NatsProcess> {
        let server = &opts.server;
        let mut plan = Plan::from_options(server)?;
        if !plan.dns.is_empty() {
            return Err(Error::config(
                "nats.cluster_peers",
                "dns:// peers need the supervisor (EmbeddedServer), which re-resolves them",
            ));
        }
        if server.store_dir.as_os_str().is_empty() {
            return Err(Error::config("nats.store_dir", "must not be empty"));
        }
        let binary = resolve_binary(server.binary.as_deref())?;
        std::fs::create_dir_all(&server.store_dir)
            .map_err(|e| Error::io(server.store_dir.display(), e))?;
        let dir = std::fs::canonicalize(&server.store_dir)
            .map_err(|e| Error::io(server.store_dir.display(), e))?;
        path_str(&dir, "nats.store_dir")?;
        let guard = DirGuard::claim(&dir)?;
        let files = Files::new(dir);
        if let Some(user) = server
            .server_config
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            plan.include_user_config(&files, user)?;
        }
        if !opts.extra_config.trim().is_empty() {
            let extra = files.dir.join(EXTRA_FILE);
            write_atomic(&extra, &opts.extra_config)?;
            plan.include_user_config(&files, &extra)?;
        }
        check_client_port(&plan)?;
        let (text, _) = plan.render(&files)?;
        write_atomic(&files.config, &text)?;
        remove_stale_ports_files(&files, &binary);
        let (out, err) = open_output(&files)?;
        let mut command = match opts.command_prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command
            .arg("-c")
            .arg(&files.config)
            .current_dir(&files.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = command.spawn().map_err(|e| {
            Error::transport(
                "starting nats-server",
                format!("could not run {}: {e}", binary.display()),
            )
        })?;
        let pid = child.id();
        match wait_ready(&mut child, &files, &binary, &plan, opts) {
            Ok(ports) => Ok(NatsProcess {
                child: Some(child),
                pid,
                binary,
                files,
                client_url: format!("nats://{}:{}", plan.client.dial_host(), ports.client),
                ports,
                dir: Some(guard),
            }),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(err)
            }
        }
    }

    /// `nats://<host>:<port>`, where `host` is the listen host (loopback for `0.0.0.0`/`::`).
    pub fn client_url(&self) -> String {
        self.client_url.clone()
    }

    pub fn client_port(&self) -> u16 {
        self.ports.client
    }

    /// The monitoring port on loopback (`None` in a [`Readiness::PortsFile`] start whose server has
    /// no monitoring endpoint).
    pub fn monitor_port(&self) -> Option<u16> {
        self.ports.monitor
    }

    /// The pid, until the process was killed or stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|_| self.pid)
    }

    /// The server's folder (canonical); the JetStream store is its `jetstream/` subfolder.
    pub fn store_dir(&self) -> &Path {
        &self.files.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.files.config
    }

    pub fn log_path(&self) -> &Path {
        &self.files.log
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// GET `path` from the monitoring endpoint: `(status, body)`.
    pub fn monitor_get(&self, path: &str) -> Result<(u16, String)> {
        let context = || format!("GET {path} from nats-server");
        let port = self
            .ports
            .monitor
            .ok_or_else(|| Error::transport(context(), "it has no monitoring endpoint"))?;
        http_get_blocking(port, path).map_err(|e| Error::transport(context(), e))
    }

    /// `/healthz` answers 200: JetStream ready and, when clustered, a meta leader known.
    pub fn is_healthy(&self) -> bool {
        self.ports
            .monitor
            .is_some_and(|port| http_ok_blocking(port, HEALTH_PATH))
    }

    /// Polls [`NatsProcess::is_healthy`] until it holds; fails when the process exits or after
    /// `limit`, with the tail of its log.
    pub fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::transport(
                        "waiting for nats-server to become healthy",
                        format!("it exited ({status}); see {}", self.files.log.display()),
                    ));
                }
            }
            if self.is_healthy() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(timeout(
                    "nats-server /healthz to answer 200",
                    &self.files,
                    limit,
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The process has not exited (a paused one counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGSTOP: the process freezes, its sockets stay open (a hung server). Returns once the kernel
    /// reports the process stopped (or after a few seconds): a signal is delivered asynchronously, and a
    /// thread of the server still running for a moment could answer a request sent right after.
    pub fn pause(&self) {
        if self.child.is_some() {
            send_signal(self.pid, Sig::Stop);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !is_stopped(self.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// SIGCONT after [`NatsProcess::pause`].
    pub fn resume(&self) {
        if self.child.is_some() {
            send_signal(self.pid, Sig::Cont);
        }
    }

    /// SIGKILL (a crash: nothing flushed), then reaps the process and releases its folder; the
    /// store stays on disk. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies of SIGKILL as well.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.dir.take();
    }

    /// SIGTERM (nats-server shuts down cleanly, flushing JetStream), SIGKILL after 10 s; then
    /// releases the folder. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(self.pid, Sig::Cont);
            if send_signal(self.pid, Sig::Term) {
                let deadline = Instant::now() + STOP_GRACE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(POLL_INTERVAL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.dir.take();
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn timeout(what: &str, files: &Files, limit: Duration) -> Error {
    Error::Timeout {
        what: format!("{what} (see {})", files.log.display()),
        millis: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Polls until the ports file is there and, for [`Readiness::Monitor`], the readiness endpoint
/// answers; an early exit is reported with the log's tail.
fn wait_ready(
    child: &mut Child,
    files: &Files,
    binary: &Path,
    plan: &Plan,
    opts: &ProcessOptions,
) -> Result<Ports> {
    let deadline = Instant::now() + opts.ready_timeout;
    let mut ports = None;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::transport("watching nats-server", e))?
        {
            return Err(exit_error(files, plan, status));
        }
        if ports.is_none() {
            ports = read_ports_file(files, binary, child.id());
        }
        match (ports, opts.readiness) {
            (Some(p), Readiness::PortsFile) => return Ok(p),
            (Some(Ports { monitor: None, .. }), Readiness::Monitor) => {
                return Err(no_monitor_error(files))
            }
            (
                Some(
                    p @ Ports {
                        monitor: Some(port),
                        ..
                    },
                ),
                Readiness::Monitor,
            ) => {
                if http_ok_blocking(port, READY_PATH) {
                    // A listener failing right after the monitor came up still ends the process.
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(exit_error(files, plan, status));
                    }
                    return Ok(p);
                }
            }
            (None, _) => {}
        }
        if Instant::now() >= deadline {
            return Err(timeout(
                "nats-server to become ready",
                files,
                opts.ready_timeout,
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`). Outside Linux, or when
/// it cannot be read: true (the caller then only has the signal's own delivery to go by).
fn is_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            // The state follows the command name, which is in parentheses and may hold spaces.
            .and_then(|stat| {
                stat.rsplit_once(") ")
                    .map(|(_, rest)| rest.starts_with('T'))
            })
            .unwrap_or(true)
    })
}
