//! W2, propagation latency: an open-loop writer on node A (one row per transaction, each row due at
//! t0 + i/rate whatever happened before), and the time from the commit on A to the change event on B and
//! on C. Beside each run, in the same repetition, the raw JetStream publish → receive latency at the same
//! rate and message size. With one nats-server, then with a 3-server cluster (A, B and C each on their
//! own server, streams with 3 replicas).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::nats::NatsServer;
use crate::node::{start_three, NodeProc, Setup};
use crate::raw;
use crate::stats::{percentile, round, sorted, Latency, Summary};
use crate::sys::{Ctx, Res};

pub struct Params {
    pub rates: Vec<u64>,
    pub seconds: f64,
    pub reps: usize,
    /// Higher rates tried once each (one server only) until lag is no longer bounded.
    pub probe_rates: Vec<u64>,
    pub payload: usize,
}

/// How long, after the writer stops, B and C may take to report every row before the run fails.
const DRAIN: Duration = Duration::from_secs(60);
/// Lag is bounded when the writer kept the rate, every row arrived, and the median lag of the last fifth
/// of the rows is under this (a backlog that grows for the whole run ends far above it).
const BOUNDED_TAIL_P50_MS: f64 = 100.0;

struct Run {
    latency: Latency,
    per_node: Vec<(String, Latency)>,
    /// Commit on A → A's own change event (the change noticed, stamped into the outbox).
    stamped: Latency,
    /// A's stamp → the event on B or C (publish, JetStream, consume, apply).
    after_stamp: Latency,
    achieved_rate: f64,
    tail_p50: f64,
    bounded: bool,
}

/// The first arrival time of each id a node reported since `listen`.
fn collect(node: &mut NodeProc) -> Res<HashMap<i64, u64>> {
    let got = node.request(json!({"cmd": "collect"}), Duration::from_secs(30))?;
    let ids = got["ids"].as_array().cloned().unwrap_or_default();
    let times = got["t"].as_array().cloned().unwrap_or_default();
    let mut first: HashMap<i64, u64> = HashMap::new();
    for (id, t) in ids.iter().zip(&times) {
        if let (Some(id), Some(t)) = (id.as_i64(), t.as_u64()) {
            first.entry(id).or_insert(t);
        }
    }
    Ok(first)
}

fn hl_run(nodes: &mut [NodeProc], start: i64, rate: u64, count: usize) -> Res<Run> {
    let (a, receivers) = nodes.split_first_mut().ok_or("no nodes")?;
    let range = json!({"cmd": "listen", "from": start, "to": start + count as i64});
    for node in receivers.iter_mut() {
        node.request(range.clone(), Duration::from_secs(30))?;
    }
    let mut local = range.clone();
    local["local"] = json!(true);
    a.request(local, Duration::from_secs(30))?;
    let write_time = Duration::from_secs_f64(count as f64 / rate as f64) + Duration::from_secs(120);
    let written = a.request(
        json!({"cmd": "write_open_loop", "start": start, "count": count, "rate": rate}),
        write_time,
    )?;
    let start_ns = written["start_ns"].as_u64().unwrap_or(0);
    let commits: Vec<u64> = written["commit_ns"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if commits.len() != count {
        return Err(format!("A reported {} of {count} commits", commits.len()));
    }
    let waited = Instant::now();
    for node in receivers.iter_mut() {
        let name = node.name.clone();
        loop {
            let seen = node.request(json!({"cmd": "received"}), Duration::from_secs(30))?["count"]
                .as_u64()
                .unwrap_or(0) as usize;
            if seen >= count {
                break;
            }
            if waited.elapsed() > DRAIN {
                return Err(format!(
                    "node {name} saw {seen} of {count} rows {DRAIN:?} after the writer stopped"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stamped_at = collect(a)?;
    let commit_of = |id: i64| commits[(id - start) as usize];
    let stamped = Latency::of_ms(
        stamped_at
            .iter()
            .map(|(id, t)| t.saturating_sub(commit_of(*id)) as f64 / 1e6)
            .collect(),
    );
    let mut all = Vec::with_capacity(count * receivers.len());
    let mut after_stamp = Vec::with_capacity(count * receivers.len());
    let mut tail = Vec::new();
    let mut per_node = Vec::new();
    let tail_from = start + (count as i64 * 4) / 5;
    for node in receivers.iter_mut() {
        let first = collect(node)?;
        let mut lags = Vec::with_capacity(first.len());
        for (id, t) in first {
            let lag = t.saturating_sub(commit_of(id)) as f64 / 1e6;
            lags.push(lag);
            if id >= tail_from {
                tail.push(lag);
            }
            if let Some(s) = stamped_at.get(&id) {
                after_stamp.push(t.saturating_sub(*s) as f64 / 1e6);
            }
        }
        all.extend_from_slice(&lags);
        per_node.push((node.name.clone(), Latency::of_ms(lags)));
    }
    let last = commits.last().copied().unwrap_or(start_ns);
    let achieved_rate = count as f64 / ((last.saturating_sub(start_ns)).max(1) as f64 / 1e9);
    let tail_p50 = percentile(&sorted(tail), 50.0);
    let latency = Latency::of_ms(all);
    let bounded = achieved_rate >= 0.95 * rate as f64
        && latency.count == count * receivers.len()
        && tail_p50 <= BOUNDED_TAIL_P50_MS;
    Ok(Run {
        latency,
        per_node,
        stamped,
        after_stamp: Latency::of_ms(after_stamp),
        achieved_rate,
        tail_p50,
        bounded,
    })
}

fn latency_summary(runs: &[Latency]) -> Value {
    let pick = |f: fn(&Latency) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>()).json();
    json!({
        "p50_ms": pick(|l| l.p50),
        "p95_ms": pick(|l| l.p95),
        "p99_ms": pick(|l| l.p99),
        "max_ms": pick(|l| l.max),
    })
}

fn topology(root: &Path, rt: &Runtime, params: &Params, cluster: bool, probe: bool) -> Res<Value> {
    let kind = if cluster { "cluster" } else { "single" };
    let servers = if cluster {
        NatsServer::cluster(&root.join("w2-cluster-nats"), 3)?
    } else {
        vec![NatsServer::single(&root.join("w2-single-nats"))?]
    };
    let url = |i: usize| servers[i % servers.len()].url();
    let urls = [vec![url(0)], vec![url(1)], vec![url(2)]];
    let replicas = if cluster { 3 } else { 1 };
    let prefix = format!("w2-{kind}");
    let mut nodes = start_three(root, &urls, &prefix, &Setup::replicas(replicas))?;
    // Warm-up (not counted): connections, consumers and statement caches are all live before measuring.
    let mut next_id: i64 = 1;
    hl_run(&mut nodes, next_id, 500, 250)?;
    next_id += 250;
    let link = raw::Link {
        rt,
        pub_url: url(0),
        sub_url: url(1),
        replicas: replicas as usize,
        size: params.payload,
    };
    raw::latency(&link, 500, 100, &format!("raw-{kind}-warm"))?;

    let mut by_rate = Vec::new();
    let mut highest_bounded: Option<u64> = None;
    let mut all_bounded_so_far = true;
    let mut rates: Vec<(u64, usize)> = params.rates.iter().map(|r| (*r, params.reps)).collect();
    if probe {
        rates.extend(params.probe_rates.iter().map(|r| (*r, 1)));
    }
    for (index, (rate, reps)) in rates.iter().copied().enumerate() {
        let is_probe = index >= params.rates.len();
        if is_probe && !all_bounded_so_far {
            break;
        }
        let count = ((rate as f64 * params.seconds).round() as usize).max(20);
        let mut hl = Vec::new();
        let mut baseline = Vec::new();
        let mut per_node = Vec::new();
        let mut bounded = true;
        let mut achieved = Vec::new();
        let mut tails = Vec::new();
        let mut stamped = Vec::new();
        let mut after_stamp = Vec::new();
        let mut baseline_errors: Vec<String> = Vec::new();
        for rep in 0..reps {
            let tag = format!("raw-{kind}-{rate}-{rep}");
            // A failed baseline is recorded and leaves a gap; it does not stop the measurement.
            match raw::latency(&link, rate, count, &tag) {
                Ok(latency) => baseline.push(latency),
                Err(err) => {
                    baseline.push(Latency::of_ms(Vec::new()));
                    baseline_errors.push(err);
                }
            }
            let run = hl_run(&mut nodes, next_id, rate, count)
                .map_err(|err| format!("{kind}, {rate} rows/s, run {}: {err}", rep + 1))?;
            next_id += count as i64;
            bounded &= run.bounded;
            achieved.push(run.achieved_rate);
            tails.push(run.tail_p50);
            stamped.push(run.stamped.clone());
            after_stamp.push(run.after_stamp.clone());
            per_node.push(
                run.per_node
                    .iter()
                    .map(|(name, l)| json!({"node": name, "latency": l.json()}))
                    .collect::<Vec<_>>(),
            );
            hl.push(run.latency);
        }
        if bounded && all_bounded_so_far {
            highest_bounded = Some(rate);
        } else {
            all_bounded_so_far = false;
        }
        let ratio = |f: fn(&Latency) -> f64| {
            Summary::of(
                &hl.iter()
                    .zip(&baseline)
                    .map(|(h, b)| f(h) / f(b))
                    .collect::<Vec<_>>(),
            )
            .json()
        };
        by_rate.push(json!({
            "rate": rate,
            "probe": is_probe,
            "rows_per_run": count,
            "repetitions": reps,
            "harmonylite": latency_summary(&hl),
            "raw_jetstream": latency_summary(&baseline),
            "raw_jetstream_errors": baseline_errors,
            "breakdown": {
                "commit_to_stamped_on_a": latency_summary(&stamped),
                "stamped_on_a_to_event_on_b_c": latency_summary(&after_stamp),
            },
            "ratio_p50": ratio(|l| l.p50),
            "ratio_p99": ratio(|l| l.p99),
            "achieved_rate": Summary::of(&achieved).json(),
            "tail_p50_ms": Summary::of(&tails).json(),
            "bounded": bounded,
            "runs": hl.iter().zip(&baseline).zip(&per_node).map(|((h, b), n)| json!({
                "harmonylite": h.json(), "raw_jetstream": b.json(), "per_node": n,
            })).collect::<Vec<_>>(),
        }));
    }
    let memory = json!({
        "nodes_peak_rss_mb": nodes.iter().map(|n| json!({"node": n.name, "peak_rss_mb": n.peak_rss_mb().map(round)})).collect::<Vec<_>>(),
        "nats_servers_peak_rss_mb": servers.iter().map(|s| json!({"server": s.name, "peak_rss_mb": s.peak_rss_mb().map(round)})).collect::<Vec<_>>(),
    });
    for node in &mut nodes {
        node.close().ctx("closing a node")?;
    }
    Ok(json!({
        "servers": servers.len(),
        "stream_replicas": replicas,
        "rates": by_rate,
        "highest_bounded_rate": highest_bounded,
        "highest_rate_tried": rates.last().map(|r| r.0),
        "memory": memory,
    }))
}

pub fn run(root: &Path, rt: &Runtime, params: &Params) -> Res<Value> {
    let single = topology(root, rt, params, false, true)?;
    let cluster = topology(root, rt, params, true, false)?;
    Ok(json!({
        "status": "ok",
        "seconds_per_run": params.seconds,
        "payload_bytes": params.payload,
        "bounded_rule": format!(
            "writer kept >= 95% of the rate, every row arrived on B and C, and the median lag of the last fifth of the rows <= {BOUNDED_TAIL_P50_MS} ms"
        ),
        "single": single,
        "cluster": cluster,
    }))
}
