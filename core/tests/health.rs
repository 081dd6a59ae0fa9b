//! `Status::health()` tells the truth: ok only when the node can make progress, and otherwise why.

mod support;

use std::time::{Duration, Instant};

use harmonylite::HealthLimits;
use support::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);";

async fn health_until(
    node: &Node,
    limits: HealthLimits,
    what: &str,
    done: impl Fn(&harmonylite::Health) -> bool,
) -> harmonylite::Status {
    let started = Instant::now();
    loop {
        let status = node.replica().status().await.expect("status");
        if done(&status.health_with(&limits)) {
            return status;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what}: {:?}",
            status.health_with(&limits)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_node_is_ok_and_an_unreachable_server_is_named() {
    init_logging();
    let mut server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let b = Node::start(config_for(&server, 2), SCHEMA).await;
    a.exec("INSERT INTO items VALUES (1, 'x')");
    converge(&[&a, &b]).await;
    for node in [&a, &b] {
        let health = node.replica().status().await.expect("status").health();
        assert!(health.ok, "{health:?}");
        assert!(health.problems.is_empty());
    }

    server.kill();
    let limits = HealthLimits::default();
    let status = health_until(&b, limits, "the outage to show", |h| !h.ok).await;
    let health = status.health();
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.contains(&server.url()) && p.contains("cannot be reached")),
        "{health:?}"
    );
    assert!(status.nats_unreachable_ms.is_some());

    server.restart();
    health_until(&b, limits, "health after the outage", |h| h.ok).await;
    a.exec("INSERT INTO items VALUES (2, 'y')");
    converge(&[&a, &b]).await;
    assert_eq!(b.dump("items").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_opened_with_no_server_reachable_is_not_ok_and_says_where() {
    init_logging();
    let url = format!("nats://127.0.0.1:{}", free_port());
    let mut config = harmonylite::Config {
        node_id: 1,
        ..Default::default()
    };
    config.nats.urls = vec![url.clone()];
    let node = Node::start(config, SCHEMA).await;
    let status = node.replica().status().await.expect("status");
    let health = status.health();
    assert!(!health.ok);
    assert!(
        health.problems.iter().any(|p| p.contains(&url)),
        "the URL that cannot be reached is named: {health:?}"
    );
    assert!(!status.streams_ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_cannot_apply_is_reported_stuck_with_errors_rising() {
    init_logging();
    let server = NatsServer::start();
    let a = Node::start(config_for(&server, 1), SCHEMA).await;
    let mut config = config_for(&server, 2);
    config.apply.busy_timeout_ms = 100;
    let b = Node::start(config, SCHEMA).await;
    a.exec("INSERT INTO items VALUES (1, 'before')");
    converge(&[&a, &b]).await;

    // The app holds B's write lock for as long as it likes: nothing can be applied there.
    let mut holder = b.conn();
    let lock = holder
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("app takes the write lock");
    a.exec("INSERT INTO items VALUES (2, 'while locked')");
    a.sync().await;
    let limits = HealthLimits {
        max_stall: Duration::from_secs(1),
        max_errors_per_minute: 3,
    };
    let status = health_until(&b, limits, "the stall to be reported", |h| {
        h.problems.iter().any(|p| p.contains("stuck"))
            && h.problems
                .iter()
                .any(|p| p.contains("errors in the last minute"))
    })
    .await;
    let shard = &status.shards[0];
    assert!(shard.stalled_ms.is_some_and(|ms| ms >= 1000), "{shard:?}");
    assert!(!status.health_with(&limits).ok);

    lock.commit().expect("app releases the lock");
    converge(&[&a, &b]).await;
    assert_eq!(b.dump("items").len(), 2);
    let relaxed = HealthLimits {
        max_errors_per_minute: u64::MAX,
        ..limits
    };
    let status = health_until(&b, relaxed, "the stall to clear", |h| h.ok).await;
    assert_eq!(status.shards[0].stalled_ms, None);
}
