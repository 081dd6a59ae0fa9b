//! `harmonylite-bench`: measured figures for HarmonyLite, each beside its baseline from the same run.
//!
//! ```text
//! harmonylite-bench [--quick] [--out DIR] [--only w1,w2,...] [--keep DIR] [--update-md BENCHMARKS.md]
//! ```
//! Scenarios: W1 write-path overhead (plain SQLite vs capture, optional callgrind), W2 propagation latency
//! (1 server and a 3-server cluster), W3 throughput, W4 catch-up, W5 bootstrap (restore a snapshot of a
//! large database and catch up), memory (peak RSS per node process). Results: `<out>/latest.json` and `latest.md`
//! (`quick.json` / `quick.md` with `--quick`). Internal subcommands: `node` (one replicated node, driven
//! over stdin/stdout) and `w1-instructions` (the callgrind child).

mod nats;
mod node;
mod raw;
mod report;
mod stats;
mod sys;
mod w1;
mod w2;
mod w3;
mod w4;
mod w5;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};

use crate::sys::{Ctx, Res};

const SCENARIOS: [&str; 7] = ["w1", "w1_callgrind", "w2", "w3", "w4", "w5", "memory"];

struct Options {
    quick: bool,
    out: PathBuf,
    only: Option<Vec<String>>,
    keep: Option<PathBuf>,
    update_md: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: harmonylite-bench [--quick] [--out DIR] [--only w1,w1_callgrind,w2,w3,w4,w5,memory] [--keep DIR] [--update-md FILE]"
}

fn parse_options(args: &[String]) -> Res<Options> {
    let mut options = Options {
        quick: false,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results")),
        only: None,
        keep: None,
        update_md: None,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--out" => options.out = PathBuf::from(value("--out")?),
            "--only" => {
                let list: Vec<String> = value("--only")?
                    .split(',')
                    .map(|s| s.trim().to_lowercase())
                    .collect();
                if let Some(bad) = list.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    return Err(format!("unknown scenario `{bad}` (one of {SCENARIOS:?})"));
                }
                options.only = Some(list);
            }
            "--keep" => options.keep = Some(PathBuf::from(value("--keep")?)),
            "--update-md" => options.update_md = Some(PathBuf::from(value("--update-md")?)),
            "--help" | "-h" => return Err(usage().into()),
            other => return Err(format!("unknown argument `{other}`\n{}", usage())),
        }
    }
    Ok(options)
}

struct Plan {
    w1: w1::Params,
    w2: w2::Params,
    w3: w3::Params,
    w4: w4::Params,
    w5: w5::Params,
}

fn plan(quick: bool) -> Plan {
    let payload = workload::one_row_message_bytes();
    if quick {
        Plan {
            w1: w1::Params {
                single_rows: 2_000,
                bulk_rows: 10_000,
                reps: 3,
                callgrind_ops: 0,
                callgrind: false,
            },
            w2: w2::Params {
                rates: vec![100, 1_000, 5_000],
                seconds: 1.0,
                reps: 1,
                probe_rates: Vec::new(),
                payload,
            },
            w3: w3::Params {
                rows: 10_000,
                tx_sizes: vec![1, 100, 1_000],
                reps: 1,
                raw_count: 10_000,
                raw_sequential: 1_000,
                payload,
            },
            w4: w4::Params {
                changes: 20_000,
                tx_rows: 1_000,
                reps: 1,
            },
            w5: w5::Params {
                rows: 20_000,
                tail_rows: 5_000,
                body_len: 1_000,
                reps: 1,
            },
        }
    } else {
        Plan {
            w1: w1::Params {
                single_rows: 20_000,
                bulk_rows: 100_000,
                reps: 5,
                callgrind_ops: 2_000,
                callgrind: true,
            },
            w2: w2::Params {
                rates: vec![100, 1_000, 5_000],
                // Five shorter runs rather than three longer ones: a median of five shrugs off a
                // neighbour's build on this shared machine better.
                seconds: 3.0,
                reps: 5,
                probe_rates: vec![10_000, 20_000],
                payload,
            },
            w3: w3::Params {
                rows: 100_000,
                tx_sizes: vec![1, 100, 1_000],
                reps: 3,
                raw_count: 100_000,
                raw_sequential: 10_000,
                payload,
            },
            w4: w4::Params {
                changes: 1_000_000,
                tx_rows: 1_000,
                reps: 1,
            },
            // About 1 GB of rows of ~1 KB (the target's size), then 100,000 more after the snapshot.
            w5: w5::Params {
                rows: 900_000,
                tail_rows: 100_000,
                body_len: 1_000,
                reps: 1,
            },
        }
    }
}

/// Runs one scenario; an error is recorded in its section and the run goes on.
fn scenario(name: &str, selected: bool, run: impl FnOnce() -> Res<Value>) -> Value {
    if !selected {
        return json!({"status": "skipped", "reason": "not selected (--only)"});
    }
    eprintln!("== {name}");
    let started = Instant::now();
    let mut value = run().unwrap_or_else(|err| json!({"status": "error", "error": err}));
    value["seconds"] = json!(stats::round(started.elapsed().as_secs_f64()));
    eprintln!(
        "   {name}: {} in {:.1} s",
        value["status"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );
    if let Some(err) = value["error"].as_str() {
        eprintln!("   {err}");
    }
    value
}

/// Peak RSS per node process, gathered from W3 and W4 (and W2 for reference).
fn memory_section(results: &Value) -> Value {
    let w3 = &results["w3"]["memory"];
    let w3_nodes: Vec<(String, f64)> = w3["nodes_peak_rss_mb"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("?").to_string(),
                n["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    if w3_nodes.is_empty() && results["w4"]["runs"].is_null() && results["w5"]["runs"].is_null() {
        return json!({"status": "skipped", "reason": "needs W3, W4 or W5"});
    }
    let w4 = &results["w4"]["runs"][0];
    let w3_max = w3_nodes.iter().map(|n| n.1).fold(f64::NAN, f64::max);
    json!({
        "status": "ok",
        "method": "VmHWM of each node's own process (/proc/<pid>/status), read before it closes; nats-server processes separately",
        "w3_nodes": w3_nodes.iter().map(|(n, mb)| format!("{n} {}", stats::fmt(*mb))).collect::<Vec<_>>().join(", "),
        "w3_max_node_peak_rss_mb": stats::round(w3_max),
        "w3_nats_server_peak_rss_mb": w3["nats_server_peak_rss_mb"],
        "w4_a_peak_rss_mb": w4["a_peak_rss_mb"],
        "w4_b_peak_rss_mb": w4["b_peak_rss_mb"],
        "w4_catching_up_node_peak_rss_mb": w4["c_catching_up_peak_rss_mb"],
        "w4_nats_server_peak_rss_mb": w4["nats_server_peak_rss_mb"],
        "w4_catching_up_by_config": results["w4"]["variants"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|v| format!("{}: {} MB", v["config"].as_str().unwrap_or("?"),
                stats::fmt(v["runs"][0]["c_catching_up_peak_rss_mb"].as_f64().unwrap_or(f64::NAN))))
            .collect::<Vec<_>>()
            .join(", "),
        "w2": {"single": results["w2"]["single"]["memory"], "cluster": results["w2"]["cluster"]["memory"]},
        "w5_restoring_node_peak_rss_mb": results["w5"]["runs"][0]["d_peak_rss_mb"],
        "w5_saving_node_peak_rss_mb": results["w5"]["runs"][0]["a_peak_rss_mb"],
        "w5_db_gb": results["w5"]["db_gb"]["median"],
    })
}

fn run_suite(options: &Options) -> Res<bool> {
    let plan = plan(options.quick);
    let selected = |name: &str| {
        options
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    };
    let temp = tempfile::Builder::new()
        .prefix("harmonylite-bench-")
        .tempdir()
        .ctx("creating a temp folder")?;
    let root = match &options.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).ctx("creating --keep folder")?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let nats_server = nats::server_binary();
    let started = Instant::now();
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut results = json!({
        "schema_version": 1,
        "mode": if options.quick { "quick" } else { "full" },
        "started_unix": unix_time,
        "machine": sys::machine(&nats_server),
        "notes": [
            "medians over repeated runs with min–max; ratios are taken per repetition, then summarized",
            "every replicated node is its own process (harmonylite-bench node); latency timestamps use CLOCK_MONOTONIC, shared by all processes",
            "--quick scales everything down: its figures are a smoke test, not measurements",
        ],
    });
    let rt = raw::runtime()?;
    results["w1"] = scenario("w1", selected("w1"), || w1::run(&root, &plan.w1));
    results["w1_callgrind"] = scenario("w1_callgrind", selected("w1_callgrind"), || {
        Ok(w1::callgrind(&root, &plan.w1))
    });
    results["w2"] = scenario("w2", selected("w2"), || w2::run(&root, &rt, &plan.w2));
    results["w3"] = scenario("w3", selected("w3"), || w3::run(&root, &rt, &plan.w3));
    results["w4"] = scenario("w4", selected("w4"), || w4::run(&root, &plan.w4));
    results["w5"] = scenario("w5", selected("w5"), || w5::run(&root, &plan.w5));
    results["memory"] = if selected("memory") {
        memory_section(&results)
    } else {
        json!({"status": "skipped", "reason": "not selected (--only)"})
    };
    results["duration_s"] = json!(stats::round(started.elapsed().as_secs_f64()));
    results["loadavg_at_end"] = json!(sys::loadavg());
    results["params"] = json!({
        "w1": {"single_rows": plan.w1.single_rows, "bulk_rows": plan.w1.bulk_rows, "reps": plan.w1.reps, "callgrind_ops": plan.w1.callgrind_ops},
        "w2": {"rates": plan.w2.rates, "seconds": plan.w2.seconds, "reps": plan.w2.reps, "probe_rates": plan.w2.probe_rates, "payload_bytes": plan.w2.payload},
        "w3": {"rows": plan.w3.rows, "tx_sizes": plan.w3.tx_sizes, "reps": plan.w3.reps, "raw_count": plan.w3.raw_count, "raw_sequential": plan.w3.raw_sequential},
        "w4": {"changes": plan.w4.changes, "tx_rows": plan.w4.tx_rows, "reps": plan.w4.reps},
        "w5": {"rows": plan.w5.rows, "tail_rows": plan.w5.tail_rows, "body_len": plan.w5.body_len, "reps": plan.w5.reps},
    });
    let failed: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| results[*s]["status"] == json!("error"))
        .collect();
    results["failed"] = json!(failed);

    let table = report::markdown(&results);
    std::fs::create_dir_all(&options.out).ctx("creating the output folder")?;
    let stem = if options.quick { "quick" } else { "latest" };
    let json_path = options.out.join(format!("{stem}.json"));
    let md_path = options.out.join(format!("{stem}.md"));
    let text = serde_json::to_string_pretty(&results).ctx("serializing results")?;
    std::fs::write(&json_path, text + "\n").ctx("writing the JSON results")?;
    std::fs::write(&md_path, &table).ctx("writing the markdown table")?;
    if let Some(path) = &options.update_md {
        report::update_benchmarks_md(path, &table)?;
        eprintln!("updated {}", path.display());
    }
    println!("{table}");
    eprintln!("results: {} and {}", json_path.display(), md_path.display());
    if !failed.is_empty() {
        eprintln!("failed scenarios: {}", failed.join(", "));
    }
    Ok(failed.is_empty())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("node") => node::serve(&args[1..]).map(|_| true),
        Some("w1-instructions") => w1::instructions_child(&args[1..]).map(|_| true),
        _ => parse_options(&args).and_then(|options| run_suite(&options)),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("harmonylite-bench: {message}");
            ExitCode::from(2)
        }
    }
}
