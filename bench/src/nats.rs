//! Real nats-server processes on loopback: one server, or a 3-server cluster with routes. Free ports are
//! chosen at run time, readiness is `GET /healthz` == 200 (polled, never slept for), and every process is
//! killed when its handle drops.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys::{peak_rss_mb, Ctx, Res};

pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// $HARMONYLITE_NATS_SERVER, the repository's .venv (scripts/setup.sh), then PATH.
pub fn server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HARMONYLITE_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

pub fn free_port() -> Res<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .ctx("finding a free port")
}

fn http_status_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// Polls `check` with a growing pause until it holds or `limit` passes.
pub fn poll_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Res<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !check() {
        if started.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    Ok(())
}

pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.pid().and_then(peak_rss_mb)
    }

    fn spawn(name: &str, dir: &Path, cluster: Option<(u16, Vec<u16>)>) -> Res<NatsServer> {
        std::fs::create_dir_all(dir).ctx("creating the nats-server folder")?;
        let port = free_port()?;
        let monitor_port = free_port()?;
        let cluster_block = match cluster {
            Some((listen, peers)) => format!(
                "cluster {{\n  name: bench\n  listen: 127.0.0.1:{listen}\n  routes: [{}]\n}}\n",
                peers
                    .iter()
                    .map(|p| format!("nats://127.0.0.1:{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: \"{}\" }}\n{cluster_block}",
                dir.join("js").display()
            ),
        )
        .ctx("writing the nats-server config")?;
        let log = dir.join("nats.log");
        let stderr = std::fs::File::create(&log).ctx("creating the nats-server log")?;
        let binary = server_binary();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|err| {
                format!(
                    "cannot start nats-server ({}): {err}; run scripts/setup.sh or set HARMONYLITE_NATS_SERVER",
                    binary.display()
                )
            })?;
        Ok(NatsServer {
            name: name.to_string(),
            port,
            monitor_port,
            child: Some(child),
            log,
        })
    }

    fn wait_healthy(&mut self) -> Res<()> {
        let port = self.monitor_port;
        let outcome = poll_until(&format!("{} /healthz", self.name), READY_TIMEOUT, || {
            http_status_ok(port, "/healthz")
        });
        if outcome.is_err() {
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            return Err(format!(
                "{}; log tail:\n{}",
                outcome.err().unwrap_or_default(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        Ok(())
    }

    pub fn single(dir: &Path) -> Res<NatsServer> {
        let mut server = NatsServer::spawn("bench-single", dir, None)?;
        server.wait_healthy()?;
        Ok(server)
    }

    /// Three servers routed to each other; returns once each one reports healthy (JetStream meta leader
    /// elected, which `/healthz` checks when clustered).
    pub fn cluster(dir: &Path, size: usize) -> Res<Vec<NatsServer>> {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect::<Res<_>>()?;
        let mut servers = Vec::new();
        for i in 0..size {
            let peers = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            servers.push(NatsServer::spawn(
                &format!("bench-c{}", i + 1),
                &dir.join(format!("s{}", i + 1)),
                Some((routes[i], peers)),
            )?);
        }
        for server in &mut servers {
            server.wait_healthy()?;
        }
        Ok(servers)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
