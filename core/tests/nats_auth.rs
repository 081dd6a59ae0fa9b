//! External NATS with credentials: user/password, token, nkey seed file, and TLS with a private CA.

mod support;

use std::process::Command;

use harmonylite::ErrorCode;
use support::*;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";

async fn replicates_with(server: &NatsServer, configure: impl Fn(&mut harmonylite::Config)) {
    let mut configs = Vec::new();
    for id in [1, 2] {
        let mut config = config_for(server, id);
        configure(&mut config);
        configs.push(config);
    }
    let a = Node::start(configs[0].clone(), SCHEMA).await;
    let b = Node::start(configs[1].clone(), SCHEMA).await;
    a.exec("INSERT INTO t VALUES (1, 'authenticated')");
    converge(&[&a, &b]).await;
    assert_eq!(b.dump("t").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_token() {
    init_logging();
    let server = NatsServer::start_with(|_| "authorization { user: app, password: s3cret }".into());
    replicates_with(&server, |c| {
        c.nats.user_name = "app".into();
        c.nats.user_password = "s3cret".into();
    })
    .await;
    let server = NatsServer::start_with(|_| "authorization { token: t0ken }".into());
    replicates_with(&server, |c| c.nats.token = "t0ken".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_file() {
    init_logging();
    let user = nkeys::KeyPair::new_user();
    let public = user.public_key();
    let seed = user.seed().expect("seed");
    let server =
        NatsServer::start_with(|_| format!("authorization {{ users = [ {{ nkey: {public} }} ] }}"));
    let seed_file = server.dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).expect("seed file");
    replicates_with(&server, |c| {
        c.nats.seed_file = seed_file.display().to_string()
    })
    .await;
    // A missing seed file is a config error naming the key.
    let mut config = config_for(&server, 3);
    config.nats.seed_file = "/nonexistent/user.nk".into();
    let dir = tempfile::tempdir().expect("dir");
    let err = harmonylite::open_replicated(dir.path().join("x.db"), config)
        .await
        .expect_err("missing seed");
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.to_string().contains("nats.seed_file"), "{err}");
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates() {
    init_logging();
    let certs = tempfile::tempdir().expect("dir");
    let dir = certs.path();
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hl-test-ca",
        ],
    );
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
    }
    let path = |f: &str| dir.join(f).display().to_string();
    let server = NatsServer::start_with(|_| {
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}",
            path("server.pem"),
            path("server.key"),
            path("ca.pem")
        )
    });
    replicates_with(&server, |c| {
        c.nats.urls = vec![format!("tls://127.0.0.1:{}", server.port)];
        c.nats.ca_file = path("ca.pem");
        c.nats.cert_file = path("client.pem");
        c.nats.key_file = path("client.key");
    })
    .await;
}
