//! W4, catch-up: node C goes offline (its replica closed, process gone) while A inserts N rows in
//! transactions of 1,000 and B follows live; then C restarts on the same database and catches up from the
//! stream. Figures: time from restart (process spawn) to "C applied A's token", changes/s, and C's peak
//! RSS while catching up.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::nats::NatsServer;
use crate::node::{node_config, node_db, start_three, NodeProc};
use crate::stats::{round, Summary};
use crate::sys::{mono_ns, Ctx, Res};
use crate::w3::{verify_same, write_and_converge};

pub struct Params {
    pub changes: usize,
    pub tx_rows: usize,
    pub reps: usize,
}

const LONG: Duration = Duration::from_secs(900);

pub fn run(root: &Path, params: &Params) -> Res<Value> {
    let mut catch_up = Vec::new();
    let mut catch_up_from_open = Vec::new();
    let mut live = Vec::new();
    let mut a_rates = Vec::new();
    let mut memory = Vec::new();
    for rep in 0..params.reps {
        let server = NatsServer::single(&root.join(format!("w4-{rep}-nats")))?;
        let url = server.url();
        let urls = [vec![url.clone()], vec![url.clone()], vec![url.clone()]];
        let prefix = format!("w4-{rep}");
        let mut nodes = start_three(root, &urls, &prefix, 1)?;
        let mut c = nodes.pop().ok_or("no node C")?;
        c.close().ctx("stopping C")?;
        drop(c);

        let (a, rest) = nodes.split_first_mut().ok_or("no nodes")?;
        let mut others: Vec<&mut NodeProc> = rest.iter_mut().collect();
        let written = write_and_converge(a, &mut others, 1, params.changes, params.tx_rows)?;
        a_rates.push(params.changes as f64 / written.write_s);
        live.push(params.changes as f64 / written.end_to_end_s);
        let token = a.request(json!({"cmd": "sync"}), LONG)?["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();

        let restarted = mono_ns();
        let db = node_db(root, &prefix, "C");
        let mut c = NodeProc::start(
            "C",
            &db,
            &node_config(3, &url_list(&url), &prefix, 1),
            &db.with_file_name("node-restart.log"),
        )?;
        let opened = c.ready["opened_ns"].as_u64().unwrap_or(restarted);
        let done = c.request(
            json!({"cmd": "wait", "token": token, "timeout_s": LONG.as_secs()}),
            LONG,
        )?["done_ns"]
            .as_u64()
            .unwrap_or(0);
        let seconds = done.saturating_sub(restarted) as f64 / 1e9;
        catch_up.push(params.changes as f64 / seconds);
        catch_up_from_open.push(params.changes as f64 / (done.saturating_sub(opened) as f64 / 1e9));
        verify_same(a, &mut [&mut c], 1, 1 + params.changes as i64)?;
        memory.push(json!({
            "a_peak_rss_mb": a.peak_rss_mb().map(round),
            "b_peak_rss_mb": others[0].peak_rss_mb().map(round),
            "c_catching_up_peak_rss_mb": c.peak_rss_mb().map(round),
            "nats_server_peak_rss_mb": server.peak_rss_mb().map(round),
            "catch_up_s": round(seconds),
        }));
        c.close().ctx("closing C")?;
        for node in &mut nodes {
            node.close().ctx("closing a node")?;
        }
    }
    Ok(json!({
        "status": "ok",
        "changes": params.changes,
        "tx_rows": params.tx_rows,
        "repetitions": params.reps,
        "catch_up_changes_per_s": Summary::of(&catch_up).json(),
        "catch_up_changes_per_s_from_open": Summary::of(&catch_up_from_open).json(),
        "live_b_changes_per_s": Summary::of(&live).json(),
        "a_commit_rows_per_s": Summary::of(&a_rates).json(),
        "runs": memory,
    }))
}

fn url_list(url: &str) -> Vec<String> {
    vec![url.to_string()]
}
