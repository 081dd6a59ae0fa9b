//! Real nats-server processes on loopback: one server, or a cluster with routes, started through the
//! project's launcher (`harmonylite-nats`): client and monitoring ports picked by nats-server itself,
//! readiness polled (never slept for), and every process killed when its handle drops.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harmonylite_nats::{EmbeddedOptions, NatsProcess, ProcessOptions};

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

/// A route port, which the peers must know before the servers start.
fn route_port() -> Res<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .ctx("finding a free port")
}

pub struct NatsServer {
    pub name: String,
    process: Option<NatsProcess>,
}

impl NatsServer {
    pub fn url(&self) -> String {
        self.process
            .as_ref()
            .map(NatsProcess::client_url)
            .unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(NatsProcess::pid)
    }

    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.pid().and_then(peak_rss_mb)
    }

    fn spawn(name: &str, dir: &Path, cluster: Option<(u16, Vec<u16>)>) -> Res<NatsServer> {
        let (cluster_addr, cluster_peers) = match cluster {
            Some((listen, peers)) => (
                format!("127.0.0.1:{listen}"),
                peers
                    .iter()
                    .map(|p| format!("nats://127.0.0.1:{p}"))
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        let binary = server_binary();
        let process = NatsProcess::start(&ProcessOptions {
            server: EmbeddedOptions {
                binary: Some(binary.clone()),
                store_dir: dir.to_path_buf(),
                server_name: name.to_string(),
                cluster_name: "bench".into(),
                cluster_addr,
                cluster_peers,
                ..EmbeddedOptions::default()
            },
            ready_timeout: READY_TIMEOUT,
            ..ProcessOptions::default()
        })
        .map_err(|err| {
            format!(
                "cannot start nats-server {name} ({}): {err}; run scripts/setup.sh or set HARMONYLITE_NATS_SERVER",
                binary.display()
            )
        })?;
        Ok(NatsServer {
            name: name.to_string(),
            process: Some(process),
        })
    }

    /// Full `/healthz`: when clustered, a JetStream meta leader is elected too.
    fn wait_healthy(&mut self) -> Res<()> {
        match self.process.as_mut() {
            Some(process) => process
                .wait_healthy(READY_TIMEOUT)
                .map_err(|err| format!("{}: {err}", self.name)),
            None => Err(format!("{} is not running", self.name)),
        }
    }

    pub fn single(dir: &Path) -> Res<NatsServer> {
        let mut server = NatsServer::spawn("bench-single", dir, None)?;
        server.wait_healthy()?;
        Ok(server)
    }

    /// Servers routed to each other; returns once each one reports healthy (JetStream meta leader
    /// elected, which `/healthz` checks when clustered).
    pub fn cluster(dir: &Path, size: usize) -> Res<Vec<NatsServer>> {
        let routes: Vec<u16> = (0..size).map(|_| route_port()).collect::<Res<_>>()?;
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
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
