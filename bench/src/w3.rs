//! W3, throughput: node A inserts N rows as fast as it can in transactions of 1, 100 and 1,000 rows while
//! its replica runs; then A's sync token, and B and C wait for it. Figures: A's commit rate (rows/s with
//! replication live) and end to end rows/s (first write on A → both B and C applied everything; their
//! checksums are then compared with A's). Beside it, raw JetStream throughput with the same message size,
//! against the same server, in the same run.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::nats::NatsServer;
use crate::node::{start_three, NodeProc, Setup};
use crate::raw;
use crate::stats::{round, Summary};
use crate::sys::{Ctx, Res};

pub struct Params {
    pub rows: usize,
    pub tx_sizes: Vec<usize>,
    pub reps: usize,
    pub raw_count: usize,
    pub raw_sequential: usize,
    pub payload: usize,
}

const LONG: Duration = Duration::from_secs(600);

pub struct Converged {
    pub write_s: f64,
    pub end_to_end_s: f64,
}

/// Writes on A (or only syncs, when `count` is 0), then waits until every other node applied A's token,
/// and checks that every node holds the same rows in `[start, start + count)`.
pub fn write_and_converge(
    a: &mut NodeProc,
    others: &mut [&mut NodeProc],
    start: i64,
    count: usize,
    tx_rows: usize,
) -> Res<Converged> {
    let written = a.request(
        json!({"cmd": "write_bulk", "start": start, "count": count, "tx_rows": tx_rows}),
        LONG,
    )?;
    let begun = written["start_ns"].as_u64().unwrap_or(0);
    let ended = written["end_ns"].as_u64().unwrap_or(0);
    let token = a.request(json!({"cmd": "sync"}), LONG)?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for node in others.iter_mut() {
        node.send(&json!({"cmd": "wait", "token": token, "timeout_s": LONG.as_secs()}))?;
    }
    let mut done = 0u64;
    for node in others.iter_mut() {
        done = done.max(node.recv(LONG)?["done_ns"].as_u64().unwrap_or(0));
    }
    verify_same(a, others, start, start + count as i64)?;
    Ok(Converged {
        write_s: ended.saturating_sub(begun) as f64 / 1e9,
        end_to_end_s: done.saturating_sub(begun) as f64 / 1e9,
    })
}

pub fn verify_same(a: &mut NodeProc, others: &mut [&mut NodeProc], lo: i64, hi: i64) -> Res<()> {
    let request = json!({"cmd": "checksum", "from": lo, "to": hi});
    let expected = a.request(request.clone(), LONG)?;
    for node in others.iter_mut() {
        let got = node.request(request.clone(), LONG)?;
        if got["hash"] != expected["hash"] || got["count"] != expected["count"] {
            return Err(format!(
                "node {} differs from A after convergence: {} rows {} vs {} rows {}",
                node.name, got["count"], got["hash"], expected["count"], expected["hash"]
            ));
        }
    }
    Ok(())
}

pub fn run(root: &Path, rt: &Runtime, params: &Params) -> Res<Value> {
    let server = NatsServer::single(&root.join("w3-nats"))?;
    let url = server.url();
    let urls = [vec![url.clone()], vec![url.clone()], vec![url.clone()]];
    let mut nodes = start_three(root, &urls, "w3", &Setup::replicas(1))?;
    let mut next_id: i64 = 1;
    let mut by_size = Vec::new();
    for &tx_rows in &params.tx_sizes {
        let mut commit_rates = Vec::new();
        let mut e2e_rates = Vec::new();
        let mut messages_per_row = Vec::new();
        for _ in 0..params.reps {
            let before = published(&mut nodes[0])?;
            let (a, rest) = nodes.split_first_mut().ok_or("no nodes")?;
            let mut others: Vec<&mut NodeProc> = rest.iter_mut().collect();
            let result = write_and_converge(a, &mut others, next_id, params.rows, tx_rows)?;
            next_id += params.rows as i64;
            let after = published(&mut nodes[0])?;
            commit_rates.push(params.rows as f64 / result.write_s);
            e2e_rates.push(params.rows as f64 / result.end_to_end_s);
            let rows = (after.1 - before.1).max(1.0);
            messages_per_row.push((after.0 - before.0) / rows);
        }
        let rows_per_message = Summary::of(
            &messages_per_row
                .iter()
                .map(|m| if *m > 0.0 { 1.0 / m } else { f64::NAN })
                .collect::<Vec<_>>(),
        );
        by_size.push(json!({
            "tx_rows": tx_rows,
            "a_commit_rows_per_s": Summary::of(&commit_rates).json(),
            "a_commit_tx_per_s": Summary::of(&commit_rates.iter().map(|r| r / tx_rows as f64).collect::<Vec<_>>()).json(),
            "end_to_end_rows_per_s": Summary::of(&e2e_rates).json(),
            "rows_per_message": rows_per_message.json(),
        }));
    }
    let mut publish = Vec::new();
    let mut both = Vec::new();
    let mut sequential = Vec::new();
    for rep in 0..params.reps {
        let link = raw::Link {
            rt,
            pub_url: url.clone(),
            sub_url: url.clone(),
            replicas: 1,
            size: params.payload,
        };
        let raw = raw::throughput(
            &link,
            params.raw_count,
            params.raw_sequential,
            &format!("raw-w3-{rep}"),
        )?;
        let get = |k: &str| raw[k].as_f64().unwrap_or(f64::NAN);
        publish.push(get("publish_msgs_per_s"));
        both.push(get("publish_and_consume_msgs_per_s"));
        sequential.push(get("one_publish_per_round_trip_msgs_per_s"));
    }
    let memory = json!({
        "nodes_peak_rss_mb": nodes.iter().map(|n| json!({"node": n.name, "peak_rss_mb": n.peak_rss_mb().map(round)})).collect::<Vec<_>>(),
        "nats_server_peak_rss_mb": server.peak_rss_mb().map(round),
    });
    for node in &mut nodes {
        node.close().ctx("closing a node")?;
    }
    Ok(json!({
        "status": "ok",
        "rows_per_run": params.rows,
        "repetitions": params.reps,
        "payload_bytes": params.payload,
        "by_tx_size": by_size,
        "raw_jetstream": {
            "messages": params.raw_count,
            "inflight": raw::INFLIGHT,
            "publish_msgs_per_s": Summary::of(&publish).json(),
            "publish_and_consume_msgs_per_s": Summary::of(&both).json(),
            "one_publish_per_round_trip_msgs_per_s": Summary::of(&sequential).json(),
        },
        "memory": memory,
    }))
}

/// (published messages, published rows) of a node, from its status.
fn published(node: &mut NodeProc) -> Res<(f64, f64)> {
    let status = node.request(json!({"cmd": "status"}), LONG)?;
    let get = |k: &str| status["status"][k].as_f64().unwrap_or(0.0);
    Ok((get("published_messages"), get("published_rows")))
}
