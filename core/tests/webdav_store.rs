//! The WebDAV snapshot store against a real WebDAV server: `wsgidav` (PyPI, on the cheroot HTTP server)
//! started on loopback for each test, on a port the server picks; each is stopped by its guard.
//!
//! Python with wsgidav is found at $HARMONYLITE_WSGIDAV_PYTHON, then the repository's .venv
//! (scripts/setup.sh installs it). Without it these tests fail and say how to install it.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harmonylite::config::{SnapshotWebdavConfig, StoreKind};
use harmonylite::snapshot::stores::webdav::WebDavStore;
use harmonylite::snapshot::stores::HttpOptions;
use harmonylite::snapshot::SnapshotStore;
use harmonylite::Error;

const INSTALL_HINT: &str = "install it with `pip install wsgidav==4.4.0 cheroot==11.1.2` (scripts/setup.sh \
                            puts both into .venv), or point HARMONYLITE_WSGIDAV_PYTHON at a Python that has them";

const USER: &str = "snapper";
const PASSWORD: &str = "s3cret&more";

/// Serves `root` over WebDAV with one basic-auth user, on a port the OS picks; prints the port once it
/// listens.
const SERVER: &str = r#"
import sys
from cheroot import wsgi
from wsgidav.wsgidav_app import WsgiDAVApp
root, user, password = sys.argv[1:4]
app = WsgiDAVApp({
    "provider_mapping": {"/": root},
    "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
    "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
    "verbose": 1,
    "logging": {"enable": False},
})
server = wsgi.Server(("127.0.0.1", 0), app)
server.prepare()
print(server.bind_addr[1], flush=True)
server.serve()
"#;

fn python() -> PathBuf {
    if let Ok(path) = std::env::var("HARMONYLITE_WSGIDAV_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "no Python with wsgidav (looked at $HARMONYLITE_WSGIDAV_PYTHON and {}): {INSTALL_HINT}",
        venv.display()
    );
}

/// A wsgidav child process serving its own temp folder, killed on drop.
struct WsgiDav {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

impl WsgiDav {
    fn start() -> WsgiDav {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut child = Command::new(python())
            .args(["-c", SERVER])
            .arg(root.path())
            .args([USER, PASSWORD])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start wsgidav: {err}; {INSTALL_HINT}"));
        let stdout = child.stdout.take().expect("wsgidav stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("wsgidav did not report its port within 60 s; {INSTALL_HINT}");
            }
        };
        let port: u16 = match line.trim().parse() {
            Ok(port) => port,
            Err(_) => {
                let status = child.wait();
                panic!("wsgidav exited ({status:?}) without a port; {INSTALL_HINT}");
            }
        };
        let server = WsgiDav { child, port, root };
        server.wait_ready();
        server
    }

    /// Ready when it answers HTTP (the socket listens before the port is printed; the answer shows the
    /// WSGI app is up too). Any status counts, 401 included.
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let answered = TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream.write_all(b"OPTIONS / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
                let mut head = [0u8; 5];
                stream.read_exact(&mut head)?;
                Ok(&head == b"HTTP/")
            });
            if answered.unwrap_or(false) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "wsgidav on port {} did not answer within 60 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// HarmonyLite's URL form: folder in `dir`, credentials in the query.
    fn url(&self, dir: &str) -> String {
        format!(
            "{}/dav?dir={dir}&login={USER}&secret={}",
            self.origin(),
            PASSWORD.replace('&', "%26")
        )
    }
}

impl Drop for WsgiDav {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: String) -> SnapshotWebdavConfig {
    SnapshotWebdavConfig {
        url,
        ..SnapshotWebdavConfig::default()
    }
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn objects_round_trip_through_a_webdav_folder() -> harmonylite::Result<()> {
    let server = WsgiDav::start();
    let store = WebDavStore::from_config(&config(server.url("/snapshots/cluster-a")))?;
    assert_eq!(store.prefix(), "dav/snapshots/cluster-a/");
    assert!(!store.describe().contains(PASSWORD), "{}", store.describe());

    // Missing folder: nothing stored, nothing to delete.
    assert_eq!(store.get("latest.json").await?, None);
    assert_eq!(store.list("").await?, Vec::<String>::new());
    store.delete("latest.json").await?;

    // The first upload creates the folders (MKCOL).
    store.put("latest.json", b"pointer".to_vec()).await?;
    store.put("snapshot-1.json", b"one".to_vec()).await?;
    store.put("empty", Vec::new()).await?;
    assert_eq!(store.get("latest.json").await?, Some(b"pointer".to_vec()));
    assert_eq!(store.get("empty").await?, Some(Vec::new()));
    store.put("latest.json", b"replaced".to_vec()).await?;
    assert_eq!(store.get("latest.json").await?, Some(b"replaced".to_vec()));
    assert_eq!(
        sorted(store.list("").await?),
        vec!["empty", "latest.json", "snapshot-1.json"]
    );
    assert_eq!(store.list("snap").await?, vec!["snapshot-1.json"]);
    // On the server: the objects under the folder, and no temporary upload left behind.
    let on_disk = server.root.path().join("dav/snapshots/cluster-a");
    let mut names: Vec<String> = std::fs::read_dir(&on_disk)
        .expect("the store folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, vec!["empty", "latest.json", "snapshot-1.json"]);
    assert_eq!(
        std::fs::read(on_disk.join("latest.json")).expect("file"),
        b"replaced"
    );

    // Files: up and down; larger than one part, so the body streams from the file.
    let dir = tempfile::tempdir().expect("a temp dir");
    let (source, dest) = (dir.path().join("source"), dir.path().join("dest"));
    let data = pattern((9 << 20) + 5, 7);
    std::fs::write(&source, &data).expect("write");
    store.put_file("snapshot-1.db.zst", &source).await?;
    assert!(store.get_file("snapshot-1.db.zst", &dest).await?);
    assert!(std::fs::read(&dest).expect("read") == data);
    assert!(
        std::fs::read_dir(&on_disk)
            .expect("the store folder")
            .all(|entry| !entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .starts_with('.')),
        "a temporary upload was left behind"
    );
    let untouched = dir.path().join("untouched");
    assert!(!store.get_file("missing", &untouched).await?);
    assert!(!untouched.exists());

    store.delete("snapshot-1.json").await?;
    store.delete("snapshot-1.json").await?;
    assert_eq!(
        sorted(store.list("").await?),
        vec!["empty", "latest.json", "snapshot-1.db.zst"]
    );
    Ok(())
}

fn assert_names_url(result: harmonylite::Result<impl std::fmt::Debug>, origin: &str) {
    match result {
        Err(Error::Snapshot(text)) => {
            assert!(text.contains(origin), "URL missing from: {text}");
            assert!(!text.contains(PASSWORD), "the secret leaked into: {text}");
        }
        other => panic!("expected a snapshot error naming {origin}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_credentials_and_unreachable_servers_are_errors_naming_the_url() {
    let server = WsgiDav::start();
    let mut wrong = config(format!("{}/dav", server.origin()));
    wrong.login = USER.into();
    wrong.secret = "not-the-password".into();
    let store = WebDavStore::from_config(&wrong).expect("a valid configuration");
    let err = store.put("k", b"v".to_vec()).await;
    if let Err(err) = &err {
        eprintln!("{err}");
        assert!(err.to_string().contains("401"), "{err}");
    }
    assert_names_url(err, &server.origin());
    assert_names_url(store.get("k").await, &server.origin());
    assert_names_url(store.list("").await, &server.origin());

    let anonymous = WebDavStore::from_config(&config(format!("{}/dav", server.origin())))
        .expect("a valid configuration");
    let err = anonymous.put("k", b"v".to_vec()).await;
    if let Err(err) = &err {
        eprintln!("{err}");
        assert!(err.to_string().contains("no login was given"), "{err}");
    }
    assert_names_url(err, &server.origin());

    let port = support::free_port(); // nothing listens there
    let origin = format!("http://127.0.0.1:{port}");
    let options = HttpOptions {
        attempts: 2,
        retry_backoff: Duration::from_millis(20),
        ..HttpOptions::default()
    };
    let nowhere = WebDavStore::from_config_with(&config(format!("{origin}/dav")), options)
        .expect("a valid configuration");
    let started = Instant::now();
    assert_names_url(nowhere.put("k", b"v".to_vec()).await, &origin);
    assert_names_url(nowhere.get("k").await, &origin);
    assert_names_url(nowhere.list("").await, &origin);
    assert!(started.elapsed() < Duration::from_secs(10));

    match WebDavStore::from_config(&config("ftp://127.0.0.1/x".into())) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "snapshot.webdav.url"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// End to end through the replica: a snapshot saved to WebDAV bootstraps a node whose database does not
/// exist, and the two converge on later writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_saves_to_webdav_and_a_new_node_restores_from_it() {
    support::init_logging();
    let server = WsgiDav::start();
    let nats = support::NatsServer::start();
    let with_webdav = |id| {
        let mut cfg = support::config_for(&nats, id);
        cfg.snapshot.store = StoreKind::Webdav;
        cfg.snapshot.webdav = config(server.url("/e2e"));
        cfg
    };
    let a = support::Node::start(
        with_webdav(1),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .await;
    a.conn()
        .execute("INSERT INTO t VALUES (1, ?1)", [pattern(100_000, 3)])
        .expect("insert");
    let manifest = a
        .replica()
        .save_snapshot()
        .await
        .expect("save")
        .expect("lease");
    let listed = sorted(
        WebDavStore::from_config(&config(server.url("/e2e")))
            .expect("store")
            .list("")
            .await
            .expect("list"),
    );
    assert!(
        listed.contains(&manifest.object) && listed.contains(&"latest.json".to_string()),
        "{listed:?}"
    );

    let b = support::Node::start_without_database(with_webdav(2)).await;
    assert_eq!(b.dump("t"), a.dump("t"));
    assert_eq!(
        b.replica()
            .status()
            .await
            .expect("status")
            .snapshot
            .restored
            .as_deref(),
        Some(manifest.object.as_str())
    );

    // Replication goes on from the snapshot's positions, both ways.
    a.exec("INSERT INTO t VALUES (2, x'02')");
    b.exec("INSERT INTO t VALUES (3, x'03')");
    support::converge(&[&a, &b]).await;
    support::assert_same(&[&a, &b], &["t"]);
    assert_eq!(b.dump("t").len(), 3);
}
