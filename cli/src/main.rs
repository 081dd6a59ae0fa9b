//! `harmonylite`: the sidecar. Replicates a SQLite file that other processes write, with HarmonyLite's
//! flags and config file, Prometheus metrics, a health endpoint, and a graceful stop on SIGTERM/SIGINT.

mod args;
mod http;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures::FutureExt;

use harmonylite::{Config, ConnectionState, ErrorCode, Replica};
use tracing::{error, info};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn version_text() -> String {
    format!(
        "harmonylite {} (commit {}, {}, HarmonyLite-compatible sidecar)",
        env!("CARGO_PKG_VERSION"),
        env!("HARMONYLITE_GIT_COMMIT"),
        env!("HARMONYLITE_TARGET")
    )
}

/// The configuration after the file and the flags; errors name the flag or key.
fn load_config(args: &args::Args) -> Result<(Config, PathBuf), String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|err| err.to_string())?,
        None => Config::default(),
    };
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(addr) = &args.cluster_addr {
        config.nats.cluster_addr = addr.clone();
    }
    if let Some(peers) = &args.cluster_peers {
        config.nats.cluster_peers = peers.clone();
    }
    if let Some(leaves) = &args.leaf_servers {
        config.nats.leaf_servers = leaves.clone();
    }
    config.validate().map_err(|err| err.to_string())?;
    let db = match (&args.db, &config.db_path) {
        (Some(db), _) => db.clone(),
        (None, Some(db)) => PathBuf::from(db),
        (None, None) => {
            return Err("no database: set db_path in the config file or pass -db <path>".into())
        }
    };
    // A missing file is fine when snapshots are on: the node rebuilds itself from the newest snapshot.
    if !db.is_file() && !config.snapshot.enabled {
        return Err(format!(
            "db_path `{}` does not exist; create it first, or enable [snapshot] to bootstrap it from a snapshot",
            db.display()
        ));
    }
    if let Some(dir) = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        return Err(format!(
            "db_path `{}`: directory `{}` does not exist",
            db.display(),
            dir.display()
        ));
    }
    Ok((config, db))
}

fn init_logging(config: &Config) {
    // async-nats reports each failed connection attempt as "IO error" at info; the stream keeper's warning
    // names the URL that cannot be reached instead.
    let default = if config.logging.verbose {
        "debug"
    } else {
        "info,async_nats=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HARMONYLITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if config.logging.format == "json" {
        builder.json().with_writer(std::io::stdout).try_init()
    } else {
        // Colours only on a terminal: a log redirected to a file or a journal stays plain text.
        let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
        builder
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .try_init()
    };
}

/// 200 only when the node can make progress (`Status::health`); otherwise 503 with the reasons.
fn health_body(status: &harmonylite::Status, detailed: bool) -> (u16, String) {
    let health = status.health();
    let code = if health.ok { 200 } else { 503 };
    let verdict = if health.ok { "ok" } else { "unhealthy" };
    let body = if detailed {
        serde_json::json!({
            "status": verdict,
            "problems": health.problems,
            "node_id": status.node_id,
            "uptime_ms": status.uptime_ms,
            "db": status.db_path,
            "nats": {
                "connected": status.connection == ConnectionState::Connected,
                "state": status.connection,
                "unreachable_ms": status.nats_unreachable_ms,
                "streams_ready": status.streams_ready,
                "missing_streams": status.missing_streams,
                "urls": status.nats_urls,
                "embedded": status.embedded_server,
            },
            "capture": {
                "publish": status.publish,
                "replicate": status.replicate,
                "tables": status.replicated_tables,
                "pending_changes": status.pending_changes,
                "unsent_rows": status.unsent_rows,
                "paused_tables": status.paused_tables,
            },
            "positions": status.shards,
            "behind_retention": status.behind_retention,
            "broker_data_loss": status.broker_data_loss,
            "divergent_tables": status.divergent_tables,
            "divergence_comparisons": status.divergence_comparisons,
            "last_publish_ms": status.last_publish_ms,
            "last_apply_ms": status.last_apply_ms,
            "dead_lettered": status.dead_lettered,
            "errors": status.errors,
            "errors_last_minute": status.errors_last_minute,
            "last_error": status.last_error,
        })
    } else {
        serde_json::json!({ "status": verdict, "problems": health.problems })
    };
    (code, body.to_string())
}

async fn start_endpoints(replica: &Replica, config: &Config) -> Result<(), harmonylite::Error> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;

    let bind_error = |field: &str, reason: String| harmonylite::Error::Config {
        field: field.to_string(),
        reason,
    };
    if config.prometheus.enable {
        let metrics = {
            let replica = replica.clone();
            move || async move {
                match replica.metrics().await {
                    Ok(text) => (
                        [(header::CONTENT_TYPE, harmonylite::METRICS_CONTENT_TYPE)],
                        text,
                    )
                        .into_response(),
                    Err(err) => {
                        (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")).into_response()
                    }
                }
            }
        };
        let routes = axum::Router::new()
            .route("/metrics", get(metrics.clone()))
            .route("/", get(metrics))
            .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") });
        let address = http::serve("prometheus metrics", &config.prometheus.bind, routes)
            .await
            .map_err(|err| bind_error("prometheus.bind", err))?;
        info!(%address, "metrics at /metrics");
    }
    if config.health_check.enable {
        let health_path = config.health_check.path.clone();
        if !health_path.starts_with('/') {
            return Err(bind_error(
                "health_check.path",
                format!("`{health_path}` is not a path (it must start with `/`, like `/health`)"),
            ));
        }
        let detailed = config.health_check.detailed;
        let health = {
            let replica = replica.clone();
            move || async move {
                // A status at most a second old: a probe every few milliseconds costs one a second.
                let (code, body) = match replica.recent_status().await {
                    Ok(status) => health_body(&status, detailed),
                    Err(err) => (
                        503,
                        serde_json::json!({"status": "unhealthy", "error": err.to_string()})
                            .to_string(),
                    ),
                };
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
        };
        let hint = format!("try {health_path}\n");
        let routes = axum::Router::new()
            .route(&health_path, get(health))
            .fallback(move || async move { (StatusCode::NOT_FOUND, hint).into_response() });
        let address = http::serve("health check", &config.health_check.bind, routes)
            .await
            .map_err(|err| bind_error("health_check.bind", err))?;
        info!(%address, path = %config.health_check.path, "health check");
    }
    Ok(())
}

/// Resolves when SIGTERM or SIGINT arrives, or after `sleep_timeout` ms without replication activity.
async fn stop_signal(replica: &Replica, sleep_timeout: u64) -> &'static str {
    let idle = async {
        if sleep_timeout == 0 {
            return std::future::pending::<&'static str>().await;
        }
        let limit = Duration::from_millis(sleep_timeout);
        let mut last_seen = (0u64, 0u64);
        let mut idle_since = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500).min(limit)).await;
            // The status /metrics and /health share (at most a second old): no status of its own.
            if let Ok(status) = replica.recent_status().await {
                let activity = (status.published_rows, status.applied_rows);
                if activity != last_seen {
                    last_seen = activity;
                    idle_since = std::time::Instant::now();
                }
            }
            if idle_since.elapsed() >= limit {
                return "sleep_timeout reached";
            }
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return "signal handlers unavailable";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            reason = idle => reason,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupt",
            reason = idle => reason,
        }
    }
}

async fn run(db: PathBuf, config: Config) -> Result<(), harmonylite::Error> {
    let replica = harmonylite::open_replicated(&db, config.clone()).await?;
    if let Err(err) = start_endpoints(&replica, &config).await {
        let _ = replica.close().await;
        return Err(err);
    }
    match replica.role() {
        harmonylite::ReplicaRole::Active => {
            info!(node_id = replica.node_id(), db = %db.display(), nats = ?replica.nats_urls(), "replicating")
        }
        // Another process replicates this file (ADR 0010): stand by and take over when it goes away.
        harmonylite::ReplicaRole::Attached => {
            info!(node_id = replica.node_id(), db = %db.display(), "standing by: another process replicates this database")
        }
    }
    let reason = stop_signal(&replica, config.sleep_timeout).await;
    info!(
        reason,
        "stopping: committing in-flight batches and publishing what is pending"
    );
    replica.close().await?;
    info!("stopped");
    Ok(())
}

/// `-save-snapshot`: open, publish what is pending, save a snapshot (if this node gets the lease), close.
async fn save_snapshot(db: PathBuf, config: Config) -> Result<(), harmonylite::Error> {
    let replica = harmonylite::open_replicated(&db, config).await?;
    replica.wait_ready(Duration::from_secs(60)).await?;
    let saved = replica.save_snapshot().await;
    replica.close().await?;
    match saved? {
        Some(manifest) => println!(
            "snapshot saved: {} ({} bytes, positions {:?})",
            manifest.object, manifest.bytes, manifest.positions
        ),
        None => println!("snapshot skipped: another node holds the snapshot lease"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("harmonylite: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.help {
        println!("{}", args::USAGE);
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("{}", version_text());
        return ExitCode::SUCCESS;
    }
    let (config, db) = match load_config(&args) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("harmonylite: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&config);
    if args.cleanup {
        return match harmonylite::cleanup_database(&db) {
            Ok(removed) => {
                println!(
                    "removed {removed} HarmonyLite objects from {}",
                    db.display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("harmonylite: cleanup failed: {err}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    let task = if args.save_snapshot {
        save_snapshot(db, config).boxed()
    } else {
        run(db, config).boxed()
    };
    match harmonylite::runtime().block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %err, "harmonylite stopped with an error");
            eprintln!("harmonylite: {err}");
            if err.code() == ErrorCode::Config {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}
