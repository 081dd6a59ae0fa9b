//! The sidecar's `/health` answers 200 only when the node can make progress: with NATS unreachable it
//! answers 503 and the log names the URL; after the server lost its store it reports the loss, and answers
//! 200 again once this node has published its rows again.

#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT);";

struct Sidecar {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sidecar {
    fn start(node_id: u64, url: &str) -> Sidecar {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("app.db");
        app_connection(&db).execute_batch(SCHEMA).expect("schema");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "db_path = \"{}\"\nnode_id = {node_id}\n\n[nats]\nurls = [\"{url}\"]\n\n[health_check]\nenable = true\nbind = \"127.0.0.1:0\"\npath = \"/health\"\n",
                db.display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("sidecar.log")).expect("log");
        let child = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_harmonylite")))
            .arg("-config")
            .arg(&config)
            .env("HARMONYLITE_LOG", "harmonylite=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start harmonylite");
        Sidecar {
            dir,
            child: Some(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// Polls `/health` until it answers `code` with a body satisfying `check`; returns the body.
    fn health_until(
        &self,
        code: u16,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = None;
        let started = std::time::Instant::now();
        loop {
            // The endpoint binds port 0; its port is in the log once it listens.
            let port = served_port(&self.log(), "health check");
            if let Some((got, body)) = port.and_then(|port| http_get(port, "/health")) {
                let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if got == code && check(&parsed) {
                    return parsed;
                }
                last = Some((got, body));
            }
            assert!(
                started.elapsed() < WAIT,
                "/health never answered {code} as expected; last {last:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

fn problems_mention(health: &serde_json::Value, text: &str) -> bool {
    health["problems"].as_array().is_some_and(|problems| {
        problems
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains(text)))
    })
}

#[test]
fn health_is_503_naming_an_unreachable_nats_and_reports_a_lost_store_until_repaired() {
    let mut server = NatsServer::start();
    let url = server.url();
    server.kill();
    let node = Sidecar::start(21, &url);

    // Nobody answers at the URL: 503 naming it, and the log says which URL cannot be reached.
    let health = node.health_until(503, |h| problems_mention(h, &url));
    assert_eq!(health["status"], "unhealthy");
    wait_until("the log to name the unreachable URL", || {
        node.log()
            .lines()
            .any(|line| line.contains("cannot reach NATS at") && line.contains(&url))
    });
    assert!(
        !node.log().contains("jetstream request timed out"),
        "the log repeats a timeout instead of naming the server:\n{}",
        node.log()
    );

    server.start_again();
    let health = node.health_until(200, |h| h["status"] == "ok");
    assert_eq!(health["problems"], serde_json::json!([]));

    // The server comes back without its store: the loss is detected and named, the position reset, and this
    // node's rows published again (until then /health is 503 naming the stream); repaired, the node is
    // healthy again and the loss stays listed.
    server.restart_with_store_wiped();
    let health = node.health_until(200, |h| {
        h["status"] == "ok"
            && h["broker_data_loss"].as_array().is_some_and(|losses| {
                losses.iter().any(|l| {
                    l["stream"] == "harmonylite-changes-0"
                        && l["position_reset"] == true
                        && l["republished_rows"].is_u64()
                })
            })
    });
    assert_eq!(health["problems"], serde_json::json!([]), "{health}");
    assert!(
        node.log()
            .contains("broker data loss on stream harmonylite-changes-0"),
        "{}",
        node.log()
    );
}
