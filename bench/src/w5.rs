//! W5, bootstrap: a new node joins a cluster whose database is large, restores the newest snapshot and
//! catches up with the changes made after it.
//!
//! A fills its database (rows of about 1 KB, transactions of 1,000 rows, replication live, stream retention
//! bounded by `replication_log.max_bytes` so the stream alone cannot rebuild the node), saves a snapshot
//! (the default NATS object store), then writes a tail of further rows. Node D starts on a missing file:
//! `open_replicated` restores the snapshot, then the consumer replays the tail. Figures: spawn → open
//! returned (restore), spawn → D applied A's token (live), per GB of database; D's rows are then compared
//! with A's. The snapshot steps (download, verify, stage, integrity check, replace) come from D's log,
//! where the engine writes each step's duration.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::nats::NatsServer;
use crate::node::{node_config, NodeProc, Setup};
use crate::stats::{round, Summary};
use crate::sys::{mono_ns, Ctx, Res};
use crate::w3::verify_same;
use crate::workload;

pub struct Params {
    /// Rows in the database when the snapshot is taken.
    pub rows: usize,
    /// Rows written after the snapshot, which D replays from the stream.
    pub tail_rows: usize,
    pub body_len: usize,
    pub reps: usize,
}

const LONG: Duration = Duration::from_secs(1800);
const GB: f64 = 1e9;
/// Stream retention during W5: far below the database size, as in a long-running cluster.
const STREAM_MAX_BYTES: u64 = 128 << 20;

struct Measured {
    db_bytes: u64,
    restore_s: f64,
    live_s: f64,
    details: Value,
}

fn nanos_to_s(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}

/// `step="download" elapsed_ms=123` lines the engine logs for each snapshot step, in order.
fn snapshot_steps(log: &Path) -> Value {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut steps = Vec::new();
    for line in text.lines().filter(|l| l.contains("snapshot step done")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('"').to_string())
        };
        if let (Some(step), Some(ms)) = (field("step"), field("elapsed_ms")) {
            if let Ok(ms) = ms.parse::<u64>() {
                steps.push(json!({"step": step, "s": round(ms as f64 / 1e3)}));
            }
        }
    }
    Value::Array(steps)
}

fn one_run(root: &Path, params: &Params, prefix: &str) -> Res<Measured> {
    let server = NatsServer::single(&root.join(format!("{prefix}-nats")))?;
    let urls = vec![server.url()];
    let with_retention = |node_id: u64| {
        let mut config = node_config(node_id, &urls, prefix, &Setup::replicas(1));
        config["replication_log"]["max_bytes"] = json!(STREAM_MAX_BYTES);
        config
    };

    let dir_a = root.join(format!("{prefix}-A"));
    std::fs::create_dir_all(&dir_a).ctx("creating A's folder")?;
    let db_a = dir_a.join("app.db");
    workload::app_connection(&db_a)?
        .execute_batch(workload::SCHEMA)
        .ctx("creating the benchmark table")?;
    let mut a = NodeProc::start("A", &db_a, &with_retention(1), &dir_a.join("node.log"))?;

    let fill_started = mono_ns();
    a.request(
        json!({"cmd": "write_bulk", "start": 1, "count": params.rows, "tx_rows": 1000,
               "body_len": params.body_len}),
        LONG,
    )?;
    a.request(json!({"cmd": "sync"}), LONG)?;
    let filled = mono_ns();
    let snapshot = a.request(json!({"cmd": "save_snapshot"}), LONG)?;
    let save_s = nanos_to_s(
        snapshot["start_ns"].as_u64().unwrap_or(0),
        snapshot["done_ns"].as_u64().unwrap_or(0),
    );
    let a_save_rss = a.peak_rss_mb();

    let tail_start = 1 + params.rows as i64;
    a.request(
        json!({"cmd": "write_bulk", "start": tail_start, "count": params.tail_rows,
               "tx_rows": 1000, "body_len": params.body_len}),
        LONG,
    )?;
    let token = a.request(json!({"cmd": "sync"}), LONG)?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let dir_d = root.join(format!("{prefix}-D"));
    std::fs::create_dir_all(&dir_d).ctx("creating D's folder")?;
    let db_d = dir_d.join("app.db");
    let spawned = mono_ns();
    let mut d = NodeProc::start("D", &db_d, &with_retention(4), &dir_d.join("node.log"))?;
    let opened = d.ready["opened_ns"].as_u64().unwrap_or(spawned);
    let live = d.request(
        json!({"cmd": "wait", "token": token, "timeout_s": LONG.as_secs()}),
        LONG,
    )?["done_ns"]
        .as_u64()
        .unwrap_or(0);
    let d_rss = d.peak_rss_mb();
    let status = d.request(json!({"cmd": "status"}), LONG)?["status"].clone();
    if status["snapshot"]["restored"].is_null() {
        return Err(format!(
            "D did not restore a snapshot (it replayed the stream instead): {}",
            status["snapshot"]
        ));
    }
    verify_same(
        &mut a,
        &mut [&mut d],
        1,
        tail_start + params.tail_rows as i64,
    )?;
    let db_bytes = snapshot["raw_bytes"].as_u64().unwrap_or(0);
    let restore_s = nanos_to_s(spawned, opened);
    let live_s = nanos_to_s(spawned, live);
    let details = json!({
        "rows": params.rows,
        "tail_rows": params.tail_rows,
        "db_bytes": db_bytes,
        "snapshot_bytes": snapshot["bytes"],
        "fill_rows_per_s": round(params.rows as f64 / nanos_to_s(fill_started, filled)),
        "save_s": round(save_s),
        "restore_s": round(restore_s),
        "tail_replay_s": round(live_s - restore_s),
        "live_s": round(live_s),
        "d_steps": snapshot_steps(&dir_d.join("node.log")),
        "a_steps": snapshot_steps(&dir_a.join("node.log")),
        "a_peak_rss_mb": a_save_rss.map(round),
        "d_peak_rss_mb": d_rss.map(round),
        "d_status": {"applied_rows": status["applied_rows"], "errors": status["errors"],
                     "last_error": status["last_error"], "restored": status["snapshot"]["restored"]},
    });
    d.close().ctx("closing D")?;
    a.close().ctx("closing A")?;
    Ok(Measured {
        db_bytes,
        restore_s,
        live_s,
        details,
    })
}

pub fn run(root: &Path, params: &Params) -> Res<Value> {
    let mut measured = Vec::new();
    for rep in 0..params.reps {
        measured.push(one_run(root, params, &format!("w5-{rep}"))?);
    }
    let summary =
        |f: fn(&Measured) -> f64| Summary::of(&measured.iter().map(f).collect::<Vec<_>>()).json();
    Ok(json!({
        "status": "ok",
        "rows": params.rows,
        "tail_rows": params.tail_rows,
        "body_len": params.body_len,
        "repetitions": params.reps,
        "stream_max_bytes": STREAM_MAX_BYTES,
        "db_gb": summary(|m| m.db_bytes as f64 / GB),
        "restore_s": summary(|m| m.restore_s),
        "live_s": summary(|m| m.live_s),
        "restore_s_per_gb": summary(|m| m.restore_s / (m.db_bytes as f64 / GB)),
        "live_s_per_gb": summary(|m| m.live_s / (m.db_bytes as f64 / GB)),
        "runs": measured.iter().map(|m| m.details.clone()).collect::<Vec<_>>(),
    }))
}
