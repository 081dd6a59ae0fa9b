//! The files a server keeps in its folder (config, logs, pid and ports files), the process-wide
//! one-server-per-folder guard, signals, and the error a failed start reports. Shared by the
//! supervisor and the plain launcher.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plan::Plan;

const CONFIG_FILE: &str = "nats-server.conf";
const LOG_FILE: &str = "nats-server.log";
const STDERR_FILE: &str = "nats-server.stderr.log";
const PID_FILE: &str = "nats-server.pid";
const STATE_FILE: &str = "harmonylite-embedded.json";
pub(crate) const STDERR_FILE_LIMIT: u64 = 4 * 1024 * 1024;
pub(crate) const TAIL_LINES: usize = 20;

#[derive(Debug)]
pub(crate) struct Files {
    pub(crate) dir: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) stderr: PathBuf,
    pub(crate) pid: PathBuf,
    pub(crate) state: PathBuf,
}

impl Files {
    pub(crate) fn new(dir: PathBuf) -> Files {
        Files {
            config: dir.join(CONFIG_FILE),
            log: dir.join(LOG_FILE),
            stderr: dir.join(STDERR_FILE),
            pid: dir.join(PID_FILE),
            state: dir.join(STATE_FILE),
            dir,
        }
    }
}

pub(crate) fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| Error::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display(), e))
}

/// The last lines of a text file (empty if it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[derive(Debug, Deserialize)]
pub(crate) struct PortsFile {
    #[serde(default)]
    pub(crate) nats: Vec<String>,
    #[serde(default)]
    pub(crate) monitoring: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) client: u16,
    /// `None` when the server runs without a monitoring endpoint (a user config set its port to 0).
    pub(crate) monitor: Option<u16>,
}

pub(crate) fn url_port(url: &str) -> Option<u16> {
    url.trim_end_matches('/').rsplit(':').next()?.parse().ok()
}

/// `<binary file name>_<pid>.ports`, written by nats-server once all its listeners are up.
pub(crate) fn read_ports_file(files: &Files, binary: &Path, pid: u32) -> Option<Ports> {
    let name = format!("{}_{pid}.ports", binary.file_name()?.to_string_lossy());
    let text = std::fs::read_to_string(files.dir.join(name)).ok()?;
    let parsed: PortsFile = serde_json::from_str(&text).ok()?;
    Some(Ports {
        client: parsed.nats.first().and_then(|u| url_port(u))?,
        monitor: parsed.monitoring.first().and_then(|u| url_port(u)),
    })
}

/// Removes ports files left behind by processes that did not shut down cleanly.
pub(crate) fn remove_stale_ports_files(files: &Files, binary: &Path) {
    let Some(prefix) = binary
        .file_name()
        .map(|n| format!("{}_", n.to_string_lossy()))
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&files.dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_ports = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".ports"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if is_ports {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process-wide guard: one embedded server per store folder
// ---------------------------------------------------------------------------------------------

pub(crate) fn active_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static DIRS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(|| Mutex::new(HashSet::new()))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug)]
pub(crate) struct DirGuard(PathBuf);

impl DirGuard {
    pub(crate) fn claim(dir: &Path) -> Result<DirGuard> {
        if lock(active_dirs()).insert(dir.to_path_buf()) {
            Ok(DirGuard(dir.to_path_buf()))
        } else {
            Err(Error::config(
                "nats.store_dir",
                format!(
                    "{} is already used by another embedded nats-server in this process",
                    dir.display()
                ),
            ))
        }
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        lock(active_dirs()).remove(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub(crate) enum Sig {
    Term,
    Hup,
    Kill,
    Stop,
    Cont,
}

#[cfg(unix)]
pub(crate) fn send_signal(pid: u32, sig: Sig) -> bool {
    use rustix::process::{kill_process, Pid, Signal};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let signal = match sig {
        Sig::Term => Signal::TERM,
        Sig::Hup => Signal::HUP,
        Sig::Kill => Signal::KILL,
        Sig::Stop => Signal::STOP,
        Sig::Cont => Signal::CONT,
    };
    kill_process(pid, signal).is_ok()
}

#[cfg(not(unix))]
pub(crate) fn send_signal(_pid: u32, _sig: Sig) -> bool {
    false
}

/// The stdout and stderr of a new process: appended to `nats-server.stderr.log`, which is dropped
/// first once it grew past 4 MiB (it only ever holds config errors and Go panics).
pub(crate) fn open_output(files: &Files) -> Result<(std::fs::File, std::fs::File)> {
    if std::fs::metadata(&files.stderr).is_ok_and(|m| m.len() > STDERR_FILE_LIMIT) {
        let _ = std::fs::remove_file(&files.stderr);
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.stderr)
        .map_err(|e| Error::io(files.stderr.display(), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io(files.stderr.display(), e))?;
    Ok((out, err))
}

/// An explicit client port that is taken fails before anything starts, naming `nats.bind_address`
/// (nats-server would exit with a less direct message).
pub(crate) fn check_client_port(plan: &Plan) -> Result<()> {
    if let Some(port) = plan.client_port {
        let addr = plan.client.render(Some(port));
        if let Err(err) = std::net::TcpListener::bind(&addr) {
            if err.kind() == std::io::ErrorKind::AddrInUse {
                return Err(Error::transport(
                    "starting embedded nats-server",
                    format!("client port {addr} (nats.bind_address) is already in use"),
                ));
            }
        }
    }
    Ok(())
}

/// The error for a process that exited before it was ready: its status, the port it could not
/// bind when the log says so, and the last lines of its log and stderr.
pub(crate) fn exit_error(files: &Files, plan: &Plan, status: ExitStatus) -> Error {
    let log_tail = tail(&files.log, TAIL_LINES);
    let err_tail = tail(&files.stderr, TAIL_LINES);
    let output = [log_tail, err_tail]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let mut reason = format!("nats-server exited ({status}) before it was ready");
    if output.contains("address already in use") {
        let client = plan.client_port.map(|p| (p, &plan.client));
        let cluster = plan.cluster.as_ref().map(|c| (c.port, c));
        let named = [
            client.map(|(p, l)| (p, l, "client", "nats.bind_address")),
            cluster.map(|(p, l)| (p, l, "cluster", "nats.cluster_addr")),
        ];
        let mut found = false;
        for (port, listen, kind, field) in named.into_iter().flatten() {
            if output.contains(&format!(":{port}")) {
                let _ = write!(
                    reason,
                    "; {kind} port {} ({field}) is already in use",
                    listen.render(Some(port))
                );
                found = true;
            }
        }
        if !found {
            reason.push_str("; a port it needs is already in use");
        }
    }
    if !output.is_empty() {
        let _ = write!(
            reason,
            "\n--- last lines of {} ---\n{output}",
            files.log.display()
        );
    }
    Error::transport("starting embedded nats-server", reason)
}

/// A ports file without a monitoring URL: the server runs, but readiness cannot be checked.
pub(crate) fn no_monitor_error(files: &Files) -> Error {
    Error::transport(
        "starting embedded nats-server",
        format!(
            "nats-server runs without a monitoring endpoint (does nats.server_config set \
             `http_port`/`monitor_port` to 0?); it is needed to check readiness (see {})",
            files.log.display()
        ),
    )
}
